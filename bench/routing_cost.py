"""What routing costs: pgbench -S through ecluse, plain, read/write split and sharded.

A diagnostic, not a comparison with other poolers: one ecluse process
(workers = 1) in front of one PostgreSQL, serving the same pgbench database
under three [databases] entries, so that only ecluse's routing differs:

- ``plain``: an ordinary entry;
- ``read_db``: the read/write split (routing/readwrite.py), whose read pool is
  the same server;
- ``shards``: two shard entries keyed on aid (routing/shards.py), both the
  same server.

Each is run with pgbench -S, simple and prepared protocol, interleaved, for
``--reps`` rounds; the table gives the median TPS and ecluse's CPU
microseconds per transaction (utime + stime from /proc, as bench/run.py).
The README's routing costs come from it.

    .venv/bin/python bench/routing_cost.py [--reps 3] [--duration 6] [--clients 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from procstat import descendants
from workload import clean_env, find_pgbench

from ecluse.devcluster import PgCluster, ensure_postgres_installed, find_free_port

ENTRIES = ("plain", "read_db", "shards")
MODES = ("simple", "prepared")


def config(host: str, port: int, listen_port: int) -> str:
    backend = f"host={host} port={port} dbname=bench"
    return f"""[databases]
plain = {backend}
read_db = {backend} read_db=replica
replica = {backend}
shards = shards=shard_0,shard_1 sharding_key=aid
shard_0 = {backend}
shard_1 = {backend}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
pool_mode = transaction
default_pool_size = 20
workers = 1
log_connections = 0
log_disconnections = 0
"""


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in (pid, *descendants(pid)):
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_pgbench(pgbench: str, port: int, entry: str, mode: str, clients: int,
                duration: int) -> tuple[float, int]:
    """TPS and transactions of one pgbench -S run against ``entry``."""
    result = subprocess.run(
        [pgbench, "-S", "-n", "-M", mode, "-c", str(clients), "-j", "2", "-T", str(duration),
         "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", entry],
        capture_output=True, text=True, env=clean_env("disable"), check=True)
    lines = result.stdout.splitlines()
    tps = float(next(line for line in lines if line.startswith("tps")).split()[2])
    done = int(next(line for line in lines if "actually processed" in line).split()[-1])
    return tps, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=int, default=6, help="seconds per pgbench run")
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    bindir = ensure_postgres_installed()
    pgbench = find_pgbench(bindir)
    work = tempfile.mkdtemp(prefix="ecluse-routing-")
    cluster = PgCluster(os.path.join(work, "pg"))
    cluster.init(settings={"max_connections": "200"})
    cluster.start()
    proc = None
    try:
        cluster.psql("CREATE DATABASE bench")
        subprocess.run([pgbench, "-i", "-q", "-s", "10", "-h", cluster.host, "-p",
                        str(cluster.port), "-U", "postgres", "bench"],
                       check=True, capture_output=True, env=clean_env())
        port = find_free_port()
        path = os.path.join(work, "ecluse.ini")
        with open(path, "w") as f:
            f.write(config(cluster.host, cluster.port, port))
        with open(os.path.join(work, "ecluse.log"), "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "ecluse", path], stdout=log,
                                    stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("ecluse did not start") from None
                time.sleep(0.1)
        runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.reps):
            for entry in ENTRIES:
                for mode in MODES:
                    before = cpu_seconds(proc.pid)
                    tps, done = run_pgbench(pgbench, port, entry, mode, args.clients,
                                            args.duration)
                    cpu_us = 1e6 * (cpu_seconds(proc.pid) - before) / max(done, 1)
                    runs.setdefault((entry, mode), []).append((tps, cpu_us))
        print(f"pgbench -S, {args.clients} clients, {args.reps} x {args.duration} s, "
              "ecluse workers = 1; medians (min-max of CPU)")
        print(f"{'entry':8} {'protocol':9} {'TPS':>8} {'CPU us/tx':>10} {'range':>14}")
        for (entry, mode), values in runs.items():
            cpu = [c for _t, c in values]
            print(f"{entry:8} {mode:9} {statistics.median(t for t, _c in values):8.0f} "
                  f"{statistics.median(cpu):10.1f} {min(cpu):6.1f}-{max(cpu):<6.1f}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        cluster.stop()


if __name__ == "__main__":
    main()
