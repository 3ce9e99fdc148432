"""One client session: startup, authentication and the per-mode relay."""
