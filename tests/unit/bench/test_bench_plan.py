"""Planning a run (plan.py): targets, the grid, the estimate; and run.py's idle shortfalls."""

from __future__ import annotations

import plan
import run
from hypothesis import given
from hypothesis import strategies as st


def test_quick_defaults_are_small():
    a = plan.parse_args(["--quick"])
    assert a.duration <= 3 and a.repeat == 1
    assert max(a.clients) <= 100 and a.idle_clients == [1000]


def test_full_run_covers_the_issue():
    a = plan.parse_args([])
    assert a.clients == [1, 10, 100, 500, 2000]
    assert set(a.protocols) == {"simple", "extended", "prepared", "churn"}
    assert a.idle_clients == [10_000, 100_000]


def test_ecluse_wn_takes_the_worker_count_and_is_not_doubled():
    assert plan.resolve_targets(list(plan.TARGETS), 4) == [
        "direct", "pgbouncer", "ecluse-w1", "ecluse-w4"]
    assert plan.resolve_targets(list(plan.TARGETS), 1) == ["direct", "pgbouncer", "ecluse-w1"]


def test_churn_runs_only_at_its_client_counts():
    cells = plan.grid_cells([1, 100], ["simple", "churn"], [10])
    assert cells == [(1, "simple"), (10, "churn"), (100, "simple")]
    assert plan.grid_cells([1], ["simple"], [10]) == [(1, "simple")]


def test_no_pgbench_and_no_idle_switch_phases_off():
    a = plan.parse_args(["--no-pgbench", "--idle-clients", "5"])
    assert a.protocols == [] and a.churn_clients == [] and a.idle_clients == [5]
    assert plan.parse_args(["--no-idle"]).idle_clients == []


def test_full_run_estimate_stays_near_half_an_hour():
    a = plan.parse_args([])
    per_rep = []
    for clients, protocol in plan.grid_cells(a.clients, a.protocols, a.churn_clients):
        for target in a.target_names:
            if target == "pgbouncer" and protocol == "prepared":
                continue
            per_rep += [(clients, protocol)] * (2 if protocol in a.tls_protocols else 1)
    seconds = plan.estimate_seconds(per_rep * a.repeat, a.duration, a.idle_clients, 3)
    assert 15 * 60 < seconds < 40 * 60


def test_idle_shortfall_names_errors_and_limits():
    why = run.idle_shortfall({"asked": 100_000, "errors": {"login timed out": 100},
                              "pooler_alive": True, "pooler_nofile": [20_000, 20_000, 20_000],
                              "client_nofile_hard": 20_000})
    assert "100 x login timed out" in why
    assert "20,000 per process x 3 processes" in why
    assert "CAP_SYS_RESOURCE" in why


@given(st.integers(0, 10**6), st.one_of(st.none(), st.integers(2 * plan.FD_HEADROOM, 10**7)))
def test_idle_only_workers_each_stay_under_the_descriptor_limit(clients, hard):
    workers = plan.idle_workers_needed(clients, hard)
    assert workers >= 1
    if hard is None:
        assert workers == 1
        return
    per_worker = -(-clients // workers)  # an even spread
    assert per_worker <= (hard - plan.FD_HEADROOM // 4) * plan.IDLE_WORKER_FILL
    # And no more workers than that needs.
    fewer = workers - 1
    assert fewer == 0 or -(-clients // fewer) > (hard - plan.FD_HEADROOM // 4) * \
        plan.IDLE_WORKER_FILL - 1


def test_idle_workers_option_defaults_to_automatic():
    assert plan.parse_args([]).idle_workers is None
    assert plan.parse_args(["--idle-workers", "0"]).idle_workers == 0
