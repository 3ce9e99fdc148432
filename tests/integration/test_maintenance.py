"""Maintenance without client errors: PAUSE, restart PostgreSQL, RESUME under pgbench."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from ecluse.devcluster import PgCluster, find_free_port
from integration.test_admin_console import ADMIN_SETTINGS, admin_conn
from integration.test_pgbench import processed_without_failures


@pytest.fixture
def own_pg(tmp_path_factory):
    """A cluster of this test's own: restarting the session's would hurt other tests."""
    cluster = PgCluster(str(tmp_path_factory.mktemp("restartpg") / "data"),
                        port=find_free_port())
    cluster.init()
    cluster.start()
    try:
        cluster.psql("CREATE DATABASE bench;")
        yield cluster
    finally:
        cluster.stop()


def test_pause_restart_postgresql_resume_under_pgbench(ecluse_factory, own_pg):
    """PgBouncer's runbook: PAUSE waits for transactions, PostgreSQL restarts (pg_ctl
    restart), RESUME hands the queued queries to new servers: 20 pgbench clients see
    zero failed transactions."""
    ec = ecluse_factory({**ADMIN_SETTINGS, "default_pool_size": 5},
                        databases={"bench": f"host={own_pg.host} port={own_pg.port} dbname=bench"})
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    target = ["-h", ec.host, "-p", str(ec.port), "-U", "postgres", "bench"]
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", *target], check=True,
                   capture_output=True, env=env, timeout=120)
    result: dict[str, subprocess.CompletedProcess] = {}

    def run_pgbench() -> None:
        result["run"] = subprocess.run(
            ["pgbench", "-n", "-c", "20", "-j", "2", "-T", "15", *target],
            capture_output=True, text=True, env=env, timeout=180)

    bench = threading.Thread(target=run_pgbench)
    bench.start()
    try:
        time.sleep(3)  # let the 20 clients get going before the maintenance
        with admin_conn(ec) as console:
            started = own_pg.psql("select pg_postmaster_start_time()")
            console.execute("PAUSE bench", prepare=False)  # returns once transactions are done
            own_pg.restart()
            assert own_pg.psql("select pg_postmaster_start_time()") != started
            console.execute("RESUME bench", prepare=False)
    finally:
        bench.join()
    out = result["run"]
    assert out.returncode == 0, out.stdout + out.stderr
    processed = processed_without_failures(out)
    assert processed > 100
    # The balances moved only by whole transactions: every pgbench transaction adds
    # the same delta to one account, one teller and one branch.
    sums = own_pg.psql("select (select sum(abalance) from pgbench_accounts) - "
                       "(select sum(bbalance) from pgbench_branches)", dbname="bench")
    assert sums.strip() == "0"
