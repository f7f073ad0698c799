"""The test suite: tests/unit (pure, no processes or sockets), tests/system (real actors), tests/support (harness)."""
