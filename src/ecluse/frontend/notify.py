"""Notifications from the pool's LISTEN hub, made fit for one client.

The hub's listener connection runs with client_encoding UTF8, so the channel
and payload of every NotificationResponse it hands out are UTF-8. A client
that asked for another encoding must get them in that one, as PostgreSQL would
send them. Sans-IO: bytes in, bytes out.
"""

from __future__ import annotations

import codecs

from ecluse.protocol._encode import message

# PostgreSQL encoding names whose Python codec name is not simply the lower-cased one.
_PY_CODECS = {
    "UTF8": "utf-8", "UNICODE": "utf-8",
    "LATIN1": "latin-1", "LATIN2": "iso8859-2", "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4", "LATIN5": "iso8859-9", "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13", "LATIN8": "iso8859-14", "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16", "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7", "ISO_8859_8": "iso8859-8",
    "KOI8R": "koi8-r", "KOI8U": "koi8-u", "SJIS": "shift_jis", "SHIFT_JIS_2004": "shift_jis_2004",
    "EUC_JIS_2004": "euc_jis_2004", "UHC": "cp949", "JOHAB": "johab",
    "GB18030": "gb18030", "GBK": "gbk", "BIG5": "big5",
}


def python_codec(pg_encoding: str) -> str | None:
    """Return the Python codec for a PostgreSQL encoding name, or None (pass bytes as they are)."""
    name = pg_encoding.upper().replace("-", "_")
    if name == "SQL_ASCII":
        return None  # PostgreSQL sends such a client the bytes unconverted
    codec = _PY_CODECS.get(name)
    if codec is None:
        codec = "cp" + name[3:] if name.startswith("WIN") else name.lower()
    try:
        return codecs.lookup(codec).name
    except LookupError:
        return None


def recode_notification(raw: bytes, client_encoding: str) -> bytes:
    """Return a UTF-8 NotificationResponse re-encoded for ``client_encoding``.

    Characters the client's encoding cannot hold become '?': the client still
    learns that the channel fired, which matters more than a lossy payload.
    """
    codec = python_codec(client_encoding)
    if codec is None or codec == "utf-8":
        return raw
    pid = raw[5:9]
    body = raw[9:]
    channel_end = body.index(b"\0")
    payload_end = body.index(b"\0", channel_end + 1)
    channel = body[:channel_end].decode("utf-8", "replace")
    payload = body[channel_end + 1:payload_end].decode("utf-8", "replace")
    return message(b"A", pid + channel.encode(codec, "replace") + b"\0"
                   + payload.encode(codec, "replace") + b"\0")
