"""The command gateway: TCP listeners, the legacy text protocol, the data plane to the routers (python -m actors.gateway)."""
