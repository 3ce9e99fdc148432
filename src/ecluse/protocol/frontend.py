"""Encode and decode the messages a PostgreSQL client sends.

ecluse decodes them when it plays the server to its clients and encodes them
when it plays the client to PostgreSQL. Decoders take the message body (the
bytes after the 5-byte header) and raise RemoteProtocolError on bad input.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ecluse.errors import RemoteProtocolError
from ecluse.protocol._encode import count16, cstr, message
from ecluse.protocol.messages import (
    Bind,
    Close,
    CopyFail,
    Describe,
    Execute,
    FunctionCall,
    Parse,
    Query,
)
from ecluse.protocol.reader import Reader

_I32 = struct.Struct("!i")
_SYNC = message(b"S")
_FLUSH = message(b"H")
_TERMINATE = message(b"X")
_COPY_DONE = message(b"c")


# --- encoders --------------------------------------------------------------

def encode_query(sql: str) -> bytes:
    return message(b"Q", cstr(sql))


def encode_password(password: str | bytes) -> bytes:
    raw = password.encode("utf-8") if isinstance(password, str) else password
    return message(b"p", raw + b"\0")


def encode_sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", cstr(mechanism) + _I32.pack(len(data)) + data)


def encode_sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


def encode_sync() -> bytes:
    return _SYNC


def encode_flush() -> bytes:
    return _FLUSH


def encode_terminate() -> bytes:
    return _TERMINATE


def encode_parse(statement: str, query: str, param_types: Sequence[int] = ()) -> bytes:
    body = cstr(statement) + cstr(query)
    body += count16(len(param_types)) + struct.pack(f"!{len(param_types)}I", *param_types)
    return message(b"P", body)


def _encode_values(values: Sequence[bytes | None]) -> bytes:
    parts = [count16(len(values))]
    for v in values:
        if v is None:
            parts.append(_I32.pack(-1))
        else:
            parts.append(_I32.pack(len(v)))
            parts.append(v)
    return b"".join(parts)


def encode_bind(portal: str, statement: str, params: Sequence[bytes | None] = (),
                param_formats: Sequence[int] = (), result_formats: Sequence[int] = ()) -> bytes:
    body = cstr(portal) + cstr(statement)
    body += count16(len(param_formats)) + struct.pack(f"!{len(param_formats)}h", *param_formats)
    body += _encode_values(params)
    body += count16(len(result_formats)) + struct.pack(f"!{len(result_formats)}h",
                                                       *result_formats)
    return message(b"B", body)


def encode_describe(kind: bytes, name: str) -> bytes:
    return message(b"D", kind + cstr(name))


def encode_close(kind: bytes, name: str) -> bytes:
    return message(b"C", kind + cstr(name))


def encode_execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", cstr(portal) + _I32.pack(max_rows))


def encode_copy_data(data: bytes) -> bytes:
    return message(b"d", data)


def encode_copy_done() -> bytes:
    return _COPY_DONE


def encode_copy_fail(reason: str) -> bytes:
    return message(b"f", cstr(reason))


def encode_function_call(function_oid: int, args: Sequence[bytes | None] = (),
                         arg_formats: Sequence[int] = (), result_format: int = 0) -> bytes:
    body = struct.pack("!I", function_oid)
    body += count16(len(arg_formats)) + struct.pack(f"!{len(arg_formats)}h", *arg_formats)
    body += _encode_values(args)
    body += struct.pack("!h", result_format)
    return message(b"F", body)


# --- decoders --------------------------------------------------------------

def decode_query(body: bytes) -> Query:
    r = Reader(body, "Query message")
    sql = r.cstring()
    r.expect_end()
    return Query(sql)


def decode_password(body: bytes) -> bytes:
    """Return the password of a PasswordMessage, without its NUL terminator."""
    if not body or body[-1] != 0 or b"\0" in body[:-1]:
        raise RemoteProtocolError("invalid password packet")
    return bytes(body[:-1])


def decode_sasl_initial_response(body: bytes) -> tuple[str, bytes | None]:
    """Return (mechanism, initial data or None when the length is -1)."""
    r = Reader(body, "SASLInitialResponse")
    mech = r.cstring()
    ln = r.int32()
    if ln == -1:
        r.expect_end()
        return mech, None
    data = r.bytes(ln)
    r.expect_end()
    return mech, data


# Counts of parameters and formats are unsigned Int16 on the wire: PostgreSQL
# and libpq allow up to 65535 parameters, so 32768..65535 are not negative.

def _decode_int16_list(r: Reader, what: str) -> tuple[int, ...]:
    n = r.uint16()
    return tuple(r.int16() for _ in range(n))


def _decode_values(r: Reader, what: str) -> tuple[bytes | None, ...]:
    n = r.uint16()
    out: list[bytes | None] = []
    for _ in range(n):
        ln = r.int32()
        if ln == -1:
            out.append(None)
        elif ln < -1:
            raise RemoteProtocolError(f"invalid {what}: negative value length")
        else:
            out.append(r.bytes(ln))
    return tuple(out)


def decode_parse(body: bytes) -> Parse:
    r = Reader(body, "Parse message")
    name = r.cstring()
    query = r.cstring()
    n = r.uint16()
    types = tuple(r.uint32() for _ in range(n))
    r.expect_end()
    return Parse(name, query, types)


def decode_bind(body: bytes) -> Bind:
    r = Reader(body, "Bind message")
    portal = r.cstring()
    stmt = r.cstring()
    fmts = _decode_int16_list(r, "Bind message")
    params = _decode_values(r, "Bind message")
    results = _decode_int16_list(r, "Bind message")
    r.expect_end()
    return Bind(portal, stmt, fmts, params, results)


def _decode_kind_name(body: bytes, what: str) -> tuple[bytes, str]:
    r = Reader(body, what)
    kind = bytes([r.byte()])
    if kind not in (b"S", b"P"):
        raise RemoteProtocolError(f"invalid {what}: kind must be 'S' or 'P'")
    name = r.cstring()
    r.expect_end()
    return kind, name


def decode_describe(body: bytes) -> Describe:
    return Describe(*_decode_kind_name(body, "Describe message"))


def decode_close(body: bytes) -> Close:
    return Close(*_decode_kind_name(body, "Close message"))


def decode_execute(body: bytes) -> Execute:
    r = Reader(body, "Execute message")
    portal = r.cstring()
    rows = r.int32()
    r.expect_end()
    return Execute(portal, rows)


def decode_copy_fail(body: bytes) -> CopyFail:
    r = Reader(body, "CopyFail message")
    reason = r.cstring()
    r.expect_end()
    return CopyFail(reason)


def decode_function_call(body: bytes) -> FunctionCall:
    r = Reader(body, "FunctionCall message")
    oid = r.uint32()
    fmts = _decode_int16_list(r, "FunctionCall message")
    args = _decode_values(r, "FunctionCall message")
    result_format = r.int16()
    r.expect_end()
    return FunctionCall(oid, fmts, args, result_format)
