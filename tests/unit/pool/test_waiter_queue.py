"""WaiterQueue's bookkeeping under generated push / pop / cancel / fail sequences.

The pool reads ``live`` instead of asking the queue (once per transaction), so
``live`` must always be the number of waiters not finished, 0 only with the
deque empty (finished waiters are never kept with nobody alive behind them),
and pop must hand out live waiters in arrival order.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ecluse.pool.waiters import Waiter, WaiterQueue


class Client:
    def __init__(self) -> None:
        self.assigned: list[object] = []
        self.failed: list[Exception] = []

    def on_server_assigned(self, server) -> None:
        self.assigned.append(server)

    def on_wait_failed(self, error: Exception) -> None:
        self.failed.append(error)


ops = st.lists(st.tuples(st.sampled_from(["push", "pop", "cancel", "fail", "assign_queued"]),
                         st.integers(min_value=0, max_value=50)), max_size=120)


@given(ops)
@settings(max_examples=400)
# A finished waiter behind the last live one, then the live one popped.
@example([("push", 0), ("push", 0), ("cancel", 1), ("pop", 0)])
def test_live_counts_the_unfinished_and_pop_keeps_arrival_order(steps):
    queue = WaiterQueue()
    waiting: list[Waiter] = []  # the model: live waiters in arrival order
    for op, pick in steps:
        if op == "push":
            w = Waiter(Client())
            queue.push(w)
            waiting.append(w)
        elif op == "pop":
            w = queue.pop()
            assert w is (waiting.pop(0) if waiting else None)
            if w is not None:
                assert w.assign("server") and w.client.assigned == ["server"]
                assert not w.assign("again")  # a waiter is served once
        elif waiting:
            w = waiting.pop(pick % len(waiting))
            if op == "cancel":
                w.cancel()
            elif op == "fail":
                assert w.fail(TimeoutError("query_wait_timeout"))
                assert not w.fail(TimeoutError("twice"))
            else:  # served while still queued (a hand-over that skipped pop)
                assert w.assign("server")
            assert w.done
        assert queue.live == len(waiting) == len(queue) == len(list(queue))
        assert bool(queue) == bool(waiting)
        if not queue.live:
            assert not queue.queue  # nothing finished left behind
        assert queue.first() is (waiting[0] if waiting else None)
