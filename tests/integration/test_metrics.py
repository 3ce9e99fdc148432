"""Prometheus /metrics of a real ecluse under real psycopg load."""

from __future__ import annotations

import json
import math
import re
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
from fixtures.fix_ecluse import free_port
from prometheus_client.parser import text_string_to_metric_families

from integration.test_http_api import wait_listening

Samples = dict[str, dict[tuple, float]]


def start_with_metrics(ecluse_factory, **settings):
    while True:
        port = free_port()
        ec = ecluse_factory({"metrics_listen": f"127.0.0.1:{port}", **settings}, start=False)
        # free_port() may hand out the same port twice in a row.
        if ec.port != port:
            break
    ec.start()
    wait_listening(port)
    ec.metrics_url = f"http://127.0.0.1:{port}"
    return ec


def scrape(ec) -> Samples:
    with urllib.request.urlopen(ec.metrics_url + "/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def series(samples: Samples, name: str, **labels: str) -> float:
    """The value of the one sample of ``name`` whose labels include ``labels``."""
    found = [v for k, v in samples.get(name, {}).items() if labels.items() <= dict(k).items()]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


POOL = {"database": "ecluse_test", "user": "postgres"}


class Load:
    """Threads running short transactions through ecluse until stopped."""

    def __init__(self, ec, threads: int = 4):
        self.ec = ec
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.done = 0
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        try:
            with psycopg.connect(self.ec.dsn(), autocommit=True) as conn:
                while not self.stop.is_set():
                    conn.execute("SELECT pg_sleep(0.002), repeat('x', 100)").fetchall()
                    self.done += 1
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not self.errors, self.errors


def test_counters_increase_during_load(ecluse_factory):
    ec = start_with_metrics(ecluse_factory, default_pool_size=2)
    with Load(ec, threads=4) as load:
        assert wait_for(lambda: load.done >= 20)
        first = scrape(ec)
        seen = load.done
        assert wait_for(lambda: load.done >= seen + 20)
        second = scrape(ec)
    for name in ("ecluse_transactions_total", "ecluse_queries_total",
                 "ecluse_received_bytes_total", "ecluse_sent_bytes_total",
                 "ecluse_query_time_seconds_total", "ecluse_query_duration_seconds_count",
                 "ecluse_server_assignments_total"):
        assert series(second, name, **POOL) > series(first, name, **POOL), name
    # Every counter of the pool is at least what it was.
    for name, values in first.items():
        if name.startswith("ecluse_") and name.endswith(("_total", "_count", "_sum", "_bucket")):
            for key, value in values.items():
                assert second[name][key] >= value, (name, key)
    assert series(second, "ecluse_pool_size", **POOL) == 2
    # Four clients, two servers: the busy ones never exceed the pool.
    assert series(second, "ecluse_pool_servers", state="active", **POOL) <= 2


def test_histograms_are_cumulative_and_match_count(ecluse_factory):
    ec = start_with_metrics(ecluse_factory, default_pool_size=1)
    with Load(ec, threads=3) as load:
        assert wait_for(lambda: load.done >= 30)
    samples = scrape(ec)
    for hist in ("ecluse_query_duration_seconds", "ecluse_wait_duration_seconds"):
        buckets = sorted(
            (float(dict(k)["le"]), v) for k, v in samples[hist + "_bucket"].items()
            if POOL.items() <= dict(k).items())
        values = [v for _, v in buckets]
        assert buckets[-1][0] == math.inf
        assert values == sorted(values), hist  # cumulative
        count = series(samples, hist + "_count", **POOL)
        assert values[-1] == count
        assert series(samples, hist + "_sum", **POOL) >= 0
    # Three clients on one server: some waited, every query was timed.
    assert series(samples, "ecluse_wait_duration_seconds_count", **POOL) > 0
    assert series(samples, "ecluse_query_duration_seconds_count", **POOL) >= 30


def test_gauges_show_active_and_waiting_clients(ecluse_factory):
    ec = start_with_metrics(ecluse_factory, default_pool_size=1)
    holder = psycopg.connect(ec.dsn())
    holder.execute("SELECT 1")  # opens a transaction: holds the only server
    waiter_done = threading.Event()

    def wait_for_server() -> None:
        with psycopg.connect(ec.dsn(), autocommit=True) as conn:
            conn.execute("SELECT 1")
        waiter_done.set()

    thread = threading.Thread(target=wait_for_server)
    thread.start()
    try:
        assert wait_for(lambda: series(scrape(ec), "ecluse_pool_clients", state="waiting",
                                       **POOL) == 1)
        samples = scrape(ec)
        assert series(samples, "ecluse_pool_clients", state="active", **POOL) == 1
        assert series(samples, "ecluse_pool_servers", state="active", **POOL) == 1
        assert series(samples, "ecluse_pool_servers", state="idle", **POOL) == 0
        assert series(samples, "ecluse_pool_max_wait_seconds", **POOL) >= 0
        assert not waiter_done.is_set()
    finally:
        holder.commit()
        thread.join(30)
        holder.close()
    assert waiter_done.is_set()
    samples = scrape(ec)
    assert series(samples, "ecluse_pool_clients", state="waiting", **POOL) == 0
    assert series(samples, "ecluse_pool_servers", state="idle", **POOL) == 1


def test_errors_counted_by_class(ecluse_factory):
    ec = start_with_metrics(ecluse_factory)
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        before = scrape(ec).get("ecluse_errors_total", {})
        assert not any(dict(k).get("class") == "22" for k in before)
        for _ in range(2):
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM no_such_table_here")
    samples = scrape(ec)
    assert series(samples, "ecluse_errors_total", origin="server", **{"class": "22"},
                  **POOL) == 2
    assert series(samples, "ecluse_errors_total", origin="server", **{"class": "42"},
                  **POOL) == 1


def test_process_and_worker_metrics(ecluse_factory):
    ec = start_with_metrics(ecluse_factory)
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        samples = scrape(ec)
        assert samples["ecluse_client_connections"][()] >= 1
        assert series(samples, "ecluse_database_clients", database="ecluse_test") == 1
    assert samples["process_resident_memory_bytes"][()] > 0
    assert samples["process_cpu_seconds_total"][()] > 0
    assert "python_info" in samples


def test_metrics_listen_unset_serves_nothing(ecluse_factory):
    port = free_port()
    ec = ecluse_factory()
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    assert "HTTP API" not in ec.log()


DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "ecluse.json"


def dashboard_queries(node) -> list[str]:
    """Every PromQL string of a Grafana dashboard: panel targets and variable queries."""
    out: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            # "query" is also a data source type name ("prometheus"): only PromQL has "(".
            if key in ("expr", "definition", "query") and isinstance(value, str) \
                    and "(" in value:
                out.append(value)
            else:
                out += dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            out += dashboard_queries(item)
    return out


def test_grafana_dashboard_uses_only_served_metrics(ecluse_factory):
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 10
    used = {name for q in queries for name in re.findall(r"\b(?:ecluse|process)_\w+", q)}
    ec = start_with_metrics(ecluse_factory, default_pool_size=1)
    with Load(ec, threads=2) as load:
        assert wait_for(lambda: load.done >= 10)
    with psycopg.connect(ec.dsn(), autocommit=True) as conn, \
            pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("SELECT 1/0")  # so that ecluse_errors_total has a sample
    served = set(scrape(ec))
    assert used - served == set()
    # What the dashboard is for (issue 5): each of these is charted.
    text = "\n".join(queries)
    for needle in ("rate(ecluse_transactions_total", "rate(ecluse_queries_total",
                   "ecluse_pool_clients", "ecluse_pool_servers",
                   "histogram_quantile(0.5, sum by (le, database) "
                   "(rate(ecluse_wait_duration_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le, database) "
                   "(rate(ecluse_wait_duration_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le, database) "
                   "(rate(ecluse_query_duration_seconds_bucket",
                   "ecluse_received_bytes_total", "ecluse_sent_bytes_total",
                   "by (origin, class) (rate(ecluse_errors_total"):
        assert needle in text, needle


def test_one_listener_answers_for_every_worker(ecluse_factory):
    ec = start_with_metrics(ecluse_factory, workers=2)
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        # Each scrape lands on either worker (SO_REUSEPORT); each counts the one
        # client once, whichever worker holds it.
        for _ in range(6):
            with urllib.request.urlopen(ec.metrics_url + "/health", timeout=10) as resp:
                assert resp.status == 200
            assert series(scrape(ec), "ecluse_database_clients", database="ecluse_test") == 1
