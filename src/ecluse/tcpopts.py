"""TCP socket options from the settings, on the listening sockets and on server connections.

PgBouncer's settings, names, units and defaults: listen_backlog, so_reuseport,
tcp_defer_accept, tcp_keepalive, tcp_keepidle, tcp_keepintvl, tcp_keepcnt,
tcp_user_timeout and tcp_socket_buffer (0 for the last five: the operating
system's default).

Rules:
1. Client sockets get their options from the listening socket: Linux copies
   SO_KEEPALIVE, the TCP_KEEP* times, TCP_USER_TIMEOUT and the buffer sizes to
   every socket it accepts there, so a client costs no system call of its own.
   A reload sets them on the listening sockets again: clients accepted from
   then on get the new values (tcp_socket_buffer, which a listener cannot be
   given back its default, takes a restart).
2. A server connection gets them once, when it is opened. A reload applies to
   connections opened after it.
3. With tcp_keepalive off, SO_KEEPALIVE is cleared and the TCP_KEEP* times are
   left alone, as PgBouncer does.
4. tcp_defer_accept holds a connection in the kernel until its first bytes (a
   StartupMessage or SSLRequest) arrive, for at most DEFER_ACCEPT_SECONDS: a
   client that connects and sends nothing (a port probe) never reaches ecluse.
5. Options the platform lacks are skipped: only Linux has them all.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from ecluse.config.model import Settings

log = logging.getLogger("ecluse")

# PgBouncer's value for an enabled tcp_defer_accept (the kernel rounds it up to its
# SYN-ACK retransmission schedule).
DEFER_ACCEPT_SECONDS = 45


@dataclass(frozen=True, slots=True)
class TcpOptions:
    """The per-connection TCP options: keepalive, the user timeout and the buffers."""

    keepalive: bool = True
    keepidle: int = 0  # seconds; 0: the OS default
    keepintvl: int = 0  # seconds; 0: the OS default
    keepcnt: int = 0  # probes; 0: the OS default
    user_timeout: int = 0  # milliseconds; 0: the OS default
    socket_buffer: int = 0  # bytes for SO_SNDBUF and SO_RCVBUF; 0: the OS default

    @classmethod
    def from_settings(cls, s: Settings) -> TcpOptions:
        return cls(s.tcp_keepalive, s.tcp_keepidle, s.tcp_keepintvl, s.tcp_keepcnt,
                   s.tcp_user_timeout, s.tcp_socket_buffer)

    def socket_options(self) -> list[tuple[int, str, int]]:
        """The (level, option name in the socket module, value) triples to set
        (rules 3 and 5)."""
        sol, tcp = socket.SOL_SOCKET, socket.IPPROTO_TCP
        opts = [(sol, "SO_KEEPALIVE", int(self.keepalive))]
        if self.keepalive:
            opts += [(tcp, "TCP_KEEPIDLE", self.keepidle), (tcp, "TCP_KEEPINTVL", self.keepintvl),
                     (tcp, "TCP_KEEPCNT", self.keepcnt)]
        opts += [(tcp, "TCP_USER_TIMEOUT", self.user_timeout),
                 (sol, "SO_SNDBUF", self.socket_buffer), (sol, "SO_RCVBUF", self.socket_buffer)]
        # 0 leaves the OS default, except for SO_KEEPALIVE, which is cleared.
        return [(level, name, value) for level, name, value in opts
                if (value or name == "SO_KEEPALIVE") and hasattr(socket, name)]


def is_tcp(sock: socket.socket) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6)


def apply(sock, options: TcpOptions) -> None:
    """Set ``options`` on a TCP socket (a socket.socket or the socket-like object a
    transport's get_extra_info("socket") returns)."""
    for level, name, value in options.socket_options():
        _set(sock, level, name, value)


def configure_listener(sock: socket.socket, settings: Settings) -> None:
    """Set the connection options clients inherit (rule 1) and tcp_defer_accept on a
    listening socket; unix sockets are left as they are."""
    if not is_tcp(sock):
        return
    apply(sock, TcpOptions.from_settings(settings))
    if hasattr(socket, "TCP_DEFER_ACCEPT"):
        _set(sock, socket.IPPROTO_TCP, "TCP_DEFER_ACCEPT",
             DEFER_ACCEPT_SECONDS if settings.tcp_defer_accept else 0)


def _set(sock, level: int, name: str, value: int) -> None:
    # The values are within the kernel's bounds (config/schema.py); a refusal (a
    # kernel without the option, a socket closed meanwhile) costs the option, not
    # the connection or the reload.
    try:
        sock.setsockopt(level, getattr(socket, name), value)
    except OSError as exc:
        log.warning("could not set TCP option %s=%d: %s", name, value, exc.strerror or exc)
