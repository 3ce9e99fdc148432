"""The untyped packets of the startup phase: StartupMessage, SSLRequest,
GSSENCRequest and CancelRequest, and the NegotiateProtocolVersion answer.

Rules:
1. A startup packet is bounded by max_startup_packet_size (PostgreSQL uses
   10,000 bytes) before any byte of it is buffered beyond the header.
2. Names and values from an unauthenticated peer are bounded and validated
   here, at the network boundary (CVE-2012-4575).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from ecluse.errors import RemoteProtocolError
from ecluse.protocol._encode import cstr, untyped
from ecluse.protocol.codes import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_MAJOR_3,
    SSL_REQUEST_CODE,
)
from ecluse.protocol.messages import CancelRequest, GSSENCRequest, SSLRequest, StartupMessage
from ecluse.protocol.reader import Reader

DEFAULT_MAX_STARTUP_PACKET = 10_000
MAX_NAME_LENGTH = 63  # NAMEDATALEN - 1: longer database/user names are refused

StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest

_U32 = struct.Struct("!I")


def startup_packet_length(buf: bytes | bytearray, max_size: int = DEFAULT_MAX_STARTUP_PACKET
                          ) -> int | None:
    """Return the full length of the startup packet at the start of buf.

    None means fewer than 4 bytes have arrived. Raises RemoteProtocolError for
    a length below 8 or above max_size, before the body is buffered.
    """
    if len(buf) < 4:
        return None
    (length,) = _U32.unpack_from(buf, 0)
    if length < 8 or length > max_size:
        raise RemoteProtocolError("invalid startup packet length")
    return length


_LENGTH_AND_CODE = struct.Struct("!II")


def decode_startup_packet(packet: bytes) -> StartupPacket:
    """Decode one whole startup-phase packet, length prefix included."""
    if len(packet) >= 8:
        # The StartupMessage of a v3 client, every login: without the Reader.
        length, code = _LENGTH_AND_CODE.unpack_from(packet)
        if length == len(packet) and code >> 16 == PROTOCOL_MAJOR_3:
            return StartupMessage(PROTOCOL_MAJOR_3, code & 0xFFFF,
                                  decode_parameter_list(packet[8:]))
    return read_startup_packet(packet)


def read_startup_packet(packet: bytes) -> StartupPacket:
    """decode_startup_packet field by field, for every packet: the requests, bad
    packets (it names what is wrong), and the reference its fast path is tested
    against."""
    r = Reader(packet, "startup packet")
    length = r.uint32()
    if length != len(packet):
        raise RemoteProtocolError("invalid startup packet length")
    code = r.uint32()
    if code == SSL_REQUEST_CODE:
        r.expect_end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.expect_end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid = r.uint32()
        secret = r.rest()
        if not 4 <= len(secret) <= 256:
            raise RemoteProtocolError("invalid cancel request: bad key length")
        return CancelRequest(pid, secret)
    major, minor = code >> 16, code & 0xFFFF
    if major != PROTOCOL_MAJOR_3:
        raise RemoteProtocolError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
            sqlstate="0A000",
        )
    return StartupMessage(major, minor, decode_parameter_list(r.rest()))


def decode_parameter_list(body: bytes) -> dict[str, str]:
    """A StartupMessage parameter list: in one pass when well formed, else field
    by field, which raises RemoteProtocolError naming what is wrong."""
    params = split_parameter_list(body)
    return params if params is not None else read_parameter_list(body)


def split_parameter_list(body: bytes) -> dict[str, str] | None:
    """Decode a well-formed StartupMessage parameter list (name, value, ... and a
    final NUL) in one pass, or return None for anything else, which
    read_parameter_list then refuses with the reason.

    Every login comes through here; the Reader's field-by-field walk costs
    several times more. One strict decode of the whole list is the decode of
    each string: a NUL byte is never part of a multi-byte UTF-8 sequence.
    """
    try:
        fields = body.decode().split("\0")
    except UnicodeDecodeError:
        return None
    # name, value, ..., "" (the list's terminator), "" (after the last NUL)
    if len(fields) % 2 or fields[-1] or fields[-2]:
        return None
    names = fields[0:-2:2]
    if "" in names:
        return None  # an early terminator: bytes follow it
    return dict(zip(names, fields[1:-2:2], strict=True))


def read_parameter_list(body: bytes) -> dict[str, str]:
    """Decode a StartupMessage parameter list field by field; raise
    RemoteProtocolError naming what is wrong with it."""
    r = Reader(body, "startup packet")
    params: dict[str, str] = {}
    while True:
        name = r.cstring()
        if name == "":
            break
        value = r.cstring()
        params[name] = value
    r.expect_end()
    return params


def validate_startup_params(params: Mapping[str, str]) -> None:
    """Check the parameters a pooler routes on: user required, names bounded."""
    user = params.get("user", "")
    if not user:
        raise RemoteProtocolError("no PostgreSQL user name specified in startup packet",
                                  sqlstate="28000")
    for key in ("user", "database"):
        value = params.get(key)
        if value is not None and len(value.encode("utf-8")) > MAX_NAME_LENGTH:
            raise RemoteProtocolError(f"{key} name too long", sqlstate="08P01")


def unsupported_protocol_options(params: Mapping[str, str]) -> list[str]:
    """Return the `_pq_.` options, which ecluse does not implement."""
    return [k for k in params if k.startswith("_pq_.")]


def encode_startup_message(params: Mapping[str, str], major: int = 3, minor: int = 0) -> bytes:
    body = _U32.pack((major << 16) | minor)
    body += b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return untyped(body)


def encode_ssl_request() -> bytes:
    return untyped(_U32.pack(SSL_REQUEST_CODE))


def encode_gssenc_request() -> bytes:
    return untyped(_U32.pack(GSSENC_REQUEST_CODE))


def encode_cancel_request(process_id: int, secret: bytes) -> bytes:
    return untyped(_U32.pack(CANCEL_REQUEST_CODE) + _U32.pack(process_id & 0xFFFFFFFF) + secret)
