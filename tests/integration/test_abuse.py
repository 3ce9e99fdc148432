"""Slow and stalled clients cost bounded memory and never stall the others.

- A client that asks for a huge result and never reads it: ecluse stops
  reading that server (backpressure), so its memory stays bounded, and other
  clients keep being served by the rest of the pool.
- Slowloris on startup: connections that send a few bytes of a startup packet
  and stall are closed by client_login_timeout; meanwhile logins and queries
  of well-behaved clients go through.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import psycopg
from wire import RawClient

from ecluse.protocol.frontend import encode_password, encode_query
from ecluse.protocol.startup import encode_startup_message
from integration.test_copy import MB, peak_rss


def test_client_that_never_reads_costs_bounded_memory(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 2,
                         "query_wait_timeout": 10})
    stalled = RawClient(ec)
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        before = peak_rss(ec)
        # About 2 GB of rows, never read.
        stalled.send(encode_query("select repeat('x', 1000) from generate_series(1, 2000000)"))
        with psycopg.connect(ec.dsn(), autocommit=True) as other:
            deadline = time.monotonic() + 4
            served = 0
            while time.monotonic() < deadline:
                assert other.execute("select %s::int * 2", (served,)).fetchone() == (served * 2,)
                served += 1
        grown = peak_rss(ec) - before
        assert served > 10
        assert grown < 32 * MB, f"ecluse grew by {grown / MB:.0f} MB for a stalled client"
    finally:
        stalled.close()
    # The stalled client's server is cancelled, drained and reused.
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        for _ in range(3):
            assert conn.execute("select 1").fetchone() == (1,)


def test_slowloris_startups_are_closed_and_do_not_block_logins(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "transaction", "client_login_timeout": 1,
                         "max_client_conn": 200})
    packet = encode_startup_message({"user": "postgres", "database": "ecluse_test"})
    slow = []
    for _ in range(50):
        sock = socket.create_connection((ec.host, ec.port), timeout=5)
        sock.sendall(packet[:3])  # never finished
        slow.append(sock)
    try:
        for _ in range(5):
            with psycopg.connect(ec.dsn(), autocommit=True, connect_timeout=3) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
        time.sleep(1.5)
        for sock in slow:
            sock.settimeout(3)
            data = b""
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            # Closed by ecluse, at most after a FATAL error message.
            assert data == b"" or data.startswith(b"E")
    finally:
        for sock in slow:
            sock.close()


def test_password_message_after_login_is_refused_not_forwarded(ecluse_factory):
    """PostgreSQL answers a PasswordMessage outside authentication with FATAL and
    closes: forwarded behind a query, it would kill a server after it went back
    to the pool, under the next client. ecluse refuses it itself."""
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 1})
    with psycopg.connect(ec.dsn(), autocommit=True) as good:
        pid = good.execute("select pg_backend_pid()").fetchone()[0]
        bad = RawClient(ec)
        try:
            bad.send(encode_query("select 1") + encode_password("late"))
            replies = []
            try:
                while True:
                    replies.append(bad.read_message())
            except ConnectionError:
                pass
            fatal = [body for t, body in replies if t == b"E"]
            assert fatal and b"C08P01" in fatal[-1]
        finally:
            bad.close()
        for _ in range(3):
            assert good.execute("select pg_backend_pid()").fetchone()[0] == pid


def test_refused_during_welcome_with_a_query_in_the_same_write(ecluse_factory):
    """A client whose server login fails (role missing on the server, trust here)
    sent its first query in the same packet as its startup: it gets FATAL and is
    closed; the query left in its batch is dropped, not run by a closed session
    (the ecluse_factory fixture fails the test on any traceback)."""
    ec = ecluse_factory({"pool_mode": "transaction", "server_login_retry": 5})
    packet = encode_startup_message({"user": "no_such_role", "database": "ecluse_test"})
    for _ in range(3):  # the second and third are refused at once: login backoff
        with socket.create_connection((ec.host, ec.port), timeout=5) as sock:
            sock.sendall(packet + encode_query("select 1"))
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        assert b"SFATAL" in data
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_server_is_not_released_while_its_client_is_mid_message(ecluse_factory):
    """A client sends a query and, in the same write, the first bytes of a long
    message. The query's ReadyForQuery must not hand the server to another client:
    PostgreSQL already has the start of that message and would take the next
    client's bytes as its rest (found by the live fuzz test, where an oversized
    Sync header made PostgreSQL drop the connection under the next client; a
    CopyData, which PostgreSQL reads whole and ignores outside COPY, makes the
    next client's query vanish into it instead)."""
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 1,
                         "query_wait_timeout": 20})
    packet = encode_startup_message({"user": "postgres", "database": "ecluse_test"})
    partial = b"d" + struct.pack("!I", 50_000) + b"x" * 20  # a CopyData that never ends
    with socket.create_connection((ec.host, ec.port), timeout=10) as bad:
        bad.sendall(packet)
        data = b""
        while not data.endswith(b"Z\x00\x00\x00\x05I"):
            data += bad.recv(4096)
        bad.sendall(encode_query("select 1") + partial)
        data = b""
        while b"Z\x00\x00\x00\x05I" not in data:
            data += bad.recv(4096)
        result: list = []

        def good_client() -> None:
            try:
                with psycopg.connect(ec.dsn(), autocommit=True) as good:
                    result.append(good.execute("select 42").fetchone())
            except psycopg.Error as exc:
                result.append(exc)

        thread = threading.Thread(target=good_client)
        thread.start()
        time.sleep(0.5)  # the good client waits: the bad one still holds the server
        assert not result
    # The bad client leaves mid-message: its server is closed, a new one serves.
    thread.join(20)
    assert result == [(42,)]
