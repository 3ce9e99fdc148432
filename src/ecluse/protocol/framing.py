"""Message framing over a byte stream: header scan, length limits, streaming.

A Framer turns arriving chunks into a list of pieces, in order:
``(type, raw, start, end)`` where ``raw`` is a memoryview of wire bytes (or
the chunk itself, when it is one whole message),
``start`` says raw begins with the 5-byte header and ``end`` says the message
is complete. Messages whose type is in ``inspect`` are always delivered whole
(``start`` and ``end`` true), bounded by ``inspect_max``; every other message
is streamed in fragments as it arrives, so a 100 MB DataRow or CopyData never
has to sit whole in memory.

Rules:
1. No I/O here. Bad input raises RemoteProtocolError and leaves the framer
   unusable: the caller closes that one connection.
2. A length below 4, above the limit for its type, or a type byte outside
   ``valid`` is rejected from the header alone, before any body is buffered.
3. With ``stream_oversize``, an inspected message longer than ``inspect_max``
   is streamed instead of refused, and its first piece holds at least its
   first OVERSIZE_HEAD bytes, so names at the front of a 100 MB Bind can still
   be read and rewritten.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ecluse import accel
from ecluse.errors import RemoteProtocolError

_HEADER = struct.Struct("!BI")
# The length word is a signed Int32 on the wire: 0x80000000 and above are negative.
MAX_WIRE_LENGTH = 0x7FFFFFFF
# raw is a memoryview of the chunk, or the chunk itself (bytes) when it is exactly
# one whole message.
Piece = tuple[int, memoryview | bytes, bool, bool]
OVERSIZE_HEAD = 1024


_READY = b"Z\0\0\0\x05"  # ReadyForQuery's type and length; its status byte follows


def is_whole_reply(data: bytes, plain: frozenset[int]) -> bool:
    """True when ``data`` is exactly whole messages of the types in ``plain`` followed
    by a ReadyForQuery, the last message: a server's reply that can be relayed
    without being split (the express path's test, server/connection.py)."""
    last = len(data) - 6
    if last < 0 or data[last:last + 5] != _READY:
        return False
    pos = 0
    unpack = _HEADER.unpack_from
    while pos < last:
        msg_type, length = unpack(data, pos)
        if msg_type not in plain or length < 4:
            return False
        pos += length + 1
    return pos == last


class FramingRules(NamedTuple):
    """How a Framer cuts a stream: which types are accepted, which delivered whole
    (``inspect``, up to ``inspect_max`` bytes), the longest message, whether
    longer inspected ones are streamed, and whom errors name. Shared by every
    Framer with the same rules (shared_rules): thousands of idle clients hold one."""

    valid: frozenset[int]
    inspect: frozenset[int]
    max_len: int
    inspect_max: int
    side: str
    stream_oversize: bool


def shared_rules(rules: FramingRules) -> FramingRules:
    """The one instance of ``rules`` the framers share."""
    found = _SHARED.get(rules)
    if found is None:
        if len(_SHARED) >= _SWITCHES_MAX:
            forget_rules()  # all together: the lookups below must give the shared ones
        found = _SHARED[rules] = rules
    return found


def forget_rules() -> None:
    """Empty the shared rules and both lookups of them."""
    _SHARED.clear()
    _SWITCHES.clear()
    _RULES_FOR.clear()


# The shared instances; a handful in practice (one per set of rules), bounded anyway.
_SHARED: dict[FramingRules, FramingRules] = {}
# Framer.switch's (rules, changes) -> rules, bounded the same way.
_SWITCHES: dict[tuple, FramingRules] = {}
_SWITCHES_MAX = 256
# Framer()'s arguments -> rules, as few.
_RULES_FOR: dict[tuple, FramingRules] = {}


class Framer:
    """Split a stream of typed protocol messages into forwardable pieces."""

    __slots__ = ("_pending", "_rules", "_skip", "_skip_type")

    def __init__(self, valid: frozenset[int], inspect: frozenset[int], max_len: int,
                 inspect_max: int = 1 << 20, side: str = "peer",
                 stream_oversize: bool = False):
        # Every connection makes a Framer: its rules are looked up by the arguments
        # (a plain tuple), not rebuilt as a FramingRules each time.
        key = (valid, inspect, max_len, inspect_max, side, stream_oversize)
        rules = _RULES_FOR.get(key)
        if rules is None:
            max_len = min(max_len, MAX_WIRE_LENGTH)
            rules = shared_rules(FramingRules(valid, inspect, max_len,
                                              min(inspect_max, max_len), side,
                                              stream_oversize))
            if len(_RULES_FOR) >= _SWITCHES_MAX:
                _RULES_FOR.clear()
            _RULES_FOR[key] = rules
        self._rules = rules
        self._pending = b""  # a partial header or a partial inspected message
        self._skip = 0  # bytes of a streamed message still to come
        self._skip_type = 0

    def switch(self, *, valid: frozenset[int] | None = None,
               inspect: frozenset[int] | None = None, inspect_max: int | None = None,
               stream_oversize: bool | None = None) -> None:
        """Change the rules given (not None) from now on; bytes already buffered keep
        their framing. Each login and internal query switches: the switch from
        one set of rules to another is looked up, not rebuilt."""
        key = (self._rules, valid, inspect, inspect_max, stream_oversize)
        rules = _SWITCHES.get(key)
        if rules is None:
            old = self._rules
            rules = shared_rules(old._replace(
                valid=old.valid if valid is None else valid,
                inspect=old.inspect if inspect is None else inspect,
                inspect_max=old.inspect_max if inspect_max is None else
                min(inspect_max, old.max_len),
                stream_oversize=old.stream_oversize if stream_oversize is None
                else stream_oversize))
            if len(_SWITCHES) >= _SWITCHES_MAX:
                _SWITCHES.clear()
            _SWITCHES[key] = rules
        self._rules = rules

    def set_valid(self, valid: frozenset[int]) -> None:
        """Change which message types are accepted from now on (e.g. after login)."""
        self.switch(valid=valid)

    def set_inspect(self, inspect: frozenset[int], inspect_max: int | None = None) -> None:
        """Change which types are delivered whole (e.g. after login); bytes already
        buffered keep their framing."""
        self.switch(inspect=inspect, inspect_max=inspect_max)

    @property
    def stream_oversize(self) -> bool:
        """Whether an inspected message longer than inspect_max is streamed (in
        pieces) rather than refused."""
        return self._rules.stream_oversize

    @stream_oversize.setter
    def stream_oversize(self, value: bool) -> None:
        self.switch(stream_oversize=value)

    @property
    def side(self) -> str:
        return self._rules.side

    @property
    def inspect_max(self) -> int:
        """The longest message of an inspected type delivered whole (and accepted
        at all, without stream_oversize)."""
        return self._rules.inspect_max

    @property
    def holds_partial(self) -> bool:
        """True when bytes of a partial header or inspected message are buffered:
        the next ``feed`` does not start at the chunk it is given."""
        return bool(self._pending)

    @property
    def at_boundary(self) -> bool:
        """True when no message is partly received."""
        return not self._pending and not self._skip

    def feed(self, data: bytes) -> list[Piece]:
        """Consume a chunk; return the pieces it completes or continues."""
        if not self._pending and not self._skip and len(data) >= 5:
            # The common chunk on a request/response link: exactly one whole message.
            msg_type, length = _HEADER.unpack_from(data)
            rules = self._rules
            if length + 1 == len(data) and length >= 4 and msg_type in rules.valid and (
                    length <= rules.inspect_max if msg_type in rules.inspect
                    else length <= rules.max_len):
                # The chunk itself, not a view of it: writing and slicing bytes is
                # cheaper, and both read the same.
                return [(msg_type, data if type(data) is bytes else memoryview(data),
                         True, True)]
        if self._pending:
            data = self._pending + data
            self._pending = b""
        mv = memoryview(data)
        n = len(data)
        pos = 0
        out: list[Piece] = []
        if self._skip and n:
            take = self._skip if self._skip < n else n
            self._skip -= take
            out.append((self._skip_type, mv[:take], False, self._skip == 0))
            pos = take
        # Locals: this loop runs once per message on every relayed byte stream.
        unpack = _HEADER.unpack_from
        valid, inspect, max_len, inspect_max, side, stream_oversize = self._rules
        append = out.append
        while pos < n:
            if n - pos < 5:
                self._pending = bytes(mv[pos:])
                break
            msg_type, length = unpack(data, pos)
            if msg_type not in valid:
                raise RemoteProtocolError(
                    f"invalid message type {chr(msg_type)!r} from {side}")
            if length < 4:
                raise RemoteProtocolError(f"invalid message length {length} from {side}")
            total = length + 1
            if msg_type in inspect:
                if length <= inspect_max:
                    if n - pos < total:
                        self._pending = bytes(mv[pos:])
                        break
                    append((msg_type, mv[pos:pos + total], True, True))
                    pos += total
                    continue
                if not stream_oversize:
                    raise RemoteProtocolError(
                        f"message of type {chr(msg_type)!r} too long ({length} bytes)")
                if n - pos < min(total, OVERSIZE_HEAD) and length <= max_len:
                    self._pending = bytes(mv[pos:])
                    break
            if length > max_len:
                raise RemoteProtocolError(
                    f"message too long ({length} bytes, limit {max_len})")
            if n - pos >= total:
                append((msg_type, mv[pos:pos + total], True, True))
                pos += total
            else:
                append((msg_type, mv[pos:], True, False))
                self._skip = total - (n - pos)
                self._skip_type = msg_type
                pos = n
        return out


# The pure feed stays the reference (tests/unit/test_accel.py); Framer takes the
# compiled one (ecluse/accel.py) when it is built.
PURE_FEED = Framer.feed
Framer.feed = accel.pick(PURE_FEED, "ecluse.protocol._framing", "framer_feed")
