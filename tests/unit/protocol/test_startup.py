"""Startup-phase packets: round trips, protocol versions, length bounds, names.

CVE-2012-4575 (over-long database/user names from the network) and the
startup-packet length rules of RELIABILITY.md §3.8.
"""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecluse.errors import LocalProtocolError, RemoteProtocolError
from ecluse.protocol import codes
from ecluse.protocol.messages import CancelRequest, GSSENCRequest, SSLRequest, StartupMessage
from ecluse.protocol.startup import (
    DEFAULT_MAX_STARTUP_PACKET,
    MAX_NAME_LENGTH,
    decode_startup_packet,
    encode_cancel_request,
    encode_gssenc_request,
    encode_ssl_request,
    encode_startup_message,
    read_parameter_list,
    read_startup_packet,
    split_parameter_list,
    startup_packet_length,
    unsupported_protocol_options,
    validate_startup_params,
)

name = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
               min_size=1, max_size=30)
value = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                max_size=60)
params_st = st.dictionaries(name, value, max_size=8)


def _packet(code: int, body: bytes = b"") -> bytes:
    return struct.pack("!II", len(body) + 8, code) + body


@settings(max_examples=200)
@given(params=params_st, minor=st.integers(min_value=0, max_value=0xFFFF))
def test_startup_message_round_trip(params, minor):
    wire = encode_startup_message(params, 3, minor)
    assert startup_packet_length(wire, 1 << 20) == len(wire)
    assert decode_startup_packet(wire) == StartupMessage(3, minor, params)


def test_startup_message_typical():
    wire = encode_startup_message({"user": "alice", "database": "app",
                                   "application_name": "psql"})
    msg = decode_startup_packet(wire)
    assert isinstance(msg, StartupMessage)
    assert (msg.major, msg.minor) == (3, 0)
    assert msg.params["user"] == "alice" and msg.params["database"] == "app"
    validate_startup_params(msg.params)


@pytest.mark.parametrize("minor", [1, 2, 0xFFFF])
def test_newer_minor_versions_are_accepted(minor):
    """3.x with x > 0 is answered with NegotiateProtocolVersion, not refused."""
    msg = decode_startup_packet(encode_startup_message({"user": "u"}, 3, minor))
    assert msg == StartupMessage(3, minor, {"user": "u"})


@pytest.mark.parametrize("major,minor", [(2, 0), (4, 0), (1, 0), (0, 0), (0xFFFF, 0xFFFF)])
def test_other_major_versions_are_refused(major, minor):
    wire = encode_startup_message({"user": "u"}, major, minor)
    with pytest.raises(RemoteProtocolError) as info:
        decode_startup_packet(wire)
    assert info.value.sqlstate == codes.SqlState.FEATURE_NOT_SUPPORTED


def test_ssl_and_gssenc_requests():
    assert decode_startup_packet(encode_ssl_request()) == SSLRequest()
    assert decode_startup_packet(encode_gssenc_request()) == GSSENCRequest()
    assert encode_ssl_request() == _packet(codes.SSL_REQUEST_CODE)
    assert encode_gssenc_request() == _packet(codes.GSSENC_REQUEST_CODE)


@pytest.mark.parametrize("code", [codes.SSL_REQUEST_CODE, codes.GSSENC_REQUEST_CODE])
def test_ssl_request_with_trailing_bytes_is_refused(code):
    with pytest.raises(RemoteProtocolError):
        decode_startup_packet(_packet(code, b"\0\0\0\0"))


@given(pid=st.integers(min_value=0, max_value=2**32 - 1),
       secret=st.binary(min_size=4, max_size=256))
def test_cancel_request_round_trip(pid, secret):
    """4-byte keys (protocol 3.0) and up to 256 bytes (3.2)."""
    wire = encode_cancel_request(pid, secret)
    assert startup_packet_length(wire) == len(wire)
    assert decode_startup_packet(wire) == CancelRequest(pid, secret)


@pytest.mark.parametrize("secret", [b"", b"abc", b"x" * 257])
def test_cancel_request_key_bounds(secret):
    with pytest.raises(RemoteProtocolError):
        decode_startup_packet(encode_cancel_request(1, secret))


def test_cancel_request_negative_pid_wraps_to_uint32():
    msg = decode_startup_packet(encode_cancel_request(-1, b"abcd"))
    assert msg == CancelRequest(0xFFFFFFFF, b"abcd")


def test_protocol_options_are_detected():
    params = {"user": "u", "_pq_.compression": "on", "_pq_.x": "", "database": "d"}
    msg = decode_startup_packet(encode_startup_message(params, 3, 2))
    assert sorted(unsupported_protocol_options(msg.params)) == ["_pq_.compression", "_pq_.x"]
    assert unsupported_protocol_options({"user": "u", "pq_x": "1"}) == []


@given(params=params_st)
def test_protocol_options_are_exactly_the_pq_names(params):
    assert set(unsupported_protocol_options(params)) == \
        {k for k in params if k.startswith("_pq_.")}


# --- lengths ----------------------------------------------------------------------

@pytest.mark.parametrize("buf", [b"", b"\0", b"\0\0\0"])
def test_length_needs_four_bytes(buf):
    assert startup_packet_length(buf) is None


@pytest.mark.parametrize("length", [0, 4, 7, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF,
                                    DEFAULT_MAX_STARTUP_PACKET + 1])
def test_bad_startup_lengths_are_refused_from_the_header(length):
    with pytest.raises(RemoteProtocolError):
        startup_packet_length(struct.pack("!I", length))


def test_length_limits_are_inclusive():
    assert startup_packet_length(struct.pack("!I", 8)) == 8
    assert startup_packet_length(struct.pack("!I", DEFAULT_MAX_STARTUP_PACKET)) == \
        DEFAULT_MAX_STARTUP_PACKET
    assert startup_packet_length(struct.pack("!I", 500), max_size=500) == 500
    with pytest.raises(RemoteProtocolError):
        startup_packet_length(struct.pack("!I", 501), max_size=500)


def test_startup_message_above_the_limit_is_refused():
    wire = encode_startup_message({"user": "u", "options": "x" * DEFAULT_MAX_STARTUP_PACKET})
    with pytest.raises(RemoteProtocolError):
        startup_packet_length(wire)


@pytest.mark.parametrize("delta", [-1, 1, 100])
def test_length_word_must_match_the_packet(delta):
    wire = bytearray(encode_startup_message({"user": "u"}))
    struct.pack_into("!I", wire, 0, len(wire) + delta)
    with pytest.raises(RemoteProtocolError):
        decode_startup_packet(bytes(wire))


@pytest.mark.parametrize("body", [
    b"user\0u",  # value not terminated
    b"user\0u\0",  # list not terminated
    b"user\0u\0\0extra",  # bytes after the terminator
    b"user\0\xff\xfe\0\0",  # not UTF-8
])
def test_malformed_parameter_lists_are_refused(body):
    with pytest.raises(RemoteProtocolError):
        decode_startup_packet(_packet(codes.PROTOCOL_3_0, body))


def test_encoder_refuses_nul_in_a_parameter():
    with pytest.raises(LocalProtocolError):
        encode_startup_message({"user": "a\0b"})


# --- CVE-2012-4575: names from the network are bounded ----------------------------

@pytest.mark.parametrize("key", ["user", "database"])
@pytest.mark.parametrize("size", [64, 1000, 10_000])
def test_long_names_are_refused(key, size):
    params = {"user": "u", key: "n" * size}
    with pytest.raises(RemoteProtocolError):
        validate_startup_params(params)


@pytest.mark.parametrize("key", ["user", "database"])
def test_names_of_63_bytes_are_accepted(key):
    validate_startup_params({"user": "u", key: "n" * MAX_NAME_LENGTH})


def test_name_length_counts_bytes_not_characters():
    """32 two-byte characters are 64 bytes: one too many for NAMEDATALEN."""
    with pytest.raises(RemoteProtocolError):
        validate_startup_params({"user": "é" * 32})
    validate_startup_params({"user": "é" * 31})


@pytest.mark.parametrize("params", [{}, {"database": "d"}, {"user": ""}])
def test_missing_user_is_refused(params):
    with pytest.raises(RemoteProtocolError) as info:
        validate_startup_params(params)
    assert info.value.sqlstate == "28000"


def test_long_database_through_the_whole_decode_path():
    """10,000 bytes of database name: refused by the length bound or the name bound."""
    for size in (64, 1000, 9000, 10_000):
        wire = encode_startup_message({"user": "u", "database": "d" * size})
        with pytest.raises(RemoteProtocolError):
            startup_packet_length(wire)
            validate_startup_params(decode_startup_packet(wire).params)


@settings(max_examples=200)
@given(params=st.dictionaries(st.sampled_from(["user", "database", "options", "x"]),
                              st.text(max_size=100).filter(lambda s: "\0" not in s)))
def test_validate_is_a_predicate_on_names(params):
    ok = bool(params.get("user")) and all(
        len(params[k].encode()) <= MAX_NAME_LENGTH for k in ("user", "database") if k in params)
    try:
        validate_startup_params(params)
    except RemoteProtocolError:
        assert not ok
    else:
        assert ok


# --- random input -------------------------------------------------------------------

@settings(max_examples=400)
@given(body=st.binary(max_size=80),
       code=st.one_of(st.sampled_from([codes.PROTOCOL_3_0, codes.PROTOCOL_3_0 + 2,
                                       codes.SSL_REQUEST_CODE, codes.GSSENC_REQUEST_CODE,
                                       codes.CANCEL_REQUEST_CODE, 2 << 16]),
                      st.integers(min_value=0, max_value=2**32 - 1)))
def test_random_packets_raise_only_remote_protocol_error(body, code):
    wire = _packet(code, body)
    try:
        msg = decode_startup_packet(wire)
    except RemoteProtocolError:
        return
    assert isinstance(msg, StartupMessage | SSLRequest | GSSENCRequest | CancelRequest)
    if isinstance(msg, StartupMessage) and body.count(b"\0") == 2 * len(msg.params) + 1:
        # No name was repeated, so nothing collapsed: decoding lost nothing.
        assert encode_startup_message(msg.params, msg.major, msg.minor) == wire


@settings(max_examples=300)
@given(raw=st.binary(max_size=60))
def test_pure_noise_raises_only_remote_protocol_error(raw):
    try:
        n = startup_packet_length(raw, 1 << 16)
    except RemoteProtocolError:
        return
    if n is None:
        assert len(raw) < 4
        return
    with contextlib.suppress(RemoteProtocolError):
        decode_startup_packet(raw[:n])


# --- the one-pass parameter list decoder agrees with the field-by-field one ---------

_PARAM_TEXT = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                      max_size=12)


@settings(max_examples=400)
@given(params=st.lists(st.tuples(_PARAM_TEXT.filter(bool), _PARAM_TEXT), max_size=6))
def test_well_formed_lists_take_the_one_pass_way(params):
    body = b"".join(n.encode() + b"\0" + v.encode() + b"\0" for n, v in params) + b"\0"
    assert split_parameter_list(body) == read_parameter_list(body) == dict(params)


@settings(max_examples=1000)
@given(body=st.lists(st.sampled_from([b"\0", b"\0\0", b"user", b"u", b"\xff", b"\xc3\xa9",
                                      b"\xc3", b"x"]), max_size=10).map(b"".join)
       | st.binary(max_size=40))
def test_the_one_pass_way_accepts_nothing_the_reader_refuses(body):
    """Whatever the bytes, split_parameter_list returns what read_parameter_list
    returns, or None (the caller then asks read_parameter_list, which refuses)."""
    fast = split_parameter_list(body)
    try:
        slow = read_parameter_list(body)
    except RemoteProtocolError:
        assert fast is None
        return
    assert fast == slow  # and no list the reader accepts is left to the slow way


def _outcome(decode, wire: bytes):
    try:
        return decode(wire)
    except RemoteProtocolError as exc:
        return type(exc), exc.sqlstate


@settings(max_examples=600)
@given(body=st.binary(max_size=60) | st.lists(st.sampled_from(
           [b"\0", b"user\0", b"u\0", b"\xff\0", b"database\0"]), max_size=8).map(b"".join),
       code=st.one_of(st.sampled_from([codes.PROTOCOL_3_0, codes.PROTOCOL_3_0 + 2,
                                       codes.SSL_REQUEST_CODE, codes.CANCEL_REQUEST_CODE,
                                       2 << 16, 3 << 16 | 0xFFFF]),
                      st.integers(min_value=0, max_value=2**32 - 1)),
       length_delta=st.sampled_from([0, 0, 0, -1, 1]))
def test_the_startup_fast_path_agrees_with_the_reader(body, code, length_delta):
    """decode_startup_packet's StartupMessage shortcut decodes or refuses exactly as
    the field-by-field read_startup_packet does, wrong length words included."""
    wire = bytearray(_packet(code, body))
    wire[:4] = struct.pack("!I", max(0, len(wire) + length_delta))
    wire = bytes(wire)
    assert _outcome(decode_startup_packet, wire) == _outcome(read_startup_packet, wire)
