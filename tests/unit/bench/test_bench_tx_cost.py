"""bench/tx_cost.py: its transactions take the paths it names, and garbage shows."""

from __future__ import annotations

import asyncio

import pytest
import tx_cost

from ecluse.pool.pool import Pool
from ecluse.server.connection import ServerConnection


def _count_true(monkeypatch, cls: type, name: str) -> list[bool]:
    answers: list[bool] = []
    real = getattr(cls, name)

    def recording(self, *args):
        answer = real(self, *args)
        answers.append(answer)
        return answer

    monkeypatch.setattr(cls, name, recording)
    return answers


async def _run(loop_name: str, n: int) -> tx_cost.Bench:
    bench = tx_cost.Bench()
    getattr(bench, loop_name)(n)
    return bench


@pytest.mark.parametrize("loop_name", ["express", "queued"])
def test_every_transaction_takes_the_express_path(loop_name, monkeypatch):
    relayed = _count_true(monkeypatch, ServerConnection, "_relay_express")
    taken_back = _count_true(monkeypatch, Pool, "take_back")
    bench = asyncio.run(_run(loop_name, 50))
    transactions = 50 if loop_name == "express" else 100
    # The queued loop ends with a reply to the last client's Query.
    assert sum(relayed) == len(relayed) == transactions + (loop_name == "queued")
    assert sum(taken_back) == len(taken_back) == len(relayed)
    # Each client got its replies; the server got every Query and nothing else.
    assert bench.server.transport.writes == len(relayed)
    assert sum(c.transport.writes - 1 for c in bench.clients) == len(relayed)  # 1: login


def test_queued_transactions_wait_for_the_server(monkeypatch):
    waited = _count_true(monkeypatch, Pool, "wait")
    asyncio.run(_run("queued", 20))
    assert len(waited) == 40  # every Query but the first queues


def test_replies_out_of_step_are_refused(monkeypatch):
    """A loop whose replies do not end its transactions stops, not measures."""
    monkeypatch.setattr(tx_cost, "REPLY", tx_cost.REPLY[:-6])  # no ReadyForQuery
    with pytest.raises(SystemExit):
        asyncio.run(_run("express", 3))


def test_measure_reports_both_loops_without_garbage():
    results = asyncio.run(tx_cost._measure(500))
    assert set(results) == {"express", "queued"}
    for us, garbage in results.values():
        assert 0 < us < 10_000
        assert garbage == 0
