"""StatementRewriter + ReplyQueue: through ecluse, a client sees exactly what it would see
talking to its own PostgreSQL session, whichever shared server each batch lands on.

The reference is a small model of PostgreSQL's extended-protocol semantics (named
statements, portals, skip-to-Sync after an error). Two clients send random batches;
each batch lands on one of two shared server models whose statement caches are tiny,
so injection, eviction, sharing and fakes are all exercised (RELIABILITY: prepared
statements in transaction mode, pipelines with errors in the middle).
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ecluse.frontend.prepared import StatementRewriter
from ecluse.protocol import backend as be
from ecluse.protocol import codes
from ecluse.protocol import frontend as fe
from ecluse.protocol.messages import RowDescriptionField
from ecluse.protocol.replies import ReplyQueue
from ecluse.protocol.tracker import RequestTracker
from ecluse.server.prepared import PreparedCache

TEXTS = ("select 1", "select 2", "select 3", "bad")
NAMES = ("s1", "s2", "s3")


def split(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        length = struct.unpack_from("!I", data, pos + 1)[0]
        out.append(data[pos:pos + 1 + length])
        pos += 1 + length
    return out


class ModelPG:
    """One PostgreSQL session, as far as the extended protocol goes."""

    def __init__(self) -> None:
        self.statements: dict[str, str] = {}
        self.portals: dict[str, str] = {}
        self.skipping = False

    def handle(self, msg: bytes) -> list[bytes]:
        t, body = msg[0], msg[5:]
        if t == codes.FE_SYNC:
            self.skipping = False
            self.portals.clear()
            return [be.encode_ready_for_query(b"I")]
        if self.skipping:
            return []
        if t == codes.FE_PARSE:
            p = fe.decode_parse(body)
            # PostgreSQL reports a syntax error before a duplicate name; ecluse refuses
            # the duplicate without asking a server, so the model checks it first.
            if p.statement and p.statement in self.statements:
                return self._error("42P05")
            if p.query == "bad":
                return self._error("42601")
            self.statements[p.statement] = p.query
            return [be.encode_parse_complete()]
        if t == codes.FE_BIND:
            b = fe.decode_bind(body)
            if b.statement not in self.statements:
                return self._error("26000")
            self.portals[b.portal] = self.statements[b.statement]
            return [be.encode_bind_complete()]
        if t == codes.FE_DESCRIBE:
            d = fe.decode_describe(body)
            source = self.statements if d.kind == b"S" else self.portals
            if d.name not in source:
                return self._error("26000" if d.kind == b"S" else "34000")
            row = be.encode_row_description([RowDescriptionField(source[d.name])])
            return [be.encode_parameter_description(()), row] if d.kind == b"S" else [row]
        if t == codes.FE_EXECUTE:
            e = fe.decode_execute(body)
            if e.portal not in self.portals:
                return self._error("34000")
            return [be.encode_command_complete("SELECT " + self.portals[e.portal])]
        if t == codes.FE_CLOSE:
            c = fe.decode_close(body)
            (self.statements if c.kind == b"S" else self.portals).pop(c.name, None)
            return [be.encode_close_complete()]
        raise AssertionError(f"unexpected message {chr(t)}")

    def _error(self, code: str) -> list[bytes]:
        self.skipping = True
        return [be.encode_error_response("boom", code)]


def visible(messages: list[bytes]) -> list[tuple[int, bytes]]:
    """What a client compares: error codes (texts differ), everything else exactly."""
    out = []
    for m in messages:
        if m[0] == codes.BE_ERROR_RESPONSE:
            out.append((m[0], be.decode_error_fields(m[5:]).sqlstate.encode()))
        else:
            out.append((m[0], m))
    return out


message = st.one_of(
    st.tuples(st.just("P"), st.sampled_from(NAMES), st.sampled_from(TEXTS)),
    st.tuples(st.just("B"), st.sampled_from(NAMES)),
    st.tuples(st.just("DS"), st.sampled_from(NAMES)),
    st.just(("DP",)),
    st.just(("E",)),
    st.tuples(st.just("C"), st.sampled_from(NAMES)),
)
batch = st.tuples(st.sampled_from((0, 1)), st.sampled_from((0, 1)), st.booleans(),
                  st.lists(message, max_size=6))


def encode(op: tuple) -> bytes:
    kind = op[0]
    if kind == "P":
        return fe.encode_parse(op[1], op[2])
    if kind == "B":
        return fe.encode_bind("", op[1])
    if kind == "DS":
        return fe.encode_describe(b"S", op[1])
    if kind == "DP":
        return fe.encode_describe(b"P", "")
    if kind == "E":
        return fe.encode_execute("")
    return fe.encode_close(b"S", op[1])


@settings(max_examples=500, deadline=None)
@given(batches=st.lists(batch, max_size=12), capacity=st.sampled_from((1, 2, 200)))
def test_rewritten_stream_equals_a_private_session(batches, capacity):
    known: dict[str, None] = {}
    rewriters = [StatementRewriter(known), StatementRewriter(known)]
    references = [ModelPG(), ModelPG()]
    servers = [ModelPG(), ModelPG()]
    caches = [PreparedCache(capacity), PreparedCache(capacity)]
    queues = [ReplyQueue(), ReplyQueue()]  # each server's, lent to the linked client
    for client, server_index, try_local, ops in batches:
        wire = [encode(op) for op in ops] + [fe.encode_sync()]
        expected = [r for m in wire for r in references[client].handle(m)]

        rewriter = rewriters[client]
        pieces = [(m[0], memoryview(m), True, True) for m in wire]
        local = rewriter.answer_locally(pieces) if try_local else None
        if local is not None:
            assert visible(split(local)) == visible(expected)
            continue
        server, cache = servers[server_index], caches[server_index]
        tracker = RequestTracker()
        rewriter.replies = queues[server_index]
        rewriter.replies.reset()
        rewriter.replies.on_statements_dropped = cache.clear
        sent = rewriter.rewrite(pieces, cache, tracker)
        got = split(rewriter.replies.take_fakes())
        for chunk in sent:
            for m in split(bytes(chunk)):
                for reply in server.handle(m):
                    if reply[0] == codes.BE_READY_FOR_QUERY:
                        tracker.on_server_message(reply[0], reply[5])
                    elif reply[0] == codes.BE_COMMAND_COMPLETE:
                        tracker.on_server_message(reply[0])
                    if rewriter.replies.on_reply(reply[0], reply):
                        got.append(reply)
                    got.extend(split(rewriter.replies.take_fakes()))
        assert visible(got) == visible(expected)
        assert len(rewriter.replies) == 0
        assert tracker.can_release()
        # ecluse's record of each server matches what the server really holds.
        assert set(cache) == {n for n in server.statements if n}


def test_identical_statements_from_two_clients_share_one_server_statement():
    known: dict[str, None] = {}
    a, b = StatementRewriter(known), StatementRewriter(known)
    server, cache = ModelPG(), PreparedCache(10)
    for rewriter, name in ((a, "x"), (b, "y")):
        rewriter.replies = ReplyQueue()
        wire = [fe.encode_parse(name, "select 1"), fe.encode_sync()]
        sent = rewriter.rewrite([(m[0], memoryview(m), True, True) for m in wire], cache,
                                RequestTracker())
        for chunk in sent:
            for m in split(bytes(chunk)):
                server.handle(m)
    assert len(server.statements) == 1
    assert len(cache) == 1


def test_local_answer_needs_a_statement_known_to_parse():
    known: dict[str, None] = {}
    rewriter = StatementRewriter(known)
    wire = [fe.encode_parse("s", "select 1"), fe.encode_sync()]
    pieces = [(m[0], memoryview(m), True, True) for m in wire]
    assert rewriter.answer_locally(pieces) is None  # never parsed anywhere yet
    rewriter.replies = ReplyQueue()
    rewriter.rewrite(pieces, PreparedCache(10), RequestTracker())
    rewriter.replies.on_reply(codes.BE_PARSE_COMPLETE, be.encode_parse_complete())
    other = StatementRewriter(known)
    assert other.answer_locally(pieces) == be.encode_parse_complete() + \
        be.encode_ready_for_query(b"I")
    assert b"s" in other.statements
