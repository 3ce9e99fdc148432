"""Random and mutated bytes thrown at a running ecluse while a good client works.

Hypothesis builds connections out of startup packets (valid, truncated, with
lying lengths, with random protocol versions and parameters) followed by
frontend messages (valid ones, ones with a wrong length field, random types,
random bodies, byte flips). Each is sent on its own socket; whatever comes
back is read until ecluse closes or goes quiet. Meanwhile a well-behaved
psycopg client runs queries in a loop on another thread. At the end: zero
errors for the good client, ecluse still running, and (checked by the
ecluse_factory fixture) no traceback in its log. Some connections log in to
a sharded and a read/write split database, whose routers read every request.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecluse.protocol import frontend as fe
from ecluse.protocol.startup import encode_startup_message

FRONTEND_TYPES = b"BCcdDEfFHPpQSX"


def _message(msg_type: bytes, body: bytes, length: int | None) -> bytes:
    size = len(body) + 4 if length is None else length
    return msg_type + struct.pack("!I", size & 0xFFFFFFFF) + body


valid_messages = st.sampled_from([
    fe.encode_query("select 1"),
    fe.encode_query("select pg_sleep(0.01)"),
    fe.encode_parse("s", "select $1::int", [23]),
    fe.encode_bind("", "s", [b"1"]),
    fe.encode_describe(b"S", "s"),
    fe.encode_execute(),
    fe.encode_sync(),
    fe.encode_flush(),
    fe.encode_close(b"S", "s"),
    fe.encode_copy_data(b"1\n"),
    fe.encode_copy_done(),
    fe.encode_terminate(),
    # What the routers act on (the databases "sharded" and "split" below).
    fe.encode_query("SET SHARD TO '1'"),
    fe.encode_query("set sharding key to '42'"),
    fe.encode_query("begin"),
    fe.encode_query("rollback"),
    fe.encode_query("/* shard: 1 */ select 1"),
    fe.encode_query("select id from (values (1), (2)) v (id) where id in (1, 2)"),
    fe.encode_parse("", "select id from (values (1)) v (id) where id = $1", [20]),
    fe.encode_bind("", "", [b"7"]),
])

random_messages = st.builds(
    _message,
    st.one_of(st.sampled_from([bytes([t]) for t in FRONTEND_TYPES]), st.binary(min_size=1,
                                                                                max_size=1)),
    st.binary(max_size=64),
    st.one_of(st.none(), st.integers(min_value=0, max_value=0xFFFFFFFF)),
)


@st.composite
def mutated(draw, base):
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        if not data:
            break
        i = draw(st.integers(min_value=0, max_value=len(data) - 1))
        data[i] = draw(st.integers(min_value=0, max_value=255))
    cut = draw(st.integers(min_value=0, max_value=len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


startup_packets = st.one_of(
    st.builds(lambda db: encode_startup_message({"user": "postgres", "database": db}),
              st.sampled_from(["ecluse_test", "nosuchdb", "", "sharded", "split"])),
    mutated(st.just(encode_startup_message({"user": "postgres", "database": "ecluse_test"}))),
    st.builds(lambda version, body: struct.pack("!II", len(body) + 8, version) + body,
              st.sampled_from([80877103, 80877102, 80877104, 196608, 196610, 0, 1234]),
              st.binary(max_size=40)),
    st.binary(max_size=40),
)

connections = st.tuples(
    startup_packets,
    st.lists(st.one_of(valid_messages, random_messages, mutated(valid_messages)), max_size=8),
)


def exchange(host: str, port: int, packets: list[bytes]) -> None:
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.settimeout(0.3)
        try:
            for packet in packets:
                sock.sendall(packet)
            while sock.recv(65536):
                pass
        except (TimeoutError, ConnectionError, OSError):
            pass


class GoodClient(threading.Thread):
    """Queries in a loop until stopped; keeps every error it sees."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.errors: list[BaseException] = []
        self.queries = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    n = self.queries
                    assert conn.execute("select %s::int + 1", (n,)).fetchone() == (n + 1,)
                    with conn.transaction():
                        assert conn.execute("select count(*) from generate_series(1, %s)",
                                            (n % 50 + 1,)).fetchone() == (n % 50 + 1,)
                    self.queries += 1
        except BaseException as exc:  # the test reports it
            self.errors.append(exc)


@pytest.fixture
def target(ecluse_factory, pg):
    backend = f"host={pg.host} port={pg.port}"
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 3,
                         "max_client_conn": 200, "client_login_timeout": 2,
                         "query_wait_timeout": 5},
                        {"ecluse_test": f"{backend} dbname=ecluse_test",
                         "postgres": f"{backend} dbname=postgres",
                         # Routed clients: sharded over both, and read/write split.
                         "sharded": "shards=ecluse_test,postgres sharding_key=id",
                         "split": f"{backend} dbname=ecluse_test read_db=postgres"})
    good = GoodClient(ec.dsn())
    good.start()
    yield ec, good
    good.stop.set()
    good.join(10)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(conn=connections)
def test_fuzzed_connections_never_hurt_a_good_client(target, conn):
    ec, good = target
    startup, messages = conn
    exchange(ec.host, ec.port, [startup, b"".join(messages)])
    assert ec.proc.poll() is None, "ecluse died"
    assert not good.errors, good.errors


def test_good_client_made_progress_under_fuzz(target):
    """The fuzz above is only meaningful if the good client really ran: check it does."""
    ec, good = target
    deadline = time.monotonic() + 20
    while good.queries < 20 and time.monotonic() < deadline and not good.errors:
        # An SSLRequest with bytes pipelined behind it: refused at once.
        exchange(ec.host, ec.port, [b"\x00\x00\x00\x08\x04\xd2\x16\x2f" + b"junk"])
    good.stop.set()
    good.join(10)
    assert not good.errors and good.queries >= 20
