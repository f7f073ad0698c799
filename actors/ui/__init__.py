"""The curses UI: attaches to a running instance and detaches (python -m actors.ui)."""
