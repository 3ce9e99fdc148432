"""ServerConnection: what arrives in the same read as an internal query's end.

An internal query (parameter sync, session-state probe) ends with its
ReadyForQuery; a NotificationResponse or notice the server sent right after it,
in the same read, belongs to the linked client. Property: however the bytes
are cut into reads, the client gets the same messages (whole chunk == byte by
byte, RELIABILITY.md §4).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from wire import FakeTransport, LinkStub, PoolStub

from ecluse.protocol import backend as be
from ecluse.protocol.frontend import decode_bind, decode_parse
from ecluse.server.connection import _RELAY_INSPECT, ServerConnection, ServerState


class Client(LinkStub):
    """A ServerLink that records what reaches it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.notifications: list[bytes] = []
        self.params: dict[str, str] = {}

    def write_from_server(self, data) -> None:
        self.data += data

    def on_server_params(self, name: str, value: str) -> None:
        self.params[name] = value

    def on_server_notification(self, raw: bytes) -> None:
        self.notifications.append(raw)


def linked_server() -> tuple[ServerConnection, Client]:
    server = ServerConnection(PoolStub(), None, "127.0.0.1", 5432, None)
    server.state = ServerState.ACTIVE
    server.transport = FakeTransport()
    server._framer.set_inspect(_RELAY_INSPECT)
    client = Client()
    server.link(client)
    return server, client


DURING = be.encode_notification_response(7, "ch", "during")
AFTER = be.encode_notification_response(7, "ch", "after")
PROBE_REPLY = be.encode_data_row([b"x"]) + be.encode_command_complete("SELECT 1") + \
    be.encode_ready_for_query(b"I")


@given(cuts=st.lists(st.integers(min_value=1, max_value=200), max_size=10))
def test_messages_after_an_internal_query_reach_the_client(cuts):
    server, client = linked_server()
    rows: list = []
    done: list = []
    server.run_internal("select 'x'", done.append, rows)
    stream = DURING + PROBE_REPLY + AFTER + be.encode_parameter_status("TimeZone", "UTC")
    pos = 0
    for cut in sorted(set(cuts)):
        if cut < len(stream):
            server.data_received(stream[pos:cut])
            pos = cut
    server.data_received(stream[pos:])
    assert done == [None] and rows == [[b"x"]]
    assert client.notifications == [DURING]  # held by the session while it waits
    assert bytes(client.data) == AFTER + be.encode_parameter_status("TimeZone", "UTC")
    assert server.params["TimeZone"] == "UTC"
    assert not server.in_internal()


def test_internal_query_with_args_uses_the_extended_protocol():
    """auth_query's path: the argument is a bound parameter, never part of the SQL."""
    server, _client = linked_server()
    server.unlink()
    rows: list = []
    done: list = []
    name = "x' OR '1'='1"
    server.run_internal("SELECT usename, passwd FROM pg_shadow WHERE usename=$1", done.append,
                        rows, args=[name])
    (sent,) = server.transport.written
    kinds = []
    pos = 0
    while pos < len(sent):
        length = int.from_bytes(sent[pos + 1:pos + 5], "big")
        kinds.append((chr(sent[pos]), sent[pos + 5:pos + 1 + length]))
        pos += 1 + length
    assert [k for k, _ in kinds] == ["P", "B", "E", "S"]
    parse = decode_parse(kinds[0][1])
    assert parse.query == "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
    assert decode_bind(kinds[1][1]).params == (name.encode(),)
    server.data_received(be.encode_parse_complete() + be.encode_bind_complete()
                         + be.encode_data_row([b"u", None]) + be.encode_command_complete("SELECT 1")
                         + be.encode_ready_for_query(b"I"))
    assert done == [None] and rows == [[b"u", None]]
