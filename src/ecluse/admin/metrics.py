"""Prometheus metrics: a collector that reads a worker's pools and counters at scrape time.

With several workers the scraped worker adds the others' figures (NodeCollector,
fetched by admin/node.py): one target for the whole node. The process_* and
python_* families are the scraped worker's own.

Rules:
1. Read only, and only when scraped: the hot path increments the plain
   integers of stats/counters.py and never calls prometheus-client
   (DESIGN.md, hot path rules). Everything here runs in the worker's event
   loop, so a scrape sees one consistent instant of the counters.
2. Counters are read straight from each pool's PoolStats, which only ever
   grows, so a pool's counters never go backwards while the pool exists.
3. Names follow Prometheus conventions: ``ecluse_`` prefix, base units
   (seconds, bytes), ``_total`` on counters; per-pool series carry the
   labels ``database`` and ``user`` (the user the pool logs in as, SHOW
   POOLS' ``user``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ecluse.admin.show import visible_clients
from ecluse.stats.counters import Histogram

if TYPE_CHECKING:
    from ecluse.frontend.context import ClientContext
    from ecluse.pool.pool import Pool

POOL_LABELS = ["database", "user"]

CLIENT_STATES = ("active", "waiting")
SERVER_STATES = ("active", "idle", "used", "tested", "login")

# (metric name, PoolStats attribute, divisor to base units, help). The time
# counters are kept in microseconds by the hot path; Prometheus wants seconds.
POOL_COUNTERS: tuple[tuple[str, str, int, str], ...] = (
    ("ecluse_transactions_total", "xact_count", 1,
     "Transactions completed (requests that left the server idle, outside a block)."),
    ("ecluse_queries_total", "query_count", 1,
     "Queries completed (ReadyForQuery relayed: one per simple Query or Sync)."),
    ("ecluse_received_bytes_total", "received", 1, "Bytes read from clients."),
    ("ecluse_sent_bytes_total", "sent", 1, "Bytes written to clients."),
    ("ecluse_transaction_time_seconds_total", "xact_time_us", 1_000_000,
     "Time spent in transactions, from first request to end."),
    ("ecluse_query_time_seconds_total", "query_time_us", 1_000_000,
     "Time spent in queries, from request on a server to ReadyForQuery."),
    ("ecluse_wait_time_seconds_total", "wait_time_us", 1_000_000,
     "Time clients spent queued for a server."),
    ("ecluse_server_assignments_total", "server_assignment_count", 1,
     "Times a server was assigned to a client."),
    ("ecluse_client_logins_total", "client_connect_count", 1, "Client logins into the pool."),
    ("ecluse_client_parses_total", "client_parse_count", 1, "Parse messages sent by clients."),
    ("ecluse_server_parses_total", "server_parse_count", 1, "Parse messages sent to servers."),
    ("ecluse_binds_total", "bind_count", 1, "Bind messages sent by clients."),
)

POOL_HISTOGRAMS: tuple[tuple[str, str, str], ...] = (
    ("ecluse_query_duration_seconds", "query_seconds",
     "Query time, from request on a server to ReadyForQuery."),
    ("ecluse_wait_duration_seconds", "wait_seconds", "Time a client waited for a server."),
)


def histogram_buckets(hist: Histogram) -> list[tuple[str, float]]:
    """Prometheus' cumulative buckets of a stats Histogram, ending with +Inf.

    stats/counters.py keeps one count per bucket (not cumulative) and a last
    slot for values above every bound; Prometheus wants counts of values
    <= each bound, the +Inf bucket being the total count.
    """
    bounds = [floatToGoString(b) for b in hist.bounds] + ["+Inf"]
    return list(zip(bounds, hist.cumulative(), strict=True))


def _pool_labels(pool: Pool) -> list[str]:
    return [pool.settings.database, pool.settings.user]


class EcluseCollector(Collector):
    """Yield ecluse's metric families from a worker's ClientContext on each scrape."""

    def __init__(self, ctx: ClientContext):
        self.ctx = ctx

    def describe(self) -> Iterable[Metric]:
        # Collector registration would otherwise call collect() once at
        # registration time; describing nothing keeps that a no-op.
        return []

    def collect(self) -> Iterator[Metric]:
        pools = list(self.ctx.registry)
        yield from self._pool_gauges(pools)
        yield from self._pool_counters(pools)
        yield from self._database_gauges()
        yield from self._worker_metrics()

    def _pool_gauges(self, pools: list[Pool]) -> Iterator[Metric]:
        clients = GaugeMetricFamily(
            "ecluse_pool_clients",
            "Logged-in clients of the pool by state (active: has or may use a server, "
            "as SHOW POOLS cl_active; waiting: queued for a server).",
            labels=[*POOL_LABELS, "state"])
        servers = GaugeMetricFamily(
            "ecluse_pool_servers", "Server connections of the pool by state (SHOW POOLS sv_*).",
            labels=[*POOL_LABELS, "state"])
        maxwait = GaugeMetricFamily(
            "ecluse_pool_max_wait_seconds", "How long the oldest waiting client has waited.",
            labels=POOL_LABELS)
        size = GaugeMetricFamily(
            "ecluse_pool_size", "Configured pool_size of the pool.", labels=POOL_LABELS)
        paused = GaugeMetricFamily(
            "ecluse_pool_paused", "1 while the pool is paused (PAUSE, SUSPEND, KILL).",
            labels=POOL_LABELS)
        counts = self._client_counts()
        for pool in pools:
            labels = _pool_labels(pool)
            per_state = counts.get(id(pool), {})
            for state in CLIENT_STATES:
                clients.add_metric([*labels, state], per_state.get(state, 0))
            tested = sum(1 for s in pool.used if s.state.value == "tested")
            by_state = {"active": len(pool.active), "idle": len(pool.idle),
                        "used": len(pool.used) - tested, "tested": tested,
                        "login": len(pool.login) + pool.launching}
            for state in SERVER_STATES:
                servers.add_metric([*labels, state], by_state[state])
            maxwait.add_metric(labels, pool.waiters.oldest_wait())
            size.add_metric(labels, pool.settings.pool_size)
            paused.add_metric(labels, int(pool.paused))
        yield from (clients, servers, maxwait, size, paused)

    def _client_counts(self) -> dict[int, dict[str, int]]:
        """Clients per pool and state, counted as SHOW POOLS counts them."""
        out: dict[int, dict[str, int]] = {}
        for client in self.ctx.clients:
            pool = client.pool
            if pool is None:
                continue
            state = client.state.value
            if state == "waiting":
                key = "waiting"
            elif state in ("idle", "active"):
                key = "active"
            else:
                continue
            per = out.setdefault(id(pool), {})
            per[key] = per.get(key, 0) + 1
        return out

    def _pool_counters(self, pools: list[Pool]) -> Iterator[Metric]:
        for name, attr, divisor, doc in POOL_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=POOL_LABELS)
            for pool in pools:
                value = getattr(pool.stats, attr)
                family.add_metric(_pool_labels(pool), value / divisor if divisor != 1 else value)
            yield family
        errors = CounterMetricFamily(
            "ecluse_errors_total",
            "ErrorResponses sent to clients, by origin (server: relayed from PostgreSQL; "
            "pooler: raised by ecluse) and SQLSTATE class (its first two characters).",
            labels=[*POOL_LABELS, "origin", "class"])
        for pool in pools:
            for (origin, klass), n in sorted(pool.stats.errors.items()):
                errors.add_metric([*_pool_labels(pool), origin, klass], n)
        yield errors
        for name, attr, doc in POOL_HISTOGRAMS:
            family = HistogramMetricFamily(name, doc, labels=POOL_LABELS)
            for pool in pools:
                hist: Histogram = getattr(pool.stats, attr)
                family.add_metric(_pool_labels(pool), histogram_buckets(hist), hist.total)
            yield family

    def _database_gauges(self) -> Iterator[Metric]:
        registry = self.ctx.registry
        paused = GaugeMetricFamily(
            "ecluse_database_paused", "1 while the database is paused (PAUSE db or PAUSE).",
            labels=["database"])
        disabled = GaugeMetricFamily(
            "ecluse_database_disabled", "1 while the database refuses new logins (DISABLE).",
            labels=["database"])
        clients = GaugeMetricFamily(
            "ecluse_database_clients", "Logged-in clients of the database.", labels=["database"])
        servers = GaugeMetricFamily(
            "ecluse_database_servers", "Server connections of the database, all pools.",
            labels=["database"])
        for name in self.ctx.config.databases:
            paused.add_metric([name], int(registry.paused_all or name in registry.paused_dbs))
            disabled.add_metric([name], int(name in registry.disabled_dbs))
            clients.add_metric([name], self.ctx.db_clients[name])
            servers.add_metric([name], registry.db_server_count(name))
        yield from (paused, disabled, clients, servers)

    def _worker_metrics(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "ecluse_client_connections",
            "Client connections, logging in or logged in, console included.",
            value=len(visible_clients(self.ctx)))
        yield CounterMetricFamily(
            "ecluse_client_login_failures_total", "Client logins that failed.",
            value=self.ctx.login_failures)
        yield GaugeMetricFamily(
            "ecluse_pools", "Pools (each worker of a node has its own).",
            value=len(self.ctx.registry.pools))


# Node-wide (admin/node.py): the workers' samples are summed, except these
# families, whose every worker reports the same figure or where the largest is
# the node's: configured sizes, pause flags, the shared server count, the
# oldest waiter.
_NODE_MAX = frozenset({"ecluse_pool_size", "ecluse_pool_paused", "ecluse_database_paused",
                       "ecluse_database_disabled", "ecluse_database_servers",
                       "ecluse_pool_max_wait_seconds"})


def families_json(ctx: ClientContext) -> str:
    """This worker's ecluse families as JSON, for another worker to merge (admin/node.py)."""
    return json.dumps([
        {"name": m.name, "doc": m.documentation, "type": m.type,
         "samples": [[s.name, s.labels, s.value] for s in m.samples]}
        for m in EcluseCollector(ctx).collect()])


class NodeCollector(EcluseCollector):
    """The node's families: this worker's merged with ``remote`` (set before each scrape).

    Summing is exact for counters and histograms; a counter of the node
    never goes backwards while its workers live, since each worker's does
    not and node.py keeps using a worker's last answer if it is slow.
    """

    def __init__(self, ctx: ClientContext):
        super().__init__(ctx)
        self.remote: list[list[dict[str, Any]]] = []

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        values: dict[str, dict[tuple, float]] = {}
        for family in super().collect():
            merged[family.name] = Metric(family.name, family.documentation, family.type)
            values[family.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value
                                   for s in family.samples}
        for families in self.remote:
            for family in families:
                name = family["name"]
                if name not in merged:
                    merged[name] = Metric(name, family["doc"], family["type"])
                    values[name] = {}
                into = values[name]
                pick = max if name in _NODE_MAX else _add
                for sample, labels, value in family["samples"]:
                    key = (sample, tuple(sorted(labels.items())))
                    into[key] = pick(into[key], value) if key in into else value
        for name, metric in merged.items():
            for (sample, labels), value in values[name].items():
                metric.add_sample(sample, dict(labels), value)
            yield metric


def _add(a: float, b: float) -> float:
    return a + b


def metrics_registry(ctx: ClientContext, collector: Collector | None = None
                     ) -> CollectorRegistry:
    """A registry with ecluse's collector and the process and platform collectors.

    A registry of its own rather than prometheus-client's global one, so that
    nothing else in the process (or a second worker in tests) adds to it.
    """
    registry = CollectorRegistry(auto_describe=False)
    if collector is None:
        collector = NodeCollector(ctx) if ctx.node is not None else EcluseCollector(ctx)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry

