"""Integration tests: real PostgreSQL, ecluse as a process, real clients."""
