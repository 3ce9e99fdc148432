"""TCP options (tcpopts.py) on real sockets: what the kernel reports back, what accepted
sockets inherit from the listener, and tcp_defer_accept's hold on silent connections."""

from __future__ import annotations

import dataclasses
import select
import socket
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecluse.config.model import Settings
from ecluse.tcpopts import TcpOptions, apply, configure_listener

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="TCP_KEEPIDLE, TCP_USER_TIMEOUT, TCP_DEFER_ACCEPT: Linux")

_KEEP = (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
_INTVL = (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
_CNT = (socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
_USER = (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)


def read_options(sock) -> TcpOptions:
    """What the kernel says the socket has, as a TcpOptions (the buffer: the send and
    receive sizes, halved since Linux doubles what it is given, when both agree)."""
    send = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    receive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return TcpOptions(bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
                      sock.getsockopt(*_KEEP), sock.getsockopt(*_INTVL),
                      sock.getsockopt(*_CNT), sock.getsockopt(*_USER),
                      send // 2 if send == receive else -1)


def expected(options: TcpOptions, default: TcpOptions) -> TcpOptions:
    """``options`` with each 0 (and, keepalive off, each TCP_KEEP* time) at the OS default."""
    keep = options.keepalive
    return TcpOptions(
        keep,
        options.keepidle if keep and options.keepidle else default.keepidle,
        options.keepintvl if keep and options.keepintvl else default.keepintvl,
        options.keepcnt if keep and options.keepcnt else default.keepcnt,
        options.user_timeout or default.user_timeout,
        options.socket_buffer or default.socket_buffer)


# Buffers up to 100,000 bytes: under Linux's default rmem_max and wmem_max (212,992),
# which clamp larger ones, and over its minimum (SOCK_MIN_RCVBUF/2), which raises smaller.
tcp_options = st.builds(TcpOptions, st.booleans(), st.integers(0, 32767),
                        st.integers(0, 32767), st.integers(0, 127),
                        st.integers(0, 2**31 - 1),
                        st.one_of(st.just(0), st.integers(4608, 100_000)))


@settings(max_examples=200, deadline=None)
@given(tcp_options)
def test_options_are_what_the_kernel_reports(options: TcpOptions) -> None:
    with socket.socket() as sock:
        default = read_options(sock)
        apply(sock, options)
        assert read_options(sock) == expected(options, default)


def test_keepalive_off_clears_it_on_a_socket_that_had_it() -> None:
    """A reload from tcp_keepalive = 1 to 0 must reach the listening sockets."""
    with socket.socket() as sock:
        apply(sock, TcpOptions(keepalive=True, keepidle=7))
        apply(sock, TcpOptions(keepalive=False, keepidle=7))
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


def listener(**changes) -> tuple[socket.socket, Settings]:
    s = dataclasses.replace(Settings(), **changes)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    configure_listener(sock, s)
    return sock, s


def readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


@pytest.mark.parametrize("keepalive", [True, False])
def test_accepted_sockets_inherit_the_listeners_options(keepalive: bool) -> None:
    # Rule 1 of tcpopts.py: clients get no setsockopt of their own.
    lsock, s = listener(tcp_keepalive=keepalive, tcp_keepidle=11, tcp_keepintvl=4,
                        tcp_keepcnt=3, tcp_user_timeout=12345, tcp_socket_buffer=50_000,
                        tcp_defer_accept=False)
    with lsock, socket.create_connection(lsock.getsockname()) as client:
        client.sendall(b"x")
        conn, _ = lsock.accept()
        with conn, socket.socket() as fresh:
            default = read_options(fresh)
            assert read_options(conn) == expected(TcpOptions.from_settings(s), default)
            assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == keepalive


def test_defer_accept_holds_a_silent_connection_until_it_speaks() -> None:
    lsock, _ = listener(tcp_defer_accept=True)
    with lsock, socket.create_connection(lsock.getsockname()) as client:
        assert lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
        assert not readable(lsock, 0.3)  # handshake done, nothing sent: not acceptable
        client.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # an SSLRequest
        assert readable(lsock, 5)
        conn, _ = lsock.accept()
        with conn:
            assert conn.recv(8) == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


def test_without_defer_accept_a_silent_connection_is_accepted_at_once() -> None:
    lsock, _ = listener(tcp_defer_accept=False)
    with lsock, socket.create_connection(lsock.getsockname()):
        assert lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0
        assert readable(lsock, 5)


def test_defer_accept_can_be_switched_off_by_a_reload() -> None:
    lsock, s = listener(tcp_defer_accept=True)
    with lsock:
        configure_listener(lsock, dataclasses.replace(s, tcp_defer_accept=False))
        assert lsock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0


def test_unix_listeners_are_left_alone(tmp_path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(tmp_path / "s"))
        sock.listen(1)
        configure_listener(sock, dataclasses.replace(Settings(), tcp_keepidle=5))
        # SO_KEEPALIVE is accepted on unix sockets but means nothing there: not set.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


def test_refused_options_are_logged_not_raised(caplog) -> None:
    sock = socket.socket()
    sock.close()  # every setsockopt now fails: none may raise
    with caplog.at_level("WARNING", logger="ecluse"):
        configure_listener(sock, dataclasses.replace(Settings(), tcp_keepidle=9))
    assert "TCP_KEEPIDLE=9" in caplog.text and "SO_KEEPALIVE=1" in caplog.text
    assert "TCP_DEFER_ACCEPT" in caplog.text
