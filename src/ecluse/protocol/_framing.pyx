# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""framing.is_whole_reply compiled (ecluse/accel.py picks it when built): the same
answer on every input, the pure function being the reference."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcmp, memset

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
        length = ((<unsigned long>p[pos + 1] << 24) | (<unsigned long>p[pos + 2] << 16)
                  | (<unsigned long>p[pos + 3] << 8) | p[pos + 4])
        if not _table[p[pos]] or length < 4:
            return False
        pos += <Py_ssize_t>length + 1
    return pos == last
