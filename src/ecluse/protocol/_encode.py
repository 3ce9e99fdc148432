"""Small helpers shared by the encoders: message framing and field packing.

An encoder refuses to build a message whose length would not fit the
protocol's signed 32-bit length (the overflow class of CVE-2024-27304).
"""

from __future__ import annotations

import struct

from ecluse.errors import LocalProtocolError

MAX_BODY = 0x7FFFFFFF - 4
_HEADER = struct.Struct("!cI")
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
MAX_COUNT16 = 0xFFFF  # PostgreSQL reads parameter and format counts as unsigned Int16


def message(msg_type: bytes, body: bytes = b"") -> bytes:
    """Frame a body as one typed message: 1 type byte, 4 length bytes, body."""
    if len(body) > MAX_BODY:
        raise LocalProtocolError("message body too large to encode")
    return _HEADER.pack(msg_type, len(body) + 4) + body


def untyped(body: bytes) -> bytes:
    """Frame a startup-phase packet (no type byte)."""
    if len(body) > MAX_BODY:
        raise LocalProtocolError("packet too large to encode")
    return _U32.pack(len(body) + 4) + body


def cstr(s: str) -> bytes:
    """Encode a NUL-terminated string; a NUL inside would cut the field short."""
    raw = s.encode("utf-8")
    if b"\0" in raw:
        raise LocalProtocolError("string field contains a NUL byte")
    return raw + b"\0"


def count16(n: int) -> bytes:
    """Encode a parameter/format count, which the server reads as an unsigned Int16."""
    if not 0 <= n <= MAX_COUNT16:
        raise LocalProtocolError(f"too many parameters or formats to encode ({n})")
    return _U16.pack(n)
