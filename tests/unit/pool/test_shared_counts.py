"""Node-wide server counts (pool/shared.py): limits hold across forked workers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
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


def test_a_worker_started_by_exec_attaches_to_the_same_table():
    """A rolled-over generation runs newly exec'd code: it maps the table from the
    descriptors it inherits, and its launches count against the same limit."""
    counts = SharedCounts(workers=4, slots=16, node_workers=2)
    key = ("pool", "db", "user")
    for _ in range(3):
        assert counts.try_add([(key, 5)])
    table_fd, lock_fd = counts.fds
    code = (
        "import sys\n"
        "from ecluse.pool.shared import SharedCounts\n"
        "c = SharedCounts.attach(int(sys.argv[1]), int(sys.argv[2]))\n"
        "c.set_worker(3)\n"
        "won = sum(c.try_add([(('pool', 'db', 'user'), 5)]) for _ in range(10))\n"
        "print(won, c.total(('pool', 'db', 'user')), c.node_workers, c.workers)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(table_fd), str(lock_fd)],
                         pass_fds=(table_fd, lock_fd), capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["2", "5", "2", "4"]
    assert counts.total(key) == 5
    counts.clear_worker(3)  # the exec'd worker's column, as the supervisor clears it
    assert counts.total(key) == 3


@given(st.binary(min_size=8, max_size=8).filter(lambda m: m != b"ECLUSE\x00\x01"))
def test_a_table_of_another_layout_is_refused(magic):
    counts = SharedCounts(workers=2, slots=8)
    try:
        counts._mm[0:8] = magic
        table_fd, lock_fd = counts.fds
        with pytest.raises(ValueError, match="layout"):
            SharedCounts.attach(table_fd, lock_fd)
    finally:
        counts.close()


def test_a_table_whose_size_disagrees_with_its_header_is_refused():
    counts = SharedCounts(workers=2, slots=8)
    try:
        table_fd, lock_fd = counts.fds
        os.ftruncate(table_fd, os.fstat(table_fd).st_size + 4096)
        with pytest.raises(ValueError, match="size"):
            SharedCounts.attach(os.dup(table_fd), os.dup(lock_fd))
    finally:
        counts.close()
