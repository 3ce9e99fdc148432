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

from dataclasses import dataclass

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


def test_query_after_an_unsynced_batch_ends_it():
    """asyncpg's copy_records_to_table: Parse, Describe, Flush, then a Query."""
    t = _run(RequestTracker(), ">P >D >H <1 <t <T >Q")
    assert not t.can_release() and t.expected_ready == 1
    assert _run(t, "<G <C <Z:I").can_release()


def test_query_skipped_after_an_error_in_its_batch():
    """The server ignores the Query; only the client's later Sync is answered."""
    t = _run(RequestTracker(), ">P >H <E >Q")
    t.query_skipped()
    assert not t.can_release() and not t.is_done()  # the batch waits for its Sync
    _run(t, ">S")
    assert not t.can_release() and t.expected_ready == 1
    assert _run(t, "<Z:I").can_release()


def test_query_skipped_with_the_sync_already_sent():
    t = _run(RequestTracker(), ">P >H >Q >S <E")
    t.query_skipped()
    assert t.expected_ready == 1
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


def test_error_during_execute_copy_then_sync_without_copy_done():
    """The client sees the COPY fail and sends Sync with no CopyDone: that Sync,
    read after the error, ends the skip and earns the ReadyForQuery."""
    t = _run(RequestTracker(), ">P >B >E >S <1 <2 <G >d >d <E")
    assert not t.copy_in and not t.can_release() and t.expected_ready == 0
    _run(t, ">S")
    assert t.expected_ready == 1 and not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_error_during_execute_copy_syncs_sent_during_copy_stay_ignored():
    t = _run(RequestTracker(), ">P >B >E <1 <2 <G >S >d >H >S <E")
    assert t.expected_ready == 0 and not t.can_release()
    _run(t, ">S <Z:I")
    assert t.can_release() and t.expected_ready == 0


def test_error_during_execute_copy_late_copy_done_is_dropped():
    """libpq sends CopyDone and Sync after it sees the error: the server drops
    the CopyDone and answers the Sync; nothing stale is left for a later COPY."""
    t = _run(RequestTracker(), ">P >B >E >S <1 <2 <G >d <E >c >S")
    assert t.expected_ready == 1
    _run(t, "<Z:I")
    assert t.can_release()
    _run(t, ">Q <G >d >c <C")
    assert not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_error_during_simple_copy_sync_before_its_ready_for_query():
    """A Sync sent between the COPY's ErrorResponse and its ReadyForQuery is
    read outside COPY and earns a ReadyForQuery of its own."""
    t = _run(RequestTracker(), ">Q <G >d <E >S")
    assert t.expected_ready == 2
    _run(t, "<Z:I")
    assert not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_cancel_during_execute_copy_waits_for_the_clients_sync():
    t = _run(RequestTracker(), ">P >B >E >S <1 <2 <G <E")
    assert not t.can_release()
    _run(t, ">c >S <Z:I")
    assert t.can_release()


def test_error_during_copy_out_ends_it():
    t = _run(RequestTracker(), ">Q <H <d")
    assert t.copy_out
    _run(t, "<E")
    assert not t.copy_out and not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_error_outside_copy_changes_nothing():
    t = _run(RequestTracker(), ">P >B >E >S <1 <E")
    assert t.expected_ready == 1 and not t.can_release()
    assert _run(t, "<Z:I").can_release()


def test_awaits_copy_end():
    t = _run(RequestTracker(), ">Q")
    assert not t.awaits_copy_end()
    _run(t, "<G >d")
    assert t.awaits_copy_end()
    _run(t, ">c")
    assert not t.awaits_copy_end() and t.copy_in
    t = _run(RequestTracker(), ">Q <G <E")
    assert not t.awaits_copy_end()


# --- finish_abandoned: what ecluse sends for a client that left -------------------------

def _types(data: bytes) -> str:
    """The message types in a run of encoded frontend messages."""
    out, pos = [], 0
    while pos < len(data):
        out.append(chr(data[pos]))
        pos += 1 + int.from_bytes(data[pos + 1:pos + 5], "big")
    assert pos == len(data)
    return "".join(out)


@pytest.mark.parametrize("script", ["", ">Q <C <Z:I", ">Q <C <Z:T", ">P >B >E >S <1 <2 <C <Z:I"])
def test_finish_abandoned_sends_nothing_when_nothing_waits(script):
    t = _run(RequestTracker(), script)
    assert t.finish_abandoned() == b""


@pytest.mark.parametrize(("script", "sent", "replies"), [
    # A query still running: the CopyFail is dropped after it.
    (">Q <T <D", "f", "<D <C <Z:I"),
    # A closed extended batch still running: its Execute might yet start a COPY
    # (which would ignore the Sync), so a failing Parse and a Sync follow.
    (">P >B >E >S <1 <2 <D", "fPS", "<C <Z:I <E <Z:I"),
    (">P >B >E >S", "fPS", "<1 <2 <G <E <Z:I"),
    # COPY IN by Query, data half sent: CopyFail ends it.
    (">Q <G >d", "f", "<E <Z:I"),
    # COPY IN by Execute: CopyFail, then the Sync the skip needs.
    (">P >B >E >S <1 <2 <G >d", "fPS", "<E <Z:I"),
    # The COPY has not been answered yet, by Query and by Execute.
    (">Q", "f", "<G <E <Z:I"),
    (">P >B >E", "fPS", "<1 <2 <G <E <Z:I"),
    # Flush without Sync: the batch is rolled back, not committed.
    (">P >B >E >H <1 <2 <C", "fPS", "<E <Z:I"),
    (">P >B >D >H <1 <2 <T", "fPS", "<E <Z:I"),
    # An error already made the server skip: the Parse is skipped too.
    (">P >B >E <1 <E", "fPS", "<Z:I"),
    # Client sent its CopyDone but not the Sync.
    (">P >B >E <1 <2 <G >d >c <C", "fPS", "<E <Z:I"),
])
def test_finish_abandoned(script, sent, replies):
    t = _run(RequestTracker(), script)
    assert _types(t.finish_abandoned()) == sent
    assert not t.can_release()
    _run(t, replies)
    assert t.can_release() and t.expected_ready == 0 and not t.copy_in
    assert t.finish_abandoned() == b""


def test_finish_abandoned_in_a_transaction_block():
    t = _run(RequestTracker(), ">Q <C <Z:T >P >B >E >H <1 <2 <C")
    assert _types(t.finish_abandoned()) == "fPS"
    _run(t, "<E <Z:E")
    assert t.is_done() and not t.can_release()  # the caller rolls back


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
            if msg_type in ("f", "P", "B", "D", "E", "Q", "F"):
                return self._copy_error()  # any non-copy message aborts COPY IN
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
            if meaning == FAIL:  # a Parse that fails (ecluse's, for a departed client)
                self.mode = "skip"
                if self.txn == "T":
                    self.txn = "E"
                return [("E", "")]
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


WAIT = "wait"  # meaning of a Sync the client sends only after it saw the error


def _copy_body(draw, extended: bool) -> list[tuple[str, object]]:
    """CopyData then CopyDone or CopyFail (and the Sync an Execute's COPY needs),
    or a bad CopyData and, once the client has seen the error, a bare Sync."""
    n = draw(st.integers(min_value=0, max_value=3))
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        return [*[("d", False)] * n, ("d", True), ("S", WAIT)]
    bad = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=max(n - 1, 0))))
    data: list[tuple[str, object]] = [("d", i == bad) for i in range(n)]
    end = [(draw(st.sampled_from(["c", "c", "f"])), None)]
    return [*data, *end, *([("S", None)] if extended else [])]


@st.composite
def simple_copy(draw):
    start = draw(st.sampled_from([COPY, COPY, COPY_FAILS]))
    sync = [("S", None)] if draw(st.booleans()) else []  # a library that always syncs
    return [("Q", [start]), *sync, *_copy_body(draw, extended=False)]


@st.composite
def extended_copy(draw):
    start = draw(st.sampled_from([COPY, COPY, COPY_FAILS]))
    head = [("P", None), ("B", None), ("E", start)]
    if draw(st.booleans()):
        head.append(("S", None))  # libpq syncs before it knows this is a COPY
    return [*head, *_copy_body(draw, extended=True)]


requests = st.lists(
    st.one_of(simple_query(), function_call(), extended_batch(), simple_copy(),
              extended_copy()),
    min_size=1, max_size=6,
)


def _message_types(data: bytes) -> list[str]:
    return list(_types(data))


class Exchange:
    """One client, the model server and the tracker, stepped in a causally valid order.

    Each client message is answered by the model as soon as it is sent (the
    model has no timing), and its replies are delivered to the tracker later,
    in order, interleaved with further client messages.
    """

    def __init__(self, tracker: RequestTracker):
        self.tracker = tracker
        self.server = Server()
        self.sent: list[str] = []
        self.replies: list[list[tuple[str, str]]] = []
        self.delivered: list[int] = []
        self.cursor = 0  # the message whose replies are being delivered
        self.last_status = "I"

    def send(self, msg_type: str, meaning: object, to_tracker: bool = True) -> None:
        self.sent.append(msg_type)
        self.replies.append(self.server.receive(msg_type, meaning))
        self.delivered.append(0)
        if to_tracker:
            self.tracker.on_client_message(ord(msg_type))

    def can_reply(self) -> bool:
        while self.cursor < len(self.sent) and \
                self.delivered[self.cursor] == len(self.replies[self.cursor]):
            self.cursor += 1
        return self.cursor < len(self.sent)

    def reply(self) -> None:
        i = self.cursor
        msg_type, status = self.replies[i][self.delivered[i]]
        self.delivered[i] += 1
        self.tracker.on_server_message(ord(msg_type), ord(status) if status else 0)
        if msg_type == "Z":
            self.last_status = status

    def saw_error(self) -> bool:
        """True once the client has every reply up to the last message's first error."""
        if not self.sent:
            return True
        last = len(self.sent) - 1
        if any(self.delivered[i] < len(self.replies[i]) for i in range(last)):
            return False
        kinds = [t for t, _ in self.replies[last]]
        need = kinds.index("E") + 1 if "E" in kinds else len(kinds)
        return self.delivered[last] >= need

    def check(self) -> None:
        # Free exactly when the server has answered everything it was sent and
        # needs nothing more to finish a request. A client may still owe late
        # copy messages the server will drop (pgbouncer #1470): that is free.
        answered = all(d == len(r) for d, r in zip(self.delivered, self.replies, strict=True))
        expected = not self.server.is_waiting() and answered and self.last_status == "I"
        assert self.tracker.can_release() == expected, (
            f"after {self.sent} and replies {self.delivered} of {self.replies}")


def _drive(reqs, data, depart_at: int | None) -> Exchange:
    msgs = [m for req in reqs for m in req]
    ex = Exchange(RequestTracker())
    n_sent = 0
    departed = False
    limit = len(msgs) if depart_at is None else min(depart_at, len(msgs))
    while True:
        can_reply = ex.can_reply()
        can_depart = depart_at is not None and not departed and n_sent == limit
        can_send = not departed and n_sent < limit and (
            msgs[n_sent][1] != WAIT or ex.saw_error())
        if can_depart and (not can_reply or data.draw(st.booleans())):
            departed = True
            for msg_type in _message_types(ex.tracker.finish_abandoned()):
                ex.send(msg_type, FAIL if msg_type == "P" else None, to_tracker=False)
        elif can_send and (not can_reply or data.draw(st.booleans())):
            ex.send(*msgs[n_sent])
            n_sent += 1
        elif can_reply:
            ex.reply()
        else:
            break
        ex.check()
    return ex


@settings(max_examples=400, deadline=None)
@given(reqs=requests, data=st.data())
def test_tracker_agrees_with_a_model_server(reqs, data):
    ex = _drive(reqs, data, depart_at=None)
    assert ex.server.mode == "normal"
    assert ex.tracker.can_release() == (ex.last_status == "I")
    assert ex.tracker.expected_ready == 0


@settings(max_examples=400, deadline=None)
@given(reqs=requests, data=st.data())
def test_finish_abandoned_leaves_the_model_server_free(reqs, data):
    """The client leaves at any message boundary; what finish_abandoned sends
    makes the server answer everything, and the tracker knows exactly when."""
    n = sum(len(r) for r in reqs)
    ex = _drive(reqs, data, depart_at=data.draw(st.integers(min_value=0, max_value=n)))
    assert ex.server.mode == "normal" and not ex.server.is_waiting()
    assert ex.tracker.is_done() and ex.tracker.expected_ready == 0
    assert ex.tracker.can_release() == (ex.last_status == "I")
