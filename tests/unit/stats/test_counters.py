"""Histogram buckets, PoolStats merging and stats_period averages."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ecluse.stats.counters import TIME_BUCKETS, Histogram, PoolStats
from ecluse.stats.period import PeriodSampler, averages

durations = st.floats(min_value=0.0, max_value=1000.0, allow_nan=False)


@given(st.lists(durations, max_size=200))
def test_histogram_cumulative_counts_match_a_direct_count(values):
    h = Histogram()
    for v in values:
        h.observe(v)
    cumulative = h.cumulative()
    for bound, seen in zip(TIME_BUCKETS, cumulative, strict=False):
        assert seen == sum(1 for v in values if v <= bound)
    assert cumulative[-1] == len(values) == h.count()
    assert abs(h.total - sum(values)) < 1e-6 * max(1.0, sum(values))


@given(st.lists(durations, min_size=1, max_size=200), st.floats(min_value=0.01, max_value=1.0))
def test_quantile_bound_covers_at_least_that_share(values, q):
    h = Histogram()
    for v in values:
        h.observe(v)
    bound = h.quantile(q)
    assert sum(1 for v in values if v <= bound) >= q * len(values)


@given(st.lists(st.tuples(st.integers(0, 10**6), durations), max_size=20),
       st.lists(st.tuples(st.integers(0, 10**6), durations), max_size=20))
def test_merge_equals_counting_everything_in_one(left, right):
    def build(items):
        s = PoolStats()
        for n, seconds in items:
            s.query_count += n
            s.add_query(seconds)
            s.add_wait(seconds / 2)
            s.add_error("server", "42P01")
        return s

    merged = build(left)
    merged.merge(build(right))
    whole = build(left + right)
    assert merged.as_dict() == whole.as_dict()
    assert merged.errors == whole.errors
    assert merged.query_seconds.counts == whole.query_seconds.counts


def test_averages_are_rates_and_times_per_event():
    before = {"xact_count": 100, "xact_time_us": 5_000, "received": 0,
              "query_count": 10, "query_time_us": 0, "wait_time_us": 0,
              "server_assignment_count": 0}
    after = {"xact_count": 300, "xact_time_us": 45_000, "received": 10_000,
             "query_count": 10, "query_time_us": 0, "wait_time_us": 900,
             "server_assignment_count": 3}
    avg = averages(before, after, seconds=10.0)
    assert avg["xact_count"] == 20  # per second
    assert avg["received"] == 1_000  # bytes per second
    assert avg["xact_time_us"] == 200  # 40,000 us over 200 transactions
    assert avg["query_time_us"] == 0  # no query in the period: no division by zero
    assert avg["wait_time_us"] == 300


def test_sampler_needs_two_samples_and_survives_a_dropped_pool():
    sampler = PeriodSampler()
    stats = PoolStats()
    stats.xact_count = 50
    assert sampler.sample({"db": stats}, now=0.0) == {}
    stats.xact_count = 150
    assert sampler.sample({"db": stats}, now=10.0)["db"]["xact_count"] == 10
    fresh = PoolStats()  # the pool was recreated by a reload: counters start over
    assert sampler.sample({"db": fresh}, now=20.0)["db"]["xact_count"] == 0


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 1e4, allow_nan=False)), max_size=60))
def test_query_and_wait_times_land_where_observe_puts_them(events):
    # add_query and add_wait write Histogram.observe out in line: same buckets, same sums.
    stats, queries, waits = PoolStats(), Histogram(), Histogram()
    for is_query, seconds in events:
        (stats.add_query if is_query else stats.add_wait)(seconds)
        (queries if is_query else waits).observe(seconds)
    assert stats.query_seconds.counts == queries.counts
    assert stats.wait_seconds.counts == waits.counts
    assert stats.query_seconds.total == queries.total
    assert stats.wait_seconds.total == waits.total
