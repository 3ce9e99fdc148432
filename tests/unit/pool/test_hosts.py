"""Host choice for new server connections (pool/hosts.py): load_balance_hosts and
the target_session_attrs table of PgBouncer's doc/config.md."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecluse.pool.hosts import HostPicker, session_attrs_match

hosts_lists = st.lists(st.sampled_from(["a", "b", "c", "/tmp", "10.0.0.1", "db.example"]),
                       min_size=1, max_size=6, unique=True).map(tuple)


@given(hosts_lists, st.integers(min_value=0, max_value=30))
def test_round_robin_visits_every_host_in_turn(hosts, picks):
    picker = HostPicker(hosts, round_robin=True)
    got = [picker.pick() for _ in range(picks)]
    assert got == [hosts[i % len(hosts)] for i in range(picks)]


@given(hosts_lists, st.lists(st.booleans(), max_size=30))
def test_round_robin_failures_do_not_change_the_turn(hosts, outcomes):
    picker = HostPicker(hosts, round_robin=True)
    for i, ok in enumerate(outcomes):
        host = picker.pick()
        assert host == hosts[i % len(hosts)]
        if not ok:
            picker.failed(host)


@given(hosts_lists, st.lists(st.booleans(), max_size=30))
def test_disable_sticks_until_a_failure_then_moves_on(hosts, outcomes):
    picker = HostPicker(hosts, round_robin=False)
    current = 0
    for ok in outcomes:
        host = picker.pick()
        assert host == hosts[current]
        if not ok:
            picker.failed(host)
            current = (current + 1) % len(hosts)


def test_disable_moves_once_for_concurrent_failures_of_one_host():
    picker = HostPicker(("a", "b", "c"), round_robin=False)
    first, second = picker.pick(), picker.pick()
    assert first == second == "a"
    picker.failed(first)
    picker.failed(second)  # the second launch failing at "a" must not skip "b"
    assert picker.pick() == "b"
    picker.failed("a")  # a late failure of an older host changes nothing
    assert picker.pick() == "b"


@given(hosts_lists, st.booleans(), st.integers(min_value=0, max_value=10))
def test_one_pass_of_failures_tries_every_host_once(hosts, round_robin, warm):
    # A launch tries at most len(picker) hosts: failing each one in turn
    # visits each host exactly once, from wherever the picker stood.
    picker = HostPicker(hosts, round_robin=round_robin)
    for _ in range(warm):
        picker.pick()
    tried = []
    for _ in range(len(picker)):
        host = picker.pick()
        tried.append(host)
        picker.failed(host)
    assert sorted(tried) == sorted(hosts)


def test_an_empty_host_list_is_refused():
    with pytest.raises(ValueError):
        HostPicker(())


# PgBouncer's table (doc/config.md, target_session_attrs), as (in_hot_standby,
# default_transaction_read_only) -> accepted; None means "not reported".
def _expected(target, standby, read_only):
    if target == "any":
        return True
    if target == "read-write":
        return standby == "off" and read_only == "off"
    if target == "read-only":
        return standby == "on" or read_only == "on"
    if target == "primary":
        return standby == "off"
    assert target == "standby"
    return standby == "on"


VALUES = (None, "on", "off")


@pytest.mark.parametrize(("target", "standby", "read_only"), list(itertools.product(
    ("any", "read-write", "read-only", "primary", "standby"), VALUES, VALUES)))
def test_target_session_attrs_table(target, standby, read_only):
    params = {"server_version": "16.4"}
    if standby is not None:
        params["in_hot_standby"] = standby
    if read_only is not None:
        params["default_transaction_read_only"] = read_only
    assert session_attrs_match(target, params) is _expected(target, standby, read_only)


def test_target_session_attrs_spot_checks():
    primary = {"in_hot_standby": "off", "default_transaction_read_only": "off"}
    ro_primary = {"in_hot_standby": "off", "default_transaction_read_only": "on"}
    standby = {"in_hot_standby": "on", "default_transaction_read_only": "off"}
    old_server: dict[str, str] = {}  # PostgreSQL 13 reports neither
    assert session_attrs_match("read-write", primary)
    assert not session_attrs_match("read-write", ro_primary)
    assert session_attrs_match("primary", ro_primary)  # as documented
    assert session_attrs_match("read-only", ro_primary)
    assert session_attrs_match("standby", standby) and session_attrs_match("read-only", standby)
    assert not session_attrs_match("primary", standby)
    assert session_attrs_match("any", old_server)
    for target in ("read-write", "read-only", "primary", "standby"):
        assert not session_attrs_match(target, old_server)
    with pytest.raises(ValueError):
        session_attrs_match("prefer-standby", primary)
