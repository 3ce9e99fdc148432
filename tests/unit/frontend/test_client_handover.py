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
from hypothesis import given
from hypothesis import strategies as st
from unit.frontend.test_noquery import logged_in
from wire import FakeTransport

from ecluse.config import config_from_string
from ecluse.frontend.context import ClientContext
from ecluse.frontend.handover import VERSION, HandedOver, HandoverReceiver, HandoverSender
from ecluse.frontend.prepared import ClientStatement
from ecluse.frontend.session import ClientState, FrontendSession
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


# -- in process: which sessions may go, and what arrives --------------------------

def idle_session() -> tuple[FrontendSession, FakeTransport]:
    session, transport, _acquired = logged_in(FrontendSession, "transaction")
    return session, transport


def test_an_idle_client_may_go_and_a_busy_one_may_not():
    async def run() -> None:
        session, transport = idle_session()
        assert session.can_hand_over()
        transport.buffered = 1  # the end of its last reply not yet sent
        assert not session.can_hand_over()
        transport.buffered = 0
        busy = {"pinned": ["advisory lock"], "_listening": True, "_hub_waits": 1,
                "_pending": [(81, b"Q", True, True)], "_probing": True, "_suspect": True,
                "_suspended": True, "_reading_paused": True, "_write_paused": True,
                "_notify_backlog": [b"A"], "tls": True}
        for name, value in busy.items():
            before = getattr(session, name)
            setattr(session, name, value)
            assert not session.can_hand_over(), name
            setattr(session, name, before)
        assert session.can_hand_over()
        session.data_received(b"Q\x00\x00")  # half a message received
        assert not session.can_hand_over()

    asyncio.run(run())


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@given(params=st.dictionaries(names, values, max_size=4),
       settings_=st.dictionaries(names, values, max_size=4),
       statements=st.dictionaries(st.binary(min_size=1, max_size=6),
                                  st.tuples(st.text("abcdef0123_", min_size=1, max_size=10),
                                            st.binary(max_size=40)), max_size=4),
       custom=st.one_of(st.none(), st.sets(names, min_size=1, max_size=3)),
       flags=st.tuples(st.booleans(), st.booleans()), key=st.integers(1, 2**63 - 1))
def test_what_a_session_carries_arrives_whole(params, settings_, statements, custom, flags,
                                              key):
    """Round trip through the JSON a hand-over sends: the adopting worker's session
    has the same login, parameters, settings, probe knowledge, statements (any bytes)
    and cancel key, is idle, and answers cancels for that key."""
    async def run() -> None:
        session, _transport = idle_session()
        session.params = params
        session.session_settings = settings_
        session._custom_names = custom
        session._custom_unknown, session._always_probe = flags
        session.cancel_key = key
        session._rewriter.statements = {
            name: ClientStatement(server, tail) for name, (server, tail) in statements.items()}
        state = json.loads(json.dumps(session.handover_state()))

        config = session.ctx.config
        ctx = ClientContext(config, PoolRegistry(config))
        adopted = FrontendSession(ctx)
        adopted.adopt(state)
        assert adopted.state is ClientState.IDLE
        assert (adopted.user, adopted.database) == (session.user, session.database)
        assert adopted.params == params and adopted.session_settings == settings_
        assert adopted._custom_names == custom
        assert (adopted._custom_unknown, adopted._always_probe) == flags
        assert adopted.cancel_key == key and ctx.adopted_keys[key] is adopted
        assert {name: (stmt.server_name, stmt.parse_tail)
                for name, stmt in adopted._rewriter.statements.items()} == statements
        assert ctx.db_clients == {"app": 1}  # counted under the database's limits

    asyncio.run(run())
