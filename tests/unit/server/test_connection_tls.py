"""ServerConnection: the SSLRequest exchange before the login (no handshake here).

What the server answers to SSLRequest is one byte; 'N' continues in clear only
when server_tls_sslmode allows it, and anything after the byte closes the
connection unread (CVE-2021-23222).
"""

from __future__ import annotations

import asyncio
import ssl

import pytest
from wire import FakeTransport, PoolStub

from ecluse.config.model import SslMode
from ecluse.config.tls import ServerTls
from ecluse.errors import RemoteProtocolError, ServerLoginFailed
from ecluse.protocol.startup import encode_ssl_request
from ecluse.server.connection import ServerConnection
from ecluse.server.login import login


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def connect(loop, mode: SslMode) -> tuple[ServerConnection, FakeTransport, asyncio.Future]:
    done = loop.create_future()
    tls = ServerTls(mode, ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    server = ServerConnection(PoolStub(), login({"user": "u", "database": "d"}, None),
                              "127.0.0.1", 5432, done, tls=tls)
    transport = FakeTransport()
    server.connection_made(transport)
    assert transport.written == [encode_ssl_request()]
    return server, transport, done


@pytest.mark.parametrize("answer", [b"SR\x00\x00\x00\x08\x00\x00\x00\x00", b"Nx", b"S\x16"])
def test_bytes_after_the_answer_close_the_connection(loop, answer):
    server, transport, done = connect(loop, SslMode.PREFER)
    server.data_received(answer)
    assert transport.closed
    assert isinstance(done.exception(), RemoteProtocolError)
    assert transport.written == [encode_ssl_request()]  # no StartupMessage went out


@pytest.mark.parametrize("mode", [SslMode.REQUIRE, SslMode.VERIFY_CA, SslMode.VERIFY_FULL])
def test_no_is_refused_when_tls_is_required(loop, mode):
    server, transport, done = connect(loop, mode)
    server.data_received(b"N")
    assert transport.closed
    error = done.exception()
    assert isinstance(error, ServerLoginFailed)
    assert "does not support SSL" in error.message


@pytest.mark.parametrize("mode", [SslMode.ALLOW, SslMode.PREFER])
def test_no_continues_in_clear_when_allowed(loop, mode):
    server, transport, done = connect(loop, mode)
    server.data_received(b"N")
    assert not transport.closed and not done.done()
    assert len(transport.written) == 2  # SSLRequest, then the StartupMessage
    assert b"user\0u\0" in transport.written[1]
    assert not server.tls


def test_an_error_instead_of_an_answer_is_refused(loop):
    server, transport, done = connect(loop, SslMode.PREFER)
    server.data_received(b"E")
    assert transport.closed
    assert isinstance(done.exception(), RemoteProtocolError)
