"""Memory held per idle client: Python heap (tracemalloc) and RSS, and many idle clients.

Two modes:

- default (no PostgreSQL needed): ecluse's FrontendSession runs in this process on
  uvloop, behind a real TCP listener on 127.0.0.1, in transaction mode with trust
  auth. ``--clients`` raw sockets log in (StartupMessage, wait for ReadyForQuery) and
  stay idle. The pool's server parameters are filled in beforehand, so no server is
  ever needed. tracemalloc counts what the ecluse side allocated for them (the
  client sockets' own allocations, made in this file or socket.py, are left out),
  and the process RSS is read before and after. Prints bytes per idle client.
- ``--pg``: a throwaway PostgreSQL cluster and ecluse as a real process
  (``python -m ecluse``, one worker); ``--clients`` raw sockets log in from
  127.0.0.2 ... 127.0.0.x in turn (each source address has its own ~28,000
  ephemeral ports), stay idle ``--hold`` seconds while ecluse's CPU is sampled
  (it should not move: nothing per client wakes up while idle), then a query is
  run through ecluse. Prints ecluse's RSS per idle client and the CPU it used
  while they idled.

Run: ``.venv/bin/python bench/idle_memory.py`` or
``.venv/bin/python bench/idle_memory.py --pg --clients 20000``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc

from procstat import descendants

from ecluse.protocol.startup import encode_startup_message

_CONFIG = """
[databases]
{db} = host={host} port={port} dbname={db}
[pgbouncer]
listen_addr = {listen}
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {auth_file}
pool_mode = transaction
default_pool_size = 5
max_client_conn = 200000
log_connections = 0
log_disconnections = 0
server_tls_sslmode = disable
"""
_PARAMS = {"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC",
           "integer_datetimes": "on", "standard_conforming_strings": "on",
           "server_version": "15.0", "IntervalStyle": "postgres", "application_name": "",
           "server_encoding": "UTF8", "is_superuser": "on", "session_authorization": "postgres"}


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit (the hard one too when we may, as root,
    so that the ecluse we start inherits it); return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _default_soft_nofile() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes(pid: int) -> int:
    """RSS of ``pid`` and its descendants (the workers when there are several)."""
    return sum(rss_bytes(p) for p in [pid, *descendants(pid)])


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` and its living descendants."""
    ticks = 0
    for p in [pid, *descendants(pid)]:
        with open(f"/proc/{p}/stat", "rb") as f:
            data = f.read()
        rest = data[data.rindex(b")") + 2:].split()
        ticks += int(rest[11]) + int(rest[12])
    return ticks


def _read_until_ready(sock: socket.socket) -> None:
    """Read a login's replies up to ReadyForQuery; raise on an ErrorResponse."""
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during login")
        buf += chunk
        pos = 0
        while len(buf) - pos >= 5:
            msg_type = buf[pos]
            (length,) = struct.unpack_from("!I", buf, pos + 1)
            if len(buf) - pos < length + 1:
                break
            if msg_type == ord("E"):
                raise ConnectionError(buf[pos + 5:pos + 1 + length].decode(errors="replace"))
            if msg_type == ord("Z"):
                return
            pos += length + 1
        buf = buf[pos:]


# --- in-process mode ------------------------------------------------------------
async def _connect_clients(port: int, n: int, db: str) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    startup = encode_startup_message({"user": "postgres", "database": db})
    clients = []
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, startup)
        buf = b""
        while not buf.endswith(b"Z\x00\x00\x00\x05I"):
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise ConnectionError("closed during login")
            buf += chunk
        clients.append(sock)
    return clients


async def _in_process(n: int, args_top: int = 8) -> None:
    from ecluse.config import config_from_string
    from ecluse.frontend.context import ClientContext
    from ecluse.frontend.session import FrontendSession
    from ecluse.pool.registry import PoolRegistry

    tmp = tempfile.mkdtemp(prefix="ecluse-idle-")
    auth_file = os.path.join(tmp, "userlist.txt")
    with open(auth_file, "w") as f:
        f.write('"postgres" ""\n')
    config = config_from_string(_CONFIG.format(db="app", host="127.0.0.1", port=1,
                                               listen="127.0.0.1", listen_port=6432,
                                               auth_file=auth_file))  # not listened on
    ctx = ClientContext(config, PoolRegistry(config))
    pool = ctx.registry.get_pool(config.database("app"), "postgres")
    pool.default_params = dict(_PARAMS)  # what a first server would have told us
    loop = asyncio.get_running_loop()
    # functools.partial, not a lambda: the sessions' allocations must not be
    # attributed to this file, whose own (the client sockets') are left out below.
    server = await loop.create_server(functools.partial(FrontendSession, ctx), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    warm = await _connect_clients(port, 50, "app")  # first-use allocations out of the way
    gc.collect()
    rss0 = rss_bytes()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    clients = await _connect_clients(port, n, "app")
    await asyncio.sleep(0.2)
    gc.collect()
    after = tracemalloc.take_snapshot()
    rss1 = rss_bytes()
    here = [tracemalloc.Filter(False, __file__), tracemalloc.Filter(False, socket.__file__),
            tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = after.filter_traces(here).compare_to(before.filter_traces(here), "lineno")
    grown = sum(s.size_diff for s in stats)
    idle = sum(1 for s in ctx.clients if s.state.value == "idle")
    print(f"{idle} idle clients logged in (transaction mode), in-process, uvloop")
    print(f"Python heap per idle client (tracemalloc, ecluse side): {grown / n:,.0f} bytes")
    print(f"RSS per idle client (whole process, both socket ends): {(rss1 - rss0) / n:,.0f} bytes")
    one = next(iter(ctx.clients))
    print(f"  of which the FrontendSession object {sys.getsizeof(one)} bytes and uvloop's "
          f"transport object {sys.getsizeof(one.transport)} bytes (allocated together "
          "when the connection is accepted)")
    print("largest allocation sites per client:")
    for s in stats[:args_top]:
        frame = s.traceback[0]
        print(f"  {s.size_diff / n:8,.0f} B  {os.path.relpath(frame.filename)}:{frame.lineno}")
    for sock in clients + warm:
        sock.close()
    server.close()
    shutil.rmtree(tmp, ignore_errors=True)


# --- with PostgreSQL and ecluse as a process -------------------------------------------
def _connect_many(port: int, n: int, db: str, first_address: int = 2) -> list[socket.socket]:
    """Log n clients in, from 127.0.0.<first_address> and the next 49 addresses in turn."""
    startup = encode_startup_message({"user": "postgres", "database": db})
    clients = []
    for i in range(n):
        sock = socket.socket()
        sock.bind((f"127.0.0.{first_address + i % 50}", 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(startup)
        _read_until_ready(sock)
        clients.append(sock)
    return clients


_PER_HOLDER = 15000
_QUERY = b"SELECT 1;\0"


def _hold_clients(n: int, port: int, first_address: int) -> int:
    """Helper process: log n clients in, say "ready", query on one when told, exit."""
    try:
        clients = _connect_many(port, n, "postgres", first_address)
    except OSError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    print("ready", flush=True)
    sys.stdin.readline()
    sock = clients[-1]
    try:
        sock.sendall(b"Q" + struct.pack("!I", 4 + len(_QUERY)) + _QUERY)
        _read_until_ready(sock)
        print("ok", flush=True)
    except OSError as exc:
        print(f"error: {exc}", flush=True)
    return 0


def _with_postgres(n: int, hold: float, workers: int) -> int:
    from ecluse.devcluster import PgCluster, ensure_postgres_installed, find_free_port

    ensure_postgres_installed()
    tmp = tempfile.mkdtemp(prefix="ecluse-idle-")
    os.chmod(tmp, 0o755)
    cluster = PgCluster(os.path.join(tmp, "pgdata"))
    proc = None
    try:
        cluster.init()
        cluster.start()
        listen_port = find_free_port("127.0.0.1")
        auth_file = os.path.join(tmp, "userlist.txt")
        with open(auth_file, "w") as f:
            f.write('"postgres" ""\n')
        cfg = os.path.join(tmp, "ecluse.ini")
        with open(cfg, "w") as f:
            f.write(_CONFIG.format(db="postgres", host=cluster.host, port=cluster.port,
                                   listen="127.0.0.1", listen_port=listen_port,
                                   auth_file=auth_file) + f"workers = {workers}\n")
        log_path = os.path.join(tmp, "ecluse.log")
        with open(log_path, "wb") as log:
            # A soft limit of 1024, the usual default: ecluse must raise it itself.
            proc = subprocess.Popen([sys.executable, "-m", "ecluse", cfg], stdout=log,
                                    stderr=log, start_new_session=True,
                                    preexec_fn=_default_soft_nofile)
        deadline = time.monotonic() + 30
        while True:
            try:
                _connect_many(listen_port, 1, "postgres")[0].close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    with open(log_path, encoding="utf-8", errors="replace") as f:
                        print(f.read())
                    return 1
                time.sleep(0.2)
        time.sleep(0.5)
        rss0 = tree_rss_bytes(proc.pid)
        t0 = time.monotonic()
        # Client sockets in helper processes of at most _PER_HOLDER each: this process's
        # own descriptor limit need not fit them all.
        holders = []
        left, first = n, 2
        while left > 0:
            share = min(left, _PER_HOLDER)
            holders.append(subprocess.Popen(
                [sys.executable, __file__, "--holder", str(share), "--port", str(listen_port),
                 "--first-address", str(first)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True))
            left -= share
            first += 50
        for h in holders:
            line = h.stdout.readline().strip()
            if line != "ready":
                print(f"a client holder failed: {line or h.wait()}")
                return 1
        login_s = time.monotonic() - t0
        time.sleep(1.0)
        rss1 = tree_rss_bytes(proc.pid)
        ticks0 = cpu_ticks(proc.pid)
        time.sleep(hold)
        idle_cpu = (cpu_ticks(proc.pid) - ticks0) / os.sysconf("SC_CLK_TCK")
        # Each holder's last client runs a query through ecluse, in transaction mode.
        answers = []
        for h in holders:
            out, _ = h.communicate("query\n", timeout=60)
            answers.append(out.strip())
        alive = proc.poll() is None and all(a == "ok" for a in answers)
        with open(log_path, encoding="utf-8", errors="replace") as f:
            nofile = [line.strip() for line in f if "RLIMIT_NOFILE" in line]
        print(f"{n} idle clients logged in through ecluse ({workers} worker(s)) in "
              f"{login_s:.1f} s; ecluse alive and a query on each holder's last "
              f"client answered: {alive} ({', '.join(answers)})")
        print(f"ecluse RSS per idle client: {(rss1 - rss0) / n:,.0f} bytes "
              f"({rss0 / 1e6:.0f} MB before, {rss1 / 1e6:.0f} MB after)")
        print(f"ecluse CPU while {n} clients idled {hold:.0f} s: {idle_cpu:.2f} s")
        print("log: " + ("; ".join(nofile) or "(no RLIMIT_NOFILE line)"))
        return 0 if alive else 1
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=5000, help="idle clients (default 5000)")
    p.add_argument("--pg", action="store_true",
                   help="real PostgreSQL and ecluse as a process (see the module docstring)")
    p.add_argument("--hold", type=float, default=10.0,
                   help="with --pg: seconds the clients stay idle while CPU is sampled")
    p.add_argument("--top", type=int, default=8, help="allocation sites to list")
    p.add_argument("--workers", type=int, default=1, help="with --pg: ecluse's workers")
    p.add_argument("--holder", type=int, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--first-address", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.holder:
        raise_nofile(args.holder + 100)
        return _hold_clients(args.holder, args.port, args.first_address)
    wanted = args.clients + 1000 if args.pg else 2 * args.clients + 1000
    limit = raise_nofile(wanted)
    print(f"RLIMIT_NOFILE here: {limit} (hard)")
    if args.pg:
        return _with_postgres(args.clients, args.hold, args.workers)
    if limit < wanted:
        print(f"RLIMIT_NOFILE hard limit {limit} is too low for {args.clients} clients")
        return 1
    import uvloop

    uvloop.run(_in_process(args.clients, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
