"""What every actor shares: message schema, errors, settings, the bus, the replicated state, requests, the runner."""
