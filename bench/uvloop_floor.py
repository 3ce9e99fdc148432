"""The floor under ecluse's CPU figures: what uvloop and a Python Protocol cost with
no pooler logic at all.

A diagnostic, not a comparison: a uvloop server that fakes a PostgreSQL login
(answers SSLRequest with N, any StartupMessage with a fixed welcome) and answers
every Query with a fixed one-row reply, run under pgbench with a one-SELECT
script, plain (10 clients) and with -C (a connection per transaction). No
PostgreSQL is involved. It prints the server's CPU microseconds per transaction
(utime+stime from /proc), user and system apart: the part of ecluse's own
figure (bench/run.py) above these is ecluse's Python.

    .venv/bin/python bench/uvloop_floor.py [--seconds 8] [--clients 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time


def _message(msg_type: bytes, body: bytes) -> bytes:
    return msg_type + struct.pack("!I", len(body) + 4) + body


def _status(name: str, value: str) -> bytes:
    return _message(b"S", name.encode() + b"\0" + value.encode() + b"\0")


_WELCOME = _message(b"R", struct.pack("!I", 0)) + b"".join(_status(k, v) for k, v in (
    ("server_version", "15.0"), ("server_encoding", "UTF8"), ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"), ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"), ("TimeZone", "UTC"),
    ("application_name", "pgbench"), ("is_superuser", "on"),
    ("session_authorization", "postgres"), ("IntervalStyle", "postgres"))) + \
    _message(b"K", struct.pack("!II", 1234, 5678)) + _message(b"Z", b"I")
_REPLY = (_message(b"T", struct.pack("!H", 1) + b"abalance\0" +
                   struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0)) +
          _message(b"D", struct.pack("!HI", 1, 1) + b"1") +
          _message(b"C", b"SELECT 1\0") + _message(b"Z", b"I"))
_SSL_REQUEST = struct.pack("!II", 8, 80877103)
_SCRIPT = "\\set aid random(1, 100000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"


class _FakeServer(asyncio.Protocol):
    """One client: the login faked, every later read answered with _REPLY."""

    __slots__ = ("logging_in", "transport")

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.logging_in = True

    def data_received(self, data: bytes) -> None:
        if self.logging_in:
            if data == _SSL_REQUEST:
                self.transport.write(b"N")
                return
            self.logging_in = False
            self.transport.write(_WELCOME)
        elif data[0] == ord("X"):
            self.transport.close()
        else:
            self.transport.write(_REPLY)


def serve(port: int) -> None:
    import uvloop

    async def main() -> None:
        await asyncio.get_running_loop().create_server(_FakeServer, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(main())


def _cpu_seconds(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    port = _free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
            script.write(_SCRIPT)
            script.flush()
            print(f"{'run':<22} {'tps':>9} {'cpu us/tx':>10} {'user':>7} {'system':>7}")
            for label, extra in (("pgbench (plain)", []), ("pgbench -C (churn)", ["-C"])):
                user0, sys0 = _cpu_seconds(server.pid)
                out = subprocess.run(
                    ["pgbench", "-n", *extra, "-f", script.name, "-c", str(args.clients),
                     "-j", "2", "-T", str(args.seconds), "-h", "127.0.0.1", "-p", str(port),
                     "-U", "postgres", "postgres"],
                    capture_output=True, text=True, check=True)
                user1, sys1 = _cpu_seconds(server.pid)
                done = int(re.search(r"actually processed: (\d+)", out.stdout).group(1))
                tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))
                user, system = (user1 - user0) / done * 1e6, (sys1 - sys0) / done * 1e6
                print(f"{label:<22} {tps:>9,.0f} {user + system:>10.1f} {user:>7.1f} "
                      f"{system:>7.1f}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
