"""python -m actors.gateway"""
from .gateway import main

raise SystemExit(main())
