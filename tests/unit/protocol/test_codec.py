"""Encoders and decoders of backend.py and frontend.py: round trips, malformed input.

Covers the wire-length CVE classes of RELIABILITY.md §1: trusted lengths
(CVE-2026-6664), optional error fields (CVE-2026-6666) and the encoder's size
limit with the header invariant (CVE-2024-27304).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecluse.errors import LocalProtocolError, RemoteProtocolError
from ecluse.protocol import _encode, backend, frontend
from ecluse.protocol.codes import Auth
from ecluse.protocol.messages import (
    AuthenticationRequest,
    BackendKeyData,
    Bind,
    Close,
    CommandComplete,
    CopyFail,
    CopyResponse,
    Describe,
    ErrorResponse,
    Execute,
    FunctionCall,
    NegotiateProtocolVersion,
    NotificationResponse,
    ParameterStatus,
    Parse,
    Query,
    ReadyForQuery,
    RowDescriptionField,
)

# --- strategies -------------------------------------------------------------

text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
               max_size=40)
blob = st.binary(max_size=100)
value = st.one_of(st.none(), blob)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
i32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
i16 = st.integers(min_value=-(2**15), max_value=2**15 - 1)
fmt = st.sampled_from([0, 1])
small = {"max_size": 8}


def _body(wire: bytes, msg_type: bytes) -> bytes:
    """Check the header of an encoded message and return its body."""
    assert wire[:1] == msg_type
    assert len(wire) == 1 + int.from_bytes(wire[1:5], "big")
    return wire[5:]


# --- backend round trips ------------------------------------------------------

@given(code=st.sampled_from([c for c in Auth if c != Auth.MD5_PASSWORD]), data=blob)
def test_authentication_round_trip(code, data):
    assert backend.decode_authentication(
        _body(backend.encode_authentication(code, data), b"R")) == \
        AuthenticationRequest(code, data)


@given(salt=st.binary(min_size=4, max_size=4))
def test_authentication_md5_round_trip(salt):
    got = backend.decode_authentication(_body(backend.encode_authentication_md5(salt), b"R"))
    assert got == AuthenticationRequest(Auth.MD5_PASSWORD, salt)


@pytest.mark.parametrize("salt", [b"", b"abc", b"abcde"])
def test_md5_salt_of_wrong_size_is_refused(salt):
    with pytest.raises(RemoteProtocolError):
        backend.decode_authentication(struct.pack("!i", Auth.MD5_PASSWORD) + salt)


def test_fixed_authentication_messages():
    for wire, code in [(backend.encode_authentication_ok(), Auth.OK),
                       (backend.encode_authentication_cleartext(), Auth.CLEARTEXT_PASSWORD)]:
        assert backend.decode_authentication(_body(wire, b"R")) == AuthenticationRequest(code)


@given(mechs=st.lists(text.filter(bool), max_size=4))
def test_authentication_sasl_round_trip(mechs):
    req = backend.decode_authentication(_body(backend.encode_authentication_sasl(mechs), b"R"))
    assert req.code == Auth.SASL
    assert backend.decode_sasl_mechanisms(req.data) == mechs


@given(data=blob)
def test_sasl_continue_and_final_round_trip(data):
    for enc, code in [(backend.encode_authentication_sasl_continue, Auth.SASL_CONTINUE),
                      (backend.encode_authentication_sasl_final, Auth.SASL_FINAL)]:
        assert backend.decode_authentication(_body(enc(data), b"R")) == \
            AuthenticationRequest(code, data)


@given(name=text, val=text)
def test_parameter_status_round_trip(name, val):
    wire = backend.encode_parameter_status(name, val)
    assert backend.decode_parameter_status(_body(wire, b"S")) == ParameterStatus(name, val)


@given(pid=u32, secret=st.binary(min_size=4, max_size=256))
def test_backend_key_data_round_trip(pid, secret):
    wire = backend.encode_backend_key_data(pid, secret)
    assert backend.decode_backend_key_data(_body(wire, b"K")) == BackendKeyData(pid, secret)


@pytest.mark.parametrize("secret", [b"", b"abc", b"x" * 257])
def test_backend_key_data_secret_bounds(secret):
    with pytest.raises(RemoteProtocolError):
        backend.decode_backend_key_data(struct.pack("!I", 1) + secret)


@pytest.mark.parametrize("status", [b"I", b"T", b"E"])
def test_ready_for_query_round_trip(status):
    wire = backend.encode_ready_for_query(status)
    assert backend.decode_ready_for_query(_body(wire, b"Z")) == ReadyForQuery(status)
    assert backend.decode_ready_for_query(memoryview(wire)[5:]) == ReadyForQuery(status)


@pytest.mark.parametrize("body", [b"", b"X", b"II", b"\0"])
def test_ready_for_query_bad_status(body):
    with pytest.raises(RemoteProtocolError):
        backend.decode_ready_for_query(body)


field_codes = st.sampled_from(list("SVCMDHPpqWstcdnFLR"))


@given(fields=st.dictionaries(field_codes, text, max_size=8), notice=st.booleans())
def test_error_fields_round_trip(fields, notice):
    wire = backend.encode_error_fields(fields, notice=notice)
    got = backend.decode_error_fields(_body(wire, b"N" if notice else b"E"), notice=notice)
    assert got == ErrorResponse(fields, is_notice=notice)


@given(msg=text, sqlstate=st.text("0123456789ABCDEFPXZ", min_size=5, max_size=5),
       detail=st.one_of(st.none(), text), hint=st.one_of(st.none(), text))
def test_error_response_round_trip(msg, sqlstate, detail, hint):
    got = backend.decode_error_fields(
        _body(backend.encode_error_response(msg, sqlstate, "FATAL", detail, hint), b"E"))
    assert (got.message, got.sqlstate, got.severity) == (msg, sqlstate, "FATAL")
    assert got.fields.get("D") == (detail or None)
    assert got.fields.get("H") == (hint or None)


@given(msg=text)
def test_notice_response_round_trip(msg):
    got = backend.decode_error_fields(_body(backend.encode_notice_response(msg), b"N"), True)
    assert got.is_notice and got.message == msg and got.sqlstate == "00000"


@settings(max_examples=200)
@given(fields=st.dictionaries(field_codes, text, max_size=6),
       terminated=st.booleans())
def test_error_fields_any_subset_never_raises(fields, terminated):
    """CVE-2026-6666: a missing SQLSTATE (or anything else) falls back."""
    body = b"".join(k.encode() + v.encode() + b"\0" for k, v in fields.items())
    if terminated:
        body += b"\0"
    got = backend.decode_error_fields(body)
    assert dict(got.fields) == fields
    assert got.sqlstate == fields.get("C", "XX000")
    assert got.severity == (fields.get("V") or fields.get("S") or "ERROR")
    assert got.message == fields.get("M", "")


@pytest.mark.parametrize("body", [b"", b"\0", b"Monly a message\0\0", b"SFATAL\0\0"])
def test_error_without_sqlstate_is_xx000(body):
    assert backend.decode_error_fields(body).sqlstate == "XX000"


def test_error_fields_in_a_legacy_encoding_are_kept():
    """A localized message before client_encoding is set may not be UTF-8."""
    body = b"SFATAL\0C28P01\0M\xcf\xe0\xf0\xee\xeb\xfc\0\0"  # cp1251 text
    got = backend.decode_error_fields(body)
    assert got.sqlstate == "28P01" and got.severity == "FATAL"
    assert got.message  # replaced characters, but not dropped and no exception


@given(minor=st.integers(min_value=0, max_value=2**31 - 1), opts=st.lists(text, **small))
def test_negotiate_protocol_version_round_trip(minor, opts):
    wire = backend.encode_negotiate_protocol_version(minor, opts)
    assert backend.decode_negotiate_protocol_version(_body(wire, b"v")) == \
        NegotiateProtocolVersion(minor, tuple(opts))


@given(tag=text)
def test_command_complete_round_trip(tag):
    wire = backend.encode_command_complete(tag)
    assert backend.decode_command_complete(_body(wire, b"C")) == CommandComplete(tag)


row_field = st.builds(RowDescriptionField, text, u32, i16, u32, i16, i32, i16)


@given(fields=st.lists(row_field, **small))
def test_row_description_round_trip(fields):
    wire = backend.encode_row_description(fields)
    assert backend.decode_row_description(_body(wire, b"T")) == fields


@given(values=st.lists(value, max_size=10))
def test_data_row_round_trip(values):
    assert backend.decode_data_row(_body(backend.encode_data_row(values), b"D")) == values


@given(pid=u32, channel=text, payload=text)
def test_notification_round_trip(pid, channel, payload):
    wire = backend.encode_notification_response(pid, channel, payload)
    assert backend.decode_notification_response(_body(wire, b"A")) == \
        NotificationResponse(pid, channel, payload)


@given(kind=st.sampled_from([b"G", b"H", b"W"]), overall=fmt, cols=st.lists(fmt, max_size=10))
def test_copy_response_round_trip(kind, overall, cols):
    wire = backend.encode_copy_response(kind, overall, cols)
    assert backend.decode_copy_response(kind[0], _body(wire, kind)) == \
        CopyResponse(kind[0], overall, tuple(cols))


@given(oids=st.lists(u32, max_size=10))
def test_parameter_description_round_trip(oids):
    wire = backend.encode_parameter_description(oids)
    assert backend.decode_parameter_description(_body(wire, b"t")) == tuple(oids)


@given(v=value)
def test_function_call_response_round_trip(v):
    wire = backend.encode_function_call_response(v)
    assert backend.decode_function_call_response(_body(wire, b"V")) == v


def test_empty_backend_messages():
    for enc, t in [(backend.encode_empty_query_response, b"I"),
                   (backend.encode_parse_complete, b"1"), (backend.encode_bind_complete, b"2"),
                   (backend.encode_close_complete, b"3"), (backend.encode_no_data, b"n"),
                   (backend.encode_portal_suspended, b"s"), (backend.encode_copy_done, b"c")]:
        assert _body(enc(), t) == b""


@given(data=blob)
def test_copy_data_is_framed_verbatim(data):
    assert _body(backend.encode_copy_data(data), b"d") == data
    assert _body(frontend.encode_copy_data(data), b"d") == data


# --- frontend round trips -----------------------------------------------------

@given(sql=text)
def test_query_round_trip(sql):
    assert frontend.decode_query(_body(frontend.encode_query(sql), b"Q")) == Query(sql)


@given(pw=st.one_of(text, st.binary(max_size=50).filter(lambda b: b"\0" not in b)))
def test_password_round_trip(pw):
    raw = pw.encode() if isinstance(pw, str) else pw
    assert frontend.decode_password(_body(frontend.encode_password(pw), b"p")) == raw


@pytest.mark.parametrize("body", [b"", b"abc", b"a\0b\0", b"\0\0"])
def test_bad_password_packet(body):
    with pytest.raises(RemoteProtocolError):
        frontend.decode_password(body)


@given(mech=text, data=blob)
def test_sasl_initial_response_round_trip(mech, data):
    wire = frontend.encode_sasl_initial_response(mech, data)
    assert frontend.decode_sasl_initial_response(_body(wire, b"p")) == (mech, data)


def test_sasl_initial_response_without_data():
    body = b"SCRAM-SHA-256\0" + struct.pack("!i", -1)
    assert frontend.decode_sasl_initial_response(body) == ("SCRAM-SHA-256", None)


@given(data=blob)
def test_sasl_response_is_framed_verbatim(data):
    assert _body(frontend.encode_sasl_response(data), b"p") == data


@given(name=text, query=text, types=st.lists(u32, **small))
def test_parse_round_trip(name, query, types):
    wire = frontend.encode_parse(name, query, types)
    assert frontend.decode_parse(_body(wire, b"P")) == Parse(name, query, tuple(types))


@given(portal=text, stmt=text, params=st.lists(value, **small),
       pfmts=st.lists(fmt, **small), rfmts=st.lists(fmt, **small))
def test_bind_round_trip(portal, stmt, params, pfmts, rfmts):
    wire = frontend.encode_bind(portal, stmt, params, pfmts, rfmts)
    assert frontend.decode_bind(_body(wire, b"B")) == \
        Bind(portal, stmt, tuple(pfmts), tuple(params), tuple(rfmts))


@given(kind=st.sampled_from([b"S", b"P"]), name=text)
def test_describe_and_close_round_trip(kind, name):
    assert frontend.decode_describe(_body(frontend.encode_describe(kind, name), b"D")) == \
        Describe(kind, name)
    assert frontend.decode_close(_body(frontend.encode_close(kind, name), b"C")) == \
        Close(kind, name)


@pytest.mark.parametrize("body", [b"", b"X\0", b"s\0", b"S", b"Sname\0extra"])
def test_describe_and_close_bad_body(body):
    for dec in (frontend.decode_describe, frontend.decode_close):
        with pytest.raises(RemoteProtocolError):
            dec(body)


@given(portal=text, rows=i32)
def test_execute_round_trip(portal, rows):
    wire = frontend.encode_execute(portal, rows)
    assert frontend.decode_execute(_body(wire, b"E")) == Execute(portal, rows)


@given(reason=text)
def test_copy_fail_round_trip(reason):
    assert frontend.decode_copy_fail(_body(frontend.encode_copy_fail(reason), b"f")) == \
        CopyFail(reason)


@given(oid=u32, args=st.lists(value, **small), fmts=st.lists(fmt, **small), rfmt=fmt)
def test_function_call_round_trip(oid, args, fmts, rfmt):
    wire = frontend.encode_function_call(oid, args, fmts, rfmt)
    assert frontend.decode_function_call(_body(wire, b"F")) == \
        FunctionCall(oid, tuple(fmts), tuple(args), rfmt)


def test_fixed_frontend_messages():
    assert frontend.encode_sync() == b"S\0\0\0\4"
    assert frontend.encode_flush() == b"H\0\0\0\4"
    assert frontend.encode_terminate() == b"X\0\0\0\4"
    assert frontend.encode_copy_done() == b"c\0\0\0\4"


def test_encoders_refuse_nul_in_strings():
    with pytest.raises(LocalProtocolError):
        frontend.encode_query("select 1\0; drop table t")
    with pytest.raises(LocalProtocolError):
        backend.encode_parameter_status("a\0b", "c")


# --- decoders on random bytes -------------------------------------------------

def _reencode_checks():
    """(decoder, re-encoder) pairs whose encoding is canonical: decode∘encode = id."""
    return [
        (backend.decode_authentication,
         lambda m: backend.encode_authentication(m.code, m.data), b"R"),
        (backend.decode_parameter_status,
         lambda m: backend.encode_parameter_status(m.name, m.value), b"S"),
        (backend.decode_backend_key_data,
         lambda m: backend.encode_backend_key_data(m.process_id, m.secret), b"K"),
        (backend.decode_ready_for_query,
         lambda m: backend.encode_ready_for_query(m.status), b"Z"),
        (backend.decode_negotiate_protocol_version,
         lambda m: backend.encode_negotiate_protocol_version(m.newest_minor, m.unrecognized),
         b"v"),
        (backend.decode_command_complete,
         lambda m: backend.encode_command_complete(m.tag), b"C"),
        (backend.decode_row_description, backend.encode_row_description, b"T"),
        (backend.decode_data_row, backend.encode_data_row, b"D"),
        (backend.decode_notification_response,
         lambda m: backend.encode_notification_response(m.process_id, m.channel, m.payload),
         b"A"),
        (lambda b: backend.decode_copy_response(ord("G"), b),
         lambda m: backend.encode_copy_response(b"G", m.overall_format, m.column_formats),
         b"G"),
        (backend.decode_parameter_description, backend.encode_parameter_description, b"t"),
        (backend.decode_function_call_response, backend.encode_function_call_response, b"V"),
        (backend.decode_sasl_mechanisms,
         lambda ms: backend.encode_authentication_sasl(ms)[9:], None),
        (frontend.decode_query, lambda m: frontend.encode_query(m.sql), b"Q"),
        (frontend.decode_password, frontend.encode_password, b"p"),
        (frontend.decode_sasl_initial_response,
         lambda m: frontend.encode_sasl_initial_response(*m) if m[1] is not None
         else _encode.message(b"p", _encode.cstr(m[0]) + b"\xff\xff\xff\xff"), b"p"),
        (frontend.decode_parse,
         lambda m: frontend.encode_parse(m.statement, m.query, m.param_types), b"P"),
        (frontend.decode_bind,
         lambda m: frontend.encode_bind(m.portal, m.statement, m.params, m.param_formats,
                                        m.result_formats), b"B"),
        (frontend.decode_describe, lambda m: frontend.encode_describe(m.kind, m.name), b"D"),
        (frontend.decode_close, lambda m: frontend.encode_close(m.kind, m.name), b"C"),
        (frontend.decode_execute, lambda m: frontend.encode_execute(m.portal, m.max_rows), b"E"),
        (frontend.decode_copy_fail, lambda m: frontend.encode_copy_fail(m.reason), b"f"),
        (frontend.decode_function_call,
         lambda m: frontend.encode_function_call(m.function_oid, m.args, m.arg_formats,
                                                 m.result_format), b"F"),
    ]


REENCODE = _reencode_checks()
DECODERS = [d for d, _, _ in REENCODE] + [backend.decode_error_fields]


def _check_canonical(index: int, body: bytes) -> None:
    dec, enc, msg_type = REENCODE[index]
    try:
        got = dec(body)
    except RemoteProtocolError:
        return
    wire = enc(got)
    if msg_type is None:
        assert wire == body
    else:
        # Accepting a body means every length in it was honoured exactly:
        # no silently short slice (CVE-2026-6664).
        assert _body(wire, msg_type) == body


@settings(max_examples=400)
@given(index=st.integers(min_value=0, max_value=len(REENCODE) - 1),
       body=st.binary(max_size=60))
def test_decoders_on_random_bytes(index, body):
    _check_canonical(index, body)


# Bodies built from valid pieces and random lengths reach deeper than pure noise.
length_values = st.sampled_from([-2, -1, 0, 1, 3, 4, 5, 2**15 - 1, 2**15, 2**16 - 1,
                                 2**31 - 1, 2**31, 2**32 - 1])
pieces = st.one_of(
    length_values.map(lambda n: struct.pack("!I", n % 2**32)),
    length_values.map(lambda n: struct.pack("!H", n % 2**16)),
    st.sampled_from([b"\0", b"S", b"P", b"I", b"name\0", b"\x01", b"\x00\x01"]),
    st.binary(max_size=6),
)


@settings(max_examples=400)
@given(index=st.integers(min_value=0, max_value=len(REENCODE) - 1),
       parts=st.lists(pieces, max_size=8))
def test_decoders_on_structured_noise(index, parts):
    _check_canonical(index, b"".join(parts))


@settings(max_examples=200)
@given(body=st.binary(max_size=80))
def test_error_fields_on_random_bytes(body):
    try:
        got = backend.decode_error_fields(body)
    except RemoteProtocolError:
        return
    assert len(got.sqlstate) >= 0 and isinstance(got.message, str)


# --- CVE-2026-6664: every length-prefixed field with hostile values ---------------

CVE_LENGTHS = [-2, -1, 0, 3, 4, 2**31 - 1, 2**31, 2**32 - 1, "longer"]
PAYLOAD = b"ab"  # what actually follows the length: 2 bytes


def _i32(n: int | str) -> bytes:
    if n == "longer":
        n = len(PAYLOAD) + 1
    return struct.pack("!I", n % 2**32)


def _i16(n: int | str) -> bytes:
    if n == "longer":
        n = len(PAYLOAD) + 1
    return struct.pack("!H", n % 2**16)


# Each case: decoder, what precedes the length, its width, and the valid tail of
# the message. The hostile length is followed by exactly PAYLOAD and the tail,
# so no value in CVE_LENGTHS describes the bytes that follow.
LENGTH_FIELDS = {
    "SASLInitialResponse data": (frontend.decode_sasl_initial_response,
                                 b"SCRAM-SHA-256\0", _i32, b""),
    "Bind parameter value": (frontend.decode_bind, b"\0\0" + _i16(0) + _i16(1), _i32, _i16(0)),
    "Bind format count": (frontend.decode_bind, b"\0\0", _i16, _i16(0) + _i16(0)),
    "Bind parameter count": (frontend.decode_bind, b"\0\0" + _i16(0), _i16, _i16(0)),
    "Bind result count": (frontend.decode_bind, b"\0\0" + _i16(0) + _i16(0), _i16, b""),
    "Parse type count": (frontend.decode_parse, b"s\0select 1\0", _i16, b""),
    "FunctionCall argument": (frontend.decode_function_call,
                              _i32(7) + _i16(0) + _i16(1), _i32, _i16(0)),
    "FunctionCall argument count": (frontend.decode_function_call, _i32(7) + _i16(0), _i16,
                                    _i16(0)),
    "DataRow value": (backend.decode_data_row, _i16(1), _i32, b""),
    "DataRow column count": (backend.decode_data_row, b"", _i16, b""),
    "FunctionCallResponse value": (backend.decode_function_call_response, b"", _i32, b""),
    "RowDescription count": (backend.decode_row_description, b"", _i16, b""),
    "ParameterDescription count": (backend.decode_parameter_description, b"", _i16, b""),
    "CopyResponse count": (lambda b: backend.decode_copy_response(ord("G"), b), b"\0", _i16,
                           b""),
    "NegotiateProtocolVersion count": (backend.decode_negotiate_protocol_version, _i32(0),
                                       _i32, b""),
}


def _build(field: str, n: int | str) -> bytes:
    _, prefix, width, tail = LENGTH_FIELDS[field]
    return prefix + width(n) + PAYLOAD + tail


@pytest.mark.parametrize("length", CVE_LENGTHS, ids=str)
@pytest.mark.parametrize("field", sorted(LENGTH_FIELDS))
def test_hostile_length_is_refused(field, length):
    with pytest.raises(RemoteProtocolError):
        LENGTH_FIELDS[field][0](_build(field, length))


@pytest.mark.parametrize("field", [f for f in sorted(LENGTH_FIELDS) if not f.endswith("count")])
def test_length_fields_accept_the_true_length(field):
    """The builders are right: the honest length decodes, so the refusals above count."""
    got = LENGTH_FIELDS[field][0](_build(field, len(PAYLOAD)))
    assert PAYLOAD in repr(got).encode()


# --- CVE-2024-27304: size limit and the header invariant -------------------------

class _HugeBytes(bytes):
    """Pretends to be 2 GB long without allocating it."""

    def __len__(self) -> int:
        return 2**31 - 4


def test_message_refuses_a_body_over_the_limit():
    with pytest.raises(LocalProtocolError):
        _encode.message(b"d", _HugeBytes(b"x"))
    with pytest.raises(LocalProtocolError):
        _encode.untyped(_HugeBytes(b"x"))


def test_encoders_refuse_over_max_body(monkeypatch):
    monkeypatch.setattr(_encode, "MAX_BODY", 100)
    assert len(backend.encode_copy_data(b"x" * 100)) == 105
    encoders = [
        lambda: backend.encode_copy_data(b"x" * 101),
        lambda: frontend.encode_copy_data(b"x" * 101),
        lambda: frontend.encode_query("x" * 100),  # 100 + NUL
        lambda: frontend.encode_parse("s", "x" * 100),
        lambda: frontend.encode_bind("", "s", [b"x" * 100]),
        lambda: backend.encode_data_row([b"x" * 100]),
        lambda: frontend.encode_sasl_initial_response("SCRAM-SHA-256", b"x" * 100),
        lambda: backend.encode_error_response("x" * 100),
    ]
    for enc in encoders:
        with pytest.raises(LocalProtocolError):
            enc()


@settings(max_examples=200)
@given(data=st.data())
def test_every_encoded_message_has_a_consistent_header(data):
    encoders = {
        "query": lambda: frontend.encode_query(data.draw(text)),
        "parse": lambda: frontend.encode_parse(data.draw(text), data.draw(text),
                                               data.draw(st.lists(u32, **small))),
        "bind": lambda: frontend.encode_bind(data.draw(text), data.draw(text),
                                             data.draw(st.lists(value, **small))),
        "execute": lambda: frontend.encode_execute(data.draw(text), data.draw(i32)),
        "describe": lambda: frontend.encode_describe(b"S", data.draw(text)),
        "close": lambda: frontend.encode_close(b"P", data.draw(text)),
        "sasl": lambda: frontend.encode_sasl_initial_response(data.draw(text), data.draw(blob)),
        "fcall": lambda: frontend.encode_function_call(data.draw(u32),
                                                       data.draw(st.lists(value, **small))),
        "row": lambda: backend.encode_data_row(data.draw(st.lists(value, **small))),
        "rowdesc": lambda: backend.encode_row_description(data.draw(st.lists(row_field,
                                                                             **small))),
        "error": lambda: backend.encode_error_response(data.draw(text)),
        "status": lambda: backend.encode_parameter_status(data.draw(text), data.draw(text)),
        "nego": lambda: backend.encode_negotiate_protocol_version(
            0, data.draw(st.lists(text, **small))),
    }
    name = data.draw(st.sampled_from(sorted(encoders)))
    out = encoders[name]()
    assert len(out) == 1 + int.from_bytes(out[1:5], "big")
    assert int.from_bytes(out[1:5], "big") >= 4


# --- parameter counts are unsigned Int16 ------------------------------------------

@pytest.mark.parametrize("n", [32767, 32768, 40000, 65535])
def test_up_to_65535_parameters_round_trip(n):
    """PostgreSQL and libpq allow 65535 parameters: 32768+ is not a negative count."""
    params = [None] * n
    bind = frontend.decode_bind(_body(frontend.encode_bind("", "s", params, [1], [0]), b"B"))
    assert len(bind.params) == n
    parse = frontend.decode_parse(_body(frontend.encode_parse("s", "q", [23] * n), b"P"))
    assert parse.param_types == (23,) * n
    desc = backend.decode_parameter_description(
        _body(backend.encode_parameter_description([25] * n), b"t"))
    assert len(desc) == n


def test_more_than_65535_parameters_cannot_be_encoded():
    with pytest.raises(LocalProtocolError):
        frontend.encode_bind("", "s", [None] * 65536)
    with pytest.raises(LocalProtocolError):
        frontend.encode_parse("s", "q", [0] * 65536)
    with pytest.raises(LocalProtocolError):
        backend.encode_parameter_description([0] * 65536)
