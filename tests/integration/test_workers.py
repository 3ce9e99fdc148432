"""Several worker processes: cancel routing, node-wide pool limits, crash recovery."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import psycopg
import pytest
from wire import read_until_ready

from ecluse.protocol.frontend import encode_query
from ecluse.protocol.startup import encode_cancel_request, encode_startup_message
from integration.test_admin_console import wait_for
from integration.test_pgbench import processed_without_failures


def children(pid: int) -> set[int]:
    """The pids of the processes whose parent is ``pid``."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(entry))
    return out


def backends(pg, dbname: str = "ecluse_test") -> int:
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        return conn.execute(
            "select count(*) from pg_stat_activity where datname = %s and "
            "backend_type = 'client backend'", (dbname,)).fetchone()[0]


def pgbench_node(ecluse_factory, settings: dict[str, object]):
    """Two workers with pgbench's tables loaded, both workers up; and the environment
    and connection arguments for pgbench."""
    ec = ecluse_factory({"workers": 2, "shutdown_timeout": 20, **settings})
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    target = ["-h", ec.host, "-p", str(ec.port), "-U", "postgres", "ecluse_test"]
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", *target], check=True,
                   capture_output=True, env=env, timeout=120)
    assert wait_for(lambda: len(children(ec.proc.pid)) == 2, timeout=30)
    return ec, env, target


def test_cancel_reaches_the_query_whatever_worker_gets_it(ecluse_factory):
    """Cancel connections land on either worker (SO_REUSEPORT hashing): repeat until
    one had to be passed on to the other worker; every cancel must stop its query."""
    ec = ecluse_factory({"workers": 2})
    passed_on = 0
    for attempt in range(40):
        with psycopg.connect(ec.dsn(), autocommit=True) as conn:
            timer = threading.Timer(0.3, conn.cancel_safe)
            timer.start()
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(20)")
            timer.join()
            assert time.monotonic() - started < 15
            assert conn.execute("select 1").fetchone() == (1,)  # the session goes on
        passed_on = ec.log().count("passed on")
        if passed_on >= 2 and attempt >= 3:
            break
    assert passed_on >= 2, "no cancel landed on the other worker in 40 tries"


def test_pool_limit_holds_across_workers_under_200_clients(ecluse_factory, pg):
    ec = ecluse_factory({"workers": 2, "default_pool_size": 6, "max_client_conn": 500})
    env = dict(os.environ, PGCONNECT_TIMEOUT="20")
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.append(backends(pg))
            stop.wait(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = subprocess.run(
            ["pgbench", "-n", "-c", "200", "-j", "2", "-T", "6", "-h", ec.host,
             "-p", str(ec.port), "-U", "postgres", "-f", "/dev/stdin", "ecluse_test"],
            input="select pg_sleep(0.001);\n", capture_output=True, text=True, env=env,
            timeout=120)
    finally:
        stop.set()
        watcher.join()
    assert out.returncode == 0, out.stderr[-2000:]
    processed = int(re.search(r"number of transactions actually processed: (\d+)",
                              out.stdout).group(1))
    assert processed > 200
    assert max(seen) <= 6, seen
    assert max(seen) >= 2  # both workers' clients were served
    pids = {int(m) for m in re.findall(r"^\S+ \S+ (\d+) INFO client .* login ok", ec.log(),
                                       re.MULTILINE)}
    assert len(pids) == 2, "clients were not spread over both workers"


def test_killed_worker_is_replaced_and_other_clients_keep_working(ecluse_factory):
    ec = ecluse_factory({"workers": 2})
    # The supervisor listens before it forks: the port answers a moment before
    # both workers exist.
    assert wait_for(lambda: len(children(ec.proc.pid)) == 2, timeout=30)
    workers = children(ec.proc.pid)
    conns = [psycopg.connect(ec.dsn(), autocommit=True) for _ in range(12)]
    for conn in conns:
        conn.execute("select 1")
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: len(children(ec.proc.pid) - {victim}) == 2, timeout=30)
    survivors = 0
    for conn in conns:
        try:
            assert conn.execute("select 2").fetchone() == (2,)
            survivors += 1
        except psycopg.OperationalError:
            pass  # a client of the killed worker: its connection is gone
    # Twelve connections spread by SO_REUSEPORT hashing: both workers had some (all
    # on one worker has odds of 1 in 2048).
    assert 0 < survivors < 12
    assert "died (signal SIGKILL); starting a new one" in ec.log()
    for _ in range(6):  # new clients are served, by either worker
        with psycopg.connect(ec.dsn(), autocommit=True) as conn:
            assert conn.execute("select 3").fetchone() == (3,)
    for conn in conns:
        conn.close()


def test_cancel_crosses_to_the_peer_that_issued_the_key(ecluse_factory):
    """Two ecluses of a group ([peers], peer_id): a cancel sent to the wrong one is
    passed on to the one holding the session, as behind a load balancer."""
    first = ecluse_factory({"peer_id": 1}, start=False)
    second = ecluse_factory({"peer_id": 2}, start=False)
    for ec in (first, second):
        text = ec.config_path.read_text()
        peers = (f"[peers]\n1 = host=127.0.0.1 port={first.port}\n"
                 f"2 = host=127.0.0.1 port={second.port}\n")
        ec.config_path.write_text(text + peers)
        ec.start()
    with socket.create_connection((first.host, first.port), timeout=30) as sock:
        sock.sendall(encode_startup_message({"user": "postgres", "database": "ecluse_test"}))
        replies = read_until_ready(sock)
        key = next(body for kind, body in replies if kind == b"K")
        pid, secret = struct.unpack("!i", key[:4])[0], key[4:]
        sock.sendall(encode_query("select pg_sleep(20)"))
        time.sleep(0.3)
        # The cancel goes to the *other* ecluse, which passes it on.
        with socket.create_connection((second.host, second.port), timeout=5) as other:
            other.sendall(encode_cancel_request(pid, secret))
        replies = read_until_ready(sock)
        errors = [body for kind, body in replies if kind == b"E"]
        assert errors and b"C57014" in errors[0]
    assert f"passed on to 127.0.0.1:{first.port}" in second.log()


def test_rolling_restart_under_pgbench_loses_no_transaction(ecluse_factory):
    """SIGUSR2: a new generation of workers takes the same sockets, the old one drains.
    pgbench with a new connection per transaction (-C) sees zero failures, and a
    client in the middle of a transaction finishes it before its worker leaves."""
    ec, env, target = pgbench_node(ecluse_factory, {"drain_rate": 50})
    old_workers = children(ec.proc.pid)
    result: dict[str, subprocess.CompletedProcess] = {}

    def run_pgbench() -> None:
        result["run"] = subprocess.run(
            ["pgbench", "-n", "-C", "-c", "8", "-j", "2", "-T", "10", *target],
            capture_output=True, text=True, env=env, timeout=120)

    bench = threading.Thread(target=run_pgbench)
    bench.start()
    try:
        with psycopg.connect(ec.dsn()) as in_tx:
            in_tx.execute("select 1")  # a transaction open across the roll-over
            time.sleep(2)
            os.kill(ec.proc.pid, signal.SIGUSR2)
            assert wait_for(lambda: ec.log().count("draining for a rolling restart") == 2,
                            timeout=30)
            time.sleep(1)
            # Its worker waits for it: finishing the transaction works.
            assert in_tx.execute("select 2").fetchone() == (2,)
            in_tx.commit()
        assert wait_for(lambda: ec.log().count("drained and exited") == 2, timeout=30)
    finally:
        bench.join()
    out = result["run"]
    assert out.returncode == 0, out.stdout + out.stderr
    assert processed_without_failures(out) > 50
    new_workers = children(ec.proc.pid)
    assert len(new_workers) == 2 and not new_workers & old_workers
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        assert conn.execute("select 3").fetchone() == (3,)


def test_restart_command_rolls_the_workers_over(ecluse_factory):
    ec = ecluse_factory({"workers": 2, "admin_users": "admin", "drain_rate": 1000})
    assert wait_for(lambda: len(children(ec.proc.pid)) == 2, timeout=30)
    old = children(ec.proc.pid)
    with psycopg.connect(ec.dsn(user="admin", dbname="pgbouncer"), autocommit=True) as console:
        console.execute("RESTART", prepare=False)
    assert wait_for(lambda: ec.log().count("drained and exited") == 2, timeout=30)
    new = children(ec.proc.pid)
    assert len(new) == 2 and not new & old
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_restart_command_needs_several_workers(ecluse_factory):
    ec = ecluse_factory({"admin_users": "admin"})
    with psycopg.connect(ec.dsn(user="admin", dbname="pgbouncer"), autocommit=True) as console, \
            pytest.raises(psycopg.Error, match="RESTART needs several workers"):
        console.execute("RESTART", prepare=False)


def test_show_peers_and_peer_pools_count_cancels_in_flight_and_queued(ecluse_factory):
    """A peer that never answers (it accepts cancels and holds them): with pool_size=1
    one cancel is in flight to it and the next ones wait, as SHOW PEER_POOLS says; once
    it answers, the queue drains."""
    hole = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        hole.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(hole.accept()[0])
            except OSError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    issuer = ecluse_factory({"peer_id": 1})
    forwarder = ecluse_factory({"peer_id": 2, "admin_users": "admin",
                                "cancel_wait_timeout": 60}, start=False)
    forwarder.config_path.write_text(
        forwarder.config_path.read_text()
        + f"[peers]\n1 = host=127.0.0.1 port={hole.getsockname()[1]} pool_size=1\n")
    forwarder.start()
    try:
        with socket.create_connection((issuer.host, issuer.port), timeout=30) as sock:
            sock.sendall(encode_startup_message({"user": "postgres", "database": "ecluse_test"}))
            key = next(body for kind, body in read_until_ready(sock) if kind == b"K")
            pid, secret = struct.unpack("!i", key[:4])[0], key[4:]
            cancels = [socket.create_connection((forwarder.host, forwarder.port), timeout=5)
                       for _ in range(3)]
            for c in cancels:
                c.sendall(encode_cancel_request(pid, secret))
            with psycopg.connect(forwarder.dsn(user="admin", dbname="pgbouncer"),
                                 autocommit=True) as console:
                peers = console.execute("SHOW PEERS").fetchall()
                assert peers == [(1, "127.0.0.1", hole.getsockname()[1], 1)]

                def pools():
                    return console.execute("SHOW PEER_POOLS").fetchall()

                assert wait_for(lambda: pools() == [("1", 1, 2, 1, 0)], timeout=10), pools()
                lists = dict(console.execute("SHOW LISTS").fetchall())
                assert (lists["peers"], lists["peer_pools"]) == (1, 1)
                stop.set()
                acceptor.join()
                deadline = time.monotonic() + 20
                while pools() != [("1", 0, 0, 0, 0)] and time.monotonic() < deadline:
                    for conn in list(held):  # the peer answers: it closes
                        held.remove(conn)
                        conn.close()
                    with contextlib.suppress(OSError):
                        hole.settimeout(0.2)
                        held.append(hole.accept()[0])
                assert pools() == [("1", 0, 0, 0, 0)]
            for c in cancels:
                c.close()
    finally:
        stop.set()
        hole.close()
        for conn in held:
            conn.close()
