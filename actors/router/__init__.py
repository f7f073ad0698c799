"""A data router: fan-out of each payload to its routes' sinks (python -m actors.router)."""
