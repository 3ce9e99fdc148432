"""Forwarding a CancelRequest to the PostgreSQL server a client is using."""

from __future__ import annotations

import asyncio
import logging

from ecluse.protocol.messages import BackendKeyData
from ecluse.protocol.startup import encode_cancel_request

log = logging.getLogger("ecluse.server")

CANCEL_TIMEOUT = 5.0


async def send_cancel(host: str, port: int | str, key: BackendKeyData) -> None:
    """Open a fresh connection to the server and send the cancel packet.

    PostgreSQL answers nothing and closes; we wait for that close, bounded, so
    a server that never closes cannot pile up connections (Odyssey's
    cancel-leak test).
    """
    try:
        async with asyncio.timeout(CANCEL_TIMEOUT):
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
    except (OSError, TimeoutError) as exc:
        log.warning("cancel request to %s:%s failed: %s", host, port, exc)
