"""The issue's goals: met, not met, and not measured when a number is missing."""

from __future__ import annotations

import goals


def _row(target, clients, tps, cpu=None, protocol="simple", tls=False, status="ok"):
    return {"target": target, "protocol": protocol, "tls": tls, "clients": clients,
            "status": status, "tps": tps, "cpu_s_per_1k_tx": cpu}


def test_tps_goal_met_at_exactly_the_factor():
    rows = [_row("pgbouncer", 100, 10_000), _row("ecluse-w2", 100, 12_000)]
    (g,) = goals.tps_goals(rows, "ecluse-w2", clients=(100,))
    assert g["status"] == goals.MET
    assert "12,000 vs 1.2 x 10,000 = 12,000" in g["text"]


def test_tps_goal_not_met_below_the_factor():
    rows = [_row("pgbouncer", 500, 10_000), _row("ecluse-w2", 500, 11_999)]
    (g,) = goals.tps_goals(rows, "ecluse-w2", clients=(500,))
    assert g["status"] == goals.NOT_MET


def test_tls_rows_and_failed_rows_do_not_count():
    rows = [_row("pgbouncer", 100, 10_000), _row("ecluse-w2", 100, 50_000, tls=True),
            _row("ecluse-w2", 100, None, status="failed")]
    (g,) = goals.tps_goals(rows, "ecluse-w2", clients=(100,))
    assert g["status"] == goals.NOT_MEASURED


def test_cpu_goal_is_a_geometric_mean_of_ratios():
    rows = [_row("pgbouncer", 1, 1, cpu=0.02), _row("ecluse-w1", 1, 1, cpu=0.04),
            _row("pgbouncer", 10, 1, cpu=0.02), _row("ecluse-w1", 10, 1, cpu=0.01)]
    g = goals.cpu_goal(rows, "ecluse-w1")
    assert abs(g["ratio"] - 1.0) < 1e-9
    assert g["status"] == goals.MET
    assert "1 clients 40 vs 20 µs" in g["text"]


def test_cpu_goal_without_pgbouncer_is_not_measured():
    g = goals.cpu_goal([_row("ecluse-w1", 1, 1, cpu=0.04)], "ecluse-w1")
    assert g["status"] == goals.NOT_MEASURED


def test_idle_goal_states():
    idle = [{"target": "ecluse-w1", "asked": 100_000, "reached": 19_900,
             "why": "pooler open-files limit 20,000"},
            {"target": "ecluse-w2", "asked": 100_000, "reached": 100_000},
            {"target": "ecluse-w4", "asked": 1_000, "reached": 1_000}]
    w1, w2, w4 = goals.idle_goals(idle, ["ecluse-w1", "ecluse-w2", "ecluse-w4"])
    assert w1["status"] == goals.NOT_MET and "19,900" in w1["text"] and "20,000" in w1["text"]
    assert w2["status"] == goals.MET
    assert w4["status"] == goals.NOT_MEASURED


def test_churn_goal_compares_churn_rows_at_factor_one():
    rows = [_row("pgbouncer", 10, 4_000, protocol="churn"),
            _row("ecluse-w2", 10, 4_000, protocol="churn"),
            _row("ecluse-w2", 10, 99_999)]
    found = goals.all_goals(rows, [], "ecluse-w1", "ecluse-w2", [10])
    churn = [g for g in found if "churn" in g["text"]]
    assert [g["status"] for g in churn] == [goals.MET]
    assert len(found) == 2 + 1 + 2 + 1
    assert all(line.startswith("[") for line in goals.goal_lines(found))


def test_an_idle_only_target_has_its_own_idle_goal():
    idle = [{"target": "ecluse-w7", "asked": 100_000, "reached": 100_000},
            {"target": "ecluse-w1", "asked": 100_000, "reached": 19_966, "why": "limit"}]
    found = goals.all_goals([], idle, "ecluse-w1", "ecluse-w2", [], idle_only=["ecluse-w7"])
    by_text = {g["text"].split(":")[0]: g["status"] for g in found if "idle" in g["text"]}
    assert by_text == {"ecluse-w1 holds 100,000 idle clients": goals.NOT_MET,
                       "ecluse-w2 holds 100,000 idle clients": goals.NOT_MEASURED,
                       "ecluse-w7 holds 100,000 idle clients": goals.MET}
