"""The state keeper: the one writer of orch.cf and routes.cf (python -m actors.state)."""
