"""Server counts of a whole node, shared by its worker processes: the global limits.

With several workers, pool_size, max_db_connections and max_user_connections
still bound what PostgreSQL sees from the node. Each worker counts its servers
in a table of shared memory that the supervisor maps before it forks, one
column per worker, so that:
- a launch is checked against the sum over workers and counted in one step
  under one lock (no two workers can both take the last slot);
- a worker whose pool is full node-wide while it has clients waiting says so
  (``wanted``); a worker holding more than its fair share (the limit over
  the number of workers) closes a server it releases or has idle instead of
  keeping it, so the slot goes where the clients are. This is how an idle
  worker's share is lent to a busy one, without servers bouncing between
  workers that are all busy;
- the supervisor zeroes the column of a worker that died, whose servers died
  with it.

Keys are (kind, names) tuples, stored as 8-byte hashes in an open-addressing
table that never frees a slot (keys are pools, databases and users: few).
With one worker, LocalCounts does the same bookkeeping in plain dicts.

The table lives in a memfd, not an anonymous mapping, so that a worker
started by exec (a rolled-over generation running newly installed code,
supervisor.py) maps the same table from the descriptor it inherits
(SharedCounts.attach). The table starts with a header naming its layout: a
worker whose code lays the table out otherwise refuses to attach, and the
roll-over is abandoned, rather than two layouts counting past each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
from collections import Counter
from collections.abc import Iterator, Sequence

Key = tuple[str, ...]

_SLOTS = 4096
_HASH = struct.Struct("<Q")
_COUNT = struct.Struct("<i")
# Header: magic and layout version, slots, worker columns, workers serving at once.
_HEADER = struct.Struct("<8sIII")
_MAGIC = b"ECLUSE\x00\x01"
_BASE = 64  # rows start here, past the header


class LocalCounts:
    """One worker: the counts are this process's alone."""

    worker = 0
    node_workers = 1

    def __init__(self) -> None:
        self._counts: Counter[Key] = Counter()

    def try_add(self, limits: Sequence[tuple[Key, int]]) -> bool:
        """Count one server under every key if none is at its limit (0: no limit)."""
        if any(limit and self._counts[key] >= limit for key, limit in limits):
            return False
        for key, _limit in limits:
            self._counts[key] += 1
        return True

    def remove(self, keys: Sequence[Key]) -> None:
        for key in keys:
            self._counts[key] -= 1

    def total(self, key: Key) -> int:
        return self._counts[key]

    def set_wanted(self, key: Key, count: int) -> None:
        return None

    def wanted_elsewhere(self, key: Key) -> int:
        return 0


class SharedCounts:
    """Several workers: per-worker columns in shared memory, read and written under a lock."""

    def __init__(self, workers: int, slots: int = _SLOTS, node_workers: int | None = None,
                 *, fds: tuple[int, int] | None = None):
        self.workers = workers  # columns: worker slots, two generations during a roll-over
        self.node_workers = node_workers or workers  # workers serving at once
        self.worker = 0  # set in each worker process (set_worker)
        self._slots = slots
        # Row: key hash, then servers per worker, then waiting clients per worker.
        self._row = _HASH.size + 2 * workers * _COUNT.size
        size = _BASE + slots * self._row
        if fds is None:
            table_fd = os.memfd_create("ecluse-counts")
            os.ftruncate(table_fd, size)
            # A POSIX record lock, not a semaphore: the kernel drops it when its
            # holder dies, so a worker killed inside the lock cannot freeze the others.
            lock_fd = os.memfd_create("ecluse-counts-lock")
            os.ftruncate(lock_fd, 1)
        else:
            table_fd, lock_fd = fds
        self._table_fd, self._lock_fd = table_fd, lock_fd
        self._mm = mmap.mmap(table_fd, size)  # MAP_SHARED: across fork and exec alike
        if fds is None:
            _HEADER.pack_into(self._mm, 0, _MAGIC, slots, workers, self.node_workers)
        self._slot_of: dict[Key, int] = {}  # this process's cache of found slots

    @classmethod
    def attach(cls, table_fd: int, lock_fd: int) -> SharedCounts:
        """Map the table another process made (inherited descriptors, after exec).

        Raises ValueError when the table is not one this code can read: another
        magic or layout version, or a size that does not match its header.
        """
        with mmap.mmap(table_fd, _BASE, prot=mmap.PROT_READ) as head:
            magic, slots, workers, node_workers = _HEADER.unpack_from(head, 0)
        if magic != _MAGIC:
            raise ValueError(f"the node's shared server counts have layout {magic!r}, "
                             f"this ecluse reads {_MAGIC!r}")
        table = cls(workers, slots, node_workers, fds=(table_fd, lock_fd))
        if os.fstat(table_fd).st_size != _BASE + slots * table._row:
            table.close()
            raise ValueError("the node's shared server counts are not the size their "
                             "header says")
        return table

    @property
    def fds(self) -> tuple[int, int]:
        """The table's and the lock's descriptors, for a worker started by exec."""
        return self._table_fd, self._lock_fd

    def set_worker(self, worker: int) -> None:
        self.worker = worker

    def close(self) -> None:
        """Let go of the table and its lock (a process that made one and is done)."""
        self._mm.close()
        os.close(self._table_fd)
        os.close(self._lock_fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.lockf(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)

    # --- slots ---------------------------------------------------------------
    def _hash(self, key: Key) -> int:
        digest = hashlib.blake2b("\0".join(key).encode(), digest_size=8).digest()
        return _HASH.unpack(digest)[0] or 1  # 0 marks a free slot

    def _slot(self, key: Key) -> int:
        """The slot of ``key`` (lock held), claimed on first use; -1 if the table is full."""
        return self._find_slot(key, claim=True)

    def _known_slot(self, key: Key) -> int:
        """The slot of ``key`` if some worker claimed it, else -1; never claims one.

        No lock: a slot's hash is written once and never changes.
        """
        return self._find_slot(key, claim=False)

    def _find_slot(self, key: Key, claim: bool) -> int:
        slot = self._slot_of.get(key)
        if slot is not None:
            return slot
        wanted = self._hash(key)
        start = wanted % self._slots
        for i in range(self._slots):
            slot = (start + i) % self._slots
            found = _HASH.unpack_from(self._mm, _BASE + slot * self._row)[0]
            if found == 0:
                if not claim:
                    return -1
                _HASH.pack_into(self._mm, _BASE + slot * self._row, wanted)
            if found in (0, wanted):
                self._slot_of[key] = slot
                return slot
        return -1

    def _offset(self, slot: int, worker: int, wanted: bool = False) -> int:
        column = worker + (self.workers if wanted else 0)
        return _BASE + slot * self._row + _HASH.size + column * _COUNT.size

    def _sum(self, slot: int, wanted: bool = False) -> int:
        return sum(_COUNT.unpack_from(self._mm, self._offset(slot, w, wanted))[0]
                   for w in range(self.workers))

    def _add(self, slot: int, delta: int) -> None:
        offset = self._offset(slot, self.worker)
        _COUNT.pack_into(self._mm, offset, _COUNT.unpack_from(self._mm, offset)[0] + delta)

    # --- the interface LocalCounts shares --------------------------------------
    def try_add(self, limits: Sequence[tuple[Key, int]]) -> bool:
        with self._locked():
            slots = [self._slot(key) for key, _limit in limits]
            for slot, (_key, limit) in zip(slots, limits, strict=True):
                if limit and slot >= 0 and self._sum(slot) >= limit:
                    return False
            for slot in slots:
                if slot >= 0:
                    self._add(slot, 1)
            return True

    def remove(self, keys: Sequence[Key]) -> None:
        with self._locked():
            for key in keys:
                slot = self._slot(key)
                if slot >= 0:
                    self._add(slot, -1)

    def total(self, key: Key) -> int:
        slot = self._known_slot(key)
        return self._sum(slot) if slot >= 0 else 0

    def set_wanted(self, key: Key, count: int) -> None:
        """Say how many of this worker's clients wait for a server of ``key``.

        Only this worker writes its column, and an aligned 4-byte write is atomic,
        so once the key has its slot no lock is taken (wanted_elsewhere reads
        without one too): the lock is for claiming the slot.
        """
        slot = self._slot_of.get(key)
        if slot is None:
            with self._locked():
                slot = self._slot(key)
        if slot >= 0:
            _COUNT.pack_into(self._mm, self._offset(slot, self.worker, wanted=True), count)

    def wanted_elsewhere(self, key: Key) -> int:
        """How many clients of other workers wait for a server of ``key``.

        Read without the lock (aligned 4-byte reads are atomic): it runs at
        every release, and a stale answer only delays a hand-over.
        """
        slot = self._known_slot(key)
        if slot < 0:
            return 0
        return sum(max(0, _COUNT.unpack_from(self._mm, self._offset(slot, w, wanted=True))[0])
                   for w in range(self.workers) if w != self.worker)

    def clear_worker(self, worker: int) -> None:
        """Forget a dead worker's servers and waiting clients (supervisor side)."""
        with self._locked():
            for slot in range(self._slots):
                if _HASH.unpack_from(self._mm, _BASE + slot * self._row)[0]:
                    _COUNT.pack_into(self._mm, self._offset(slot, worker), 0)
                    _COUNT.pack_into(self._mm, self._offset(slot, worker, wanted=True), 0)
