"""Encode and decode the messages a PostgreSQL server sends.

ecluse encodes them when it plays the server to its clients and decodes them
when it plays the client to PostgreSQL. Decoders take the message body (the
bytes after the 5-byte header) and raise RemoteProtocolError on bad input.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

from ecluse.errors import RemoteProtocolError
from ecluse.protocol._encode import count16, cstr, message
from ecluse.protocol.codes import Auth
from ecluse.protocol.messages import (
    AuthenticationRequest,
    BackendKeyData,
    CommandComplete,
    CopyResponse,
    ErrorResponse,
    NegotiateProtocolVersion,
    NotificationResponse,
    ParameterStatus,
    ReadyForQuery,
    RowDescriptionField,
)
from ecluse.protocol.reader import Reader

_I32 = struct.Struct("!i")
_AUTH_OK = message(b"R", _I32.pack(Auth.OK))
_READY = {s: message(b"Z", s) for s in (b"I", b"T", b"E")}


# --- encoders --------------------------------------------------------------

def encode_authentication(code: int, data: bytes = b"") -> bytes:
    return message(b"R", _I32.pack(code) + data)


def encode_authentication_ok() -> bytes:
    return _AUTH_OK


def encode_authentication_cleartext() -> bytes:
    return encode_authentication(Auth.CLEARTEXT_PASSWORD)


def encode_authentication_md5(salt: bytes) -> bytes:
    return encode_authentication(Auth.MD5_PASSWORD, salt)


def encode_authentication_sasl(mechanisms: Sequence[str]) -> bytes:
    return encode_authentication(Auth.SASL, b"".join(cstr(m) for m in mechanisms) + b"\0")


def encode_authentication_sasl_continue(data: bytes) -> bytes:
    return encode_authentication(Auth.SASL_CONTINUE, data)


def encode_authentication_sasl_final(data: bytes) -> bytes:
    return encode_authentication(Auth.SASL_FINAL, data)


def encode_parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def encode_backend_key_data(process_id: int, secret: bytes) -> bytes:
    return message(b"K", struct.pack("!I", process_id & 0xFFFFFFFF) + secret)


def encode_ready_for_query(status: bytes) -> bytes:
    return _READY[status]


def encode_error_fields(fields: Mapping[str, str], notice: bool = False) -> bytes:
    body = b"".join(code.encode("ascii") + cstr(value) for code, value in fields.items())
    return message(b"N" if notice else b"E", body + b"\0")


def encode_error_response(
    message_text: str,
    sqlstate: str = "XX000",
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """Build an ErrorResponse with the fields libpq shows (S, V, C, M, D, H)."""
    fields = {"S": severity, "V": severity, "C": sqlstate, "M": message_text}
    if detail:
        fields["D"] = detail
    if hint:
        fields["H"] = hint
    return encode_error_fields(fields)


def encode_notice_response(message_text: str, sqlstate: str = "00000",
                           severity: str = "NOTICE") -> bytes:
    return encode_error_fields(
        {"S": severity, "V": severity, "C": sqlstate, "M": message_text}, notice=True
    )


def encode_negotiate_protocol_version(newest_minor: int, unrecognized: Sequence[str]) -> bytes:
    body = struct.pack("!ii", newest_minor, len(unrecognized))
    return message(b"v", body + b"".join(cstr(o) for o in unrecognized))


def encode_command_complete(tag: str) -> bytes:
    return message(b"C", cstr(tag))


def encode_empty_query_response() -> bytes:
    return message(b"I")


def encode_row_description(fields: Sequence[RowDescriptionField]) -> bytes:
    parts = [struct.pack("!h", len(fields))]
    for f in fields:
        parts.append(cstr(f.name))
        parts.append(struct.pack("!IhIhih", f.table_oid, f.column, f.type_oid,
                                 f.type_size, f.type_modifier, f.format))
    return message(b"T", b"".join(parts))


def encode_data_row(values: Iterable[bytes | None]) -> bytes:
    vals = list(values)
    parts = [struct.pack("!h", len(vals))]
    for v in vals:
        if v is None:
            parts.append(_I32.pack(-1))
        else:
            parts.append(_I32.pack(len(v)))
            parts.append(v)
    return message(b"D", b"".join(parts))


def encode_notification_response(process_id: int, channel: str, payload: str) -> bytes:
    return message(b"A", struct.pack("!I", process_id & 0xFFFFFFFF) + cstr(channel) + cstr(payload))


def encode_copy_response(kind: bytes, overall_format: int, column_formats: Sequence[int]) -> bytes:
    body = struct.pack("!Bh", overall_format, len(column_formats))
    body += b"".join(struct.pack("!h", f) for f in column_formats)
    return message(kind, body)


def encode_parse_complete() -> bytes:
    return message(b"1")


def encode_bind_complete() -> bytes:
    return message(b"2")


def encode_close_complete() -> bytes:
    return message(b"3")


def encode_no_data() -> bytes:
    return message(b"n")


def encode_portal_suspended() -> bytes:
    return message(b"s")


def encode_parameter_description(type_oids: Sequence[int]) -> bytes:
    return message(b"t", count16(len(type_oids)) + struct.pack(f"!{len(type_oids)}I", *type_oids))


def encode_copy_data(data: bytes) -> bytes:
    return message(b"d", data)


def encode_copy_done() -> bytes:
    return message(b"c")


def encode_function_call_response(value: bytes | None) -> bytes:
    if value is None:
        return message(b"V", _I32.pack(-1))
    return message(b"V", _I32.pack(len(value)) + value)


# --- decoders --------------------------------------------------------------

def decode_authentication(body: bytes) -> AuthenticationRequest:
    r = Reader(body, "authentication request")
    code = r.int32()
    data = r.rest()
    if code == Auth.MD5_PASSWORD and len(data) != 4:
        raise RemoteProtocolError("invalid MD5 authentication request: salt must be 4 bytes")
    return AuthenticationRequest(code, data)


def decode_sasl_mechanisms(data: bytes) -> list[str]:
    """Split the mechanism list of AuthenticationSASL (NUL-terminated, ending in NUL)."""
    r = Reader(data, "SASL mechanism list")
    mechs = []
    while True:
        name = r.cstring()
        if name == "":
            break
        mechs.append(name)
    r.expect_end()
    return mechs


def decode_error_fields(body: bytes, notice: bool = False) -> ErrorResponse:
    """Decode ErrorResponse/NoticeResponse fields; tolerate any subset of fields.

    Text that is not UTF-8 is kept with replacement characters: a server sends
    its early (login) errors in its own lc_messages encoding, before
    client_encoding applies, and losing the SQLSTATE for that would hide why
    the login failed.
    """
    fields: dict[str, str] = {}
    r = Reader(body, "error response")
    while r.remaining():
        code = r.byte()
        if code == 0:
            break
        value = r.cstring("replace")
        fields[chr(code)] = value
    return ErrorResponse(fields, is_notice=notice)


def error_sqlstate(raw: bytes | memoryview) -> str:
    """The SQLSTATE of a whole or partly received ErrorResponse, "" if not there.

    For counting errors on the relay path: never raises, reads only the fields
    before the code (PostgreSQL sends S, V, C first).
    """
    data = bytes(raw[5:])
    pos = 0
    while pos < len(data) and data[pos] != 0:
        end = data.find(b"\0", pos + 1)
        if end < 0:
            return ""
        if data[pos] == 0x43:  # 'C'
            return data[pos + 1:end].decode("ascii", "replace")
        pos = end + 1
    return ""


def decode_parameter_status(body: bytes) -> ParameterStatus:
    r = Reader(body, "parameter status")
    name = r.cstring()
    value = r.cstring()
    r.expect_end()
    return ParameterStatus(name, value)


def decode_backend_key_data(body: bytes) -> BackendKeyData:
    r = Reader(body, "backend key data")
    pid = r.uint32()
    secret = r.rest()
    if not 4 <= len(secret) <= 256:
        raise RemoteProtocolError("invalid backend key data: bad secret length")
    return BackendKeyData(pid, secret)


def decode_ready_for_query(body: bytes) -> ReadyForQuery:
    if len(body) != 1 or body not in (b"I", b"T", b"E"):
        raise RemoteProtocolError("invalid ReadyForQuery status")
    return ReadyForQuery(bytes(body))


def decode_notification_response(body: bytes) -> NotificationResponse:
    r = Reader(body, "notification")
    pid = r.uint32()
    channel = r.cstring()
    payload = r.cstring()
    r.expect_end()
    return NotificationResponse(pid, channel, payload)


def decode_negotiate_protocol_version(body: bytes) -> NegotiateProtocolVersion:
    r = Reader(body, "NegotiateProtocolVersion")
    minor = r.int32()
    count = r.int32()
    if count < 0 or count > r.remaining():
        raise RemoteProtocolError("invalid NegotiateProtocolVersion: bad option count")
    opts = tuple(r.cstring() for _ in range(count))
    r.expect_end()
    return NegotiateProtocolVersion(minor, opts)


def decode_command_complete(body: bytes) -> CommandComplete:
    r = Reader(body, "command complete")
    tag = r.cstring()
    r.expect_end()
    return CommandComplete(tag)


def decode_row_description(body: bytes) -> list[RowDescriptionField]:
    r = Reader(body, "row description")
    n = r.int16()
    if n < 0:
        raise RemoteProtocolError("invalid row description: negative column count")
    out = []
    for _ in range(n):
        name = r.cstring()
        out.append(RowDescriptionField(name, r.uint32(), r.int16(), r.uint32(), r.int16(),
                                       r.int32(), r.int16()))
    r.expect_end()
    return out


def decode_data_row(body: bytes) -> list[bytes | None]:
    r = Reader(body, "data row")
    n = r.int16()
    if n < 0:
        raise RemoteProtocolError("invalid data row: negative column count")
    out: list[bytes | None] = []
    for _ in range(n):
        ln = r.int32()
        if ln == -1:
            out.append(None)
        elif ln < -1:
            raise RemoteProtocolError("invalid data row: negative value length")
        else:
            out.append(r.bytes(ln))
    r.expect_end()
    return out


def decode_copy_response(kind: int, body: bytes) -> CopyResponse:
    r = Reader(body, "copy response")
    fmt = r.byte()
    n = r.int16()
    if n < 0:
        raise RemoteProtocolError("invalid copy response: negative column count")
    cols = tuple(r.int16() for _ in range(n))
    r.expect_end()
    return CopyResponse(kind, fmt, cols)


def decode_parameter_description(body: bytes) -> tuple[int, ...]:
    r = Reader(body, "parameter description")
    n = r.uint16()  # unsigned: a statement may have up to 65535 parameters
    out = tuple(r.uint32() for _ in range(n))
    r.expect_end()
    return out


def decode_function_call_response(body: bytes) -> bytes | None:
    r = Reader(body, "function call response")
    ln = r.int32()
    if ln == -1:
        r.expect_end()
        return None
    if ln < -1:
        raise RemoteProtocolError("invalid function call response: negative length")
    value = r.bytes(ln)
    r.expect_end()
    return value
