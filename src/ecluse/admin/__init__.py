"""The PgBouncer-compatible admin console: a virtual database answered without a server."""
