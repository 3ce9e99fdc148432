"""frontend/handover.py: what a client carries to the next worker in a roll-over.

The session's state is spread over many attributes and mixins; one that a
hand-over forgot would be lost silently at every rolling restart. So every
attribute of FrontendSession must be classified here: carried in the state,
rebuilt by the successor, required at rest before a hand-over (can_hand_over
checks it), or a cache. A new attribute fails the first test until someone
decides which it is.
"""

from __future__ import annotations

import array
import asyncio
import inspect
import json
import socket

import pytest
import uvloop

from ecluse.config import config_from_string
from ecluse.frontend.context import ClientContext
from ecluse.frontend.handover import VERSION, HandedOver, HandoverReceiver, HandoverSender
from ecluse.frontend.session import FrontendSession
from ecluse.pool.registry import PoolRegistry

CARRIED = {"user", "database", "params", "cancel_key", "connected_at", "session_settings",
           "_custom_names", "_custom_unknown", "_always_probe", "_rewriter", "_router", "pool"}
REBUILT = {"ctx", "id", "state", "transport", "_peer", "_framer", "_admitted", "_login",
           "last_activity"}
AT_REST = {"server", "console", "tls", "pinned", "_listening", "_hub_waits", "_pending",
           "_pending_bytes", "_probing", "_suspect", "_suspended", "_reading_paused",
           "_write_paused", "_notify_backlog", "_console_backlog", "_tls_task",
           "request_started", "xact_started"}
CACHES = {"_harmless_sql"}


def test_every_session_attribute_is_classified_for_hand_over():
    slots = set(FrontendSession.__slots__)
    classified = CARRIED | REBUILT | AT_REST | CACHES
    assert slots - classified == set(), "new attributes: carry, rebuild or check them"
    assert classified - slots == set(), "attributes gone: update this test"


def test_the_state_carries_what_the_classification_says():
    """handover_state names each carried attribute (or what stands for it)."""
    source = inspect.getsource(HandedOver.handover_state) + \
        inspect.getsource(HandedOver.adopt)
    for name in CARRIED:
        assert f"self.{name}" in source, name
    checks = inspect.getsource(HandedOver.can_hand_over)
    for name in AT_REST - {"_pending_bytes", "_tls_task", "request_started", "xact_started"}:
        assert f"self.{name}" in checks, name


def test_a_successor_that_is_not_there_is_reported_not_raised(tmp_path):
    sender = HandoverSender(str(tmp_path / "absent"))

    class Client:
        transport = None

    assert sender.send(Client()) is False  # no socket to pass: the caller closes it


@pytest.mark.parametrize("payload", [
    b"not json", json.dumps({"version": VERSION + 1}).encode(), json.dumps([1, 2]).encode(),
    json.dumps({"version": VERSION}).encode(),
])
def test_a_state_the_receiver_cannot_rebuild_closes_the_client_with_57P01(
        payload, tmp_path):
    """The client's socket arrives with a bad state: it gets the drain's FATAL and is
    closed; the receiver goes on."""
    config = config_from_string("[databases]\napp = host=127.0.0.1 port=1\n[pgbouncer]\n")
    ctx = ClientContext(config, PoolRegistry(config))
    path = str(tmp_path / "h")
    client, ours = socket.socketpair()

    async def scenario() -> bytes:
        receiver = HandoverReceiver(path, ctx, lambda: FrontendSession(ctx))
        receiver.start()
        link = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        link.connect(path)
        link.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  array.array("i", [ours.fileno()]))])
        ours.close()
        loop = asyncio.get_running_loop()
        client.setblocking(False)
        data = b""
        while True:
            chunk = await loop.sock_recv(client, 4096)
            if not chunk:
                break
            data += chunk
        link.close()
        receiver.close()
        return data

    try:
        data = uvloop.run(asyncio.wait_for(scenario(), 10))
    finally:
        client.close()
    assert data[:1] == b"E" and b"57P01" in data
    assert not ctx.clients and not ctx.adopted_keys
