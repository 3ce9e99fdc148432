"""Tests for the auth_file (userlist.txt) parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecluse.config.userlist import format_userlist, parse_userlist, read_userlist
from ecluse.errors import ConfigError

MD5 = "md5" + "0123456789abcdef" * 2
SCRAM = "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVka2V5:c2VydmVya2V5"


def test_parses_plain_md5_and_scram_secrets() -> None:
    text = f"""\
; comment
# another comment

"alice" "plain-password"
  "bob"   "{MD5}"
"carol" "{SCRAM}"
"""
    assert parse_userlist(text) == {"alice": "plain-password", "bob": MD5, "carol": SCRAM}


def test_doubled_quotes_are_literal_quotes() -> None:
    assert parse_userlist('"we""ird" "pa""ss"" "') == {'we"ird': 'pa"ss" '}


def test_empty_secret_and_trailing_fields() -> None:
    # PgBouncer ignores columns after the secret (old pg_auth files had more).
    text = '"trusty" ""\n"old" "secret" "extra" 123\n'
    assert parse_userlist(text) == {"trusty": "", "old": "secret"}


def test_repeated_user_keeps_the_last_secret() -> None:
    assert parse_userlist('"u" "one"\n"u" "two"\n') == {"u": "two"}


def test_crlf_line_endings() -> None:
    assert parse_userlist('"u" "s"\r\n"v" "t"\r\n') == {"u": "s", "v": "t"}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('"ok" "x"\nalice secret\n', 2, "expected"),
        ('"ok" "x"\n\n"alice"\n', 3, "expected"),
        ('"alice "secret"\n', 1, "expected"),
        ('"alice" "secret\n', 1, "unterminated"),
        ('"" "secret"\n', 1, "empty user name"),
    ],
)
def test_bad_lines_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_userlist(text, "users.txt")
    assert str(info.value).startswith(f"users.txt:{line}: ")
    assert info.value.path == "users.txt"
    assert info.value.line == line


def test_read_userlist_from_file(tmp_path: Path) -> None:
    path = tmp_path / "userlist.txt"
    path.write_text(f'"carol" "{SCRAM}"\n', encoding="utf-8")
    assert read_userlist(str(path)) == {"carol": SCRAM}


_field = st.text(st.characters(exclude_characters="\n\r", exclude_categories=["Cs"]), max_size=20)


@given(st.dictionaries(_field.filter(bool), _field, max_size=5))
def test_format_then_parse_round_trips(secrets: dict[str, str]) -> None:
    assert parse_userlist(format_userlist(secrets)) == secrets
