"""Servers dying, clients vanishing, and malformed bytes: each hurts no one else."""

from __future__ import annotations

import socket
import struct
import threading
import time

import psycopg
import pytest
from wire import read_until_closed, startup_packet


def error_fields(data: bytes) -> dict[str, str]:
    """Fields of the first ErrorResponse in a stream of backend messages."""
    pos = 0
    while pos + 5 <= len(data):
        t = data[pos:pos + 1]
        (ln,) = struct.unpack("!I", data[pos + 1:pos + 5])
        body = data[pos + 5:pos + 1 + ln]
        if t == b"E":
            out = {}
            for part in body.split(b"\0"):
                if part:
                    out[chr(part[0])] = part[1:].decode()
            return out
        pos += 1 + ln
    return {}


def canary(ec) -> None:
    with psycopg.connect(ec.dsn(), autocommit=True) as c:
        assert c.execute("select 'alive'").fetchone() == ("alive",)


def test_server_killed_mid_query_gives_error_and_spares_others(ecluse_factory, pg):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 3})
    with psycopg.connect(ec.dsn(application_name="victim"), autocommit=True) as victim, \
            psycopg.connect(ec.dsn(), autocommit=True) as bystander:
        errors = []

        def run():
            try:
                victim.execute("select pg_sleep(10)")
            except psycopg.Error as exc:
                errors.append(exc)

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.5)
        pg.psql("select pg_terminate_backend(pid) from pg_stat_activity "
                "where application_name = 'victim' and state = 'active'")
        t.join(10)
        assert len(errors) == 1
        assert bystander.execute("select 'fine'").fetchone() == ("fine",)
    canary(ec)


def test_idle_server_killed_is_replaced_transparently(ecluse_factory, pg):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 1})
    with psycopg.connect(ec.dsn(), autocommit=True) as c:
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        pg.psql(f"select pg_terminate_backend({pid})")
        time.sleep(0.3)
        new_pid = c.execute("select pg_backend_pid()").fetchone()[0]
        assert new_pid != pid


def test_client_killed_mid_transaction_leaves_no_open_transaction(ecluse_factory, pg):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 1})
    with psycopg.connect(ec.dsn(), autocommit=True) as setup:
        setup.execute("drop table if exists abandoned")
        setup.execute("create table abandoned (x int)")
    sock = socket.create_connection((ec.host, ec.port))
    sock.sendall(startup_packet())
    time.sleep(0.3)
    sock.recv(65536)  # AuthenticationOk ... ReadyForQuery
    q = b"begin; insert into abandoned values (1);\0"
    sock.sendall(b"Q" + struct.pack("!I", len(q) + 4) + q)
    time.sleep(0.3)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST, mid-transaction
    deadline = time.monotonic() + 10
    states = None
    while time.monotonic() < deadline:
        states = pg.psql("select count(*) from pg_stat_activity where datname = 'ecluse_test' "
                         "and state like 'idle in transaction%'")
        if states == "0":
            break
        time.sleep(0.1)
    assert states == "0"
    with psycopg.connect(ec.dsn(), autocommit=True) as c:
        assert c.execute("select count(*) from abandoned").fetchone() == (0,)


def test_terminate_inside_transaction_rolls_back(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 1})
    with psycopg.connect(ec.dsn(), autocommit=True) as setup:
        setup.execute("drop table if exists left_open")
        setup.execute("create table left_open (x int)")
    conn = psycopg.connect(ec.dsn())
    conn.execute("insert into left_open values (1)")
    conn.close()  # Terminate with the transaction open
    with psycopg.connect(ec.dsn(), autocommit=True) as c:
        assert c.execute("select count(*) from left_open").fetchone() == (0,)
        assert c.execute("select now() = statement_timestamp()").fetchone() == (True,)


@pytest.mark.parametrize("payload", [
    b"\x00\x00\x00\x03",  # length below the minimum
    b"\xff\xff\xff\xff" + b"\x00" * 8,  # enormous length
    b"\x00\x00\x00\x08\x00\x02\x00\x00",  # protocol 2.0
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # another protocol entirely
    struct.pack("!II", 20000, 196608) + b"\0" * 100,  # over the startup limit
])
def test_garbage_before_startup_closes_only_that_client(ecluse, payload):
    with socket.create_connection((ecluse.host, ecluse.port)) as s:
        s.sendall(payload)
        reply = read_until_closed(s)
    if reply:
        assert reply[:1] == b"E"
        assert error_fields(reply)["C"] in ("08P01", "0A000")
    canary(ecluse)


@pytest.mark.parametrize("message", [
    b"Q\x00\x00\x00\x02",  # length below 4
    b"Q\xff\xff\xff\xff",  # length over the limit
    b"\x01\x00\x00\x00\x04",  # unknown message type
    b"p\x00\x00\x00\x09junk",  # password message after login
])
def test_malformed_message_after_login_gets_protocol_error(ecluse, message):
    with socket.create_connection((ecluse.host, ecluse.port)) as s:
        s.sendall(startup_packet())
        time.sleep(0.2)
        s.sendall(message)
        reply = read_until_closed(s)
    assert b"Z\x00\x00\x00\x05I" in reply  # the login itself worked
    tail = reply[reply.index(b"Z\x00\x00\x00\x05I") + 6:]
    if message.startswith(b"p"):
        # A stray password message reaches the server, which rejects it.
        assert error_fields(tail).get("C") == "08P01"
    else:
        assert error_fields(tail)["C"] == "08P01"
    canary(ecluse)


def test_overlong_names_are_refused(ecluse):
    for n in (64, 1000):
        with socket.create_connection((ecluse.host, ecluse.port)) as s:
            s.sendall(startup_packet(database="d" * n))
            reply = read_until_closed(s)
        assert error_fields(reply)["C"] == "08P01"
    canary(ecluse)


def test_ssl_request_is_answered_no(ecluse):
    with socket.create_connection((ecluse.host, ecluse.port)) as s:
        s.sendall(struct.pack("!II", 8, 80877103))
        s.settimeout(5)
        assert s.recv(1) == b"N"
        s.sendall(startup_packet())
        time.sleep(0.2)
        data = s.recv(65536)
        assert b"Z\x00\x00\x00\x05I" in data


def test_ssl_request_with_pipelined_data_is_refused(ecluse):
    """CVE-2021-3935 class: bytes behind an SSLRequest are never read as protocol."""
    with socket.create_connection((ecluse.host, ecluse.port)) as s:
        s.sendall(struct.pack("!II", 8, 80877103) + startup_packet())
        reply = read_until_closed(s)
    assert b"Z\x00\x00\x00\x05I" not in reply
    canary(ecluse)


def test_negotiate_protocol_version_for_newer_minor_and_pq_options(ecluse):
    body = struct.pack("!I", (3 << 16) | 2)
    body += b"user\0postgres\0database\0ecluse_test\0_pq_.something\0on\0\0"
    with socket.create_connection((ecluse.host, ecluse.port)) as s:
        s.sendall(struct.pack("!I", len(body) + 4) + body)
        time.sleep(0.3)
        s.settimeout(5)
        data = s.recv(65536)
    assert data[:1] == b"v"
    (ln,) = struct.unpack("!I", data[1:5])
    minor, count = struct.unpack("!ii", data[5:13])
    assert (minor, count) == (0, 1)
    assert data[13:1 + ln] == b"_pq_.something\0"
    assert b"Z\x00\x00\x00\x05I" in data
