# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""expressplan.plan_request and plan_batch compiled (ecluse/accel.py picks them when
built): the same answer on every input, the pure functions being the reference.
The SQL itself is still checked by sqlscan.may_leave_session_state."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr

from ecluse.protocol._wire cimport be32

from ecluse.frontend.expressplan import (
    SENT_BIND,
    SENT_DESCRIBE_PORTAL,
    SENT_DESCRIBE_STATEMENT,
    SENT_EXECUTE,
    SENT_PARSE,
    SENT_QUERY,
    SENT_SYNC,
)
from ecluse.frontend.sqlscan import may_leave_session_state

cdef object _SENT_QUERY_PLAN = (SENT_QUERY, 0, 0)


# sqlscan's leading words, lower case.
cdef tuple _WORDS = (b"set", b"reset", b"prepare", b"declare", b"listen", b"unlisten", b"load",
                     b"discard", b"deallocate", b"do", b"create", b"close", b"drop")


cdef inline unsigned char _lower(unsigned char c):
    return c + 32 if b"A" <= c <= b"Z" else c


cdef bint _starts_with(const unsigned char *p, Py_ssize_t n, bytes word):
    cdef Py_ssize_t k = len(word), i
    cdef const unsigned char *w = <const unsigned char *>PyBytes_AS_STRING(word)
    if n < k:
        return False
    for i in range(k):
        if _lower(p[i]) != w[i]:
            return False
    return True


cdef bint _surely_harmless(const unsigned char *p, Py_ssize_t n):
    """True only where may_leave_session_state is surely False: ASCII text in which
    no statement start (the text's, and after each ';') has a comment or one of
    the leading words (word boundary or not) after its whitespace, and none of
    the substrings appears. Anything else is left to sqlscan."""
    cdef Py_ssize_t i = 0, j
    cdef unsigned char c
    cdef bint at_start = True
    for j in range(n):
        if p[j] >= 0x80:
            return False  # str.lower() is Unicode's: sqlscan decides
    while i < n:
        if at_start:
            # re.ASCII's \s: space, \t, \n, \r, \f, \v.
            while i < n and (p[i] == b" " or b"\t" <= p[i] <= b"\r"):
                i += 1
            if i + 1 < n and ((p[i] == b"/" and p[i + 1] == b"*")
                              or (p[i] == b"-" and p[i + 1] == b"-")):
                return False
            for word in _WORDS:
                if _starts_with(p + i, n - i, word):
                    return False
            at_start = False
            continue
        c = p[i]
        if c == b";":
            at_start = True
        elif c == b"t" or c == b"T":
            if _starts_with(p + i, n - i, b"temp"):
                return False
        elif c == b"s" or c == b"S":
            if _starts_with(p + i, n - i, b"set_config"):
                return False
        elif c == b"a" or c == b"A":
            if _starts_with(p + i, n - i, b"advisory_"):
                return False
        i += 1
    return True


def surely_harmless(bytes sql):
    """The C pre-check (_surely_harmless) alone, for tests."""
    return _surely_harmless(<const unsigned char *>PyBytes_AS_STRING(sql), PyBytes_GET_SIZE(sql))


cdef inline bint _may_leave(const unsigned char *p, Py_ssize_t n):
    if _surely_harmless(p, n):
        return False
    return bool(may_leave_session_state(PyUnicode_DecodeUTF8(<const char *>p, n, "replace")))


cdef object _plan_batch(bytes data):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t pos = 0, end
    cdef unsigned long length
    cdef unsigned char msg_type, kind
    cdef const unsigned char *nul
    cdef list sent = []
    cdef long parses = 0, binds = 0
    cdef bint synced = False
    while pos < n:
        if n - pos < 5:
            return None
        msg_type = p[pos]
        length = be32(p + pos + 1)
        if length < 4 or <unsigned long>(n - pos - 1) < length:
            return None
        end = pos + 1 + <Py_ssize_t>length
        if msg_type == b"P":
            if length < 8 or p[pos + 5] != 0:
                return None
            nul = <const unsigned char *>memchr(p + pos + 6, 0, end - (pos + 6))
            if nul == NULL or _may_leave(p + pos + 6, nul - (p + pos + 6)):
                return None
            sent.append(SENT_PARSE)
            parses += 1
        elif msg_type == b"B":
            if length < 6 or p[pos + 5] != 0 or p[pos + 6] != 0:
                return None
            sent.append(SENT_BIND)
            binds += 1
        elif msg_type == b"D":
            if length != 6 or p[pos + 6] != 0:
                return None
            kind = p[pos + 5]
            if kind == b"P":
                sent.append(SENT_DESCRIBE_PORTAL)
            elif kind == b"S":
                sent.append(SENT_DESCRIBE_STATEMENT)
            else:
                return None
        elif msg_type == b"E":
            if length < 9 or p[pos + 5] != 0:
                return None
            sent.append(SENT_EXECUTE)
        elif msg_type == b"S":
            if end != n or length != 4:
                return None
            sent.append(SENT_SYNC)
            synced = True
        else:
            return None
        pos = end
    if not synced:
        return None
    return tuple(sent), parses, binds


def plan_batch(data):
    """Check an extended-protocol batch for the express path (expressplan.plan_batch)."""
    if type(data) is not bytes:
        data = bytes(data)
    return _plan_batch(data)


def plan_request(data, harmless=None):
    """Check a whole Query or batch for the express path (expressplan.plan_request)."""
    if type(data) is not bytes:
        data = bytes(data)
    cdef bytes b = data
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(b)
    if n == 0 or p[0] != b"Q":
        return _plan_batch(b)
    if n < 6 or be32(p + 1) + 1 != <unsigned long>n or p[n - 1] != 0:
        return None
    if harmless is not None and type(harmless) is bytes and PyBytes_GET_SIZE(harmless) == n - 6:
        if b[5:n - 1] == harmless:
            return _SENT_QUERY_PLAN
    if _may_leave(p + 5, n - 6):
        return None
    return _SENT_QUERY_PLAN
