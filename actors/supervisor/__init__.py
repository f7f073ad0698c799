"""The supervisor behind launch.py: child processes, control requests, the command-line client."""
