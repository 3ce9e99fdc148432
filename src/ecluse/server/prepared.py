"""PreparedCache: which pooler-wide prepared statements one server connection holds.

In transaction mode ecluse prepares client statements on servers under names
derived from their text (frontend/prepared.py), so a server connection's set of
statements outlives any one client. This LRU is ecluse's record of that set;
the oldest names are closed on the server when it is full
(max_prepared_statements).

Rules:
1. A name is added when its Parse is sent and removed again if the server
   refuses it, so "in the cache" means "the server has it or will have it by
   the time the next message is read".
2. A stale name (its plan broke under a schema change) is still on the server:
   it must be closed before it is prepared again.
"""

from __future__ import annotations

from collections import OrderedDict


class PreparedCache:
    """The statement names one server connection has prepared, oldest first.

    ``_names`` is what ecluse may use (tentative names included: their Parse is
    on its way); ``present`` is what the server has confirmed. Undoing a
    skipped or refused request reconciles the first with the second.
    """

    __slots__ = ("_names", "capacity", "present", "stale")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._names: OrderedDict[str, None] = OrderedDict()
        self.present: set[str] = set()
        self.stale: set[str] = set()

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self):
        return iter(self._names)

    def has(self, name: str) -> bool:
        """True if the server holds (or is about to hold) a usable statement of that name."""
        if name in self._names and name not in self.stale:
            self._names.move_to_end(name)
            return True
        return False

    def add(self, name: str) -> list[str]:
        """Record a statement about to be prepared; return the names to close first."""
        evicted = []
        if name in self.stale:
            self.stale.discard(name)
            evicted.append(name)
            self._names.pop(name, None)
        while self.capacity and len(self._names) >= self.capacity:
            old, _ = self._names.popitem(last=False)
            self.stale.discard(old)
            evicted.append(old)
        self._names[name] = None
        return evicted

    # --- what the server said -------------------------------------------------
    def parsed(self, name: str) -> None:
        """ParseComplete: the server has it."""
        self.present.add(name)

    def closed(self, name: str) -> None:
        """CloseComplete of an eviction: the server no longer has it."""
        self.present.discard(name)

    def parse_undone(self, name: str) -> None:
        """Its Parse was refused or skipped."""
        if name in self.present:
            # An older copy is still there (a skipped re-prepare): close it first next time.
            self._names.setdefault(name, None)
            self.stale.add(name)
        else:
            self._names.pop(name, None)
            self.stale.discard(name)

    def close_undone(self, name: str) -> None:
        """Its eviction Close was skipped: the server still holds it (oldest)."""
        if name in self.present and name not in self._names:
            self._names[name] = None
            self._names.move_to_end(name, last=False)

    def discard(self, name: str) -> None:
        """The server says it does not have it (dropped behind ecluse's back)."""
        self._names.pop(name, None)
        self.present.discard(name)
        self.stale.discard(name)

    def mark_stale(self, name: str) -> None:
        if name in self._names:
            self.stale.add(name)

    def clear(self) -> None:
        """Every statement is gone from the server (DISCARD ALL, DEALLOCATE ALL)."""
        self._names.clear()
        self.present.clear()
        self.stale.clear()
