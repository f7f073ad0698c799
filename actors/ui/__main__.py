"""python -m actors.ui"""
from .app import main

raise SystemExit(main())
