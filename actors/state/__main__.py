"""python -m actors.state"""
from .keeper import main

raise SystemExit(main())
