"""admin/merge.py and the node collector: several workers' answers make the node's."""

from __future__ import annotations

import json

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ecluse.admin import merge
from ecluse.admin.http import result_rows
from ecluse.admin.metrics import NodeCollector
from ecluse.admin.show import encode_result
from ecluse.protocol import backend as be

POOLS = (("database", "s"), ("user", "s"), ("cl_active", "i"), ("maxwait", "i"),
         ("maxwait_us", "i"), ("pool_mode", "s"))


def answer(columns, rows, *tail: bytes) -> bytes:
    return encode_result(columns, rows) + b"".join(tail) + be.encode_command_complete("SHOW")


def merged(command: str, *answers: bytes) -> list[dict]:
    return result_rows(merge.merge_results(command, [merge.parse_result(a) for a in answers]))


def test_pools_sum_counts_and_keep_the_oldest_wait():
    a = answer(POOLS, [["db", "u", 2, 1, 500, "transaction"], ["db", "v", 1, 0, 0, "session"]])
    b = answer(POOLS, [["db", "u", 3, 0, 900_000, "transaction"], ["x", "u", 4, 0, 0, "session"]])
    rows = merged("SHOW POOLS", a, b)
    by_key = {(r["database"], r["user"]): r for r in rows}
    assert by_key["db", "u"]["cl_active"] == 5
    assert (by_key["db", "u"]["maxwait"], by_key["db", "u"]["maxwait_us"]) == (1, 500)
    assert by_key["db", "u"]["pool_mode"] == "transaction"
    assert by_key["db", "v"]["cl_active"] == 1 and by_key["x", "u"]["cl_active"] == 4


def test_stats_weights_average_times_by_their_counts():
    cols = (("database", "s"), ("total_xact_count", "N"), ("avg_xact_count", "N"),
            ("avg_xact_time", "N"))
    a = answer(cols, [["db", 10, 1, 100]])
    b = answer(cols, [["db", 30, 3, 500]])
    (row,) = merged("SHOW STATS", a, b)
    assert row["total_xact_count"] == 40 and row["avg_xact_count"] == 4
    assert row["avg_xact_time"] == (100 * 1 + 500 * 3) // 4


def test_totals_by_row_name():
    cols = (("name", "s"), ("value", "N"))
    a = answer(cols, [["total_query_count", 5], ["avg_query_count", 0], ["avg_query_time", 7]])
    b = answer(cols, [["total_query_count", 6], ["avg_query_count", 2], ["avg_query_time", 9]])
    values = {r["name"]: r["value"] for r in merged("SHOW TOTALS", a, b)}
    assert values == {"total_query_count": 11, "avg_query_count": 2, "avg_query_time": 9}


def test_databases_take_shared_server_counts_once_and_sum_clients():
    cols = (("name", "s"), ("current_connections", "i"), ("current_client_connections", "i"),
            ("paused", "i"), ("disabled", "i"))
    a = answer(cols, [["db", 4, 2, 0, 0]])
    b = answer(cols, [["db", 4, 3, 1, 0]])
    (row,) = merged("SHOW DATABASES", a, b)
    assert (row["current_connections"], row["current_client_connections"], row["paused"],
            row["disabled"]) == (4, 5, 1, 0)


def test_lists_sum_but_not_the_shared_config():
    cols = (("list", "s"), ("items", "i"))
    a = answer(cols, [["databases", 2], ["users", 3], ["used_clients", 4]])
    b = answer(cols, [["databases", 2], ["users", 3], ["used_clients", 5]])
    assert {r["list"]: r["items"] for r in merged("SHOW LISTS", a, b)} == {
        "databases": 2, "users": 3, "used_clients": 9}


def test_pool_waits_percentiles_are_the_largest_and_null_wins():
    cols = (("database", "s"), ("user", "s"), ("wait_count", "q"), ("wait_p99_us", "q"))
    a = answer(cols, [["db", "u", 3, 100]])
    b = answer(cols, [["db", "u", 4, None]])
    c = answer(cols, [["db", "u", 1, 250]])
    assert merged("SHOW POOL_WAITS", a, c) == [
        {"database": "db", "user": "u", "wait_count": 4, "wait_p99_us": 250}]
    assert merged("SHOW POOL_WAITS", a, b)[0]["wait_p99_us"] is None


def test_clients_are_concatenated_and_notices_precede_the_tag():
    cols = (("id", "i"), ("user", "s"))
    a = answer(cols, [[1, "a"]])
    b = answer(cols, [[2, "b"], [4, "c"]])
    notice = be.encode_notice_response("worker 3 did not answer in time")
    out = merge.merge_results("SHOW CLIENTS", [merge.parse_result(a), merge.parse_result(b)],
                              lambda: [notice])
    assert [r["id"] for r in result_rows(out)] == [1, 2, 4]
    assert out.endswith(notice + be.encode_command_complete("SHOW"))


def test_a_refusing_worker_is_left_out():
    cols = (("id", "i"),)
    refused = be.encode_error_response("boom", "08P01")
    result = merge.parse_result(refused)
    assert result.error == "boom"
    out = merge.merge_results("SHOW CLIENTS", [merge.parse_result(answer(cols, [[1]])), result])
    assert result_rows(out) == [{"id": 1}]


class _Ctx:
    """Just enough of a ClientContext for the collector's own families to be empty."""


def test_node_collector_sums_counters_and_takes_shared_gauges_once(monkeypatch):
    def local_families(self):
        c = CounterMetricFamily("ecluse_queries_total", "q", labels=["database"])
        c.add_metric(["db"], 5)
        g = GaugeMetricFamily("ecluse_pool_size", "s", labels=["database"])
        g.add_metric(["db"], 20)
        return iter([c, g])

    monkeypatch.setattr("ecluse.admin.metrics.EcluseCollector.collect", local_families)
    collector = NodeCollector(_Ctx())  # type: ignore[arg-type]
    remote = [{"name": "ecluse_queries", "doc": "q", "type": "counter",
               "samples": [["ecluse_queries_total", {"database": "db"}, 7],
                           ["ecluse_queries_total", {"database": "x"}, 1]]},
              {"name": "ecluse_pool_size", "doc": "s", "type": "gauge",
               "samples": [["ecluse_pool_size", {"database": "db"}, 20]]}]
    collector.remote = [json.loads(json.dumps(remote))]
    out = {(s.name, s.labels["database"]): s.value
           for family in collector.collect() for s in family.samples}
    assert out == {("ecluse_queries_total", "db"): 12, ("ecluse_queries_total", "x"): 1,
                   ("ecluse_pool_size", "db"): 20}
