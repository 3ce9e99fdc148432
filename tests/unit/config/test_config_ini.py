"""Tests for the line-oriented ini reader, including %include."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecluse.config.ini import IniEntry, parse_ini, read_ini
from ecluse.errors import ConfigError


def _triples(entries: tuple[IniEntry, ...]) -> list[tuple[str, str, str, int]]:
    return [(e.section, e.key, e.value, e.line) for e in entries]


def test_sections_keys_values_and_line_numbers() -> None:
    text = """\
; a comment
# another

[databases]
MyDb = host=localhost dbname=other

[PgBouncer]
Listen_Port   =   6433
unix_socket_dir =
  auth_type = md5  ; not a comment
"""
    doc = parse_ini(text, "p.ini")
    assert _triples(doc.entries) == [
        ("databases", "MyDb", "host=localhost dbname=other", 5),
        ("pgbouncer", "listen_port", "6433", 8),
        ("pgbouncer", "unix_socket_dir", "", 9),
        ("pgbouncer", "auth_type", "md5  ; not a comment", 10),
    ]
    assert all(e.path == "p.ini" for e in doc.entries)
    assert [(s.name, s.line) for s in doc.sections] == [("databases", 4), ("pgbouncer", 7)]


def test_ecluse_section_is_a_synonym_of_pgbouncer() -> None:
    doc = parse_ini("[ECLUSE]\nworkers = 2\n")
    assert doc.section("pgbouncer")[0].key == "workers"


def test_value_may_contain_equals_and_hash() -> None:
    doc = parse_ini("[databases]\nd = password=a=b#c\n")
    assert doc.entries[0].value == "password=a=b#c"


def test_user_keys_keep_their_case() -> None:
    doc = parse_ini("[users]\nBob = pool_mode=session\n")
    assert doc.entries[0].key == "Bob"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("listen_port = 1\n", 1, "outside of any"),
        ("[pgbouncer]\n\nlisten_port\n", 3, "expected 'key = value'"),
        ("[pgbouncer]\n= 5\n", 2, "missing key"),
        ("[pgbouncer\n", 1, "malformed section header"),
        ("[]\n", 1, "empty section name"),
        ("[pgbouncer]\n%include\n", 2, "needs a file name"),
    ],
)
def test_errors_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_ini(text, "bad.ini")
    assert str(info.value).startswith(f"bad.ini:{line}: ")


def test_include_is_relative_to_the_including_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "sub").mkdir(parents=True)
    (conf / "main.ini").write_text(
        "[pgbouncer]\nlisten_port = 1\n%include sub/more.ini\nworkers = 3\n"
    )
    # The included file continues the current section, then opens [databases],
    # which stays open in the including file after the include.
    (conf / "sub" / "more.ini").write_text("max_client_conn = 5\n[databases]\nd = port=1\n")
    doc = read_ini(str(conf / "main.ini"))
    got = [(e.section, e.key, Path(e.path).name, e.line) for e in doc.entries]
    assert got == [
        ("pgbouncer", "listen_port", "main.ini", 2),
        ("pgbouncer", "max_client_conn", "more.ini", 1),
        ("databases", "d", "more.ini", 3),
        ("databases", "workers", "main.ini", 4),
    ]


def test_error_in_included_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "main.ini").write_text("[pgbouncer]\n%include inc.ini\n")
    (tmp_path / "inc.ini").write_text("\n\nbroken line\n")
    with pytest.raises(ConfigError) as info:
        read_ini(str(tmp_path / "main.ini"))
    assert info.value.path == str(tmp_path / "inc.ini")
    assert info.value.line == 3


def test_missing_include_names_the_include_line(tmp_path: Path) -> None:
    (tmp_path / "main.ini").write_text("[pgbouncer]\n\n%include nowhere.ini\n")
    with pytest.raises(ConfigError, match=r"nowhere\.ini") as info:
        read_ini(str(tmp_path / "main.ini"))
    assert info.value.line == 3


def test_include_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.ini").write_text("[pgbouncer]\n%include b.ini\n")
    (tmp_path / "b.ini").write_text("%include a.ini\n")
    with pytest.raises(ConfigError, match="include cycle") as info:
        read_ini(str(tmp_path / "a.ini"))
    assert info.value.path == str(tmp_path / "b.ini")


def test_the_same_file_may_be_included_twice(tmp_path: Path) -> None:
    (tmp_path / "a.ini").write_text("[databases]\n%include d.ini\n%include d.ini\n")
    (tmp_path / "d.ini").write_text("x = port=1\n")
    assert len(read_ini(str(tmp_path / "a.ini")).entries) == 2


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        read_ini(str(tmp_path / "absent.ini"))
    assert info.value.path == str(tmp_path / "absent.ini")


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "a.ini").write_bytes(b"\xef\xbb\xbf[pgbouncer]\nworkers = 2\n")
    assert read_ini(str(tmp_path / "a.ini")).entries[0].key == "workers"
