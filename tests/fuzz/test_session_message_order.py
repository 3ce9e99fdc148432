"""CVE-2015-4054 class: valid messages in invalid order never crash a session.

A FrontendSession is driven without sockets (a fake transport) with random
sequences of startup packets and frontend messages. Whatever the order, the
session must end in a known state, having written only well-framed replies,
and never raise.
"""

from __future__ import annotations

import asyncio
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ecluse.config import config_from_string
from ecluse.frontend.context import ClientContext
from ecluse.frontend.session import ClientState, FrontendSession
from ecluse.pool.registry import PoolRegistry
from ecluse.protocol import frontend as fe
from ecluse.protocol import startup as su

CONFIG = config_from_string(
    "[databases]\ndb = host=127.0.0.1 port=1 dbname=db\n"
    "[pgbouncer]\nauth_type = md5\nserver_connect_timeout = 0.2\nserver_login_retry = 0\n"
)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data) -> None:
        self.out += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 5555) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


MESSAGES = [
    su.encode_startup_message({"user": "u", "database": "db"}),
    su.encode_ssl_request(),
    su.encode_cancel_request(1, b"abcd"),
    fe.encode_password("pw"),
    fe.encode_sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"),
    fe.encode_sasl_response(b"c=biws,r=abc,p=xyz"),
    fe.encode_query("select 1"),
    fe.encode_parse("s", "select 1"),
    fe.encode_bind("", "s"),
    fe.encode_execute(),
    fe.encode_sync(),
    fe.encode_flush(),
    fe.encode_copy_done(),
    fe.encode_copy_fail("x"),
    fe.encode_terminate(),
]


def frames_ok(out: bytes) -> bool:
    """Replies are 'N' answers to SSLRequests (only before anything else), then
    well-framed typed messages."""
    pos = 0
    while out[pos:pos + 1] == b"N" and out[pos + 1:pos + 2] in (b"", b"N", b"R", b"E"):
        pos += 1
    while pos < len(out):
        if len(out) - pos < 5:
            return False
        (ln,) = struct.unpack_from("!I", out, pos + 1)
        if ln < 4 or pos + 1 + ln > len(out):
            return False
        pos += 1 + ln
    return True


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(MESSAGES), min_size=1, max_size=8),
       st.integers(min_value=1, max_value=64))
def test_random_message_order_never_raises(sequence, chunk):
    async def run() -> tuple[FrontendSession, FakeTransport]:
        ctx = ClientContext(CONFIG, PoolRegistry(CONFIG))
        session = FrontendSession(ctx)
        transport = FakeTransport()
        session.connection_made(transport)
        data = b"".join(sequence)
        for i in range(0, len(data), chunk):
            if transport.closed:
                break
            session.data_received(data[i:i + chunk])
        await asyncio.sleep(0)
        session.connection_lost(None)
        for task in list(ctx.tasks):
            task.cancel()
        return session, transport

    session, transport = asyncio.run(run())
    assert session.state is ClientState.CLOSED
    assert frames_ok(bytes(transport.out))
