"""A bounds-checked cursor over one message body.

Every length and field read from the wire goes through here, so a short,
negative or oversized length always ends in RemoteProtocolError and never in
a silently short slice (the bug class of CVE-2026-6664).
"""

from __future__ import annotations

import struct

from ecluse.errors import RemoteProtocolError

_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")


class Reader:
    """Read fields in order from a message body; raise on any overrun."""

    __slots__ = ("_data", "_end", "_pos", "_what")

    def __init__(self, data: bytes | memoryview, what: str = "message"):
        self._data = bytes(data)
        self._pos = 0
        self._end = len(self._data)
        self._what = what

    def _need(self, n: int) -> None:
        if n < 0 or self._pos + n > self._end:
            raise RemoteProtocolError(f"invalid {self._what}: truncated or bad length")

    def int16(self) -> int:
        self._need(2)
        (v,) = _I16.unpack_from(self._data, self._pos)
        self._pos += 2
        return v

    def uint16(self) -> int:
        self._need(2)
        (v,) = _U16.unpack_from(self._data, self._pos)
        self._pos += 2
        return v

    def int32(self) -> int:
        self._need(4)
        (v,) = _I32.unpack_from(self._data, self._pos)
        self._pos += 4
        return v

    def uint32(self) -> int:
        self._need(4)
        (v,) = _U32.unpack_from(self._data, self._pos)
        self._pos += 4
        return v

    def byte(self) -> int:
        self._need(1)
        v = self._data[self._pos]
        self._pos += 1
        return v

    def bytes(self, n: int) -> bytes:
        self._need(n)
        v = self._data[self._pos : self._pos + n]
        self._pos += n
        return v

    def cstring(self, errors: str = "strict") -> str:
        """Read a NUL-terminated string.

        Invalid UTF-8 is an error unless ``errors`` names a lenient codec
        error handler ("replace"), for text only shown to people.
        """
        end = self._data.find(b"\0", self._pos, self._end)
        if end < 0:
            raise RemoteProtocolError(f"invalid {self._what}: unterminated string")
        raw = self._data[self._pos : end]
        self._pos = end + 1
        try:
            return raw.decode("utf-8", errors)
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"invalid {self._what}: string is not UTF-8") from None

    def rest(self) -> bytes:
        v = self._data[self._pos : self._end]
        self._pos = self._end
        return v

    def remaining(self) -> int:
        return self._end - self._pos

    def expect_end(self) -> None:
        if self._pos != self._end:
            raise RemoteProtocolError(f"invalid {self._what}: trailing bytes")
