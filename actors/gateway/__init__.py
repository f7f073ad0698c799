"""The command gateway: TCP listeners, legacy text protocol, data plane to routers (python -m actors.gateway)."""
