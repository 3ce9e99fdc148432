"""PgBouncer's socket settings on a running ecluse: keepalive on client and server sockets
(read back from the kernel's /proc/net/tcp), listen_backlog, tcp_defer_accept,
so_reuseport and unix_socket_group."""

from __future__ import annotations

import contextlib
import grp
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass

import psycopg
import pytest

from integration.test_admin_console import ADMIN_SETTINGS, admin_conn, wait_for
from integration.test_reload import rewrite

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/net/tcp; TCP_DEFER_ACCEPT is Linux's")

_SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
_ESTABLISHED = 1
_KEEPALIVE_TIMER = 2  # /proc/net/tcp "tr" column
_USER_HZ = 100  # the unit of its "tm->when" column


@dataclass(frozen=True)
class TcpSocket:
    local_port: int
    remote_port: int
    state: int
    timer: int  # 0 none, 1 retransmit, 2 keepalive, ...
    expires_s: float  # until that timer fires
    inode: int


def tcp_sockets() -> list[TcpSocket]:
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                timer, when = fields[5].split(":")
                found.append(TcpSocket(int(fields[1].rsplit(":", 1)[1], 16),
                                       int(fields[2].rsplit(":", 1)[1], 16),
                                       int(fields[3], 16), int(timer, 16),
                                       int(when, 16) / _USER_HZ, int(fields[9])))
    return found


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def ecluse_side(ec, client_port: int) -> TcpSocket | None:
    """ecluse's socket for the client connection whose local port is ``client_port``."""
    mine = socket_inodes(ec.proc.pid)
    for s in tcp_sockets():
        if s.inode in mine and s.local_port == ec.port and s.remote_port == client_port:
            return s
    return None


def server_sides(ec, pg) -> list[TcpSocket]:
    """ecluse's established connections to PostgreSQL."""
    mine = socket_inodes(ec.proc.pid)
    return [s for s in tcp_sockets()
            if s.inode in mine and s.remote_port == pg.port and s.state == _ESTABLISHED]


def client_port(conn: psycopg.Connection) -> int:
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        return sock.getsockname()[1]


def settled(find) -> TcpSocket:
    """The socket ``find()`` returns once no retransmission or delayed ACK timer runs on it
    (right after a reply one may still be pending)."""
    assert wait_for(lambda: (s := find()) is not None and s.timer != 1)
    return find()


def keepalive_due(find, after: float, most: float) -> bool:
    """Whether the socket ``find()`` returns shows its keepalive timer, due in more
    than ``after`` and at most ``most`` seconds, before long. Read until it does: in
    between, the kernel may show another timer or none for a moment (a
    retransmission, a timer being re-armed)."""
    return wait_for(lambda: (s := find()) is not None and s.timer == _KEEPALIVE_TIMER
                    and after < s.expires_s <= most)


def test_keepalive_times_reach_client_and_server_sockets_and_follow_reload(ecluse_factory, pg):
    ec = ecluse_factory({**ADMIN_SETTINGS, "tcp_keepidle": 7, "tcp_keepintvl": 3,
                         "tcp_keepcnt": 2})
    with psycopg.connect(ec.dsn(), autocommit=True) as client:
        client.execute("select 1")
        port = client_port(client)
        assert keepalive_due(lambda: ecluse_side(ec, port), 0, 7)
        assert wait_for(lambda: all(s.timer != 1 for s in server_sides(ec, pg)))
        servers = server_sides(ec, pg)
        assert servers
        assert all(s.timer == _KEEPALIVE_TIMER and 0 < s.expires_s <= 7 for s in servers)
        # A reload reaches the listening socket: the next client gets the new time.
        rewrite(ec, (r"^tcp_keepidle = 7$", "tcp_keepidle = 40"))
        with admin_conn(ec) as console:
            console.execute("RELOAD", prepare=False)
        with psycopg.connect(ec.dsn(), autocommit=True) as later:
            later.execute("select 1")
            port = client_port(later)
            assert keepalive_due(lambda: ecluse_side(ec, port), 7, 40)


def test_keepalive_off_leaves_both_sides_without_the_timer(ecluse_factory, pg):
    ec = ecluse_factory({"tcp_keepalive": 0, "tcp_keepidle": 7})
    with psycopg.connect(ec.dsn(), autocommit=True) as client:
        client.execute("select 1")
        port = client_port(client)
        assert settled(lambda: ecluse_side(ec, port)).timer == 0
        assert wait_for(lambda: all(s.timer != 1 for s in server_sides(ec, pg)))
        servers = server_sides(ec, pg)
        assert servers and all(s.timer == 0 for s in servers)


def connected(sock: socket.socket) -> bool:
    """True once a non-blocking connect has completed."""
    _, writable, _ = select.select([], [sock], [], 0)
    return bool(writable) and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def count_connected(ec, attempts: int) -> int:
    """Start ``attempts`` connects to a stopped ecluse; how many the kernel completed."""
    socks = []
    try:
        for _ in range(attempts):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((ec.host, ec.port))
            socks.append(sock)
        time.sleep(0.5)  # a SYN the full queue dropped is retried after 1 s, not before
        return sum(connected(s) for s in socks)
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("backlog", [2, 128])
def test_listen_backlog_bounds_the_connections_the_kernel_queues(ecluse_factory, backlog):
    ec = ecluse_factory({"listen_backlog": backlog, "tcp_defer_accept": 0})
    # Served once: the start-up probe is out of the accept queue (it is FIFO).
    with psycopg.connect(ec.dsn(), autocommit=True) as client:
        client.execute("select 1")
    ec.signal(signal.SIGSTOP)  # nothing accepts: the kernel's queue is all there is
    try:
        done = count_connected(ec, 8)
    finally:
        ec.signal(signal.SIGCONT)
    # Linux queues backlog + 1 connections.
    assert done == min(8, backlog + 1)
    with psycopg.connect(ec.dsn(), autocommit=True) as client:
        assert client.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("defer", [True, False])
def test_defer_accept_keeps_silent_connections_from_ecluse(ecluse_factory, defer):
    ec = ecluse_factory({"tcp_defer_accept": int(defer)})
    with psycopg.connect(ec.dsn(), autocommit=True) as client:  # the probe is behind us
        client.execute("select 1")
    with socket.create_connection((ec.host, ec.port)) as silent:
        port = silent.getsockname()[1]
        if defer:
            # The handshake is done but ecluse never saw the connection.
            time.sleep(0.5)
            assert ecluse_side(ec, port) is None
        else:
            assert wait_for(lambda: ecluse_side(ec, port) is not None)
        silent.sendall(_SSL_REQUEST)
        assert silent.recv(1) == b"N"  # accepted and answered once it spoke
        assert ecluse_side(ec, port) is not None


def test_so_reuseport_lets_two_ecluses_share_a_port(ecluse_factory):
    first = ecluse_factory({"so_reuseport": 1})
    second = ecluse_factory({"so_reuseport": 1, "listen_port": first.port}, start=False)
    second.port = first.port
    second.start()  # its probe may be answered by the first: wait for its own listener
    assert wait_for(lambda: "listening on" in second.log(), timeout=15)
    clients = [psycopg.connect(first.dsn(), autocommit=True) for _ in range(20)]
    try:
        ports = [client_port(c) for c in clients]
        served = [sum(ecluse_side(ec, p) is not None for p in ports) for ec in (first, second)]
    finally:
        for c in clients:
            c.close()
    # The kernel spreads the connections over both (all 20 on one: a 2**-19 chance).
    assert sum(served) == 20 and min(served) > 0
    # Without the setting a second ecluse cannot bind the port at all.
    third = ecluse_factory({"listen_port": first.port}, start=False)
    third.port = first.port
    with contextlib.suppress(RuntimeError):  # "exited at startup", unless the first answered
        third.start()
    assert wait_for(lambda: third.proc.poll() is not None, timeout=15)
    assert third.proc.returncode == 1 and "cannot listen" in third.log()


def other_group() -> grp.struct_group | None:
    """A group this process may give a file to, other than its own primary group."""
    for group in grp.getgrall():
        if group.gr_gid != os.getgid() and (os.geteuid() == 0 or group.gr_gid in os.getgroups()):
            return group
    return None


def test_unix_socket_group_owns_the_socket(ecluse_factory, tmp_path):
    group = other_group()
    if group is None:
        pytest.skip("no second group this user may hand a file to")
    sockdir = tmp_path / "sock"
    sockdir.mkdir()
    ec = ecluse_factory({"unix_socket_dir": str(sockdir), "unix_socket_mode": "0660",
                         "unix_socket_group": group.gr_name})
    path = sockdir / f".s.PGSQL.{ec.port}"
    info = path.stat()
    assert (info.st_gid, info.st_mode & 0o777) == (group.gr_gid, 0o660)
    with psycopg.connect(f"host={sockdir} port={ec.port} user=postgres dbname=ecluse_test",
                         autocommit=True) as client:
        assert client.execute("select 1").fetchone() == (1,)


def test_an_unknown_unix_socket_group_stops_startup(ecluse_factory, tmp_path):
    ec = ecluse_factory({"unix_socket_dir": str(tmp_path),
                         "unix_socket_group": "no-such-group-ecluse"}, start=False)
    with contextlib.suppress(RuntimeError):  # its TCP socket may answer the probe first
        ec.start()
    assert wait_for(lambda: ec.proc.poll() is not None, timeout=15)
    assert ec.proc.returncode == 1
    assert "cannot listen: unix_socket_group: no group 'no-such-group-ecluse'" in ec.log()
