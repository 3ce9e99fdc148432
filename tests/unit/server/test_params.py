"""Building the SET statements that make a server match its client."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ecluse.protocol.codes import REPORTED_PARAMETERS
from ecluse.server.params import (
    ALWAYS_TRACKED,
    build_sync_query,
    quote_literal,
    sync_statements,
    tracked_parameters,
)


def test_nothing_to_do_when_equal():
    p = {"TimeZone": "UTC", "client_encoding": "UTF8"}
    assert build_sync_query(p, dict(p)) is None


def test_only_differences_are_set():
    q = build_sync_query({"TimeZone": "Asia/Tokyo", "client_encoding": "UTF8"},
                         {"TimeZone": "UTC", "client_encoding": "UTF8"})
    assert q == "SET TimeZone TO E'Asia/Tokyo'"


def test_search_path_reset_when_client_wants_default():
    assert build_sync_query({}, {"search_path": "evil"}) == "RESET search_path"
    assert build_sync_query({}, {}) is None


def test_canonical_names():
    tracked = tracked_parameters()
    assert tracked.canonical_name("timezone") == "TimeZone"
    assert tracked.canonical_name("DATESTYLE") == "DateStyle"
    assert tracked.canonical_name("intervalstyle") == "IntervalStyle"  # PgBouncer's default
    assert tracked.canonical_name("work_mem") is None


@given(st.lists(st.sampled_from([*REPORTED_PARAMETERS, "work_mem", "myext.tenant",
                                 "search_path"]).map(
    lambda n: n.upper() if len(n) % 2 else n.lower()), max_size=6))
def test_tracked_set_is_the_fixed_one_and_the_extra_names_in_the_server_spelling(extra):
    """Whatever case track_extra_parameters uses, a reported name is tracked in
    PostgreSQL's spelling (ParameterStatus keys and the client's must match);
    the fixed names are always there; nothing else is."""
    tracked = tracked_parameters(tuple(extra))
    spelling = {n.lower(): n for n in (*REPORTED_PARAMETERS, *ALWAYS_TRACKED)}
    expected = {n.lower(): spelling.get(n.lower(), n) for n in extra}
    expected.update({n.lower(): n for n in ALWAYS_TRACKED})
    assert dict(tracked.by_lower) == expected
    assert tracked.names == frozenset(expected.values())
    for name in extra:
        assert tracked.canonical_name(name.swapcase()) == expected[name.lower()]


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")))
def test_quote_literal_cannot_be_escaped_from(value):
    q = quote_literal(value)
    assert q.startswith("E'") and q.endswith("'")
    inner = q[2:-1]
    # Unescape as PostgreSQL reads an E'' literal: the original comes back whole.
    out, i = [], 0
    while i < len(inner):
        ch = inner[i]
        if ch == "\\":
            out.append(inner[i + 1])
            i += 2
        elif ch == "'":
            assert inner[i + 1] == "'"  # a lone quote would end the literal
            out.append("'")
            i += 2
        else:
            out.append(ch)
            i += 1
    assert "".join(out) == value


def test_search_path_is_set_as_a_list():
    sql = build_sync_query({"search_path": "a, \"B c\""}, {})
    assert sql == "SELECT pg_catalog.set_config('search_path', E'a, \"B c\"', false)"


@given(st.dictionaries(st.sampled_from(["client_encoding", "TimeZone", "search_path",
                                        "application_name", "IntervalStyle"]),
                       st.sampled_from(["a", "b"]), max_size=4),
       st.dictionaries(st.sampled_from(["client_encoding", "TimeZone", "search_path",
                                        "application_name"]),
                       st.sampled_from(["a", "b"]), max_size=4))
def test_the_in_step_shortcut_agrees_with_the_full_comparison(wanted, current) -> None:
    assert build_sync_query(wanted, current) == sync_statements(wanted, current)


_UNQUOTE = re.compile(r"E'((?:[^'\\]|''|\\.)*)'")


def _unquote(literal: str) -> str:
    inner = _UNQUOTE.fullmatch(literal)[1]
    return re.sub(r"''|\\(.)", lambda m: m[1] if m[1] is not None else "'", inner)


def _run_sync(sql: str, current: dict[str, str]) -> dict[str, str]:
    """What a server reports after running build_sync_query's statements."""
    after = dict(current)
    for stmt in sql.split(";"):
        if stmt == "RESET search_path":
            del after["search_path"]
        elif stmt.startswith("SELECT pg_catalog.set_config('search_path', "):
            after["search_path"] = _unquote(stmt.split(", ", 1)[1].rsplit(", false)", 1)[0])
        else:
            name, literal = re.fullmatch(r"SET (\S+) TO (.*)", stmt).groups()
            after[name] = _unquote(literal)
    return after


_VALUES = st.text(alphabet="ab' \\", max_size=3)


@given(st.dictionaries(st.sampled_from([*ALWAYS_TRACKED, "IntervalStyle", "myext.x"]), _VALUES),
       st.dictionaries(st.sampled_from([*ALWAYS_TRACKED, "IntervalStyle", "server_version"]),
                       _VALUES))
def test_running_the_sync_puts_the_server_in_step_and_touches_nothing_else(wanted, current):
    """Generated: whatever the tracked set (extra names included), the SETs make
    the server hold every value the client wants (a default search_path by
    RESET), change no parameter the client has no value for, and a second look
    finds nothing more to do."""
    sql = build_sync_query(wanted, current)
    if sql is None:
        assert wanted.items() <= current.items()
        return
    after = _run_sync(sql, current)
    assert wanted.items() <= after.items()
    assert "search_path" in wanted or "search_path" not in after
    assert {k: v for k, v in after.items() if k not in wanted and k != "search_path"} == \
        {k: v for k, v in current.items() if k not in wanted and k != "search_path"}
    assert build_sync_query(wanted, after) is None
