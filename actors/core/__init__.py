"""What every actor shares: the message schema, errors, settings, the bus, the replicated state, requests, the actor runner."""
