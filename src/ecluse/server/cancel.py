"""Forwarding a CancelRequest to the PostgreSQL server a client is using (or to the
worker or peer that owns its key, which answers the same way)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ecluse.protocol.messages import BackendKeyData
from ecluse.protocol.startup import encode_cancel_request

log = logging.getLogger("ecluse.server")


async def send_cancel(host: str, port: int | str, key: BackendKeyData,
                      timeout: float) -> bool:
    """Open a fresh connection to the server, send the cancel packet and wait for the
    server to close it, which PostgreSQL does once it has acted on the request.

    ``timeout`` (cancel_wait_timeout) bounds the whole delivery, so a server that
    never answers cannot pile up connections (Odyssey's cancel-leak test); 0 sets
    no bound of ecluse's own (the system's connect timeout still applies). Returns
    True when the server closed the connection, False when it could not be reached
    or the time ran out: the cancel may then still be acted on, or never.
    """
    try:
        async with asyncio.timeout(timeout or None):
            if host.startswith("/"):
                reader, writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(encode_cancel_request(key.process_id, key.secret))
                await writer.drain()
                await reader.read()
            finally:
                writer.close()
    except TimeoutError:
        log.warning("cancel request to %s:%s not delivered within cancel_wait_timeout "
                    "(%gs)", host, port, timeout)
        return False
    except OSError as exc:
        log.warning("cancel request to %s:%s failed: %s", host, port, exc)
        return False
    return True


async def pass_cancel_on(host: str, port: int | str, key: BackendKeyData, timeout: float,
                         done: Callable[[], None]) -> None:
    """send_cancel to the worker or peer that owns the key (it closes the connection
    once it has delivered the cancel in turn), then run ``done`` whatever came of it."""
    try:
        await send_cancel(host, port, key, timeout)
    finally:
        done()
