"""Tests for diff_configs: what a reload changes."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from ecluse.config import config_from_string, diff_configs
from ecluse.config.diff import keep_restart_only, settable

OLD = """\
[databases]
keep = port=1
change = port=2
drop = port=3
[users]
u = pool_size=1
[pgbouncer]
default_pool_size = 10
auth_query = SELECT 1
"""

NEW = """\
[databases]
keep = port=1
change = port=20
add = port=4
[users]
u = pool_size=2
[pgbouncer]
default_pool_size = 11
pool_mode = transaction
"""


def test_diff_names_databases_settings_and_users() -> None:
    diff = diff_configs(config_from_string(OLD), config_from_string(NEW))
    assert diff.added == {"add"}
    assert diff.removed == {"drop"}
    assert diff.changed == {"change"}
    assert diff.settings == {"default_pool_size", "pool_mode", "auth_query"}
    assert diff.users == {"u"}
    assert diff.auth == frozenset()
    assert not diff.is_empty()


def test_identical_configs_have_an_empty_diff() -> None:
    diff = diff_configs(config_from_string(OLD), config_from_string(OLD))
    assert diff.is_empty()
    assert diff.changed == frozenset() and diff.settings == frozenset()


def test_auth_secret_changes_are_named() -> None:
    base = config_from_string(OLD)
    old = dataclasses.replace(base, auth=MappingProxyType({"a": "x", "b": "y", "c": "z"}))
    new = dataclasses.replace(base, auth=MappingProxyType({"a": "x", "b": "changed", "d": "w"}))
    diff = diff_configs(old, new)
    assert diff.auth == {"b", "c", "d"}
    assert diff.settings == frozenset() and diff.changed == frozenset()


@pytest.mark.parametrize(("line", "key", "running"), [
    ("track_extra_parameters = IntervalStyle, TimeZone", "track_extra_parameters",
     ("IntervalStyle",)),
    ("disable_pqexec = 1", "disable_pqexec", False),
])
def test_settings_pgbouncer_does_not_reload_take_a_restart(line, key, running) -> None:
    """PgBouncer marks them CF_NO_RELOAD: a reload keeps the running value."""
    old = config_from_string("")
    new = config_from_string(f"[pgbouncer]\n{line}\n")
    assert getattr(new.settings, key) != running
    kept, names = keep_restart_only(old, new)
    assert names == [key]
    assert getattr(kept.settings, key) == running
    assert not settable(key)
