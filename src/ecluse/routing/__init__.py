"""Choosing a server for a query (read/write split), from SQL text parsed with pglast; no I/O."""
