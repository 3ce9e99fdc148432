"""The admin console, metrics and HTTP API of a two-worker ecluse answer for the node."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading

import asyncpg
import psycopg
import pytest

from integration.test_admin_console import ADMIN_SETTINGS, admin_conn, wait_for
from integration.test_metrics import POOL, scrape, series, start_with_metrics
from integration.test_workers import children

NODE = {**ADMIN_SETTINGS, "workers": 2, "default_pool_size": 10}
SLOTS = 4  # two workers, two generations' worth of control slots (supervisor.py)


def rows(console: psycopg.Connection, command: str) -> list[dict]:
    cur = console.execute(command)
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def login_pids(ec) -> set[int]:
    return {int(m) for m in re.findall(r"^\S+ \S+ (\d+) INFO client .* login ok", ec.log(),
                                       re.MULTILINE)}


def spread_clients(ec, at_least: int = 6) -> list[psycopg.Connection]:
    """Connect clients until both workers have some (SO_REUSEPORT spreads them)."""
    conns = []
    while len(conns) < 60:
        conn = psycopg.connect(ec.dsn(application_name=f"c{len(conns)}"), autocommit=True)
        conn.execute("select 1")
        conns.append(conn)
        if len(conns) >= at_least and len(login_pids(ec)) == 2:
            return conns
    pytest.fail("the clients all landed on one worker")


def client_ids(console: psycopg.Connection) -> dict[str, int]:
    """application_name → SHOW CLIENTS id, for the pool's clients."""
    return {r["application_name"]: r["id"] for r in rows(console, "SHOW CLIENTS")
            if r["database"] == "ecluse_test"}


def console_slot(console: psycopg.Connection) -> int:
    me = [r["id"] for r in rows(console, "SHOW CLIENTS") if r["database"] == "pgbouncer"]
    assert len(me) == 1, me  # the other workers' links are not listed
    return (me[0] - 1) % SLOTS


@pytest.fixture
def node(ecluse_factory):
    ec = ecluse_factory(NODE)
    conns = spread_clients(ec)
    yield ec, conns
    for conn in conns:
        conn.close()


def test_show_pools_and_clients_cover_both_workers(node):
    ec, conns = node
    with admin_conn(ec) as console:
        pool = next(r for r in rows(console, "SHOW POOLS") if r["database"] == "ecluse_test")
        assert pool["cl_active"] == len(conns)
        clients = [r for r in rows(console, "SHOW CLIENTS") if r["database"] == "ecluse_test"]
        ids = [r["id"] for r in clients]
        assert len(ids) == len(conns) and len(set(ids)) == len(ids)
        assert {r["application_name"] for r in clients} == {f"c{i}" for i in range(len(conns))}
        assert len({(i - 1) % SLOTS for i in ids}) == 2  # numbered by two workers
        databases = {r["name"]: r for r in rows(console, "SHOW DATABASES")}
        assert databases["ecluse_test"]["current_client_connections"] == len(conns)
        lists = {r["list"]: r["items"] for r in rows(console, "SHOW LISTS")}
        assert lists["used_clients"] == len(conns) + 1  # and this console
        servers = rows(console, "SHOW SERVERS")
        assert len({r["id"] for r in servers}) == len(servers)


def test_kill_client_on_the_other_worker(node):
    ec, conns = node
    with admin_conn(ec) as console:
        mine = console_slot(console)
        ids = client_ids(console)
        name, victim = next((n, i) for n, i in ids.items() if (i - 1) % SLOTS != mine)
        console.execute(f"KILL_CLIENT {victim}")
        target = conns[int(name[1:])]
        with pytest.raises(psycopg.OperationalError):
            target.execute("select 1")
        for i, conn in enumerate(conns):
            if conn is not target:
                assert conn.execute("select %s", (i,)).fetchone() == (i,)
        assert victim not in client_ids(console).values()
        with pytest.raises(psycopg.Error, match="client not found"):
            console.execute(f"KILL_CLIENT {victim}")


def test_pause_and_resume_hold_both_workers(node):
    ec, conns = node
    with admin_conn(ec) as console:
        ids = client_ids(console)
        by_slot: dict[int, psycopg.Connection] = {}
        for name, cid in ids.items():
            by_slot.setdefault((cid - 1) % SLOTS, conns[int(name[1:])])
        assert len(by_slot) == 2
        console.execute("PAUSE")
        assert {r["value"] for r in rows(console, "SHOW STATE") if r["key"] == "paused"} \
            == {"yes"}
        done: list[int] = []
        threads = [threading.Thread(target=lambda c=c, n=n: done.append(
            c.execute("select %s", (n,)).fetchone()[0])) for n, c in by_slot.items()]
        for t in threads:
            t.start()

        def waiting() -> int:
            return next(r["cl_waiting"] for r in rows(console, "SHOW POOLS")
                        if r["database"] == "ecluse_test")
        assert wait_for(lambda: waiting() == 2)  # one held on each worker
        assert done == []
        console.execute("RESUME")
        for t in threads:
            t.join(30)
        assert sorted(done) == sorted(by_slot)


def test_reload_reaches_both_workers(node):
    ec, _conns = node
    with admin_conn(ec) as console:
        console.execute("RELOAD")
        console.execute("SET log_stats = 0")
    pids = {int(m) for m in re.findall(r"^\S+ \S+ (\d+) INFO .*RELOAD",
                                       ec.log(), re.MULTILINE)}
    assert len(pids) >= 2, ec.log()[-3000:]
    sets = {int(m) for m in re.findall(r"^\S+ \S+ (\d+) INFO .*SET log_stats",
                                       ec.log(), re.MULTILINE)}
    assert len(sets) == 2


def test_stats_totals_sum_both_workers(node):
    ec, conns = node
    with admin_conn(ec) as console:
        before = next(r for r in rows(console, "SHOW STATS_TOTALS")
                      if r["database"] == "ecluse_test")
        for conn in conns:
            for _ in range(3):
                conn.execute("select 1")
        after = next(r for r in rows(console, "SHOW STATS_TOTALS")
                     if r["database"] == "ecluse_test")
        assert after["query_count"] - before["query_count"] == 3 * len(conns)
        totals = {r["name"]: r["value"] for r in rows(console, "SHOW TOTALS")}
        assert totals["total_query_count"] >= after["query_count"]


def test_metrics_sum_both_workers_and_never_decrease(ecluse_factory):
    ec = start_with_metrics(ecluse_factory, **NODE)
    conns = spread_clients(ec)
    try:
        first = scrape(ec)
        base = series(first, "ecluse_queries_total", **POOL)
        for conn in conns:
            for _ in range(5):
                conn.execute("select 1")
        last = base
        for _ in range(8):  # each scrape lands on either worker
            samples = scrape(ec)
            value = series(samples, "ecluse_queries_total", **POOL)
            assert value >= last
            last = value
            assert series(samples, "ecluse_pool_clients", state="active", **POOL) == len(conns)
        assert last - base >= 5 * len(conns)
        with admin_conn(ec) as console:
            totals = next(r for r in rows(console, "SHOW STATS_TOTALS")
                          if r["database"] == "ecluse_test")
        assert totals["query_count"] == last, (totals, base, last)
    finally:
        for conn in conns:
            conn.close()


def test_http_api_lists_and_acts_on_the_node(ecluse_factory):
    import json
    import urllib.request

    ec = start_with_metrics(ecluse_factory, **NODE, api_token="t0ken")
    conns = spread_clients(ec)

    def call(path: str, method: str = "GET") -> object:
        req = urllib.request.Request(ec.metrics_url + path, method=method,
                                     headers={"Authorization": "Bearer t0ken"})
        with urllib.request.urlopen(req, timeout=20) as resp:
            return json.loads(resp.read())
    try:
        for _ in range(4):
            clients = [c for c in call("/clients") if c["database"] == "ecluse_test"]
            assert len(clients) == len(conns)
            pool = next(p for p in call("/pools") if p["database"] == "ecluse_test")
            assert pool["cl_active"] == len(conns)
        call("/pause", "POST")
        with admin_conn(ec) as console:
            state = {r["key"]: r["value"] for r in rows(console, "SHOW STATE")}
            assert state["paused"] == "yes"
        call("/resume", "POST")
        for conn in conns:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        for conn in conns:
            conn.close()


def test_extended_protocol_console_with_two_workers(node):
    ec, conns = node
    with admin_conn(ec) as console:
        cur = console.execute("SHOW POOLS", prepare=True)
        names = [d.name for d in cur.description]
        pool = next(dict(zip(names, r, strict=True)) for r in cur.fetchall()
                    if r[0] == "ecluse_test")
        assert pool["cl_active"] == len(conns)

    async def run() -> list:
        conn = await asyncpg.connect(host=ec.host, port=ec.port, user="stats",
                                     database="pgbouncer", ssl=False)
        try:
            return await conn.fetch("SHOW CLIENTS")
        finally:
            await conn.close()

    clients = [r for r in asyncio.run(run()) if r["database"] == "ecluse_test"]
    assert len(clients) == len(conns)
    assert len({r["id"] for r in clients}) == len(conns)


def test_a_stopped_worker_is_left_out_with_a_notice(node):
    ec, conns = node
    workers = sorted(children(ec.proc.pid))
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGSTOP)
    try:
        console = None
        for _ in range(30):  # a connection the stopped worker got never logs in
            try:
                console = psycopg.connect(ec.dsn(user="admin", dbname="pgbouncer",
                                                 connect_timeout="2"), autocommit=True)
                break
            except psycopg.OperationalError:
                continue
        assert console is not None
        notices: list[str] = []
        console.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        with console:
            pool = next(r for r in rows(console, "SHOW POOLS") if r["database"] == "ecluse_test")
            assert any("did not answer" in n for n in notices), notices
            # Only the answering worker's clients are counted.
            assert 0 < pool["cl_active"] < len(conns)
    finally:
        os.kill(workers[0], signal.SIGCONT)


def test_shutdown_stops_the_node_and_restarts_nobody(node):
    ec, _conns = node
    workers = children(ec.proc.pid)
    console = admin_conn(ec)
    with pytest.raises(psycopg.OperationalError):
        console.execute("SHUTDOWN")
    assert ec.proc.wait(30) == 0
    assert "starting a new one" not in ec.log()
    assert all(not os.path.exists(f"/proc/{pid}") for pid in workers)


def test_shutdown_wait_for_clients_waits_on_both_workers(node):
    ec, conns = node
    with admin_conn(ec) as console:
        console.execute("SHUTDOWN WAIT_FOR_CLIENTS")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(ec.dsn(connect_timeout="3"))
    for conn in conns:  # clients of both workers are still served
        assert conn.execute("select 1").fetchone() == (1,)
    assert ec.proc.poll() is None
    for conn in conns:
        conn.close()
    assert ec.proc.wait(30) == 0
    assert "starting a new one" not in ec.log()


def test_suspend_ends_everywhere_when_the_console_leaves(node):
    ec, conns = node
    with admin_conn(ec) as console:
        mine = console_slot(console)
        other = next(conns[int(n[1:])] for n, i in client_ids(console).items()
                     if (i - 1) % SLOTS != mine)
        console.execute("SUSPEND")
        state = {r["key"]: r["value"] for r in rows(console, "SHOW STATE")}
        assert state["suspended"] == "yes"
        # The other worker stays suspended after the link that told it has gone.
        done = threading.Event()
        thread = threading.Thread(target=lambda: (other.execute("select 1"), done.set()))
        thread.start()
        assert not done.wait(1.0)
    thread.join(30)
    assert done.is_set()
    # The console left: every worker resumes, whichever held the console.
    for i, conn in enumerate(conns):
        assert conn.execute("select %s", (i,)).fetchone() == (i,)
