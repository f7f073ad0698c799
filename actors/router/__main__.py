"""python -m actors.router"""
from .router import main

raise SystemExit(main())
