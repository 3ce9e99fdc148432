"""server/peercancels.py: at most pool_size cancels in flight per peer, the others
started in arrival order as places free up, each exactly once."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from ecluse.server.peercancels import PeerCancels


@given(limit=st.integers(0, 3),
       steps=st.lists(st.one_of(st.tuples(st.just("submit"), st.integers(1, 2)),
                                st.tuples(st.just("finish"), st.integers(0, 5)),
                                st.tuples(st.just("finish_twice"), st.integers(0, 5))),
                      max_size=30))
def test_cancels_run_in_order_never_more_than_the_limit(limit, steps):
    async def main():
        lanes = PeerCancels(lambda coro: asyncio.get_running_loop().create_task(coro))
        started: dict[int, list[int]] = {1: [], 2: []}
        running: list[tuple[int, object]] = []  # (peer, finished), in start order
        submitted: dict[int, int] = {1: 0, 2: 0}
        done: dict[int, int] = {1: 0, 2: 0}

        def make(peer: int, n: int):
            async def start(finished):
                started[peer].append(n)
                running.append((peer, finished))
            return lambda finished: start(finished)

        for kind, value in steps:
            if kind == "submit":
                lanes.submit(value, limit, make(value, submitted[value]))
                submitted[value] += 1
            elif running:
                peer, finished = running.pop(value % len(running))
                finished()
                if kind == "finish_twice":
                    finished()  # a second call changes nothing
                done[peer] += 1
            await asyncio.sleep(0)
            for peer in (1, 2):
                active, waiting = lanes.counts(peer)
                assert active == len(started[peer]) - done[peer] <= max(limit, 1)
                assert active + waiting == submitted[peer] - done[peer]
                # Started in the order submitted, none twice.
                assert started[peer] == list(range(len(started[peer])))

    asyncio.run(main())
