"""A child that exits at once with an error: drives the supervisor's flapping limit in tests."""
raise SystemExit(3)
