"""CancelRequest routing: the client's own query is cancelled, never another's."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest


def test_cancel_running_query(ecluse):
    with psycopg.connect(ecluse.dsn(), autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        start = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        assert time.monotonic() - start < 10
        timer.join()
        assert conn.execute("select 1").fetchone() == (1,)


def test_cancel_never_hits_another_client(ecluse_factory):
    """PgBouncer's test_cancel_race: many cancels for client 1 while client 2
    waits for the same single server; client 2's query must complete."""
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 1})
    with psycopg.connect(ec.dsn(), autocommit=True) as one, \
            psycopg.connect(ec.dsn(), autocommit=True) as two:
        two.execute("select 1")
        results: dict[str, object] = {}

        def run_one():
            try:
                one.execute("select pg_sleep(3)")
                results["one"] = "done"
            except psycopg.errors.QueryCanceled:
                results["one"] = "cancelled"

        def run_two():
            results["two"] = two.execute("select pg_sleep(1), 'two ok'").fetchone()[1]

        t1 = threading.Thread(target=run_one)
        t1.start()
        time.sleep(0.3)
        t2 = threading.Thread(target=run_two)
        t2.start()
        time.sleep(0.2)
        cancels = [threading.Thread(target=one.cancel) for _ in range(50)]
        for c in cancels:
            c.start()
        for c in cancels:
            c.join()
        t1.join(15)
        t2.join(15)
        assert results["one"] == "cancelled"
        assert results["two"] == "two ok"


def test_cancel_of_a_queued_client(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "session", "default_pool_size": 1,
                         "query_wait_timeout": 30})
    with psycopg.connect(ec.dsn(), autocommit=True) as holder:
        holder.execute("select 1")
        with psycopg.connect(ec.dsn(), autocommit=True) as waiting:
            timer = threading.Timer(0.5, waiting.cancel)
            timer.start()
            start = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                waiting.execute("select 1")
            assert time.monotonic() - start < 10
            timer.join()


def test_cancel_with_wrong_key_does_nothing(ecluse):
    import socket
    import struct

    with psycopg.connect(ecluse.dsn(), autocommit=True) as conn:
        pid = conn.info.backend_pid
        results = {}

        def run():
            results["r"] = conn.execute("select pg_sleep(1), 'finished'").fetchone()[1]

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.3)
        with socket.create_connection((ecluse.host, ecluse.port)) as s:
            s.sendall(struct.pack("!IIII", 16, 80877102, pid, 0xDEADBEEF))
            s.settimeout(5)
            assert s.recv(100) == b""  # no reply, just a close, as PostgreSQL does
        t.join(10)
        assert results["r"] == "finished"
