"""python -m actors.scanner"""
from .scanner import main

raise SystemExit(main())
