"""Tests that start real actors and processes on loopback."""
