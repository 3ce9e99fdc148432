"""Pools of server connections keyed by (database, user): acquire, release, queueing."""
