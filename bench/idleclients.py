"""Hold many idle, logged-in clients open against a pooler, to measure its memory.

Run as a script, one process opens ``--count`` TCP connections to the pooler,
sends each a StartupMessage (trust auth: no password exchange), reads until
ReadyForQuery, then keeps the socket and never sends another byte. When the
ramp is over it prints one JSON line on stdout (how many logged in, and why the
others did not) and holds every connection until its stdin closes or it gets
SIGTERM.

``hold_idle_clients()`` is what run.py calls: it splits the count over as many
such processes as the open-files limit needs (each raises its RLIMIT_NOFILE to
the hard limit, but an unprivileged hard limit is often far below 100,000) and
gives each connection a source address among 127.0.0.2, 127.0.0.3, ...: one
source address and one destination have only ~28,000 ephemeral ports between
them (net.ipv4.ip_local_port_range), so 100,000 clients need several.

Rules:
1. Standard library only, no ecluse imports: the client must not share code
   (or bugs) with the pooler it measures.
2. A connection that fails is counted with its reason, never retried; after
   ``max_failures`` the ramp stops, since a full pooler only fails more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

PROTOCOL_3_0 = 196608
# Linux's IP_BIND_ADDRESS_NO_PORT (24; not in Python 3.11's socket module): bind the
# source address now, choose the port at connect() from the full 4-tuple.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
# Connections per source address: under the ~28,000 ports of the default range.
PER_SOURCE = 20_000
FIRST_SOURCE = ipaddress.IPv4Address("127.0.0.2")
# Logins in flight at once: enough to ramp 100,000 in well under a minute without
# overflowing the pooler's listen backlog (somaxconn, often 4096).
CONCURRENCY = 256
FD_MARGIN = 64  # descriptors a client process keeps for itself (stdio, epoll, ...)


def encode_startup(user: str, dbname: str) -> bytes:
    """Return a protocol 3.0 StartupMessage for ``user`` and ``dbname``."""
    body = struct.pack("!I", PROTOCOL_3_0)
    for key, value in (("user", user), ("database", dbname),
                       ("application_name", "ecluse-bench-idle")):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def login_outcome(buf: bytes | bytearray) -> tuple[str, str | None]:
    """Scan what a server sent after our StartupMessage.

    Returns ("ok", None) once a ReadyForQuery has arrived, ("error", message)
    for an ErrorResponse (its M field) or an authentication request other than
    AuthenticationOk (trust was expected), ("more", None) while incomplete.
    """
    pos = 0
    while len(buf) - pos >= 5:
        kind = buf[pos:pos + 1]
        (length,) = struct.unpack_from("!I", buf, pos + 1)
        if length < 4:
            return "error", f"bad message length {length}"
        end = pos + 1 + length
        if len(buf) < end:
            break
        body = bytes(buf[pos + 5:end])
        if kind == b"Z":
            return "ok", None
        if kind == b"E":
            return "error", _error_message(body)
        if kind == b"R" and body[:4] != b"\0\0\0\0":
            (code,) = struct.unpack_from("!I", body)
            return "error", f"server asked for authentication (code {code}); trust expected"
        pos = end
    return "more", None


def _error_message(body: bytes) -> str:
    """Return the M (message) field of an ErrorResponse body, or the whole body."""
    for part in body.split(b"\0"):
        if part[:1] == b"M":
            return part[1:].decode("utf-8", "replace")
    return body.decode("utf-8", "replace") or "ErrorResponse"


def source_addresses(first_index: int, count: int) -> list[str]:
    """Return the source addresses for ``count`` connections, PER_SOURCE each.

    ``first_index`` numbers addresses from FIRST_SOURCE, so that several processes
    never share one.
    """
    n = max(1, math.ceil(count / PER_SOURCE))
    return [str(FIRST_SOURCE + first_index + i) for i in range(n)]


def split_count(count: int, per_process: int) -> list[int]:
    """Split ``count`` connections into per-process shares of at most ``per_process``."""
    if count <= 0:
        return []
    n = math.ceil(count / per_process)
    base, extra = divmod(count, n)
    return [base + (i < extra) for i in range(n)]


def raise_nofile(wanted: int) -> int:
    """Raise our soft RLIMIT_NOFILE towards ``wanted`` (within the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the client process ---------------------------------------------------------------------

@dataclass
class Ramp:
    """What one client process achieved."""

    asked: int
    sockets: list[socket.socket] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    stopped_early: bool = False

    def report(self, seconds: float, nofile: int) -> dict:
        return {"asked": self.asked, "reached": len(self.sockets),
                "failed": sum(self.errors.values()), "errors": dict(self.errors.most_common(5)),
                "stopped_early": self.stopped_early, "seconds": round(seconds, 2),
                "nofile": nofile}


async def _open_one(host: str, port: int, source: str, startup: bytes,
                    timeout: float) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, startup)
            buf = bytearray()
            while True:
                data = await loop.sock_recv(sock, 4096)
                if not data:
                    raise ConnectionError("closed by the pooler during login")
                buf += data
                outcome, message = login_outcome(buf)
                if outcome == "ok":
                    return sock
                if outcome == "error":
                    raise ConnectionError(f"refused: {message}")
    except BaseException:
        sock.close()
        raise


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "login timed out"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}: {os.strerror(exc.errno)}"
    return str(exc) or type(exc).__name__


async def ramp_up(host: str, port: int, count: int, sources: list[str], user: str,
                  dbname: str, timeout: float, max_failures: int) -> Ramp:
    """Open ``count`` logged-in connections, spread evenly over ``sources``."""
    ramp = Ramp(count)
    startup = encode_startup(user, dbname)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            if ramp.stopped_early:
                return
            try:
                sock = await _open_one(host, port, sources[i % len(sources)], startup,
                                       timeout)
            except (OSError, TimeoutError) as exc:
                ramp.errors[_reason(exc)] += 1
                if sum(ramp.errors.values()) >= max_failures:
                    ramp.stopped_early = True
            else:
                ramp.sockets.append(sock)

    # Tasks are created in chunks so that 100,000 pending coroutines never sit in memory.
    chunk = CONCURRENCY * 8
    for start in range(0, count, chunk):
        if ramp.stopped_early:
            break
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + chunk))))
    return ramp


async def _hold_until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)


async def _client_main(args: argparse.Namespace) -> None:
    nofile = raise_nofile(args.count + FD_MARGIN)
    started = time.monotonic()
    ramp = await ramp_up(args.host, args.port, args.count, args.sources.split(","),
                         args.user, args.dbname, args.timeout, args.max_failures)
    print(json.dumps(ramp.report(time.monotonic() - started, nofile)), flush=True)
    try:
        await _hold_until_stdin_closes()
    finally:
        for sock in ramp.sockets:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Hold idle logged-in clients open on a pooler.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--sources", default=str(FIRST_SOURCE),
                   help="comma-separated source addresses (127.0.0.x)")
    p.add_argument("--user", default="postgres")
    p.add_argument("--dbname", default="postgres")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds per login")
    p.add_argument("--max-failures", type=int, default=100)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # the kernel closes the sockets
    asyncio.run(_client_main(args))
    return 0


# -- the side run.py uses -------------------------------------------------------------------

@dataclass
class IdleHold:
    """Client processes holding connections; ``close()`` ends them."""

    procs: list[subprocess.Popen[str]]
    reports: list[dict]

    @property
    def reached(self) -> int:
        return sum(r.get("reached", 0) for r in self.reports)

    def errors(self) -> dict[str, int]:
        total: Counter = Counter()
        for r in self.reports:
            total.update(r.get("errors", {}))
        return dict(total.most_common(5))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # type: ignore[union-attr]
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def hold_idle_clients(host: str, port: int, count: int, user: str, dbname: str,
                      timeout: float = 15.0, max_failures: int = 100) -> IdleHold:
    """Start client processes that together log ``count`` idle clients in; wait for the ramp.

    Each process gets at most its open-files hard limit less a margin. Returns once
    every process has reported (or died: its report then says so). The caller must
    ``close()`` the hold.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    per_process = (count if hard == resource.RLIM_INFINITY
                   else max(1, min(count, hard - FD_MARGIN)))
    procs, next_source = [], 0
    for share in split_count(count, per_process):
        sources = source_addresses(next_source, share)
        next_source += len(sources)
        procs.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--host", host, "--port", str(port),
             "--count", str(share), "--sources", ",".join(sources), "--user", user,
             "--dbname", dbname, "--timeout", str(timeout),
             "--max-failures", str(max_failures)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True))
    reports = []
    for proc in procs:
        line = proc.stdout.readline() if proc.stdout else ""  # blocks until its ramp is over
        try:
            reports.append(json.loads(line))
        except ValueError:
            err = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
            reports.append({"reached": 0, "errors": {
                f"client process failed: {(err or line).strip()[-300:]}": 1}})
    return IdleHold(procs, reports)


if __name__ == "__main__":
    sys.exit(main())
