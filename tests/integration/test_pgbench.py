"""pgbench through ecluse with more clients than servers."""

from __future__ import annotations

import re
import subprocess

import pytest


@pytest.fixture(scope="module")
def pgbench_tables(pg):
    out = subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", pg.host, "-p", str(pg.port),
                          "-U", "postgres", "ecluse_test"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


def run_pgbench(ec, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["pgbench", "-h", ec.host, "-p", str(ec.port), "-U", "postgres", *args, "ecluse_test"],
        capture_output=True, text=True, timeout=180,
    )


def processed_without_failures(out: subprocess.CompletedProcess) -> int:
    """Check that a pgbench run reported no failed transaction (pgbench 15 prints
    the line only when there were retries or failures); return how many it
    processed."""
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    assert failed is None or failed.group(1) == "0", out.stdout
    return int(re.search(r"number of transactions actually processed: (\d+)",
                         out.stdout).group(1))


@pytest.mark.parametrize("mode", ["simple", "extended"])
@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
def test_pgbench_select_only_more_clients_than_servers(ecluse_factory, pgbench_tables, mode,
                                                       pool_mode):
    ec = ecluse_factory({"pool_mode": pool_mode, "default_pool_size": 3,
                         "max_client_conn": 100})
    clients = 20 if pool_mode == "transaction" else 3
    out = run_pgbench(ec, "-S", "-n", "-M", mode, "-c", str(clients), "-j", "2", "-t", "100")
    assert out.returncode == 0, out.stderr + out.stdout
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", out.stdout)
    assert processed is not None, out.stdout
    assert processed.group(1) == processed.group(2) == str(clients * 100)
    assert "number of failed transactions: 0" in out.stdout


def test_pgbench_tpcb_writes_in_transaction_mode(ecluse_factory, pgbench_tables, pg):
    before = int(pg.psql("select sum(abalance) from pgbench_accounts", dbname="ecluse_test") or 0)
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 2})
    out = run_pgbench(ec, "-n", "-c", "8", "-j", "2", "-t", "25")
    assert out.returncode == 0, out.stderr + out.stdout
    # TPC-B keeps branches, tellers and accounts balanced: every write landed.
    sums = pg.psql("select (select sum(bbalance) from pgbench_branches) = "
                   "(select sum(abalance) from pgbench_accounts)", dbname="ecluse_test")
    assert sums == "t"
    history = int(pg.psql("select count(*) from pgbench_history", dbname="ecluse_test"))
    assert history >= 200
    del before


def test_pgbench_connection_churn(ecluse_factory, pgbench_tables):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 2})
    out = run_pgbench(ec, "-S", "-n", "-C", "-c", "4", "-j", "2", "-t", "50")
    assert out.returncode == 0, out.stderr + out.stdout
    assert "number of transactions actually processed: 200/200" in out.stdout
