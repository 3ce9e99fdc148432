"""ServerConnection relay: a read made only of whole messages is forwarded as it came.

The relay hands the client the very chunk it read when every piece of it goes
to the client in one write (no copy); otherwise it joins the pieces as before.
Property: however the reply is cut into reads, and with or without a
ReplyQueue (statement names rewritten), the client gets the same bytes and the
server is released once, after the last ReadyForQuery.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire import FakeTransport, LinkStub, PoolStub

from ecluse.errors import RemoteProtocolError
from ecluse.protocol import backend as be
from ecluse.protocol import codes
from ecluse.protocol import replies as rq
from ecluse.protocol.framing import Framer
from ecluse.protocol.messages import RowDescriptionField
from ecluse.protocol.replies import ReplyQueue
from ecluse.server.connection import _RELAY_INSPECT, ServerConnection, ServerState


class Client(LinkStub):
    """A ServerLink that records its writes and unlinks at ReadyForQuery, as a
    transaction-mode session does."""

    def __init__(self) -> None:
        self.writes: list = []
        self.ready = 0

    def write_from_server(self, data) -> None:
        self.writes.append(data)

    def on_server_ready(self, server: ServerConnection) -> None:
        self.ready += 1
        server.unlink()


# What pgbench -S gets back for each transaction.
REPLY = be.encode_row_description([RowDescriptionField("abalance", type_oid=23)]) + \
    be.encode_data_row([b"0"]) + be.encode_command_complete("SELECT 1") + \
    be.encode_ready_for_query(b"I")


def linked(rewritten: bool) -> tuple[ServerConnection, Client]:
    server = ServerConnection(PoolStub(), None, "127.0.0.1", 5432, None)
    server.state = ServerState.ACTIVE
    server.transport = FakeTransport()
    server._framer.set_inspect(_RELAY_INSPECT)
    client = Client()
    server.link(client)
    server.tracker.on_client_message(codes.FE_QUERY)
    if rewritten:
        server.track_replies(lambda: None).add(rq.QUERY)
    return server, client


def test_reply_queue_is_the_servers_and_emptied_on_unlink() -> None:
    server, _client = linked(rewritten=True)
    queue = server.replies
    assert isinstance(queue, ReplyQueue) and len(queue) == 1
    server.unlink()
    # Emptied and no longer holding the client's callback; the next link reuses it.
    assert server.replies is None and len(queue) == 0 and queue.on_statements_dropped is None
    assert server.track_replies(lambda: None) is queue


def test_whole_reply_is_written_as_read() -> None:
    for rewritten in (False, True):
        server, client = linked(rewritten)
        data = bytes(REPLY)
        server.data_received(data)
        assert client.ready == 1
        assert len(client.writes) == 1 and client.writes[0] is data


@given(cuts=st.lists(st.integers(min_value=1, max_value=len(REPLY) - 1), max_size=6),
       rewritten=st.booleans())
def test_any_cut_gives_the_same_bytes(cuts, rewritten) -> None:
    server, client = linked(rewritten)
    bounds = sorted(set(cuts))
    pos = 0
    for cut in [*bounds, len(REPLY)]:
        if cut > pos:
            server.data_received(REPLY[pos:cut])
            pos = cut
    assert client.ready == 1
    assert b"".join(bytes(w) for w in client.writes) == REPLY


def test_framer_single_message_matches_general_path() -> None:
    query = b"Q" + (4 + 9).to_bytes(4, "big") + b"SELECT 1\0"
    fast = Framer(codes.FRONTEND_TYPES, frozenset({codes.FE_QUERY}), 1 << 20).feed(query)
    assert [(t, bytes(r), s, e) for t, r, s, e in fast] == [(ord("Q"), query, True, True)]
    # Too long for an inspected type: refused, fast path or not.
    small = Framer(codes.FRONTEND_TYPES, frozenset({codes.FE_QUERY}), 1 << 20, inspect_max=8)
    with pytest.raises(RemoteProtocolError, match="too long"):
        small.feed(query)


def test_reply_queue_holds_no_deque_between_links() -> None:
    q = ReplyQueue()
    assert len(q) == 0 and q.take_fakes() == b""
    assert q.on_reply(codes.BE_READY_FOR_QUERY, be.encode_ready_for_query(b"I"))
    q.add(rq.QUERY)
    assert len(q) == 1
    q.reset()
    assert len(q) == 0 and q._q is None
