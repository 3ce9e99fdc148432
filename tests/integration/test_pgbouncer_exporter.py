"""A real consumer of PgBouncer's console, prometheus-pgbouncer-exporter, reading ecluse.

The exporter (PyPI prometheus-pgbouncer-exporter 2.1.2, installed with
``pip install --no-deps``: its own pins, psycopg2==2.8.5 and an old
prometheus_client, do not build or fit on Python 3.11; the run-time
dependencies it needs are in pyproject.toml's test extra) connects with
psycopg2, runs SHOW STATS, SHOW POOLS, SHOW DATABASES and SHOW CONFIG, and
publishes what it understood on an HTTP endpoint. If ecluse's
console differs from PgBouncer's in a way this exporter notices, its
pgbouncer_up gauge is 0 or the pool metrics are missing.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# Installed by scripts/bootstrap.sh (pip install --no-deps, see there): a missing
# exporter is a broken set-up, reported as a failure, not a skip.
import prometheus_pgbouncer_exporter  # noqa: F401
import psycopg
from fixtures.fix_ecluse import free_port

ADMIN_SETTINGS = {"admin_users": "admin", "stats_users": "stats", "auth_type": "trust"}
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? "
                     r"(?P<value>\S+)$")


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Parse Prometheus text exposition into (name, labels, value) samples."""
    out = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
        out.append((match["name"], labels, float(match["value"])))
    return out


def start_exporter(tmp: Path, dsn: str) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    config = tmp / "exporter.yml"
    config.write_text(
        "exporter_host: 127.0.0.1\n"
        f"exporter_port: {port}\n"
        "pgbouncers:\n"
        f"  - dsn: {dsn}\n"
        "    connect_timeout: 5\n"
        "    extra_labels:\n"
        "      pool_id: ecluse\n")
    log = tmp / "exporter.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-W", "ignore", "-m", "prometheus_pgbouncer_exporter.cli",
             "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
    return proc, port, log


def scrape(port: int, log: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"exporter never answered:\n{log.read_text()}") from None
            time.sleep(0.2)


def test_exporter_reads_ecluse_console(ecluse_factory, tmp_path):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with psycopg.connect(ec.dsn(), autocommit=True) as client:
        for i in range(20):
            client.execute("select %s::int", (i,))
        dsn = f"postgresql://stats:@{ec.host}:{ec.port}/pgbouncer?sslmode=disable"
        proc, port, log = start_exporter(tmp_path, dsn)
        try:
            samples = parse_metrics(scrape(port, log))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def value(name: str, **labels: str) -> float:
        found = [v for n, lab, v in samples
                 if n == name and all(lab.get(k) == want for k, want in labels.items())]
        assert found, f"{name} {labels} not exported; log:\n{log.read_text()}"
        return found[0]

    # Every SHOW it ran succeeded and parsed (it sets pgbouncer_up to 0 otherwise).
    assert value("pgbouncer_up", pool_id="ecluse") == 1.0, log.read_text()
    # SHOW POOLS: gauges per (database, user), with the client still connected.
    assert value("pgbouncer_pools_client_active_connections", database="ecluse_test",
                 user="postgres") == 1.0
    assert value("pgbouncer_pools_server_idle_connections", database="ecluse_test",
                 user="postgres") + value("pgbouncer_pools_server_used_connections",
                                          database="ecluse_test", user="postgres") >= 1.0
    assert value("pgbouncer_pools_client_maxwait_seconds", database="ecluse_test") == 0.0
    # SHOW STATS: counters from real traffic.
    assert value("pgbouncer_stats_queries_total", database="ecluse_test") >= 20
    assert value("pgbouncer_stats_transactions_total", database="ecluse_test") >= 20
    assert value("pgbouncer_stats_received_bytes_total", database="ecluse_test") > 0
    assert value("pgbouncer_stats_sent_bytes_total", database="ecluse_test") > 0
    # SHOW DATABASES and SHOW CONFIG.
    assert value("pgbouncer_databases_database_pool_size", database="ecluse_test") >= 1
    assert value("pgbouncer_config_max_client_conn", pool_id="ecluse") >= 1
