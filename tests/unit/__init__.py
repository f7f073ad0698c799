"""Tests of pure functions and classes: no processes, no sockets."""
