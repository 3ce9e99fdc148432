# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""framing.is_whole_reply and Framer.feed compiled (ecluse/accel.py picks them when
built): the same answers on every input, the pure ones being the reference."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcmp, memset

from ecluse.protocol._wire cimport be32

from ecluse.errors import RemoteProtocolError

# The set of plain types last asked about, as a table: the express path always
# asks about the same one, so it is built once.
cdef object _plain = None
cdef unsigned char _table[256]


cdef void _learn(frozenset plain):
    global _plain
    memset(_table, 0, 256)
    for t in plain:
        if isinstance(t, int) and 0 <= t < 256:
            _table[<int>t] = 1
    _plain = plain


def is_whole_reply(data, frozenset plain):
    """True when ``data`` is exactly whole messages of the types in ``plain`` followed
    by a ReadyForQuery, the last message."""
    if type(data) is not bytes:
        data = bytes(data)
    if plain is not _plain:
        _learn(plain)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t last = n - 6
    cdef Py_ssize_t pos = 0
    cdef unsigned long length
    if last < 0 or memcmp(p + last, b"Z\0\0\0\x05", 5) != 0:
        return False
    while pos < last:
        # pos < last = n - 6: the whole 5-byte header lies inside data.
        length = be32(p + pos + 1)
        if not _table[p[pos]] or length < 4:
            return False
        pos += <Py_ssize_t>length + 1
    return pos == last


# framing.OVERSIZE_HEAD (tests/unit/test_accel.py checks they agree).
OVERSIZE_HEAD = 1024


def framer_feed(self, data):
    """Framer.feed compiled (framing.Framer takes it as its method when built): the
    same pieces, errors and state for the same bytes. A chunk that is not bytes is
    copied into bytes first."""
    if type(data) is not bytes:
        data = bytes(data)
    cdef bytes chunk = data
    cdef Py_ssize_t n = PyBytes_GET_SIZE(chunk)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(chunk)
    cdef bytes pending = self._pending
    cdef Py_ssize_t skip = self._skip
    cdef Py_ssize_t pos = 0, total, take
    cdef unsigned long length, max_len, inspect_max
    cdef int msg_type
    cdef list out
    rules = self._rules
    valid = rules[0]
    inspect = rules[1]
    max_len = rules[2]
    inspect_max = rules[3]
    if not pending and not skip and n >= 5:
        # The common chunk on a request/response link: exactly one whole message.
        msg_type = p[0]
        length = be32(p + 1)
        if <Py_ssize_t>length + 1 == n and length >= 4 and msg_type in valid and (
                length <= inspect_max if msg_type in inspect else length <= max_len):
            return [(msg_type, chunk, True, True)]
    if pending:
        chunk = pending + chunk
        self._pending = b""
        n = PyBytes_GET_SIZE(chunk)
        p = <const unsigned char *>PyBytes_AS_STRING(chunk)
    mv = memoryview(chunk)
    out = []
    if skip and n:
        take = skip if skip < n else n
        skip -= take
        self._skip = skip
        out.append((self._skip_type, mv[:take], False, skip == 0))
        pos = take
    side = rules[4]
    stream_oversize = rules[5]
    while pos < n:
        if n - pos < 5:
            self._pending = chunk[pos:]
            break
        msg_type = p[pos]
        length = be32(p + pos + 1)
        if msg_type not in valid:
            raise RemoteProtocolError(f"invalid message type {chr(msg_type)!r} from {side}")
        if length < 4:
            raise RemoteProtocolError(f"invalid message length {length} from {side}")
        total = <Py_ssize_t>length + 1
        if msg_type in inspect:
            if length <= inspect_max:
                if n - pos < total:
                    self._pending = chunk[pos:]
                    break
                out.append((msg_type, mv[pos:pos + total], True, True))
                pos += total
                continue
            if not stream_oversize:
                raise RemoteProtocolError(
                    f"message of type {chr(msg_type)!r} too long ({length} bytes)")
            if n - pos < min(total, OVERSIZE_HEAD) and length <= max_len:
                self._pending = chunk[pos:]
                break
        if length > max_len:
            raise RemoteProtocolError(f"message too long ({length} bytes, limit {max_len})")
        if n - pos >= total:
            out.append((msg_type, mv[pos:pos + total], True, True))
            pos += total
        else:
            out.append((msg_type, mv[pos:], True, False))
            self._skip = total - (n - pos)
            self._skip_type = msg_type
            pos = n
    return out
