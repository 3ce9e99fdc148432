"""A rolling restart under idle clients: how long it takes, and whether every client survives.

A throwaway PostgreSQL cluster and ecluse with ``--workers`` workers
(transaction mode, trust). ``--clients`` raw sockets log in and stay idle;
then SIGUSR2 rolls the workers over (supervisor.py): the new generation is
exec'd, and each old worker hands its idle clients over to its successor
(frontend/handover.py). The tool times the roll-over from the signal to the
last old worker's exit (read in ecluse's log), counts the clients handed
over and closed, and then sends one simple query on every client socket: a
client survived if it gets its row and ReadyForQuery.

    .venv/bin/python bench/rollover.py [--clients 10000] [--workers 2]

A measurement, not a test: the integration tests (tests/integration/
test_rollover.py) check the behaviour; this shows it at a scale they do not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

from ecluse.devcluster import PgCluster, ensure_postgres_installed, find_free_port
from ecluse.protocol.startup import encode_startup_message

_CONFIG = """[databases]
postgres = host=127.0.0.1 port={pg_port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
pool_mode = transaction
workers = {workers}
default_pool_size = 10
max_client_conn = {max_clients}
log_connections = 0
log_disconnections = 0
"""
_QUERY = b"Q" + struct.pack("!i", 13) + b"select 1\0"


async def _read_until_ready(reader: asyncio.StreamReader) -> bytes:
    seen = b""
    while True:
        head = await reader.readexactly(5)
        await reader.readexactly(struct.unpack("!i", head[1:])[0] - 4)
        seen += head[:1]
        if head[:1] == b"Z":
            return seen


async def _log_in(port: int, count: int) -> list[tuple[asyncio.StreamReader,
                                                         asyncio.StreamWriter]]:
    clients = []
    gate = asyncio.Semaphore(200)

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(encode_startup_message({"user": "postgres", "database": "postgres"}))
            await _read_until_ready(reader)
            clients.append((reader, writer))

    await asyncio.gather(*(one() for _ in range(count)))
    return clients


async def _query_all(clients) -> int:
    async def one(reader, writer) -> bool:
        writer.write(_QUERY)
        return b"D" in await asyncio.wait_for(_read_until_ready(reader), 30)

    results = await asyncio.gather(*(one(r, w) for r, w in clients), return_exceptions=True)
    return sum(result is True for result in results)


async def _run(args: argparse.Namespace, workdir: str) -> None:
    cluster = PgCluster(os.path.join(workdir, "pg"))
    cluster.init()
    cluster.start()
    proc = None
    try:
        port = find_free_port()
        config = os.path.join(workdir, "ecluse.ini")
        with open(config, "w") as f:
            f.write(_CONFIG.format(pg_port=cluster.port, port=port, workers=args.workers,
                                   max_clients=args.clients + 1000))
        log_path = os.path.join(workdir, "ecluse.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "ecluse", config], stdout=log,
                                    stderr=subprocess.STDOUT)
        await asyncio.sleep(2)
        clients = await _log_in(port, args.clients)
        print(f"{len(clients)} idle clients logged in through {args.workers} workers")
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGUSR2)
        while _read(log_path).count("drained and exited") < args.workers:
            if time.monotonic() - started > 120:
                raise SystemExit("the old workers did not exit within 120 s")
            await asyncio.sleep(0.01)
        took = time.monotonic() - started
        text = _read(log_path)
        handed = sum(int(n) for n in re.findall(r"drained: (\d+) clients handed over", text))
        closed = text.count("terminating connection due to administrator command")
        alive = await _query_all(clients)
        print(f"roll-over: {took:.2f} s from SIGUSR2 to the last old worker's exit; "
              f"{handed} clients handed over, {closed} closed")
        print(f"after it: {alive} of {len(clients)} clients answered a query")
        for _reader, writer in clients:
            writer.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        cluster.stop()


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.clients + 200 > hard:
        raise SystemExit(f"--clients {args.clients} needs more descriptors than the "
                         f"hard limit {hard} allows this process")
    ensure_postgres_installed()
    workdir = tempfile.mkdtemp(prefix="ecluse-rollover-")
    try:
        asyncio.run(_run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
