"""One-off queries on a dedicated server connection (auth_query's lookups).

run_query_once() opens a connection of its own, logs in, runs one query with
bound parameters, and closes it. The connection is never in a pool and never
seen by a client, so nothing a lookup does (or a role's settings do) can leak
into a client's session, and no client's leftovers can change the lookup.

Rules:
1. Parameters go through the extended protocol (ServerConnection.run_internal
   with ``args``), never into the SQL text.
2. The whole exchange (connect, login, query) is bounded by one timeout.
3. The connection is closed whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

from ecluse.config.tls import ServerTls
from ecluse.errors import AuthLookupFailed, ServerGone
from ecluse.protocol.messages import ErrorResponse
from ecluse.server.connection import Row, ServerConnection, ServerState, open_socket
from ecluse.server.login import login


class _NoPool:
    """PoolHooks for a connection no pool owns."""

    def on_server_closed(self, server: ServerConnection) -> None:
        pass


async def run_query_once(host: str, port: int, params: Mapping[str, str],
                         password: str | None, sql: str, args: Sequence[str],
                         timeout: float, tls: ServerTls | None = None) -> list[Row]:
    """Log in with the startup ``params`` and return the rows of ``sql`` run with ``args``.

    ``tls`` is server_tls_* as for pool connections. Raises ServerLoginFailed
    or ServerGone if the login fails, AuthLookupFailed
    with the server's message if the query fails, TimeoutError after
    ``timeout`` seconds (0: none), OSError if the server cannot be reached.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    # No TLS over unix sockets, as for pool connections.
    server = ServerConnection(_NoPool(), login(params, password), host, port, done,
                              tls=None if host.startswith("/") else tls)
    try:
        async with asyncio.timeout(timeout or None):
            await open_socket(server, host, port)
            await done
            server.state = ServerState.IDLE  # owned here; no pool collection holds it
            result: asyncio.Future[ErrorResponse | None] = loop.create_future()
            rows: list[Row] = []
            server.run_internal(sql, lambda err: result.done() or result.set_result(err),
                                rows, args=args)
            error = await result
    finally:
        server.close()
        _retrieve(done)
    if error is not None:
        if error.sqlstate == "08006" and server.is_closed():
            raise ServerGone(error.message)
        raise AuthLookupFailed(f"auth_query failed: {error.message}", sqlstate=error.sqlstate)
    return rows


def _retrieve(future: asyncio.Future) -> None:
    """Mark a failed login future as seen, so asyncio does not log it a second time."""
    if not future.done():
        return
    with contextlib.suppress(asyncio.CancelledError, Exception):
        future.exception()
