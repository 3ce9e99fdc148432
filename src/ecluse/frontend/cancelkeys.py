"""Cancel keys that tell where their session lives: which ecluse (peer) and which worker.

A CancelRequest arrives on a new connection, which the kernel may give to any
worker, or a load balancer to any ecluse of a group. The BackendKeyData a
client got therefore names its owner, so whoever receives the cancel can
forward it (PgBouncer's peer_id idea, extended to workers):
- process id: bits 22-29 the peer_id (0-255), bits 0-21 random, never 0;
- secret: byte 0 the worker index (0-255), bytes 1-3 random.
46 random bits remain, checked in constant time by the owner; PostgreSQL
itself guards its cancels with 32.
"""

from __future__ import annotations

import os

PEER_SHIFT = 22
MAX_PEER_ID = 255
MAX_WORKERS = 256
_RANDOM_PID = (1 << PEER_SHIFT) - 1


# Random bytes drawn ahead from the OS's CSPRNG: one getrandom() call serves
# _DRAW // 6 logins instead of two calls per login. A forked worker must never
# reuse its parent's bytes (two workers would hand out the same keys, and a
# client of one could cancel the other's queries): a child starts empty.
_DRAW = 6 * 512
_drawn = bytearray()


def _forget_drawn() -> None:
    _drawn.clear()


os.register_at_fork(after_in_child=_forget_drawn)


def _random_bytes(n: int) -> bytes:
    if len(_drawn) < n:
        _drawn[:] = os.urandom(_DRAW)
    out = bytes(_drawn[-n:])
    del _drawn[-n:]  # never handed out twice
    return out


def make_key(peer_id: int, worker: int) -> tuple[int, bytes]:
    """A fresh (process id, secret) pair owned by ``worker`` of peer ``peer_id``."""
    drawn = _random_bytes(6)
    pid = (peer_id << PEER_SHIFT) | (int.from_bytes(drawn[:3]) & _RANDOM_PID or 1)
    return pid, bytes([worker]) + drawn[3:]


def owner(process_id: int, secret: bytes) -> tuple[int, int]:
    """The (peer_id, worker index) a key names."""
    peer = (process_id >> PEER_SHIFT) & MAX_PEER_ID
    worker = secret[0] if secret else 0
    return peer, worker


def random_part(process_id: int) -> int:
    return process_id & _RANDOM_PID
