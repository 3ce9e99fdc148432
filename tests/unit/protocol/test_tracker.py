"""RequestTracker: when a server may be released in transaction mode.

Unit cases for the threads of RELIABILITY.md §3.6 and §3.7 (pipelines, errors
in extended batches, Flush, COPY IN by Query and by Execute, Syncs ignored
during COPY, late CopyDone after a failed COPY), then a model-based property:
a small reference model of PostgreSQL answers random request sequences, the
client sends and server replies are interleaved in any causally valid order,
and the tracker must allow release exactly when everything has been answered
and the last ReadyForQuery said 'I'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecluse.protocol.tracker import RequestTracker


def _run(tracker: RequestTracker, script: str) -> RequestTracker:
    """Apply a script of events: ">X" the client sent X, "<X" the server sent X,
    "<Z:T" a ReadyForQuery with status T."""
    for token in script.split():
        side, rest = token[0], token[1:]
        if side == ">":
            tracker.on_client_message(ord(rest))
        elif side == "<":
            msg_type, _, status = rest.partition(":")
            tracker.on_server_message(ord(msg_type), ord(status) if status else 0)
        else:
            raise AssertionError(token)
    return tracker


def _steps(script: str) -> list[bool]:
    """can_release() after each event of the script."""
    t = RequestTracker()
    out = []
    for token in script.split():
        _run(t, token)
        out.append(t.can_release())
    return out


def test_fresh_tracker_is_releasable():
    t = RequestTracker()
    assert t.can_release() and t.is_done() and t.expected_ready == 0


def test_simple_query():
    assert _steps(">Q <T <D <C <Z:I") == [False, False, False, False, True]


def test_multi_statement_query_has_one_ready_for_query():
    t = _run(RequestTracker(), ">Q <C <T <D <C <C")
    assert not t.can_release() and t.expected_ready == 1
    assert _run(t, "<Z:I").can_release()


def test_transaction_block_statuses():
    t = _run(RequestTracker(), ">Q <C <Z:T")
    assert t.is_done() and not t.can_release()
    _run(t, ">Q <C <Z:T")
    assert not t.can_release()
    _run(t, ">Q <E <Z:E")
    assert t.is_done() and not t.can_release()  # aborted: never release (pgbouncer #1415)
    _run(t, ">Q <C <Z:E")
    assert not t.can_release()
    _run(t, ">Q <C <Z:I")  # ROLLBACK
    assert t.can_release()


def test_pipeline_of_three_syncs_releases_after_the_third():
    """supavisor #1061: the first Z must not release while two more are due."""
    t = _run(RequestTracker(), ">P >B >E >S >P >B >E >S >P >B >E >S")
    assert t.expected_ready == 3
    for left in (2, 1):
        _run(t, "<1 <2 <C <Z:I")
        assert t.expected_ready == left and not t.can_release()
    _run(t, "<1 <2 <C <Z:I")
    assert t.can_release()


def test_pipelined_simple_queries():
    t = _run(RequestTracker(), ">Q >Q <C <Z:I")
    assert not t.can_release()
    assert _run(t, "<C <Z:I").can_release()


def test_flush_without_sync_keeps_the_server():
    t = _run(RequestTracker(), ">P >D >H <1 <t <T")
    assert not t.can_release() and not t.is_done()
    _run(t, ">B >E >H <2 <D <C")
    assert not t.can_release()
    _run(t, ">S")
    assert not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_extended_messages_after_a_sync_keep_the_server():
    t = _run(RequestTracker(), ">P >B >E >S <1 <2 <C <Z:I >P")
    assert not t.can_release()


def test_lone_sync_earns_a_ready_for_query():
    t = _run(RequestTracker(), ">S")
    assert t.expected_ready == 1 and not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_error_in_extended_batch_skips_to_sync():
    """Executes after the error get no CommandComplete; Z settles them all."""
    t = _run(RequestTracker(), ">P >B >E >P >B >E >P >B >E >S <1 <2 <E")
    assert not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_error_in_first_of_two_pipelined_batches():
    t = _run(RequestTracker(), ">P >B >E >S >P >B >E >S <1 <2 <E <Z:I")
    assert not t.can_release() and t.expected_ready == 1
    assert _run(t, "<1 <2 <C <Z:I").can_release()


def test_error_before_sync_is_sent():
    t = _run(RequestTracker(), ">P >B >E <1 <2 <E")
    assert not t.can_release()
    _run(t, ">S")
    assert not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_portal_suspended_and_empty_query():
    t = _run(RequestTracker(), ">B >E >E >S <2 <D <s <D <C <Z:I")
    assert t.can_release()
    t = _run(RequestTracker(), ">P >B >E >S <1 <2 <I <Z:I")
    assert t.can_release()


def test_function_call():
    assert _steps(">F <V <Z:I") == [False, False, True]


def test_copy_in_via_query():
    t = _run(RequestTracker(), ">Q <G")
    assert t.copy_in and not t.can_release()
    _run(t, ">d >d >c")
    assert not t.can_release()
    _run(t, "<C")
    assert not t.copy_in and not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_copy_in_via_query_pipelined_data():
    """Copy data sent before CopyInResponse arrives is matched to the COPY."""
    t = _run(RequestTracker(), ">Q >d >d >c <G <C")
    assert not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_copy_in_via_query_ignores_a_sync_sent_during_copy():
    """The server ignores Sync and Flush in COPY IN mode, however COPY started."""
    t = _run(RequestTracker(), ">Q >S <G >d >c <C <Z:I")
    assert t.can_release()
    t = _run(RequestTracker(), ">Q <G >S >d >H >c <C <Z:I")
    assert t.can_release()


def test_copy_in_via_execute_ignores_syncs():
    """pgbouncer #1025: libpq sends Sync after Execute; the server ignores it."""
    t = _run(RequestTracker(), ">P >B >D >E >S <1 <2 <n <G")
    assert t.copy_in and not t.can_release()
    _run(t, ">d >S >d >c")
    assert not t.can_release()
    _run(t, ">S <C")
    assert not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_copy_in_via_execute_sync_after_copy_response():
    t = _run(RequestTracker(), ">P >B >E <1 <2 <G >S >d >c >S <C <Z:I")
    assert t.can_release()


def test_copy_in_via_execute_all_pipelined():
    t = _run(RequestTracker(), ">P >B >E >S >d >c >S <1 <2 <G <C")
    assert not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_copy_done_then_waiting_for_sync_keeps_the_server():
    """After an Execute-started COPY completes, the server still waits for Sync."""
    t = _run(RequestTracker(), ">P >B >E >S <1 <2 <G >d >c <C")
    assert not t.copy_in and not t.can_release()


def test_copy_fail_simple():
    t = _run(RequestTracker(), ">Q <G >d >f <E")
    assert not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_copy_fail_extended():
    t = _run(RequestTracker(), ">P >B >E >S <1 <2 <G >d >f >S <E")
    assert not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_late_copy_done_after_a_failed_copy_does_not_keep_the_server():
    """pgbouncer #1470: the server failed the COPY and answered Z before the
    client's remaining CopyData and CopyDone arrived; the server drops them."""
    t = _run(RequestTracker(), ">Q <G >d <E <Z:I")
    assert t.can_release()
    _run(t, ">d >d >c")
    assert t.can_release()


def test_late_copy_done_does_not_confuse_the_next_copy():
    """The stale CopyDone must not be paired with a later COPY's response."""
    t = _run(RequestTracker(), ">Q <G >d <E <Z:I >d >c")
    _run(t, ">P >B >E >S <1 <2 <G >d >c >S <C")
    assert not t.can_release()
    _run(t, "<Z:I")
    assert t.can_release() and t.expected_ready == 0


def test_late_copy_done_before_a_simple_copy():
    t = _run(RequestTracker(), ">Q <G >d <E <Z:I >c")
    _run(t, ">Q <G >d >c <C")
    assert not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_copy_error_in_transaction_leaves_it_failed():
    t = _run(RequestTracker(), ">Q <C <Z:T >Q <G >d <E <Z:E >c")
    assert t.is_done() and not t.can_release()
    assert _run(t, ">Q <C <Z:I").can_release()


def test_copy_that_fails_to_start_counts_later_syncs():
    """No CopyInResponse: the Sync after Execute and the one after CopyDone both count."""
    t = _run(RequestTracker(), ">P >B >E >S >d >c >S <1 <2 <E <Z:I")
    assert not t.can_release() and t.expected_ready == 1
    assert _run(t, "<Z:I").can_release()


def test_reset_forgets_everything():
    t = _run(RequestTracker(), ">P >B >E >Q <G")
    t.reset()
    assert t.can_release() and not t.copy_in and t.expected_ready == 0


@pytest.mark.parametrize("status", ["T", "E"])
def test_never_released_outside_idle(status):
    t = _run(RequestTracker(), f">Q <C <Z:{status}")
    assert t.is_done() and not t.can_release()


# --- model-based property ------------------------------------------------------------
#
# A request is a list of (type, meaning) the client sends. The reference server
# below reads them in order and answers with (type, status) pairs. It follows
# the protocol's message-flow chapter, independently of the tracker's code.

SELECT, BEGIN, COMMIT, FAIL, EMPTY, COPY, COPY_FAILS = (
    "select", "begin", "commit", "fail", "empty", "copy", "copy_fails")


@dataclass
class Server:
    """PostgreSQL as far as message flow goes."""

    txn: str = "I"
    mode: str = "normal"  # normal, copy_simple, copy_ext, skip
    open_batch: bool = False  # extended messages read since the last Sync

    def is_waiting(self) -> bool:
        """True while the server needs more client messages to finish a request."""
        return self.mode != "normal" or self.open_batch

    def _statement(self, kind: str) -> list[tuple[str, str]]:
        """Run one statement; return its replies. An error ends with 'E'."""
        if self.txn == "E" and kind != COMMIT:
            return [("E", "")]
        if kind in (FAIL, COPY_FAILS):
            if self.txn == "T":
                self.txn = "E"
            return [("E", "")]
        if kind == BEGIN:
            out = [("N", "")] if self.txn == "T" else []
            self.txn = "T"
            return [*out, ("C", "")]
        if kind == COMMIT:
            self.txn = "I"
            return [("C", "")]
        if kind == EMPTY:
            return [("I", "")]
        return [("T", ""), ("D", ""), ("D", ""), ("C", "")]

    def _ready(self) -> tuple[str, str]:
        return ("Z", self.txn)

    def _copy_error(self) -> list[tuple[str, str]]:
        if self.txn == "T":
            self.txn = "E"
        if self.mode == "copy_simple":
            self.mode = "normal"
            return [("E", ""), self._ready()]
        self.mode = "skip"
        return [("E", "")]

    def receive(self, msg_type: str, meaning: object) -> list[tuple[str, str]]:
        if msg_type in ("P", "B", "D", "E") and self.mode in ("normal", "skip"):
            self.open_batch = True
        elif msg_type == "S" and self.mode in ("normal", "skip"):
            self.open_batch = False
        return self._receive(msg_type, meaning)

    def _receive(self, msg_type: str, meaning: object) -> list[tuple[str, str]]:
        if self.mode == "skip":
            if msg_type == "S":
                self.mode = "normal"
                return [self._ready()]
            return []
        if self.mode in ("copy_simple", "copy_ext"):
            if msg_type in ("S", "H"):
                return []  # ignored during COPY IN
            if msg_type == "d":
                return self._copy_error() if meaning else []
            if msg_type == "f":
                return self._copy_error()
            assert msg_type == "c", msg_type
            simple = self.mode == "copy_simple"
            self.mode = "normal"
            return [("C", ""), self._ready()] if simple else [("C", "")]
        # normal mode
        if msg_type in ("d", "c", "f", "H"):
            return []  # late copy messages are dropped; Flush has no reply
        if msg_type == "Q":
            out: list[tuple[str, str]] = []
            for kind in meaning:
                if kind == COPY and self.txn != "E":
                    self.mode = "copy_simple"
                    return [*out, ("G", "")]
                replies = self._statement(kind)
                out += replies
                if replies[-1][0] == "E":
                    break
            return [*out, self._ready()]
        if msg_type == "F":
            replies = [("E", "")] if meaning else [("V", "")]
            if meaning and self.txn == "T":
                self.txn = "E"
            return [*replies, self._ready()]
        if msg_type == "S":
            return [self._ready()]
        if msg_type == "P":
            return [("1", "")]
        if msg_type == "B":
            return [("2", "")]
        if msg_type == "D":
            return [("n", "")]
        assert msg_type == "E", msg_type
        if meaning == COPY and self.txn != "E":
            self.mode = "copy_ext"
            return [("G", "")]
        replies = self._statement(meaning)
        if replies[-1][0] == "E":
            self.mode = "skip"
        return replies


statement_kinds = st.sampled_from([SELECT, SELECT, BEGIN, COMMIT, FAIL, EMPTY])


@st.composite
def simple_query(draw):
    return [("Q", draw(st.lists(statement_kinds, min_size=1, max_size=3)))]


@st.composite
def function_call(draw):
    return [("F", draw(st.booleans()))]


@st.composite
def extended_batch(draw):
    msgs: list[tuple[str, object]] = []
    for kind in draw(st.lists(statement_kinds, max_size=3)):
        msgs += [("P", None), ("B", None)]
        if draw(st.booleans()):
            msgs.append(("D", None))
        msgs.append(("E", kind))
        if draw(st.booleans()):
            msgs.append(("H", None))
    return [*msgs, ("S", None)]


def _copy_body(draw) -> list[tuple[str, object]]:
    n = draw(st.integers(min_value=0, max_value=3))
    bad = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=max(n - 1, 0))))
    data: list[tuple[str, object]] = [("d", i == bad) for i in range(n)]
    return [*data, (draw(st.sampled_from(["c", "c", "f"])), None)]


@st.composite
def simple_copy(draw):
    start = draw(st.sampled_from([COPY, COPY, COPY_FAILS]))
    sync = [("S", None)] if draw(st.booleans()) else []  # a library that always syncs
    return [("Q", [start]), *sync, *_copy_body(draw)]


@st.composite
def extended_copy(draw):
    start = draw(st.sampled_from([COPY, COPY, COPY_FAILS]))
    head = [("P", None), ("B", None), ("E", start)]
    if draw(st.booleans()):
        head.append(("S", None))  # libpq syncs before it knows this is a COPY
    return [*head, *_copy_body(draw), ("S", None)]


requests = st.lists(
    st.one_of(simple_query(), function_call(), extended_batch(), simple_copy(),
              extended_copy()),
    min_size=1, max_size=6,
)


@dataclass
class Trace:
    """Client messages with the replies each one causes, in server order."""

    sent: list[str] = field(default_factory=list)
    replies: list[list[tuple[str, str]]] = field(default_factory=list)
    idle: list[bool] = field(default_factory=list)  # idle[n]: server waits for nothing


def _trace(reqs: list[list[tuple[str, object]]]) -> Trace:
    server = Server()
    trace = Trace(idle=[True])
    for req in reqs:
        for msg_type, meaning in req:
            trace.sent.append(msg_type)
            trace.replies.append(server.receive(msg_type, meaning))
            trace.idle.append(not server.is_waiting())
    assert server.mode == "normal"
    return trace


@settings(max_examples=400, deadline=None)
@given(reqs=requests, data=st.data())
def test_tracker_agrees_with_a_model_server(reqs, data):
    trace = _trace(reqs)
    tracker = RequestTracker()
    n_sent = 0
    delivered = [0] * len(trace.sent)  # replies delivered per client message
    reply_cursor = 0  # the client message whose replies are being delivered
    last_status = "I"

    def all_answered() -> bool:
        return all(delivered[i] == len(trace.replies[i]) for i in range(n_sent))

    while n_sent < len(trace.sent) or reply_cursor < len(trace.sent):
        while reply_cursor < n_sent and delivered[reply_cursor] == len(
                trace.replies[reply_cursor]):
            reply_cursor += 1
        can_reply = reply_cursor < n_sent
        can_send = n_sent < len(trace.sent)
        if not can_reply and not can_send:
            break
        if can_send and (not can_reply or data.draw(st.booleans())):
            tracker.on_client_message(ord(trace.sent[n_sent]))
            n_sent += 1
        else:
            msg_type, status = trace.replies[reply_cursor][delivered[reply_cursor]]
            delivered[reply_cursor] += 1
            tracker.on_server_message(ord(msg_type), ord(status) if status else 0)
            if msg_type == "Z":
                last_status = status
        # Free exactly when the server has answered everything it was sent and
        # needs nothing more to finish a request. A client may still owe late
        # copy messages the server will drop (pgbouncer #1470): that is free.
        expected = trace.idle[n_sent] and all_answered() and last_status == "I"
        assert tracker.can_release() == expected, (
            f"after {trace.sent[:n_sent]} and replies {delivered[:n_sent]} of "
            f"{trace.replies[:n_sent]}")
    assert tracker.can_release() == (last_status == "I")
    assert tracker.expected_ready == 0
