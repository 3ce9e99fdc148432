"""Client startup parameters: options parsing, tracked settings, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecluse.errors import ClientRefused
from ecluse.frontend.startup import parse_options, resolve_startup, split_options
from ecluse.server.params import tracked_parameters


def test_split_options_honours_backslash_escapes():
    assert split_options(r"-c search_path=a\ b  -c x=y") == ["-c", "search_path=a b", "-c", "x=y"]


@given(st.lists(st.tuples(st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
                          st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                         blacklist_characters="\0"),
                                  max_size=20)),
                max_size=5))
def test_parse_options_round_trips_escaped_values(pairs):
    def esc(v: str) -> str:
        return "".join("\\" + ch if ch.isspace() or ch == "\\" else ch for ch in v)

    options = " ".join(f"-c {name}={esc(value)}" for name, value in pairs)
    assert parse_options(options) == list(pairs)


def test_long_option_form_and_dashes():
    assert parse_options("--statement-timeout=5 -cwork_mem=1MB") == [
        ("statement_timeout", "5"), ("work_mem", "1MB")]


def test_resolve_tracks_known_settings_case_insensitively():
    s = resolve_startup({"user": "u", "TimeZone": "UTC", "client_encoding": "LATIN1",
                         "options": "-c datestyle=German -c search_path=app"}, ())
    assert s.database == "u"  # database defaults to the user name
    assert s.params == {"TimeZone": "UTC", "client_encoding": "LATIN1",
                        "DateStyle": "German", "search_path": "app"}


def test_unknown_parameters_refused_unless_ignored():
    with pytest.raises(ClientRefused, match="extra_float_digits"):
        resolve_startup({"user": "u", "extra_float_digits": "3"}, ())
    with pytest.raises(ClientRefused, match="work_mem"):
        resolve_startup({"user": "u", "options": "-c work_mem=1MB"}, ())
    s = resolve_startup({"user": "u", "extra_float_digits": "3",
                         "options": "-c work_mem=1MB"}, ("extra_float_digits", "work_mem"))
    assert s.params == {}


def test_track_extra_parameters_decides_what_startup_may_set():
    """PgBouncer: a parameter of track_extra_parameters is kept (in the server's
    spelling), one outside it refused unless ignored; the default tracks
    IntervalStyle."""
    params = {"user": "u", "intervalstyle": "iso_8601",
              "options": "-c default_transaction_read_only=on"}
    with pytest.raises(ClientRefused, match="default_transaction_read_only"):
        resolve_startup(params, ())
    s = resolve_startup(params, (), tracked_parameters(("IntervalStyle",
                                                        "Default_Transaction_Read_Only")))
    assert s.params == {"IntervalStyle": "iso_8601", "default_transaction_read_only": "on"}
    with pytest.raises(ClientRefused, match="intervalstyle"):
        resolve_startup(params, ("default_transaction_read_only",), tracked_parameters(()))
    s = resolve_startup(params, ("IntervalStyle", "default_transaction_read_only"),
                        tracked_parameters(()))
    assert s.params == {}


def test_garbage_in_options_is_refused():
    with pytest.raises(ClientRefused):
        parse_options("--")
    with pytest.raises(ClientRefused):
        parse_options("-x")


_NAMES = st.sampled_from(["TimeZone", "client_encoding", "application_name", "database",
                          "_pq_.compression", "_pq_.x", "_pq_", "pq_x", "_PQ_.y",
                          "extra_float_digits"])


@given(st.dictionaries(_NAMES, st.text(max_size=5), max_size=8))
def test_protocol_options_are_the_pq_names_in_order_and_nothing_else(extra):
    """resolve_startup lists exactly the `_pq_.` names (case-sensitive, as
    PostgreSQL reads them), in the client's order, never as tracked settings or
    refusals; every other unknown name is refused unless ignored."""
    params = {"user": "u", **extra}
    ignored = ("_pq_", "pq_x", "_PQ_.y", "extra_float_digits")
    s = resolve_startup(params, ignored)
    assert s.protocol_options == tuple(k for k in params if k.startswith("_pq_."))
    assert not any(k.startswith("_pq_") for k in s.params)
    if any(k in extra for k in ignored):
        with pytest.raises(ClientRefused):
            resolve_startup(params, ())
