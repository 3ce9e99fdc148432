"""server/state.py: the probe's answer and the settings sync, without a server.

The real server round trip (probe on a live session, sync then probe again) is
in tests/integration/test_state_probe.py.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pglast
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pglast import ast
from pglast.enums import VariableSetKind

from ecluse.server.state import (
    PROBE_SQL,
    SessionState,
    build_probe_sql,
    build_settings_sync,
    parse_probe,
)


def probe_row(**doc: Any) -> list[bytes | None]:
    """Encode a probe answer the way the server does: hex of UTF-8 JSON."""
    full = {"settings": None, "search_path": '"$user", public', "advisory_locks": None,
            "temp_objects": None, "prepared_statements": None, "holdable_cursors": None,
            "listening_channels": None}
    full.update(doc)
    return [json.dumps(full).encode().hex().encode()]


def test_probe_is_one_select() -> None:
    stmts = pglast.parse_sql(PROBE_SQL)
    assert len(stmts) == 1 and isinstance(stmts[0].stmt, ast.SelectStmt)


def test_probe_custom_names_are_quoted() -> None:
    sql = build_probe_sql(["App.Tenant", "x'); DROP TABLE t; --.y", "app.tenant"])
    stmts = pglast.parse_sql(sql)
    assert len(stmts) == 1
    assert sql.count("E'app.tenant'") == 1
    assert "E'x''); drop table t; --.y'" in sql


def test_parse_empty_session() -> None:
    assert parse_probe(probe_row()) == SessionState({}, '"$user", public', [])


def test_parse_everything() -> None:
    row = probe_row(
        settings={"work_mem": "8MB", "myapp.x": "v'\\é"},
        search_path="a, \"B c\"",
        advisory_locks=[[0, 1, 1, "ExclusiveLock"],
                        [0xFFFFFFFF, 0xFFFFFFFB, 1, "ExclusiveLock"],
                        [0xFFFFFFFF, 7, 2, "ShareLock"]],
        temp_objects=[["table", "tt"], ["function", "pg_temp_3.f()"]],
        prepared_statements=["p1"],
        holdable_cursors=["c1"],
        listening_channels=["ch", "Ch 2"],
    )
    state = parse_probe(row)
    assert state.settings == {"work_mem": "8MB", "myapp.x": "v'\\é"}
    assert state.search_path == 'a, "B c"'
    assert state.pins == [
        "advisory lock 1", "advisory lock -5", "shared advisory lock (-1, 7)",
        "temporary table tt", "temporary function pg_temp_3.f()",
        "prepared statement p1", "WITH HOLD cursor c1",
        "LISTEN on channel ch", "LISTEN on channel Ch 2",
    ]


@pytest.mark.parametrize("row", [
    [],
    [None],
    [b"00", b"00"],
    [b"zz"],
    [b"7b"],  # "{"
    [json.dumps([1]).encode().hex().encode()],
    [b"\xff\xfe"],
    [bytes.fromhex("ff").hex().encode()],  # not UTF-8 inside
    probe_row(search_path=None),
    probe_row(search_path=1),
    probe_row(settings=["a"]),
    probe_row(settings={"a": 1}),
    probe_row(advisory_locks=[[1, 2, 1]]),
    probe_row(advisory_locks=[["0", "1", 1, "ExclusiveLock"]]),
    probe_row(advisory_locks=[[-1, 1, 1, "ExclusiveLock"]]),
    probe_row(advisory_locks=[[True, 1, 1, "ExclusiveLock"]]),
    probe_row(advisory_locks={}),
    probe_row(temp_objects=[["table"]]),
    probe_row(temp_objects=[["table", 3]]),
    probe_row(prepared_statements="p1"),
    probe_row(holdable_cursors=[1]),
    probe_row(listening_channels=[None]),
])
def test_parse_malformed(row: list[bytes | None]) -> None:
    with pytest.raises(ValueError, match="malformed state probe"):
        parse_probe(row)


@given(st.lists(st.one_of(st.none(), st.binary(max_size=30)), max_size=3))
def test_parse_garbage_raises_only_value_error(row: list[bytes | None]) -> None:
    with contextlib.suppress(ValueError):
        parse_probe(row)


# -- settings sync --------------------------------------------------------------

def test_sync_nothing_to_do() -> None:
    assert build_settings_sync({}, {}) is None
    assert build_settings_sync({"work_mem": "8MB"}, {"work_mem": "8MB"}) is None


def test_sync_sets_and_resets() -> None:
    sql = build_settings_sync(
        {"work_mem": "8MB", "search_path": 'a, "B"', "same": "1"},
        {"work_mem": "4MB", "same": "1", "myapp.tenant": "x", "DateStyle": "ISO, MDY"})
    assert sql == ";".join([
        'RESET "DateStyle"',
        """RESET "myapp"."tenant\"""",
        "SELECT pg_catalog.set_config(E'search_path', E'a, \"B\"', false)",
        "SELECT pg_catalog.set_config(E'work_mem', E'8MB', false)",
    ])


def test_sync_order_of_role_and_session_authorization() -> None:
    sql = build_settings_sync({"role": "r", "work_mem": "1MB", "session_authorization": "u"}, {})
    assert sql is not None
    parts = sql.split(";")
    assert "session_authorization" in parts[0]
    assert "work_mem" in parts[1]
    assert "'role'" in parts[2]
    sql = build_settings_sync({"role": "r"}, {"session_authorization": "u"})
    assert sql == 'RESET "session_authorization";' \
        "SELECT pg_catalog.set_config(E'role', E'r', false)"


def test_sync_quotes() -> None:
    sql = build_settings_sync({"a.b": "it's a \\ path"}, {'we"ird.x': "1"})
    assert sql == ("SELECT pg_catalog.set_config(E'a.b', E'it''s a \\\\ path', false);"
                   'RESET "we""ird"."x"')


def test_sync_reset_of_names_that_are_keywords() -> None:
    assert build_settings_sync({}, {"all": "x", "time.zone": "y"}) == (
        'RESET "all";RESET "time"."zone"')


def test_sync_reset_of_untruncatable_name() -> None:
    long = "a" * 64
    assert build_settings_sync({}, {f"{long}.b": "v"}) == (
        f"SELECT pg_catalog.set_config(E'{long}.b', '', false)")


_VALUE = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=30)
_NAME = st.from_regex(r"[a-z_][a-z0-9_$]{0,10}(\.[a-z_][a-z0-9_$]{0,10})?", fullmatch=True)


@given(st.dictionaries(_NAME, _VALUE, max_size=5), st.dictionaries(_NAME, _VALUE, max_size=5))
def test_sync_parses_back_to_the_difference(wanted: dict[str, str],
                                            current: dict[str, str]) -> None:
    """Parsed with PostgreSQL's own grammar, the SQL sets exactly what differs."""
    sql = build_settings_sync(wanted, current)
    sets: dict[str, str] = {}
    resets: set[str] = set()
    for raw in pglast.parse_sql(sql or ""):
        stmt = raw.stmt
        if isinstance(stmt, ast.VariableSetStmt):
            assert stmt.kind == VariableSetKind.VAR_RESET
            resets.add(stmt.name)
        else:
            assert isinstance(stmt, ast.SelectStmt)
            (target,) = stmt.targetList
            name, value, local = target.val.args
            assert local.val.boolval is False
            sets[name.val.sval] = value.val.sval
    assert sets == {k: v for k, v in wanted.items() if current.get(k) != v}
    assert resets == set(current) - set(wanted)
