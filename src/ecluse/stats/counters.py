"""Traffic counters of one pool: plain integers and fixed-bucket histograms.

The hot path (frontend/session.py, server/connection.py, pool/pool.py) adds to
these in place; the admin console, the Prometheus collector and the HTTP API
read them. Nothing here calls out, allocates per event or takes a lock.

Definitions follow PgBouncer's SHOW STATS so its consumers read the same thing:
- query_count: ReadyForQuery messages relayed to clients (one per simple Query
  or per Sync), query_time the microseconds from a client's request reaching a
  linked server to its last ReadyForQuery;
- xact_count: requests that ended with the server idle (outside a transaction
  block), xact_time the microseconds from the first request of that
  transaction to its end;
- wait_time: microseconds clients spent queued for a server;
- received / sent: bytes read from clients / written to them.
"""

from __future__ import annotations

from bisect import bisect_left

# Seconds. Wide on purpose: a pooler sees 50 µs point queries and 10 minute reports.
TIME_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Counts of observations per upper bound (not cumulative), plus their sum.

    ``counts[i]`` counts values <= bounds[i] and > bounds[i-1]; the last slot
    counts values above every bound (Prometheus' +Inf bucket).
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = TIME_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        """Counts of values <= each bound, then the total count (the +Inf bucket)."""
        out, running = [], 0
        for n in self.counts:
            running += n
            out.append(running)
        return out

    def quantile(self, q: float) -> float:
        """An upper bound of the q-quantile (the bucket it falls in); 0.0 when empty."""
        n = self.count()
        if n == 0:
            return 0.0
        rank = q * n
        for bound, seen in zip(self.bounds, self.cumulative(), strict=False):
            if seen >= rank:
                return bound
        return float("inf")

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.total += other.total


class PoolStats:
    """Everything counted for one (database, user) pool since it was created."""

    __slots__ = (
        "bind_count", "client_connect_count", "client_parse_count", "errors", "query_count",
        "query_seconds", "query_time_us", "received", "sent", "server_assignment_count",
        "server_parse_count", "wait_seconds", "wait_time_us", "xact_count", "xact_time_us")

    def __init__(self) -> None:
        self.server_assignment_count = 0
        self.xact_count = 0
        self.query_count = 0
        self.received = 0
        self.sent = 0
        self.xact_time_us = 0
        self.query_time_us = 0
        self.wait_time_us = 0
        self.client_parse_count = 0
        self.server_parse_count = 0
        self.bind_count = 0
        self.client_connect_count = 0
        # ErrorResponses by (origin, SQLSTATE class): origin "server" for errors
        # relayed from PostgreSQL, "pooler" for those ecluse raised itself.
        self.errors: dict[tuple[str, str], int] = {}
        self.query_seconds = Histogram()
        self.wait_seconds = Histogram()

    # Both run at every transaction: Histogram.observe written out, one call less.
    def add_query(self, seconds: float) -> None:
        self.query_time_us += int(seconds * 1_000_000)
        hist = self.query_seconds
        hist.counts[bisect_left(hist.bounds, seconds)] += 1
        hist.total += seconds

    def add_wait(self, seconds: float) -> None:
        self.wait_time_us += int(seconds * 1_000_000)
        hist = self.wait_seconds
        hist.counts[bisect_left(hist.bounds, seconds)] += 1
        hist.total += seconds

    def add_no_wait(self) -> None:
        """add_wait(0.0): a client served at once, in the histogram's first bucket."""
        self.wait_seconds.counts[0] += 1

    def add_error(self, origin: str, sqlstate: str) -> None:
        key = (origin, sqlstate[:2] or "??")
        self.errors[key] = self.errors.get(key, 0) + 1

    def merge(self, other: PoolStats) -> None:
        """Add another pool's counts to these (per-database sums, workers)."""
        for name in _INT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for key, n in other.errors.items():
            self.errors[key] = self.errors.get(key, 0) + n
        self.query_seconds.merge(other.query_seconds)
        self.wait_seconds.merge(other.wait_seconds)

    def as_dict(self) -> dict[str, int]:
        """The integer counters by name (SHOW STATS, the HTTP API)."""
        return {name: getattr(self, name) for name in _INT_FIELDS}


_INT_FIELDS = (
    "server_assignment_count", "xact_count", "query_count", "received", "sent",
    "xact_time_us", "query_time_us", "wait_time_us", "client_parse_count",
    "server_parse_count", "bind_count", "client_connect_count")
