"""CancelRequest routing: the client's own query is cancelled, never another's; a cancel
that cannot be delivered is given up after cancel_wait_timeout."""

from __future__ import annotations

import contextlib
import socket
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


class Relay:
    """A TCP relay in front of PostgreSQL. Connections are passed through both ways;
    while ``swallow`` is set, a new one is accepted and held, never passed on nor
    closed: a server a cancel cannot reach in time."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.swallow = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.sockets.append(conn)
            if self.swallow:
                continue
            upstream = socket.create_connection(self.target)
            self.sockets.append(upstream)
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            # shutdown first: close() alone leaves a socket open while a pump thread
            # is blocked reading it, and PostgreSQL's backend with it.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_cancel_wait_timeout_gives_up_and_retires_the_server(ecluse_factory, pg):
    """A cancel that cannot reach PostgreSQL: the client's cancel call returns once
    ecluse gives up, after cancel_wait_timeout, not before and not never; the query
    runs to its end; and its server, which the cancel might still reach later, is not
    given to anyone again."""
    relay = Relay(pg.host, pg.port)
    try:
        ec = ecluse_factory({"default_pool_size": 1, "cancel_wait_timeout": 1}, databases={
            "ecluse_test": f"host=127.0.0.1 port={relay.port} dbname=ecluse_test"})
        with psycopg.connect(ec.dsn(), autocommit=True) as conn:
            pid = conn.execute("select pg_backend_pid()").fetchone()[0]
            relay.swallow = True
            result: dict[str, object] = {}

            def query() -> None:
                result["row"] = conn.execute("select pg_sleep(3), 'finished'").fetchone()

            def cancel() -> None:
                start = time.monotonic()
                conn.cancel()
                result["cancel_took"] = time.monotonic() - start

            running = threading.Thread(target=query)
            running.start()
            time.sleep(0.5)
            cancelling = threading.Thread(target=cancel)
            cancelling.start()
            cancelling.join(15)
            running.join(15)
            assert not cancelling.is_alive() and not running.is_alive()
            assert result["row"] == ("", "finished")  # the cancel never got through
            assert result["cancel_took"] >= 0.9  # answered when ecluse gave up
            relay.swallow = False
            assert conn.execute("select pg_backend_pid()").fetchone()[0] != pid
        assert "not delivered within cancel_wait_timeout" in ec.log()
    finally:
        relay.close()

