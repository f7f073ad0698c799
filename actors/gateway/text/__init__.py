"""The legacy text protocol (docs/protocol.md sections 2 and 3): line parsing (``session``), the
command registry (``registry``), the commands (``handlers``) and their reply texts (``replies``)."""
