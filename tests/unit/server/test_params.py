"""Building the SET statements that make a server match its client."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ecluse.server.params import (
    build_sync_query,
    canonical_name,
    quote_literal,
    sync_statements,
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
    assert canonical_name("timezone") == "TimeZone"
    assert canonical_name("DATESTYLE") == "DateStyle"
    assert canonical_name("work_mem") is None


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
                                        "application_name", "extra"]),
                       st.sampled_from(["a", "b"]), max_size=4),
       st.dictionaries(st.sampled_from(["client_encoding", "TimeZone", "search_path",
                                        "application_name"]),
                       st.sampled_from(["a", "b"]), max_size=4))
def test_the_in_step_shortcut_agrees_with_the_full_comparison(wanted, current) -> None:
    assert build_sync_query(wanted, current) == sync_statements(wanted, current)
