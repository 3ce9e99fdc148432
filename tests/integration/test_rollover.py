"""Rolling restart (SIGUSR2): the new generation is the code and config installed now.

A roll-over starts its workers by exec (workerstart.py), so a new ecluse version
or a setting a reload cannot change reaches a running node without a client
noticing; a new generation that cannot start leaves the old one serving; and the
node-wide server limit holds across the two generations while the old drains.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
from fuzz.test_live_fuzz import GoodClient
from wire import msg, read_until_ready, split_messages, startup_packet

import ecluse
from integration.test_admin_console import wait_for
from integration.test_pgbench import processed_without_failures
from integration.test_sharding import DBS as SHARD_DBS
from integration.test_sharding import shard_dbs  # noqa: F401 - a fixture
from integration.test_workers import children, pgbench_node

DB = "ecluse_rollover"


def console_value(ec, command: str, column: str, key: str | None = None) -> str:
    with psycopg.connect(ec.dsn(user="admin", dbname="pgbouncer"), autocommit=True) as console:
        # Extended protocol (the console speaks it): disable_pqexec refuses simple queries.
        cur = console.execute(command, prepare=True)
        names = [d.name for d in cur.description]
        for row in cur.fetchall():
            record = dict(zip(names, row, strict=True))
            if key is None or record["key"] == key:
                return str(record[column])
    raise AssertionError(f"{command}: no row for {key}")


def edit_config(ec, **settings: str) -> None:
    """Set [pgbouncer] keys in the running node's config file (the section is last)."""
    lines = ec.config_path.read_text().splitlines()
    for key, value in settings.items():
        lines = [line for line in lines if not line.startswith(f"{key} =")]
        lines.append(f"{key} = {value}")
    ec.config_path.write_text("\n".join(lines) + "\n")


def start_from_copy(ecluse_factory, tmp_path, settings):
    """Start a node from a copy of the package, which the test may then 'upgrade'."""
    src = tmp_path / "src"
    shutil.copytree(Path(ecluse.__file__).parent, src / "ecluse",
                    ignore=shutil.ignore_patterns("__pycache__"))
    ec = ecluse_factory(settings, start=False)
    ec.start(env=dict(os.environ, PYTHONPATH=str(src)))
    assert wait_for(lambda: len(children(ec.proc.pid)) == 2, timeout=30)
    return ec, src / "ecluse"


def test_roll_over_runs_the_ecluse_and_config_installed_now(ecluse_factory, tmp_path):
    """The node runs from a copy of the package; the copy is 'upgraded' (its version
    string) and the config gets a restart-only setting, then SIGUSR2: the console of
    the new generation shows both, and settings that shaped the sockets stay."""
    ec, package = start_from_copy(ecluse_factory, tmp_path,
                                  {"workers": 2, "admin_users": "admin", "drain_rate": 1000})
    old = children(ec.proc.pid)
    assert console_value(ec, "SHOW VERSION", "version") == f"ecluse {ecluse.__version__}"
    assert console_value(ec, "SHOW CONFIG", "value", "disable_pqexec") == "0"

    init = package / "__init__.py"
    init.write_text(init.read_text().replace(
        f'__version__ = "{ecluse.__version__}"', '__version__ = "99.0.0-rolled"'))
    edit_config(ec, disable_pqexec="1", listen_port=str(ec.port + 1))
    os.kill(ec.proc.pid, signal.SIGUSR2)
    assert wait_for(lambda: ec.log().count("drained and exited") == 2, timeout=30)

    new = children(ec.proc.pid)
    assert len(new) == 2 and not new & old
    assert console_value(ec, "SHOW VERSION", "version") == "ecluse 99.0.0-rolled"
    # A reload keeps disable_pqexec; a new generation takes it from the file.
    assert console_value(ec, "SHOW CONFIG", "value", "disable_pqexec") == "1"
    # The node's sockets did not move: still served on the port it started with.
    assert console_value(ec, "SHOW CONFIG", "value", "listen_port") == str(ec.port)
    assert "listen_port is kept at its value from the node's start" in ec.log()
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        assert conn.execute("select %s", (1,)).fetchone() == (1,)
    with psycopg.connect(ec.dsn(), autocommit=True) as conn, \
            pytest.raises(psycopg.errors.ProtocolViolation, match="PQexec disallowed"):
        conn.execute("select 1")  # psycopg sends a query without parameters as PQexec


def test_roll_over_that_cannot_start_leaves_the_old_generation_serving(ecluse_factory):
    ec = ecluse_factory({"workers": 2, "drain_rate": 1000})
    assert wait_for(lambda: len(children(ec.proc.pid)) == 2, timeout=30)
    old = children(ec.proc.pid)
    with psycopg.connect(ec.dsn(), autocommit=True) as client:
        assert client.execute("select 1").fetchone() == (1,)
        good = ec.config_path.read_text()
        edit_config(ec, default_pool_size="lots")
        os.kill(ec.proc.pid, signal.SIGUSR2)
        assert wait_for(lambda: "abandoned" in ec.log(), timeout=40)
        log = ec.log()
        assert "generation 0 keeps serving" in log
        assert "default_pool_size" in log.split("abandoned", 1)[1].splitlines()[0]
        assert wait_for(lambda: children(ec.proc.pid) == old, timeout=30)
        # The client of the old generation never noticed; new clients are served.
        assert client.execute("select 2").fetchone() == (2,)
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        assert conn.execute("select 3").fetchone() == (3,)

    ec.config_path.write_text(good)
    os.kill(ec.proc.pid, signal.SIGUSR2)  # the next roll-over is not blocked
    assert wait_for(lambda: ec.log().count("drained and exited") == 2, timeout=30)
    new = children(ec.proc.pid)
    assert len(new) == 2 and not new & old


def test_roll_over_to_code_that_does_not_import_is_abandoned(ecluse_factory, tmp_path):
    ec, package = start_from_copy(ecluse_factory, tmp_path, {"workers": 2})
    old = children(ec.proc.pid)
    with (package / "worker.py").open("a") as f:
        f.write("\ndef broken(:\n")
    os.kill(ec.proc.pid, signal.SIGUSR2)
    assert wait_for(lambda: "abandoned" in ec.log(), timeout=40)
    reason = ec.log().split("abandoned", 1)[1].splitlines()[0]
    assert "could not start: SyntaxError" in reason, reason
    assert wait_for(lambda: children(ec.proc.pid) == old, timeout=30)
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.fixture
def rollover_db(pg):
    pg.psql(f"DROP DATABASE IF EXISTS {DB}")
    pg.psql(f"CREATE DATABASE {DB}")
    yield pg
    pg.psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


def backends(pg) -> int:
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        return conn.execute(
            "select count(*) from pg_stat_activity where datname = %s and "
            "backend_type = 'client backend'", (DB,)).fetchone()[0]


def test_pool_limit_holds_across_the_two_generations(ecluse_factory, rollover_db):
    """Two transactions of the old generation hold the pool's two servers across the
    roll-over: a client of the new generation waits for one of them to end, and the
    database never sees a third server (the exec'd workers count in the same table)."""
    pg = rollover_db
    ec = ecluse_factory({"workers": 2, "default_pool_size": 2, "drain_rate": 1000,
                         "shutdown_timeout": 30},
                        {DB: f"host={pg.host} port={pg.port} dbname={DB}"})
    assert wait_for(lambda: len(children(ec.proc.pid)) == 2, timeout=30)
    holders = [psycopg.connect(ec.dsn(dbname=DB)) for _ in range(2)]
    for conn in holders:
        conn.execute("select 1")  # a transaction left open: its server stays
    assert backends(pg) == 2
    os.kill(ec.proc.pid, signal.SIGUSR2)
    assert wait_for(lambda: ec.log().count("draining for a rolling restart") == 2, timeout=30)

    result: list[object] = []

    def newcomer() -> None:
        with psycopg.connect(ec.dsn(dbname=DB), autocommit=True) as conn:
            result.append(conn.execute("select 42").fetchone())

    thread = threading.Thread(target=newcomer)
    thread.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert backends(pg) <= 2
            time.sleep(0.1)
        assert not result, "the new generation went past the node-wide pool size"
        holders[0].commit()  # its server is given up by the draining worker
        thread.join(20)
        assert result == [(42,)]
        assert backends(pg) <= 2
    finally:
        thread.join(20)
        for conn in holders:
            conn.close()


def test_idle_clients_are_handed_over_with_their_session(ecluse_factory):
    """Clients between transactions are passed to the new generation, socket and all:
    the same connections go on working after the old workers have exited, with their
    SET settings, their prepared statements and their cancel keys."""
    ec = ecluse_factory({"workers": 2, "drain_rate": 1000})
    assert wait_for(lambda: len(children(ec.proc.pid)) == 2, timeout=30)
    old = children(ec.proc.pid)
    conns = [psycopg.connect(ec.dsn(), autocommit=True) for _ in range(8)]
    for n, conn in enumerate(conns):
        conn.execute(f"SET application_name = 'client{n}'")
        conn.execute(f"SET work_mem = '{2001 + n}kB'")
        conn.execute("select %s::int + 1", (n,), prepare=True)  # a named statement
    os.kill(ec.proc.pid, signal.SIGUSR2)
    assert wait_for(lambda: ec.log().count("drained and exited") == 2, timeout=30)
    new = children(ec.proc.pid)
    assert len(new) == 2 and not new & old
    log = ec.log()
    handed = sum(int(n) for n in re.findall(r"drained: (\d+) clients handed over", log))
    assert handed == len(conns), log
    assert "terminating connection" not in log
    for n, conn in enumerate(conns):
        assert conn.execute("show application_name").fetchone() == (f"client{n}",)
        assert conn.execute("show work_mem").fetchone() == (f"{2001 + n}kB",)
        assert conn.execute("select %s::int + 1", (n,), prepare=True).fetchone() == (n + 1,)
    # A cancel with the key a client got from the old generation still works, whichever
    # new worker the cancel connection lands on (the one that adopted the client, or
    # the other, which passes it on by the old worker's slot).
    for conn in conns:
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        timer.join()
        conn.close()


@pytest.mark.parametrize("protocol", ["simple", "prepared"])
def test_roll_over_under_pgbench_with_persistent_connections(ecluse_factory, protocol):
    """pgbench keeps its connections (no -C) across the roll-over: each one is handed
    over between two of its transactions, and none fails or is dropped."""
    ec, env, target = pgbench_node(ecluse_factory, {"drain_rate": 1000})
    result: dict[str, subprocess.CompletedProcess] = {}

    def run_pgbench() -> None:
        result["run"] = subprocess.run(
            ["pgbench", "-n", "-M", protocol, "-c", "8", "-j", "2", "-T", "12", *target],
            capture_output=True, text=True, env=env, timeout=120)

    bench = threading.Thread(target=run_pgbench)
    bench.start()
    try:
        time.sleep(2.5)
        os.kill(ec.proc.pid, signal.SIGUSR2)
        assert wait_for(lambda: ec.log().count("drained and exited") == 2, timeout=30)
        # The old workers left while pgbench still ran: its clients had moved, not
        # waited for it to end (a drain that only closes clients between
        # transactions never finds these busy ones quiet).
        assert bench.is_alive()
    finally:
        bench.join()
    out = result["run"]
    assert out.returncode == 0, out.stdout + out.stderr
    assert processed_without_failures(out) > 50
    log = ec.log()
    handed = sum(int(n) for n in re.findall(r"drained: (\d+) clients handed over", log))
    assert handed == 8, log
    assert "terminating connection" not in log


def test_a_client_the_new_generation_cannot_serve_is_closed_as_before(ecluse_factory):
    """The config of the new generation no longer has the client's database: that
    client gets the drain's 57P01; a client of another database moves on unharmed."""
    ec = ecluse_factory({"workers": 2, "drain_rate": 1000})
    assert wait_for(lambda: len(children(ec.proc.pid)) == 2, timeout=30)
    kept = psycopg.connect(ec.dsn(), autocommit=True)
    dropped = psycopg.connect(ec.dsn(dbname="postgres"), autocommit=True)
    for conn in (kept, dropped):
        conn.execute("select 1")
    lines = ec.config_path.read_text().splitlines()
    ec.config_path.write_text("\n".join(line for line in lines
                                        if not line.startswith("postgres =")) + "\n")
    os.kill(ec.proc.pid, signal.SIGUSR2)
    assert wait_for(lambda: ec.log().count("drained and exited") == 2, timeout=30)
    assert 'client handed over refused: database "postgres" is gone' in ec.log()
    with pytest.raises(psycopg.OperationalError, match="administrator command"):
        dropped.execute("select 1")
    assert kept.execute("select 2").fetchone() == (2,)
    kept.close()
    dropped.close()


@pytest.mark.usefixtures("shard_dbs")
def test_a_sharded_client_keeps_its_shard(ecluse_factory, pg):
    backend = f"host={pg.host} port={pg.port}"
    databases = {f"app_{n}": f"{backend} dbname={db}" for n, db in enumerate(SHARD_DBS)}
    databases["app"] = ("shards=" + ",".join(f"app_{n}" for n in range(len(SHARD_DBS)))
                        + " sharding_key=user_id")
    ec = ecluse_factory({"workers": 2, "drain_rate": 1000}, databases)
    assert wait_for(lambda: len(children(ec.proc.pid)) == 2, timeout=30)
    conn = psycopg.connect(ec.dsn(dbname="app"), autocommit=True)
    conn.execute("SET SHARD TO '2'")
    assert conn.execute("select current_database()").fetchone() == (SHARD_DBS[2],)
    os.kill(ec.proc.pid, signal.SIGUSR2)
    assert wait_for(lambda: ec.log().count("drained and exited") == 2, timeout=30)
    assert "drained: 1 clients handed over" in ec.log()
    assert conn.execute("select current_database()").fetchone() == (SHARD_DBS[2],)
    conn.close()


def test_a_client_too_big_to_hand_over_is_closed_and_the_others_move(ecluse_factory):
    """A client whose state does not fit one hand-over message (a 400 KB prepared
    statement) is closed as before; the hand-over goes on for the others."""
    ec = ecluse_factory({"workers": 2, "drain_rate": 1000})
    assert wait_for(lambda: len(children(ec.proc.pid)) == 2, timeout=30)
    big = psycopg.connect(ec.dsn(), autocommit=True)
    small = [psycopg.connect(ec.dsn(), autocommit=True) for _ in range(6)]
    padding = "x" * 400_000
    assert big.execute(f"select %s::int /* {padding} */", (1,), prepare=True).fetchone() \
        == (1,)
    for conn in small:
        conn.execute("select %s::int", (2,), prepare=True)
    os.kill(ec.proc.pid, signal.SIGUSR2)
    assert wait_for(lambda: ec.log().count("drained and exited") == 2, timeout=30)
    log = ec.log()
    handed = sum(int(n) for n in re.findall(r"drained: (\d+) clients handed over", log))
    assert handed == len(small), log
    with pytest.raises(psycopg.OperationalError, match="administrator command"):
        big.execute("select 1")
    for conn in small:
        assert conn.execute("select %s::int", (3,), prepare=True).fetchone() == (3,)
        conn.close()
    big.close()


def test_a_client_still_receiving_its_last_reply_moves_only_once_it_has_it(ecluse_factory):
    """A client that reads slowly is between transactions for ecluse while the end of
    its result still waits in ecluse's send buffer: handed over then, that end would be
    lost. It moves once it has read everything, and its next query works."""
    ec = ecluse_factory({"workers": 2, "drain_rate": 1000, "shutdown_timeout": 30})
    assert wait_for(lambda: len(children(ec.proc.pid)) == 2, timeout=30)
    size = 16_000_000  # more than the kernel's buffers on both sides hold
    with socket.create_connection((ec.host, ec.port)) as sock:
        sock.sendall(startup_packet())
        read_until_ready(sock)
        sock.sendall(msg(b"Q", f"select repeat('x', {size})\0".encode()))
        time.sleep(1)
        os.kill(ec.proc.pid, signal.SIGUSR2)
        assert wait_for(lambda: ec.log().count("draining for a rolling restart") == 2,
                        timeout=30)
        sock.settimeout(20)
        reply = bytearray()
        while not reply.endswith(b"Z\x00\x00\x00\x05I"):
            chunk = sock.recv(1 << 16)  # slowly: the tail stays buffered in ecluse
            assert chunk, "closed before ReadyForQuery"
            reply += chunk
            time.sleep(0.002)
        rows = [body for kind, body in split_messages(bytes(reply)) if kind == b"D"]
        assert len(rows) == 1 and len(rows[0]) == size + 6
        assert wait_for(lambda: ec.log().count("drained and exited") == 2, timeout=30)
        sock.sendall(msg(b"Q", b"select 42\0"))
        assert (b"D", b"\x00\x01\x00\x00\x00\x0242") in read_until_ready(sock)
    handed = sum(int(n) for n in re.findall(r"drained: (\d+) clients handed over", ec.log()))
    assert handed == 1


def test_repeated_roll_overs_under_busy_and_half_sent_clients(ecluse_factory):
    """Three roll-overs in a row while clients query in a loop (in and out of
    transactions) and others hold a half-sent message or an open COPY: the querying
    clients never see an error, each is handed over every time, and the others are
    closed without harm to anyone."""
    ec = ecluse_factory({"workers": 2, "drain_rate": 1000, "shutdown_timeout": 3,
                         "default_pool_size": 3})
    assert wait_for(lambda: len(children(ec.proc.pid)) == 2, timeout=30)
    good = [GoodClient(ec.dsn()) for _ in range(6)]
    for client in good:
        client.start()
    odd = []
    for opening in (b"Q\x00\x00\x00\x40select", b"P\x00",
                    b"Q\x00\x00\x00\x1ecopy t from stdin\0"):
        sock = socket.create_connection((ec.host, ec.port))
        sock.sendall(startup_packet())
        read_until_ready(sock)
        sock.sendall(opening)
        odd.append(sock)
    try:
        for round_ in range(1, 4):
            assert wait_for(lambda: all(c.queries > 0 for c in good) or
                            any(c.errors for c in good), timeout=20)
            os.kill(ec.proc.pid, signal.SIGUSR2)
            assert wait_for(lambda n=round_: ec.log().count("drained and exited") == 2 * n,
                            timeout=40)
            progress = [c.queries for c in good]
            assert wait_for(lambda p=progress: all(
                c.queries > q for c, q in zip(good, p, strict=True))
                or any(c.errors for c in good), timeout=20)
            assert not any(c.errors for c in good), [c.errors for c in good]
    finally:
        for client in good:
            client.stop.set()
        for client in good:
            client.join(10)
        for sock in odd:
            sock.close()
    assert not any(c.errors for c in good), [c.errors for c in good]
    log = ec.log()
    handed = sum(int(n) for n in re.findall(r"drained: (\d+) clients handed over", log))
    assert handed == 3 * len(good), log
    assert ec.proc.poll() is None
