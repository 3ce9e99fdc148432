"""routing/readwrite.py rule 1 over generated requests: wire messages (simple
Query, extended batches with unnamed and named statements, function calls),
framed by the session's own framer rules and cut into reads at random, are
read-only exactly when every message is whole and every statement they run
is a read, as sql_is_read_only judges each text alone."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from wire import cut, msg

from ecluse.frontend.login import _REWRITE_INSPECT
from ecluse.frontend.prepared import ClientStatement
from ecluse.protocol import codes
from ecluse.protocol.framing import Framer
from ecluse.routing.readonly import sql_is_read_only
from ecluse.routing.readwrite import ReadRouter, request_is_read_only

READS = ["select 1", "select abalance from pgbench_accounts where aid = $1",
         "with t as (select 2) select * from t", "show timezone", "values (1), (2)"]
WRITES = ["insert into t values (1)", "select * from t for update", "select nextval('s')",
          "begin", "set x = 1", "select 1; delete from t", "with d as (delete from t "
          "returning *) select * from d", "not sql at all"]


def query(sql: str) -> bytes:
    return msg(b"Q", sql.encode() + b"\0")


def parse(name: str, sql: str) -> bytes:
    return msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))


def bind(name: str) -> bytes:
    return msg(b"B", b"\0" + name.encode() + b"\0" + struct.pack("!HHH", 0, 0, 0))


DESCRIBE_EXECUTE_SYNC = (msg(b"D", b"P\0") + msg(b"E", b"\0" + struct.pack("!I", 0))
                         + msg(b"S", b""))

# One message group of a request: (wire bytes, its SQL or None, or "opaque").
group = st.one_of(
    st.sampled_from(READS + WRITES).map(lambda sql: (query(sql), sql)),
    st.sampled_from(READS + WRITES).map(
        lambda sql: (parse("", sql) + bind("") + DESCRIBE_EXECUTE_SYNC, sql)),
    # A Bind of a statement the client prepared earlier under a name.
    st.sampled_from(sorted({f"s{i}" for i in range(len(READS + WRITES))} | {"unknown"})).map(
        lambda name: (bind(name) + DESCRIBE_EXECUTE_SYNC, ("named", name))),
    st.just((msg(b"F", struct.pack("!IH", 1234, 0) + struct.pack("!HH", 0, 0)), "opaque")),
    st.just((msg(b"S", b""), None)),
)

# The client's named statements: s0, s1, ... one per text.
STATEMENTS = {f"s{i}".encode(): ClientStatement(f"ecluse_{i}", sql.encode() + b"\0\0\0")
              for i, sql in enumerate(READS + WRITES)}


def expected(groups) -> bool:
    texts = []
    for _raw, what in groups:
        if what == "opaque":
            return False
        if isinstance(what, tuple):
            name = what[1].encode()
            if name not in STATEMENTS:
                return False
            stmt = STATEMENTS[name]
            texts.append(stmt.parse_tail[:stmt.parse_tail.find(b"\0")].decode())
        elif what is not None:
            texts.append(what)
    return bool(texts) and all(sql_is_read_only(t) for t in texts)


def framer() -> Framer:
    return Framer(codes.FRONTEND_SESSION_TYPES, _REWRITE_INSPECT, 1 << 20,
                  inspect_max=1 << 20, side="client", stream_oversize=True)


@settings(max_examples=300, deadline=None)
@given(groups=st.lists(group, min_size=1, max_size=6),
       cuts=st.lists(st.integers(0, 10_000), max_size=4))
def test_a_request_is_read_only_when_all_its_statements_are(groups, cuts):
    data = b"".join(raw for raw, _what in groups)
    f = framer()
    pieces = []
    for chunk in cut(data, cuts):
        pieces += f.feed(chunk)
    assert request_is_read_only(pieces, STATEMENTS) == expected(groups)
    # The reads arrive whatever way: what the first reads hold alone is judged on
    # their whole messages only, never on a message that is not all there.
    g = framer()
    first = g.feed(data[:len(data) // 2])
    if any(start and not end for _t, _r, start, end in first if _t not in (
            codes.FE_DESCRIBE, codes.FE_EXECUTE, codes.FE_SYNC)):
        assert request_is_read_only(first, STATEMENTS) is False


@given(groups=st.lists(group, min_size=1, max_size=4))
def test_holding_while_a_read_server_is_linked(groups):
    """Held exactly when not read-only and not inside a transaction; never the rest
    of a message whose start the read server already has."""
    data = b"".join(raw for raw, _what in groups)
    pieces = framer().feed(data)
    router = ReadRouter.__new__(ReadRouter)  # holds() looks at its arguments and home
    router.home = home = object()
    replica = object()
    assert router.holds(pieces, STATEMENTS, False, replica) == (not expected(groups))
    assert router.holds(pieces, STATEMENTS, True, replica) is False
    assert router.holds(pieces, STATEMENTS, False, home) is False  # linked to the primary
    continuation = [(codes.FE_QUERY, b"rest of a long query", False, True)]
    assert router.holds(continuation, STATEMENTS, False, replica) is False
