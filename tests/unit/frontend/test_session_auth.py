"""FrontendSession's login with auth_query, driven through a fake transport.

The lookup itself is replaced (authn.run_auth_query), so these tests see what
the session does around it: the client waits, failed logins are counted, and
an unknown user fails exactly like a wrong password.
"""

from __future__ import annotations

import asyncio
import struct

import pytest
from wire import FakeTransport

from ecluse.config import config_from_string
from ecluse.frontend import authn
from ecluse.frontend.context import ClientContext
from ecluse.frontend.session import ClientState, FrontendSession
from ecluse.pool.registry import PoolRegistry
from ecluse.protocol.backend import decode_error_fields
from ecluse.protocol.frontend import encode_password
from ecluse.protocol.md5 import md5_response, md5_secret
from ecluse.protocol.startup import encode_startup_message

CONFIG = """
[databases]
app = host=127.0.0.1 port=1
[pgbouncer]
auth_type = md5
auth_user = pgb
"""


def messages(raw: bytes) -> list[tuple[str, bytes]]:
    out, pos = [], 0
    while pos < len(raw):
        (length,) = struct.unpack_from("!I", raw, pos + 1)
        out.append((chr(raw[pos]), bytes(raw[pos + 5:pos + 1 + length])))
        pos += 1 + length
    return out


async def attempt(ctx: ClientContext, user: str, password: str) -> tuple[FakeTransport, str]:
    """Log in as user with password; return the transport and the error message sent."""
    session = FrontendSession(ctx)
    transport = FakeTransport()
    session.connection_made(transport)
    session.data_received(encode_startup_message({"user": user, "database": "app"}))
    assert not transport.reading  # waiting for the lookup: client bytes wait too
    assert transport.out == b""
    for _ in range(5):
        await asyncio.sleep(0)
    assert transport.reading and session.state is ClientState.AUTH
    kind, body = messages(bytes(transport.out))[-1]
    assert kind == "R" and struct.unpack_from("!I", body)[0] == 5  # md5
    salt = body[4:8]
    transport.out.clear()
    session.data_received(encode_password(md5_response(user, password, salt)))
    errors = [decode_error_fields(b) for k, b in messages(bytes(transport.out)) if k == "E"]
    assert transport.closed and len(errors) == 1
    assert errors[0].sqlstate == "28P01"
    return transport, errors[0].message


def test_unknown_user_and_wrong_password_fail_alike_and_are_counted(monkeypatch) -> None:
    looked_up: list[str] = []

    async def fake_query(target, user: str) -> list:
        looked_up.append(user)
        return [[b"alice", md5_secret("alice", "right").encode()]] if user == "alice" else []

    monkeypatch.setattr(authn, "run_auth_query", fake_query)
    config = config_from_string(CONFIG)

    async def run() -> None:
        ctx = ClientContext(config, PoolRegistry(config))
        _t, wrong = await attempt(ctx, "alice", "wrong")
        _t, unknown = await attempt(ctx, "mallory", "wrong")
        assert wrong == 'password authentication failed for user "alice"'
        assert unknown == 'password authentication failed for user "mallory"'
        assert ctx.login_failures == 2
        assert looked_up == ["alice", "mallory"]
        _t, again = await attempt(ctx, "mallory", "x")  # cached: no second query
        assert again == unknown and looked_up == ["alice", "mallory"]
        assert ctx.login_failures == 3

    asyncio.run(run())


def test_lookup_failure_is_a_fatal_error_without_counting(monkeypatch) -> None:
    async def broken(target, user: str) -> list:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(authn, "run_auth_query", broken)
    config = config_from_string(CONFIG)

    async def run() -> None:
        ctx = ClientContext(config, PoolRegistry(config))
        session = FrontendSession(ctx)
        transport = FakeTransport()
        session.connection_made(transport)
        session.data_received(encode_startup_message({"user": "alice", "database": "app"}))
        for _ in range(5):
            await asyncio.sleep(0)
        (kind, body), = messages(bytes(transport.out))
        error = decode_error_fields(body)
        assert kind == "E" and error.severity == "FATAL"
        assert error.message.startswith('authentication lookup failed for user "alice"')
        assert transport.closed and ctx.login_failures == 0

    asyncio.run(run())


def test_password_sent_before_the_request_is_refused(monkeypatch) -> None:
    async def slow(target, user: str) -> list:
        await asyncio.sleep(10)
        return []

    monkeypatch.setattr(authn, "run_auth_query", slow)
    config = config_from_string(CONFIG)

    async def run() -> None:
        ctx = ClientContext(config, PoolRegistry(config))
        session = FrontendSession(ctx)
        transport = FakeTransport()
        session.connection_made(transport)
        session.data_received(encode_startup_message({"user": "alice", "database": "app"})
                              + encode_password("pipelined"))
        assert transport.closed and session.state is ClientState.CLOSED
        for task in list(ctx.tasks):
            task.cancel()
        await asyncio.gather(*ctx.tasks, return_exceptions=True)

    asyncio.run(run())


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level("CRITICAL")
