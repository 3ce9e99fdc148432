"""admin/metrics.py and admin/http.py without sockets: the collector over hand-built pools."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ecluse.admin import show
from ecluse.admin.http import build_app, parse_listen, result_rows
from ecluse.admin.metrics import EcluseCollector, histogram_buckets, metrics_registry
from ecluse.admin.openapi import OPENAPI
from ecluse.config.loader import config_from_string
from ecluse.frontend.context import ClientContext
from ecluse.frontend.states import ClientState
from ecluse.pool.registry import PoolRegistry
from ecluse.stats.counters import Histogram

CONFIG = """
[databases]
app = host=127.0.0.1 port=5432 user=alice
other = host=127.0.0.1 port=5432
[pgbouncer]
pool_mode = transaction
default_pool_size = 7
"""


class FakeSession:
    """What SHOW POOLS and the collector read of a session: its pool and state."""

    def __init__(self, pool, state: ClientState):
        self.pool = pool
        self.state = state


def make_ctx() -> ClientContext:
    config = config_from_string(CONFIG)
    registry = PoolRegistry(config)
    ctx = ClientContext(config, registry)
    app = config.database("app")
    other = config.database("other")
    assert app is not None and other is not None
    pool = registry.get_pool(app, "alice")
    pool.stats.xact_count = 11
    pool.stats.query_count = 23
    pool.stats.received = 1000
    pool.stats.sent = 5000
    pool.stats.wait_time_us = 1_500_000
    for seconds in (0.00005, 0.0003, 0.0003, 0.2, 100.0):
        pool.stats.add_query(seconds)
    pool.stats.add_wait(0.002)
    pool.stats.add_error("server", "42P01")
    pool.stats.add_error("server", "42703")
    pool.stats.add_error("pooler", "53300")
    registry.get_pool(other, "bob").stats.xact_count = 2
    ctx.clients.update({
        FakeSession(pool, ClientState.WAITING),
        FakeSession(pool, ClientState.WAITING),
        FakeSession(pool, ClientState.LINKED),
        FakeSession(pool, ClientState.IDLE),
        FakeSession(pool, ClientState.AUTH),  # not logged in: not counted
        FakeSession(None, ClientState.LOGIN),
    })
    return ctx


def scrape(ctx: ClientContext) -> dict[str, dict[tuple, float]]:
    """Parse the exposition of ctx into {sample name: {sorted labels: value}}."""
    text = generate_latest(metrics_registry(ctx)).decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def labels(**kw: str) -> tuple:
    return tuple(sorted(kw.items()))


def test_counters_read_pool_stats():
    samples = scrape(make_ctx())
    app = labels(database="app", user="alice")
    assert samples["ecluse_transactions_total"][app] == 11
    assert samples["ecluse_transactions_total"][labels(database="other", user="bob")] == 2
    assert samples["ecluse_queries_total"][app] == 23
    assert samples["ecluse_received_bytes_total"][app] == 1000
    assert samples["ecluse_sent_bytes_total"][app] == 5000
    assert samples["ecluse_wait_time_seconds_total"][app] == pytest.approx(1.5 + 0.002)


def test_errors_by_origin_and_class():
    errors = scrape(make_ctx())["ecluse_errors_total"]
    base = {"database": "app", "user": "alice"}
    assert errors[labels(**base, origin="server", **{"class": "42"})] == 2
    assert errors[labels(**base, origin="pooler", **{"class": "53"})] == 1


def test_gauges_count_clients_and_servers_by_state():
    samples = scrape(make_ctx())
    app = {"database": "app", "user": "alice"}
    clients = samples["ecluse_pool_clients"]
    assert clients[labels(**app, state="waiting")] == 2
    assert clients[labels(**app, state="active")] == 2
    servers = samples["ecluse_pool_servers"]
    assert {dict(k)["state"] for k in servers} == {"active", "idle", "used", "tested", "login"}
    assert samples["ecluse_pool_size"][labels(**app)] == 7


def test_histogram_buckets_are_cumulative_with_sum_and_count():
    ctx = make_ctx()
    samples = scrape(ctx)
    app = {"database": "app", "user": "alice"}
    buckets = {float(dict(k)["le"]): v for k, v in samples["ecluse_query_duration_seconds_bucket"]
               .items() if dict(k)["database"] == "app"}
    bounds = sorted(buckets)
    values = [buckets[b] for b in bounds]
    assert values == sorted(values)  # cumulative: never decreasing
    assert bounds[-1] == math.inf
    assert samples["ecluse_query_duration_seconds_count"][labels(**app)] == 5 == values[-1]
    assert buckets[0.0001] == 1
    assert buckets[0.0005] == 3  # 0.0003 twice, counted in the 0.0005 bucket and above
    assert buckets[60.0] == 4  # 100 s is only in +Inf
    assert samples["ecluse_query_duration_seconds_sum"][labels(**app)] == pytest.approx(
        0.00005 + 0.0006 + 0.2 + 100.0)


def test_histogram_buckets_of_stats_histogram():
    hist = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 3.0, 4.0):
        hist.observe(v)
    assert histogram_buckets(hist) == [("1.0", 2), ("2.0", 3), ("+Inf", 5)]


def test_counters_do_not_go_backwards_between_scrapes():
    ctx = make_ctx()
    first = scrape(ctx)
    pool = next(iter(ctx.registry))
    pool.stats.xact_count += 5
    pool.stats.add_query(0.01)
    second = scrape(ctx)
    for name, series in first.items():
        if name.endswith(("_total", "_count", "_sum", "_bucket")) and name.startswith("ecluse_"):
            for key, value in series.items():
                assert second[name][key] >= value, (name, key)
    key = labels(database=pool.settings.database, user=pool.settings.user)
    assert second["ecluse_transactions_total"][key] == first["ecluse_transactions_total"][key] + 5


def test_process_metrics_are_exposed():
    samples = scrape(make_ctx())
    assert "process_cpu_seconds_total" in samples
    assert "python_info" in samples


def test_collector_reads_at_collect_time_only():
    ctx = make_ctx()
    collector = EcluseCollector(ctx)
    assert list(collector.describe()) == []
    before = {m.name for m in collector.collect()}
    assert {"ecluse_transactions", "ecluse_pool_clients", "ecluse_query_duration_seconds",
            "ecluse_errors"} <= before


def test_result_rows_decode_show_pools():
    rows = result_rows(show.show_pools(make_ctx()))
    app = next(r for r in rows if r["database"] == "app")
    assert app["cl_waiting"] == 2 and app["cl_active"] == 2
    assert app["pool_mode"] == "transaction"
    assert app["load_balance_hosts"] is None


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9127", ("127.0.0.1", 9127)),
    (":9127", ("0.0.0.0", 9127)),
    ("[::1]:9127", ("::1", 9127)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9127", "host:", "host:port"])
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError):
        parse_listen(text)


def test_openapi_is_valid_and_covers_every_route():
    validate(OPENAPI)
    app = build_app(make_ctx())
    served = {(route.method.lower(), route.resource.canonical)
              for route in app.router.routes() if route.method != "HEAD"}
    documented = {(method, path) for path, ops in OPENAPI["paths"].items() for method in ops}
    assert served == documented


async def _request(ctx: ClientContext, method: str, path: str,
                   token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with TestClient(TestServer(build_app(ctx))) as client:
        resp = await client.request(method, path, headers=headers)
        return resp.status, await resp.json()


def with_token(ctx: ClientContext, token: str) -> ClientContext:
    ctx.config = dataclasses.replace(
        ctx.config, settings=dataclasses.replace(ctx.config.settings, api_token=token))
    return ctx


def test_reload_without_reload_config_is_501():
    ctx = with_token(make_ctx(), "t")
    assert ctx.reload_config is None
    status, body = asyncio.run(_request(ctx, "POST", "/reload", "t"))
    assert status == 501 and body["error"]


@pytest.mark.parametrize(("outcome", "status"), [(None, 200), ("bad line 3", 409)])
def test_reload_answers_what_reload_config_says(outcome, status):
    ctx = with_token(make_ctx(), "t")
    calls = []
    ctx.reload_config = lambda: calls.append(1) or outcome
    got, body = asyncio.run(_request(ctx, "POST", "/reload", "t"))
    assert (got, calls) == (status, [1])
    if outcome is not None:
        assert body["error"] == outcome


def test_token_compared_exactly():
    ctx = with_token(make_ctx(), "tok")
    assert asyncio.run(_request(ctx, "GET", "/pools", "tok"))[0] == 200
    assert asyncio.run(_request(ctx, "GET", "/pools", "TOK"))[0] == 401
    assert asyncio.run(_request(ctx, "GET", "/pools", "tok2"))[0] == 401
    assert asyncio.run(_request(make_ctx(), "GET", "/pools", "tok"))[0] == 403


def test_health_reports_unreachable_database_as_503():
    # Both databases point at port 1 on localhost, where nothing listens.
    config = config_from_string(CONFIG.replace("5432", "1"))
    ctx = ClientContext(config, PoolRegistry(config))
    status, body = asyncio.run(_request(ctx, "GET", "/health"))
    assert status == 503
    assert set(body["databases"]) == {"app", "other"}
    assert not body["databases"]["app"]["reachable"]
