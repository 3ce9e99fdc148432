"""worker.listen_sockets: the unix socket is ready (mode set) before any TCP socket
listens, and a TCP address that cannot be bound leaves no unix socket behind."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from ecluse.config import config_from_string
from ecluse.worker import listen_sockets


def _config(port: int, sockdir: str):
    return config_from_string(
        "[databases]\nd = host=127.0.0.1 port=5432\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"unix_socket_dir = {sockdir}\nunix_socket_mode = 0640\nauth_type = trust\n")


def test_unix_socket_has_its_mode_and_comes_last(tmp_path):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    socks = listen_sockets(_config(port, str(tmp_path)))
    try:
        assert [s.family for s in socks] == [socket.AF_INET, socket.AF_UNIX]
        path = tmp_path / f".s.PGSQL.{port}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        for s in socks:
            s.close()


def test_busy_tcp_port_leaves_no_unix_socket(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        with pytest.raises(OSError):
            listen_sockets(_config(port, str(tmp_path)))
        assert not os.path.exists(tmp_path / f".s.PGSQL.{port}")
    finally:
        busy.close()
