"""pgbench command lines and summaries, churn included."""

from __future__ import annotations

import workload
from workload import CHURN, parse_summary, percentile, pgbench_command

SUMMARY = """\
transaction type: <builtin: select only>
number of clients: 10
number of transactions actually processed: 30000
number of failed transactions: 0 (0.000%)
latency average = 0.300 ms
initial connection time = 12.000 ms
tps = 10000.500000 (without initial connection time)
"""

CHURN_SUMMARY = """\
number of transactions actually processed: 9000
number of failed transactions: 0 (0.000%)
average connection time = 1.100 ms
tps = 3000.250000 (including reconnection times)
"""


def test_summary_without_connection_time():
    r = parse_summary(SUMMARY)
    assert (r.tps, r.transactions, r.failed) == (10000.5, 30000, 0)


def test_summary_of_a_churn_run_includes_reconnection_times():
    r = parse_summary(CHURN_SUMMARY)
    assert (r.tps, r.transactions, r.failed) == (3000.25, 9000, 0)


def test_churn_is_simple_protocol_with_a_connection_per_transaction():
    cmd = pgbench_command("pgbench", "h", 1, "db", "u", 10, CHURN, 5, None)
    assert cmd[cmd.index("-M") + 1] == "simple"
    assert "-C" in cmd


def test_other_protocols_keep_their_connections():
    cmd = pgbench_command("pgbench", "h", 1, "db", "u", 10, "prepared", 5, "/tmp/x")
    assert cmd[cmd.index("-M") + 1] == "prepared"
    assert "-C" not in cmd
    assert "--log-prefix=/tmp/x" in cmd


def test_threads_never_exceed_clients_and_use_the_cores(monkeypatch):
    monkeypatch.setattr(workload.os, "cpu_count", lambda: 8)
    assert workload.pgbench_threads(1) == 1
    assert workload.pgbench_threads(2000) == 8
    monkeypatch.setattr(workload.os, "cpu_count", lambda: 1)
    assert workload.pgbench_threads(2000) == 2


def test_nearest_rank_percentile():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([7], 99) == 7
