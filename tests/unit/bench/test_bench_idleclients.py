"""The idle client's pure parts: the StartupMessage, reading the login reply, the split."""

from __future__ import annotations

import struct

import idleclients
import pytest
from idleclients import encode_startup, login_outcome, source_addresses, split_count


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


AUTH_OK = _msg(b"R", b"\0\0\0\0")
PARAM = _msg(b"S", b"server_version\x0016.0\x00")
KEY = _msg(b"K", struct.pack("!II", 1, 2))
READY = _msg(b"Z", b"I")


def test_startup_message_is_protocol_3_with_user_and_database():
    data = encode_startup("postgres", "bench")
    (length, version) = struct.unpack_from("!II", data)
    assert length == len(data)
    assert version == 196608
    fields = data[8:].split(b"\0")
    assert fields[:4] == [b"user", b"postgres", b"database", b"bench"]
    assert data.endswith(b"\0\0")


def test_login_completes_at_ready_for_query():
    assert login_outcome(AUTH_OK + PARAM + KEY + READY) == ("ok", None)


@pytest.mark.parametrize("cut", range(1, len(AUTH_OK + PARAM + KEY + READY)))
def test_login_split_anywhere_is_incomplete_until_the_end(cut):
    assert login_outcome((AUTH_OK + PARAM + KEY + READY)[:cut]) == ("more", None)


def test_error_response_gives_its_message():
    err = _msg(b"E", b"SFATAL\0C53300\0Mno more connections allowed (max_client_conn)\0\0")
    assert login_outcome(AUTH_OK + err) == (
        "error", "no more connections allowed (max_client_conn)")


def test_password_request_is_an_error_under_trust():
    outcome, message = login_outcome(_msg(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\0\0"))
    assert outcome == "error"
    assert "code 10" in message


def test_bad_length_is_an_error():
    assert login_outcome(b"Z" + struct.pack("!I", 2))[0] == "error"


@pytest.mark.parametrize(("count", "per", "expected"), [
    (0, 10, []), (5, 10, [5]), (10, 10, [10]), (11, 10, [6, 5]),
    (100_000, 19_936, [16_667, 16_667, 16_667, 16_667, 16_666, 16_666]),
])
def test_split_count_shares_evenly_within_the_limit(count, per, expected):
    shares = split_count(count, per)
    assert shares == expected
    assert sum(shares) == count
    assert all(s <= per for s in shares)


def test_source_addresses_stay_under_the_port_range_and_do_not_overlap():
    first = source_addresses(0, 45_000)
    assert first == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert source_addresses(len(first), 1) == ["127.0.0.5"]
    assert idleclients.PER_SOURCE < 28_000
