"""bench/login_cost.py: its connections really log in, and it sees garbage when there is some."""

from __future__ import annotations

import asyncio

import login_cost
import pytest

from ecluse.frontend.prepared import StatementRewriter


def test_connections_log_in_and_leave_no_garbage():
    # _connection raises SystemExit when a login does not reach ReadyForQuery.
    us, garbage = asyncio.run(login_cost._measure(200))
    assert 0 < us < 10_000
    assert garbage == 0


def test_a_session_left_in_a_cycle_is_counted(monkeypatch):
    """The count the tool prints is the collector's work: a cycle per session shows."""
    real_init = StatementRewriter.__init__

    def init_with_cycle(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.statements = [self]  # rewriter -> list -> rewriter

    monkeypatch.setattr(StatementRewriter, "__init__", init_with_cycle)
    _us, garbage = asyncio.run(login_cost._measure(200))
    assert garbage == pytest.approx(2.0, abs=0.1)
