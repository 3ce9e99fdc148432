"""Test helpers that speak the wire protocol by hand.

For message orders no driver produces and for unit tests without sockets:
building and splitting messages, a raw protocol client over a plain socket,
readers for raw sockets, an asyncio transport that records what is written
to it, and stand-ins for a server connection's client and pool. Imported by
tests as ``wire`` (pytest puts tests/ on the path).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time

from ecluse.protocol.startup import encode_startup_message


def msg(msg_type: bytes, body: bytes) -> bytes:
    """One typed protocol message."""
    return msg_type + struct.pack("!I", len(body) + 4) + body


def split_messages(raw: bytes) -> list[tuple[bytes, bytes]]:
    """Whole typed messages in ``raw``, as (type, body) pairs."""
    out, pos = [], 0
    while pos + 5 <= len(raw):
        (length,) = struct.unpack_from("!I", raw, pos + 1)
        out.append((bytes(raw[pos:pos + 1]), bytes(raw[pos + 5:pos + 1 + length])))
        pos += 1 + length
    return out


def cut(data: bytes, cuts: list[int], keep_empty: bool = False) -> list[bytes]:
    """``data`` cut at the offsets in ``cuts`` (taken modulo its length), in order:
    how a stream may arrive in reads. With ``keep_empty`` an offset may also be 0 or
    the end, or repeat, giving empty pieces (reads no transport delivers, but a
    framer must take)."""
    if keep_empty:
        points = sorted(c % (len(data) + 1) for c in cuts)
    else:
        points = sorted({c % len(data) for c in cuts} - {0})
    out, last = [], 0
    for point in points:
        out.append(data[last:point])
        last = point
    out.append(data[last:])
    return out


def startup_packet(user: str = "postgres", database: str = "ecluse_test") -> bytes:
    """A protocol 3.0 StartupMessage."""
    body = struct.pack("!I", 3 << 16) + f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!I", len(body) + 4) + body


def read_until_closed(sock: socket.socket, timeout: float = 5.0,
                      until: bytes | None = None) -> bytes:
    """Read until the peer closes, resets, times out, or ``until`` was received."""
    sock.settimeout(timeout)
    out = b""
    while until is None or until not in out:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError, ssl.SSLError):
            return out
        if not chunk:
            return out
        out += chunk
    return out


def read_until_ready(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    """Read backend messages up to and including ReadyForQuery."""
    data, out = b"", []
    while True:
        while len(data) >= 5 and len(data) >= 1 + struct.unpack("!i", data[1:5])[0]:
            size = struct.unpack("!i", data[1:5])[0]
            kind, body, data = data[:1], data[5:1 + size], data[1 + size:]
            out.append((kind, body))
            if kind == b"Z":
                return out
        chunk = sock.recv(65536)
        assert chunk, "connection closed before ReadyForQuery"
        data += chunk


class RawClient:
    """Speak the protocol by hand over a plain socket (trust auth only)."""

    def __init__(self, ec, user: str = "postgres", dbname: str = "ecluse_test"):
        self.sock = socket.create_connection((ec.host, ec.port), timeout=20)
        self.buf = b""
        self.sock.sendall(encode_startup_message({"user": user, "database": dbname}))
        self.read_until(b"Z")

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(messages))

    def read_message(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 5:
                length = struct.unpack_from("!I", self.buf, 1)[0]
                if len(self.buf) >= length + 1:
                    msg_type, body = self.buf[:1], self.buf[5:length + 1]
                    self.buf = self.buf[length + 1:]
                    return msg_type, body
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("ecluse closed the connection")
            self.buf += chunk

    def read_until(self, last: bytes) -> list[tuple[bytes, bytes]]:
        """Messages up to and including the first of type ``last``."""
        out = []
        while True:
            message = self.read_message()
            out.append(message)
            if message[0] == last:
                return out

    def close(self) -> None:
        self.sock.close()


def queries_apart(ec, dbname: str, first: str, second: str, pause: float
                  ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """Send two simple queries on one connection ``pause`` seconds apart (the second
    arrives while the first runs); the replies to each, up to its ReadyForQuery."""
    client = RawClient(ec, dbname=dbname)
    try:
        client.send(msg(b"Q", first.encode() + b"\0"))
        time.sleep(pause)
        client.send(msg(b"Q", second.encode() + b"\0"))
        return client.read_until(b"Z"), client.read_until(b"Z")
    finally:
        client.close()


class FakeTransport(asyncio.Transport):
    """A transport that records writes (``out``: every byte, ``written``: each
    write) and whether it is closed or paused."""

    def __init__(self, peername: object = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.out = bytearray()
        self.written: list[bytes] = []
        self.closed = False
        self.reading = True
        self.buffered = 0  # what get_write_buffer_size reports: bytes not yet sent
        self._extra = {"peername": peername, "sockname": ("127.0.0.1", 40000)}

    @property
    def paused(self) -> bool:
        return not self.reading

    def get_extra_info(self, name, default=None):
        return self._extra.get(name, default)

    def write(self, data) -> None:
        data = bytes(data)
        self.out += data
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class LinkStub:
    """A ServerLink (server/connection.py) that accepts everything and records
    nothing; tests subclass it for what they watch. Losing the server fails the test."""

    def write_from_server(self, data) -> None:
        pass

    def on_server_ready(self, server) -> None:
        pass

    def on_server_params(self, name: str, value: str) -> None:
        pass

    def on_server_notification(self, raw: bytes) -> None:
        pass

    def on_server_lost(self, server, error) -> None:
        raise AssertionError(error)

    def pause_client_reading(self) -> None:
        pass

    def resume_client_reading(self) -> None:
        pass


class PoolStub:
    """The PoolHooks of a server connection with no pool."""

    def on_server_closed(self, server) -> None:
        pass
