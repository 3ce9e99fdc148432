"""auth_ident_file: parsing the user name maps, and what a map allows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecluse.auth.ident import map_allows, parse_ident
from ecluse.errors import ConfigError


def test_maps_lines_quotes_comments_and_all() -> None:
    maps = parse_ident('# MAP  SYSTEM  DATABASE\n'
                       'staff  alice   app      # inline comment\n'
                       'staff  alice   "all"\n'
                       'staff  bob     all\n'
                       '"my map" "carol smith" \\\n'
                       '   reports\n'
                       '\n')
    assert dict(maps) == {"staff": (("alice", "app"), ("alice", "all"), ("bob", None)),
                          "my map": (("carol smith", "reports"),)}
    assert map_allows(maps, "staff", "bob", "anyone")  # unquoted all: any user
    assert map_allows(maps, "staff", "alice", "all")  # quoted "all": the user named all
    assert not map_allows(maps, "staff", "alice", "other")
    assert map_allows(maps, "my map", "carol smith", "reports")
    assert not map_allows(maps, "nosuchmap", "bob", "anyone")
    assert not map_allows(maps, "staff", "Bob", "anyone")  # names compare exactly


@pytest.mark.parametrize(("line", "message"), [
    ("staff alice", "found 2 fields"),
    ("staff alice app extra", "found 4 fields"),
    ("staff /^a app", "regular expression"),
    ("staff alice +admins", "group membership"),
    ("staff alice /^a", "regular expression"),
    ("staff alice,bob app", "multiple values"),
    ("include other.conf", '"include" is not supported'),
    ("include_dir conf.d", '"include_dir" is not supported'),
    ('staff "" app', "empty system user name"),
    ('staff "alice app', "unterminated"),
])
def test_bad_lines_name_file_and_line(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_ident(f"staff alice app\n{line}\n", "/etc/ecluse/ident.conf")
    assert err.value.path == "/etc/ecluse/ident.conf" and err.value.line == 2
    assert message in err.value.message
    assert err.value.message.startswith("/etc/ecluse/ident.conf:2: auth_ident_file: ")


_names = st.sampled_from(["alice", "bob", "all", "carol smith", "x"])


@given(lines=st.lists(st.tuples(st.sampled_from(["m1", "m2"]), _names,
                                st.one_of(st.none(), _names)), max_size=8),
       query=st.tuples(st.sampled_from(["m1", "m2", "m3"]), _names, _names))
def test_a_map_allows_exactly_its_lines(lines, query) -> None:
    """Written out and parsed back, a map allows exactly what its lines list: the
    pair itself, or any database user for a line whose target is all (None here)."""
    text = "".join(f'{m} "{system}" {"all" if target is None else f"{chr(34)}{target}{chr(34)}"}\n'
                   for m, system, target in lines)
    maps = parse_ident(text)
    name, system, user = query
    expected = any(m == name and s == system and (t is None or t == user)
                   for m, s, t in lines)
    assert map_allows(maps, name, system, user) is expected
