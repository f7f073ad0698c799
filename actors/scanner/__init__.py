"""Discovery: sweeps of known_ports with /info (python -m actors.scanner)."""
