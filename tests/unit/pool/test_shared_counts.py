"""Node-wide server counts (pool/shared.py): limits hold across forked workers."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from ecluse.pool.pool import wanted_changed
from ecluse.pool.shared import LocalCounts, SharedCounts

keys = st.sampled_from([("pool", "db", "u"), ("db", "db"), ("user", "u"), ("db", "other")])
ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.lists(st.tuples(keys, st.integers(0, 3)), min_size=1,
                                       max_size=3, unique_by=lambda kl: kl[0])),
    st.tuples(st.just("remove"), st.lists(keys, min_size=1, max_size=3, unique=True)),
), max_size=40)


@given(ops)
def test_shared_counts_behave_as_local_counts_in_one_process(sequence):
    local, shared = LocalCounts(), SharedCounts(workers=3, slots=64)
    shared.set_worker(1)
    for op, arg in sequence:
        if op == "add":
            assert local.try_add(arg) == shared.try_add(arg)
        else:
            local.remove(arg)
            shared.remove(arg)
        for key in {k for k, _ in arg} if op == "add" else arg:
            assert local.total(key) == shared.total(key)


def test_limit_holds_across_forked_workers():
    """Four processes race for one pool of 25: exactly 25 launches succeed in all."""
    counts = SharedCounts(workers=4, slots=16)
    key = ("pool", "db", "user")
    pipes = []
    for worker in range(4):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(r)
            counts.set_worker(worker)
            won = sum(counts.try_add([(key, 25), (("db", "db"), 0)]) for _ in range(500))
            os.write(w, str(won).encode())
            os._exit(0)
        os.close(w)
        pipes.append((pid, r))
    won = []
    for pid, r in pipes:
        os.waitpid(pid, 0)
        won.append(int(os.read(r, 100)))
        os.close(r)
    assert sum(won) == 25
    assert counts.total(key) == 25
    assert counts.total(("db", "db")) == 25  # no limit, counted all the same


def test_clear_worker_forgets_a_dead_workers_servers_and_wants():
    counts = SharedCounts(workers=2, slots=16)
    key = ("pool", "db", "user")
    counts.set_worker(0)
    assert counts.try_add([(key, 2)]) and counts.try_add([(key, 2)])
    assert not counts.try_add([(key, 2)])
    counts.set_wanted(key, 3)
    counts.set_worker(1)
    assert counts.wanted_elsewhere(key)
    counts.clear_worker(0)
    assert not counts.wanted_elsewhere(key)
    assert counts.try_add([(key, 2)])
    assert counts.total(key) == 1


def test_a_full_table_never_blocks_a_launch():
    counts = SharedCounts(workers=1, slots=2)
    for i in range(4):
        assert counts.try_add([(("pool", str(i)), 1)])


@given(st.lists(st.integers(0, 2000), max_size=60))
def test_published_wanted_count_is_zero_exactly_when_none_wait_else_within_twice(counts):
    """Pool._publish_wanted's rule (pool.wanted_changed): a lender must see that
    clients wait as soon as they do and stop lending when they stop; their number
    may lag, by less than a factor of two either way."""
    published = 0
    for waiting in counts:
        if wanted_changed(waiting, published):
            published = waiting
        assert (published == 0) == (waiting == 0)
        if waiting:
            assert published / 2 < waiting < published * 2


def test_set_wanted_after_the_slot_is_claimed_takes_no_lock():
    """The hot path's publish: once the key has a slot, a worker writes its own
    column without the lock, and the others read it."""
    counts = SharedCounts(workers=2, slots=16)
    key = ("pool", "db", "user")
    counts.set_wanted(key, 1)  # claims the slot (under the lock)
    counts._lock_fd, fd = -1, counts._lock_fd  # any lockf now raises EBADF
    try:
        counts.set_wanted(key, 7)
    finally:
        counts._lock_fd = fd
    counts.set_worker(1)
    assert counts.wanted_elsewhere(key) == 7
    counts.close()
