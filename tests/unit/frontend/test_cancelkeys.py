"""Cancel keys: they name their owner, are never handed out twice, and a forked
worker never repeats its parent's."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from ecluse.frontend.cancelkeys import MAX_PEER_ID, MAX_WORKERS, make_key, owner, random_part


@given(peer=st.integers(0, MAX_PEER_ID), worker=st.integers(0, MAX_WORKERS - 1))
def test_a_key_names_its_owner(peer, worker):
    pid, secret = make_key(peer, worker)
    assert owner(pid, secret) == (peer, worker)
    assert 0 < pid < 2**31  # a valid PostgreSQL process id: libpq sends it signed
    assert random_part(pid) != 0
    assert len(secret) == 4


def test_keys_do_not_repeat():
    """Across many refills of the drawn bytes (46 random bits per key: a repeat
    among 20,000 would be a one-in-a-million event, not bad luck)."""
    keys = {make_key(0, 0) for _ in range(20_000)}
    assert len(keys) == 20_000


def _keys_from_child(count: int) -> set[tuple[int, bytes]]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            data = b"".join(p.to_bytes(4) + s for p, s in (make_key(0, 0) for _ in range(count)))
            os.write(write_end, data)
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return {(int.from_bytes(data[i:i + 4]), data[i + 4:i + 8]) for i in range(0, len(data), 8)}


def test_a_forked_worker_draws_its_own_bytes():
    make_key(0, 0)  # the parent now holds bytes drawn ahead
    child = _keys_from_child(50)
    parent = {make_key(0, 0) for _ in range(50)}
    assert len(child) == 50
    assert not child & parent
