"""Per-second averages over the last stats_period, as PgBouncer's SHOW STATS_AVERAGES.

The worker samples the per-database totals every stats_period; the averages
are the differences between the last two samples: counts and bytes per
second, times per transaction / query / assignment in microseconds.
"""

from __future__ import annotations

from collections.abc import Mapping

from ecluse.stats.counters import PoolStats

# Averages of a time counter divide by the count of the thing it times.
_TIME_PER = {"xact_time_us": "xact_count", "query_time_us": "query_count",
             "wait_time_us": "server_assignment_count"}


def totals_by_database(pools) -> dict[str, PoolStats]:
    """Merge the counters of the pools of each database."""
    out: dict[str, PoolStats] = {}
    for pool in pools:
        total = out.get(pool.settings.database)
        if total is None:
            total = out[pool.settings.database] = PoolStats()
        total.merge(pool.stats)
    return out


def averages(before: Mapping[str, int], after: Mapping[str, int],
             seconds: float) -> dict[str, int]:
    """The averages between two samples of one database's integer counters."""
    out: dict[str, int] = {}
    for name, value in after.items():
        delta = max(0, value - before.get(name, 0))  # a pool dropped by a reload
        per = _TIME_PER.get(name)
        if per is not None:
            count = max(0, after.get(per, 0) - before.get(per, 0))
            out[name] = delta // count if count > 0 else 0
        else:
            out[name] = int(delta / seconds) if seconds > 0 else 0
    return out


class PeriodSampler:
    """Keeps the previous sample; each sample() returns the averages since it."""

    def __init__(self) -> None:
        self._previous: dict[str, dict[str, int]] = {}
        self._at: float | None = None
        self.latest: dict[str, dict[str, int]] = {}

    def sample(self, totals: Mapping[str, PoolStats], now: float) -> dict[str, dict[str, int]]:
        current = {db: stats.as_dict() for db, stats in totals.items()}
        if self._at is not None:
            seconds = now - self._at
            self.latest = {db: averages(self._previous.get(db, {}), counts, seconds)
                           for db, counts in current.items()}
        self._previous, self._at = current, now
        return self.latest
