"""TLS with clients: the listener that spots direct TLS, and the SSLRequest upgrade.

Two ways in, as PostgreSQL 17 has them:
- negotiated: the client sends SSLRequest, the session answers 'S', and the
  handshake follows on the same socket (``accept_tls``);
- direct (``sslnegotiation=direct``): the first byte on the connection is a
  TLS record (0x16, a handshake) instead of a packet length, and the client
  must have asked for the ALPN protocol "postgresql" (``TlsListener``).

Rules:
1. Nothing the client sent before the handshake is read as protocol data
   (CVE-2021-23214, PgBouncer CVE-2021-3935): the session pauses reading
   before it answers 'S' and refuses bytes pipelined behind SSLRequest; the
   handshake itself consumes whatever arrives next.
2. The first byte of a connection is peeked (MSG_PEEK) before any transport
   exists, so that a direct handshake reaches the TLS layer whole. uvloop
   starts reading right after connection_made whatever the protocol asked,
   which is why this cannot be done from the session.
3. Only asyncio glue lives here; the session decides what a connection may do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable

from ecluse.config.model import Settings
from ecluse.config.tls import ALPN_POSTGRESQL, client_tls_context

log = logging.getLogger("ecluse.client")

TLS_HANDSHAKE_RECORD = 0x16  # first byte of a TLS ClientHello record
_HANDSHAKE_TIMEOUT = 60.0  # client_login_timeout bounds the negotiated case too


def is_postgresql_alpn(transport: asyncio.BaseTransport) -> bool:
    """Say whether the TLS handshake on ``transport`` selected ALPN "postgresql"."""
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == ALPN_POSTGRESQL


async def accept_tls(transport: asyncio.Transport, protocol: asyncio.BaseProtocol,
                     context: ssl.SSLContext) -> asyncio.Transport:
    """Run the server side of the handshake after 'S'; return the TLS transport.

    ``protocol`` keeps receiving data_received, now decrypted; connection_made
    is not called again. Raises ssl.SSLError/OSError when the handshake fails.
    """
    loop = asyncio.get_running_loop()
    tls = await loop.start_tls(transport, protocol, context, server_side=True,
                               ssl_handshake_timeout=_HANDSHAKE_TIMEOUT)
    if tls is None:
        raise ConnectionResetError("client closed the connection during the TLS handshake")
    return tls


async def peek_first_byte(sock: socket.socket, timeout: float) -> int | None:
    """Wait until the client has sent something; return its first byte without reading it.

    Returns None at EOF, on an error, or after ``timeout`` seconds (0: none).
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout or None):
            while True:
                try:
                    data = sock.recv(1, socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    ready = loop.create_future()
                    loop.add_reader(sock.fileno(), _wake, ready)
                    try:
                        await ready
                    finally:
                        loop.remove_reader(sock.fileno())
                    continue
                return data[0] if data else None
    except (OSError, TimeoutError):
        return None


def _wake(ready: asyncio.Future) -> None:
    if not ready.done():
        ready.set_result(None)


class TlsListener:
    """Accept loop of a TCP listening socket when client TLS is on.

    Behaves like the asyncio.Server the worker keeps for its other sockets
    (close, wait_closed). Each accepted connection gets its first byte peeked:
    a TLS record means a direct handshake, done here before the session sees
    the connection; anything else goes to the session as it is.
    """

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol],
                 settings: Callable[[], Settings]):
        self._sock = sock
        self._factory = factory
        self._settings = settings
        self._task: asyncio.Task | None = None
        self._handlers: set[asyncio.Task] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._accept_loop())

    def close(self) -> None:
        """Stop accepting and close the listening socket, as asyncio.Server.close does."""
        if self._task is not None:
            self._task.cancel()
        for task in list(self._handlers):
            task.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as exc:
                # EMFILE and friends: wait a little, as asyncio's own servers do.
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._hand_over(conn, addr))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _hand_over(self, conn: socket.socket, addr) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        settings = self._settings()
        try:
            first = await peek_first_byte(conn, settings.client_login_timeout)
            if first != TLS_HANDSHAKE_RECORD:
                await loop.connect_accepted_socket(self._factory, conn)
                return
            context = client_tls_context(settings)
            await loop.connect_accepted_socket(
                self._factory, conn, ssl=context,
                ssl_handshake_timeout=settings.client_login_timeout or _HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            log.warning("client %s direct TLS handshake failed: %s", peer,
                        str(exc) or repr(exc))
            conn.close()
        except asyncio.CancelledError:
            conn.close()
            raise
