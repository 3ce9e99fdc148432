"""Framer: chunking never changes what comes out; bad headers fail early and cheaply.

The h11 fuzz invariant (one chunk == random splits == byte by byte), the length
headers of RELIABILITY.md §3.8 (0, 3, -1, 0x7fffffff, over the limit) and the
pggat "packet length exploit" (never buffer the claimed size before it arrives).
"""

from __future__ import annotations

import contextlib
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire import cut

from ecluse.errors import RemoteProtocolError
from ecluse.protocol import codes, framing
from ecluse.protocol.framing import Framer, is_whole_reply

VALID = codes.BACKEND_TYPES
INSPECT = frozenset({codes.BE_READY_FOR_QUERY, codes.BE_ERROR_RESPONSE,
                     codes.BE_PARAMETER_STATUS, codes.BE_COMMAND_COMPLETE})
STREAMED = VALID - INSPECT
MAX_LEN = 1 << 16
INSPECT_MAX = 1 << 12


def _msg(msg_type: int, body: bytes) -> bytes:
    return struct.pack("!BI", msg_type, len(body) + 4) + body


def _framer(max_len: int = MAX_LEN, inspect_max: int = INSPECT_MAX) -> Framer:
    return Framer(VALID, INSPECT, max_len, inspect_max=inspect_max, side="server")


def _feed(framer: Framer, chunks: list[bytes]) -> list[tuple[int, bytes, bool, bool]]:
    out = []
    for chunk in chunks:
        for msg_type, raw, start, end in framer.feed(chunk):
            out.append((msg_type, bytes(raw), start, end))
    return out


def _reassemble(pieces: list[tuple[int, bytes, bool, bool]]) -> list[tuple[int, bytes]]:
    """Join fragments into messages, checking the start/end flags on the way."""
    messages: list[tuple[int, bytes]] = []
    current: tuple[int, bytearray] | None = None
    for msg_type, raw, start, end in pieces:
        assert raw, "a piece never carries zero bytes"
        if start:
            assert current is None, "a message started before the previous one ended"
            assert raw[0] == msg_type
            current = (msg_type, bytearray(raw))
        else:
            assert current is not None, "a continuation piece without a start"
            assert current[0] == msg_type
            current[1].extend(raw)
        if msg_type in INSPECT:
            assert start and end, "inspected messages are always delivered whole"
        if end:
            assert current is not None
            body = bytes(current[1])
            (length,) = struct.unpack_from("!I", body, 1)
            assert len(body) == length + 1
            messages.append((current[0], body))
            current = None
    assert current is None
    return messages


messages_st = st.lists(
    st.tuples(
        st.sampled_from(sorted(VALID)),
        st.binary(max_size=300),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=messages_st, cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=20))
def test_chunking_does_not_change_the_messages(msgs, cuts):
    wire = [_msg(t, b) for t, b in msgs]
    stream = b"".join(wire)
    expected = [(t, w) for (t, _), w in zip(msgs, wire, strict=True)]

    whole = _feed(f := _framer(), [stream])
    assert f.at_boundary
    split = _feed(f := _framer(), cut(stream, cuts, keep_empty=True))
    assert f.at_boundary
    bytewise = _feed(f := _framer(), [stream[i:i + 1] for i in range(len(stream))])
    assert f.at_boundary

    for pieces in (whole, split, bytewise):
        assert _reassemble(pieces) == expected
    # In one chunk every message is complete, so every piece is whole.
    assert all(start and end for _, _, start, end in whole)
    assert len(whole) == len(msgs)


@settings(max_examples=60)
@given(body=st.binary(min_size=1, max_size=2000), first=st.integers(min_value=1, max_value=50))
def test_streamed_message_fragments_concatenate(body, first):
    """A streamed type is forwarded as it arrives, never held back whole."""
    wire = _msg(codes.BE_DATA_ROW, body)
    f = _framer()
    head = f.feed(wire[:5 + first])
    assert len(head) == 1
    msg_type, raw, start, end = head[0]
    assert (msg_type, start) == (codes.BE_DATA_ROW, True)
    assert bytes(raw) == wire[:5 + first]
    assert end == (first >= len(body))
    assert f.at_boundary == end
    tail = _feed(f, [wire[5 + first:]]) if not end else []
    assert b"".join([bytes(raw)] + [p[1] for p in tail]) == wire
    assert all(not p[2] for p in tail)
    assert f.at_boundary


def test_inspected_message_is_held_until_whole():
    wire = _msg(codes.BE_ERROR_RESPONSE, b"SERROR\0Mboom\0\0")
    f = _framer()
    for i in range(len(wire) - 1):
        assert f.feed(wire[i:i + 1]) == []
        assert not f.at_boundary
    (piece,) = f.feed(wire[-1:])
    assert piece[0] == codes.BE_ERROR_RESPONSE and piece[2] and piece[3]
    assert bytes(piece[1]) == wire
    assert f.at_boundary


def test_empty_feed_yields_nothing_mid_message():
    f = _framer()
    f.feed(_msg(codes.BE_DATA_ROW, b"x" * 100)[:20])
    assert f.feed(b"") == []
    assert not f.at_boundary


def test_messages_after_a_streamed_one_in_the_same_chunk():
    a = _msg(codes.BE_DATA_ROW, b"a" * 50)
    z = _msg(codes.BE_READY_FOR_QUERY, b"I")
    f = _framer()
    first = _feed(f, [a[:10]])
    rest = _feed(f, [a[10:] + z])
    assert _reassemble(first + rest) == [(codes.BE_DATA_ROW, a), (codes.BE_READY_FOR_QUERY, z)]


# --- bad headers ----------------------------------------------------------------

BAD_LENGTHS = [0, 1, 3, 0xFFFFFFFF, 0xFFFFFFFE, 0x80000000, 0x7FFFFFFF, MAX_LEN + 1]


@pytest.mark.parametrize("length", BAD_LENGTHS)
@pytest.mark.parametrize("msg_type", [codes.BE_DATA_ROW, codes.BE_READY_FOR_QUERY])
def test_bad_length_is_refused_from_the_header_alone(msg_type, length):
    f = _framer()
    with pytest.raises(RemoteProtocolError):
        f.feed(struct.pack("!BI", msg_type, length))


@pytest.mark.parametrize("length", [0, 3, 0xFFFFFFFF, 0x80000000])
def test_bad_length_after_a_good_message_in_one_chunk(length):
    f = _framer()
    with pytest.raises(RemoteProtocolError):
        f.feed(_msg(codes.BE_READY_FOR_QUERY, b"I") + struct.pack("!BI", codes.BE_DATA_ROW,
                                                                  length) + b"xx")


def test_inspected_message_over_inspect_max_is_refused():
    f = _framer()
    with pytest.raises(RemoteProtocolError):
        f.feed(struct.pack("!BI", codes.BE_ERROR_RESPONSE, INSPECT_MAX + 1))
    # ... while a streamed type of that size is fine.
    g = _framer()
    pieces = g.feed(struct.pack("!BI", codes.BE_DATA_ROW, INSPECT_MAX + 1))
    assert len(pieces) == 1 and not pieces[0][3]


@pytest.mark.parametrize("max_len", [1 << 31, 1 << 32, 1 << 40])
@pytest.mark.parametrize("length", [0x80000000, 0xFFFFFFFF])
def test_length_above_int32_is_refused_whatever_the_limit(max_len, length):
    """The wire length is a signed Int32: 0xffffffff is -1, never 4 GB."""
    f = Framer(VALID, INSPECT, max_len, side="server")
    with pytest.raises(RemoteProtocolError):
        f.feed(struct.pack("!BI", codes.BE_DATA_ROW, length))


@pytest.mark.parametrize("bad_type", [0, ord("x"), ord("Q"), 0xFF])
def test_unknown_type_is_refused_from_the_header(bad_type):
    assert bad_type not in VALID
    f = _framer()
    with pytest.raises(RemoteProtocolError):
        f.feed(struct.pack("!BI", bad_type, 8))


def test_frontend_and_backend_type_sets_are_what_each_side_may_send():
    fe = Framer(codes.FRONTEND_TYPES, frozenset(), MAX_LEN, side="client")
    with pytest.raises(RemoteProtocolError):
        fe.feed(_msg(codes.BE_READY_FOR_QUERY, b"I"))  # 'Z' is never sent by a client
    assert fe.feed(_msg(codes.FE_QUERY, b"select 1\0"))[0][0] == codes.FE_QUERY


@pytest.mark.parametrize("msg_type", [codes.BE_DATA_ROW, codes.BE_COPY_DATA])
def test_huge_claimed_length_is_not_buffered(msg_type):
    """A header claiming 2 GB, followed by a trickle, keeps memory small."""
    f = Framer(VALID, INSPECT, 0x7FFFFFFF, side="server")
    tracemalloc.start()
    try:
        out = f.feed(struct.pack("!BI", msg_type, 0x7FFFFFFF) + b"x" * 1000)
        for _ in range(200):
            out = f.feed(b"y" * 1000)
            assert len(out) == 1 and not out[0][2] and not out[0][3]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    assert not f.at_boundary


def test_partial_inspected_message_holds_only_what_arrived():
    f = Framer(VALID, INSPECT, 0x7FFFFFFF, inspect_max=1 << 20, side="server")
    tracemalloc.start()
    try:
        f.feed(struct.pack("!BI", codes.BE_ERROR_RESPONSE, 1 << 20) + b"S" * 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


@settings(max_examples=300)
@given(chunks=st.lists(st.binary(max_size=64), max_size=20),
       inspect_all=st.booleans())
def test_random_garbage_raises_only_remote_protocol_error(chunks, inspect_all):
    f = Framer(VALID, VALID if inspect_all else INSPECT, 1 << 12, inspect_max=256)
    try:
        for chunk in chunks:
            for msg_type, raw, _start, _end in f.feed(chunk):
                assert msg_type in VALID
                assert len(raw) <= (1 << 12) + 1
    except RemoteProtocolError:
        pass


@settings(max_examples=100)
@given(msgs=messages_st, garbage=st.binary(min_size=5, max_size=40))
def test_garbage_after_valid_messages(msgs, garbage):
    """Valid messages before a bad header are all delivered, then it fails."""
    stream = b"".join(_msg(t, b) for t, b in msgs)
    f = _framer()
    got = _reassemble(_feed(f, [stream]))
    assert [t for t, _ in got] == [t for t, _ in msgs]
    with contextlib.suppress(RemoteProtocolError):
        f.feed(garbage)


@settings(max_examples=80)
@given(extra=st.integers(min_value=1, max_value=3000),
       cuts=st.lists(st.integers(min_value=1, max_value=INSPECT_MAX + 3000), max_size=6))
def test_oversize_inspected_message_streams_with_its_head_first(extra, cuts):
    """With stream_oversize, an inspected type over inspect_max is streamed, and the
    first piece always holds its first OVERSIZE_HEAD bytes (names at the front of a
    large Bind stay readable), however the bytes are chunked."""
    from ecluse.protocol.framing import OVERSIZE_HEAD

    body = bytes(range(256)) * ((INSPECT_MAX + extra) // 256 + 1)
    wire = _msg(codes.BE_ERROR_RESPONSE, body[:INSPECT_MAX + extra]) + _msg(
        codes.BE_READY_FOR_QUERY, b"I")
    f = _framer()
    f.stream_oversize = True
    bounds = sorted({c for c in cuts if c < len(wire)})
    chunks = [wire[a:b] for a, b in zip([0, *bounds], [*bounds, len(wire)], strict=True)]
    pieces = _feed(f, chunks)
    first = pieces[0]
    assert first[0] == codes.BE_ERROR_RESPONSE and first[2]
    assert len(first[1]) >= OVERSIZE_HEAD
    assert b"".join(p[1] for p in pieces) == wire
    assert pieces[-1] == (codes.BE_READY_FOR_QUERY, _msg(codes.BE_READY_FOR_QUERY, b"I"),
                          True, True)


@given(st.lists(st.tuples(st.sampled_from(b"TDCZSE"), st.binary(max_size=20)), max_size=6),
       st.integers(0, 3))
def test_is_whole_reply_only_for_plain_messages_ending_with_ready(messages, trim) -> None:
    plain = frozenset(b"TDC")
    data = b"".join(bytes([t]) + struct.pack("!I", len(body) + 4) + body
                    for t, body in messages)
    cut = data[:len(data) - trim] if trim else data
    expected = (not trim and bool(messages) and messages[-1][0] == ord("Z")
                and len(messages[-1][1]) == 1
                and all(t in plain for t, _b in messages[:-1]))
    assert is_whole_reply(cut, plain) == expected


def test_framers_share_rules_without_sharing_changes():
    """Framers made alike share one rules object (one per idle client would cost
    memory); a change to one framer's rules never reaches another's."""
    a = Framer(codes.FRONTEND_TYPES, frozenset({ord("Q")}), 1 << 20, side="client")
    b = Framer(codes.FRONTEND_TYPES, frozenset({ord("Q")}), 1 << 20, side="client")
    assert a._rules is b._rules
    a.set_inspect(frozenset(), 100)
    a.stream_oversize = True
    assert (b.inspect_max, b.stream_oversize, b._rules.inspect) == (1 << 20, False,
                                                                   frozenset({ord("Q")}))
    big = b"Q" + struct.pack("!I", 4 + 200) + b"x" * 199 + b"\0"
    assert b.feed(big) == [(ord("Q"), big, True, True)]  # b still delivers it whole
    b.set_inspect(frozenset(), 100)
    b.stream_oversize = True
    assert a._rules is b._rules  # alike again: shared again


_TYPE_SETS = st.sampled_from([codes.FRONTEND_TYPES, codes.FRONTEND_SESSION_TYPES,
                              frozenset(), frozenset({ord("Q"), ord("X")})])
_SWITCH = st.fixed_dictionaries({}, optional={
    "valid": _TYPE_SETS, "inspect": _TYPE_SETS,
    "inspect_max": st.sampled_from([0, 100, 1 << 20, 1 << 30]),
    "stream_oversize": st.booleans()})


@given(max_len=st.sampled_from([50, 1 << 20]), switches=st.lists(_SWITCH, max_size=6))
def test_switch_gives_the_rules_asked_for(max_len, switches):
    """Framer.switch, looked up from earlier switches or not, sets exactly the rules
    given (inspect_max capped by the longest message) and leaves the rest alone."""
    # Hypothesis makes far more distinct rules than a pooler ever has: start each
    # example below the bound at which the shared rules are forgotten.
    framing.forget_rules()
    framer = Framer(codes.FRONTEND_TYPES, frozenset(), max_len, side="client")
    for changes in switches:
        want = framer._rules._asdict()
        want.update(changes)
        if "inspect_max" in changes:
            want["inspect_max"] = min(changes["inspect_max"], max_len)
        framer.switch(**changes)
        assert framer._rules._asdict() == want
        # Alike rules are one object, however they were reached.
        fresh = Framer(want["valid"], want["inspect"], max_len, want["inspect_max"],
                       side="client", stream_oversize=want["stream_oversize"])
        assert fresh._rules is framer._rules


def test_rules_stay_shared_when_the_bound_is_reached():
    """Past _SWITCHES_MAX distinct rules everything is forgotten at once, so rules
    reached by Framer() and by switch() are still one object afterwards."""
    framing.forget_rules()
    for n in range(framing._SWITCHES_MAX + 5):  # each a distinct set of rules
        Framer(codes.FRONTEND_TYPES, frozenset(), 1000 + n, side="client")
    framer = Framer(codes.FRONTEND_TYPES, frozenset(), 50, side="client")
    framer.switch(inspect_max=10)
    fresh = Framer(codes.FRONTEND_TYPES, frozenset(), 50, 10, side="client")
    assert fresh._rules is framer._rules
    assert len(framing._SHARED) <= framing._SWITCHES_MAX
