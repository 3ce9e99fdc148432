"""One PostgreSQL server connection: connect, log in, relay, reset, cancel."""
