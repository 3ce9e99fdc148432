"""What a benchmark run will do: its command line, its grid of runs, how long it takes.

Pure planning, kept apart from run.py, which starts and measures things: the
defaults here are chosen so that the full run (``make bench``) takes about 30
minutes on 2 cores, and ``--quick`` a few.

Rules:
1. Nothing here starts a process or touches the network.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from targets import ecluse_name
from workload import CHURN

BENCH_DIR = Path(__file__).resolve().parent
# "ecluse-wN" stands for ecluse with --workers processes (one per core by default); it is
# recorded under its real name, e.g. ecluse-w2, and dropped when that equals ecluse-w1.
TARGETS = ("direct", "pgbouncer", "ecluse-w1", "ecluse-wN")
PROTOCOLS = ("simple", "extended", "prepared", CHURN)
# Durations chosen so that the full run takes about 30 minutes on 2 cores (see the
# estimate printed at the start and bench/README.md).
QUICK_DURATION = 3
DEFAULT_DURATION = 5
DEFAULT_REPEAT = 3
DEFAULT_CLIENTS = [1, 10, 100, 500, 2000]
DEFAULT_CHURN_CLIENTS = [10, 100]
DEFAULT_IDLE_CLIENTS = [10_000, 100_000]
# TLS doubles every row it is measured for; -M simple alone shows what it costs.
DEFAULT_TLS_PROTOCOLS = ["simple"]
# --quick: one short pass to check that everything works, not to measure.
QUICK_REPEAT = 1
QUICK_CLIENTS = [10, 100]
QUICK_CHURN_CLIENTS = [10]
QUICK_IDLE_CLIENTS = [1000]
# Seconds between the end of an idle ramp and the memory reading, for late allocations.
IDLE_SETTLE_S = 2.0
# Our estimate of a run's cost beyond pgbench's -T: start, logins, log parsing, the pause.
RUN_OVERHEAD_S = 1.0
# Descriptors beyond the clients: server connections, logs, listening sockets, epoll.
FD_HEADROOM = 4096
# The share of its descriptor limit an idle-only ecluse worker is planned to fill: the
# kernel spreads connections over the SO_REUSEPORT sockets unevenly, by a few hundred.
IDLE_WORKER_FILL = 0.85


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("need one or more positive integers")
    return values


def _choices(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(
                f"choose from {','.join(allowed)} (got {text!r})")
        return list(dict.fromkeys(values))
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="pgbench -S against PostgreSQL directly, PgBouncer and ecluse.")
    p.add_argument("--duration", type=int, metavar="S",
                   help=f"seconds per pgbench run (default {DEFAULT_DURATION}, "
                        f"{QUICK_DURATION} with --quick)")
    p.add_argument("--repeat", type=int, metavar="R",
                   help=f"repetitions of the whole grid; medians are reported (default "
                        f"{DEFAULT_REPEAT}, {QUICK_REPEAT} with --quick)")
    p.add_argument("--clients", type=_int_list,
                   help="pgbench client counts (default "
                        f"{join_ints(DEFAULT_CLIENTS)}, {join_ints(QUICK_CLIENTS)} with --quick)")
    p.add_argument("--protocols", type=_choices(PROTOCOLS), default=list(PROTOCOLS),
                   help=f"pgbench -M modes, churn being -M simple -C (default "
                        f"{','.join(PROTOCOLS)})")
    p.add_argument("--churn-clients", type=_int_list,
                   help="client counts of the churn runs (default "
                        f"{join_ints(DEFAULT_CHURN_CLIENTS)}, {join_ints(QUICK_CHURN_CLIENTS)} "
                        "with --quick)")
    p.add_argument("--targets", type=_choices(TARGETS), default=list(TARGETS),
                   help=f"what to benchmark (default {','.join(TARGETS)})")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="ecluse's workers for the ecluse-wN target (default: the number "
                        "of cores)")
    p.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure every target with TLS between pgbench and it "
                        "(default on)")
    p.add_argument("--tls-protocols", type=_choices(PROTOCOLS),
                   help="the modes measured with TLS too (default "
                        f"{','.join(DEFAULT_TLS_PROTOCOLS)})")
    p.add_argument("--idle-clients", type=_int_list,
                   help="idle logged-in clients each pooler is made to hold, one count at "
                        f"a time (default {join_ints(DEFAULT_IDLE_CLIENTS)}, "
                        f"{join_ints(QUICK_IDLE_CLIENTS)} with --quick)")
    p.add_argument("--idle-workers", type=int, metavar="K",
                   help="also make ecluse with K workers hold the idle clients, after the "
                        "others (default: as many as the hard descriptor limit needs for "
                        "the largest count, when the ecluse targets have fewer; 0: never)")
    p.add_argument("--no-idle", action="store_true", help="skip the idle-clients phase")
    p.add_argument("--no-pgbench", action="store_true",
                   help="skip the pgbench grid (only the idle-clients phase)")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_DURATION} s runs, {QUICK_REPEAT} repetition, clients "
                        f"{join_ints(QUICK_CLIENTS)}, churn at {join_ints(QUICK_CHURN_CLIENTS)}, "
                        f"{join_ints(QUICK_IDLE_CLIENTS)} idle clients and a shorter warm-up "
                        "(each can still be set explicitly)")
    p.add_argument("--pool-size", type=int, default=20,
                   help="default_pool_size of both poolers (default 20)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    p.add_argument("--readme", action=argparse.BooleanOptionalAction, default=True,
                   help="copy the table and plot into README.md between its bench:latest "
                        "markers, when writing to bench/results (default on)")
    p.add_argument("--results-dir", default=str(BENCH_DIR / "results"),
                   help="where the JSON, PNG and markdown go (default bench/results)")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = QUICK_DURATION if args.quick else DEFAULT_DURATION
    if args.repeat is None:
        args.repeat = QUICK_REPEAT if args.quick else DEFAULT_REPEAT
    if args.clients is None:
        args.clients = list(QUICK_CLIENTS if args.quick else DEFAULT_CLIENTS)
    if args.churn_clients is None:
        args.churn_clients = list(QUICK_CHURN_CLIENTS if args.quick
                                  else DEFAULT_CHURN_CLIENTS)
    if CHURN not in args.protocols:
        args.churn_clients = []
    if args.no_idle:
        args.idle_clients = []
    elif args.idle_clients is None:
        args.idle_clients = list(QUICK_IDLE_CLIENTS if args.quick else DEFAULT_IDLE_CLIENTS)
    if args.no_pgbench:
        args.protocols, args.churn_clients = [], []
    if not args.tls:
        args.tls_protocols = []
    elif args.tls_protocols is None:
        args.tls_protocols = [m for m in DEFAULT_TLS_PROTOCOLS if m in args.protocols]
    elif unknown := [m for m in args.tls_protocols if m not in args.protocols]:
        p.error(f"--tls-protocols {','.join(unknown)} not among --protocols")
    if (args.duration < 1 or args.repeat < 1 or args.pool_size < 1 or args.scale < 1
            or args.workers < 1):
        p.error("--duration, --repeat, --pool-size, --scale and --workers must be positive")
    args.target_names = resolve_targets(args.targets, args.workers)
    return args


def idle_workers_needed(clients: int, nofile_hard: int | None) -> int:
    """Return how many ecluse workers hold ``clients`` idle clients under a hard
    RLIMIT_NOFILE of ``nofile_hard`` per process (None: unlimited, one worker)."""
    if nofile_hard is None or clients <= 0:
        return 1
    per_worker = max(1, int((nofile_hard - FD_HEADROOM // 4) * IDLE_WORKER_FILL))
    return -(-clients // per_worker)


def join_ints(values: list[int]) -> str:
    return ",".join(map(str, values))


def resolve_targets(chosen: list[str], workers: int) -> list[str]:
    """Return the target names in TARGETS order, ecluse-wN as ecluse-w<workers>.

    With one worker, ecluse-wN is ecluse-w1 and is measured once.
    """
    names = [ecluse_name(workers) if t == "ecluse-wN" else t
             for t in TARGETS if t in chosen]
    return list(dict.fromkeys(names))


def grid_cells(clients: list[int], protocols: list[str],
               churn_clients: list[int]) -> list[tuple[int, str]]:
    """Return the (clients, protocol) pairs of one repetition, for every target.

    Churn runs only at its own client counts (also when they are not among
    ``clients``), placed among the others by client count.
    """
    counts = sorted(set(clients) | (set(churn_clients) if CHURN in protocols else set()))
    cells = []
    for c in counts:
        for protocol in protocols:
            wanted = churn_clients if protocol == CHURN else clients
            if c in wanted:
                cells.append((c, protocol))
    return cells


def run_duration(duration: int, clients: int) -> int:
    """Return pgbench's -T for ``clients``: --duration, one second more per 1,000 clients.

    pgbench's clock starts before its clients have connected; 2,000 logins through a
    pooler on a loaded 2-core machine took 2.5 s, which would leave a short run with
    little measured (a 2 s run measured nothing).
    """
    return duration + clients // 1000


def estimate_seconds(order: list[tuple[int, str]], duration: int, idle: list[int],
                     poolers: int) -> float:
    """Return a rough duration of the run: pgbench runs, then the idle phase.

    Each run costs -T plus RUN_OVERHEAD_S plus its logins (about 1 s per 1,000
    clients: 2,000 direct backends take seconds to fork); the idle ramp about
    3,000 logins a second plus settling and closing.
    """
    runs = sum(run_duration(duration, clients) + RUN_OVERHEAD_S + clients / 1000
               for clients, _ in order)
    ramps = poolers * sum(count / 3000 + IDLE_SETTLE_S + 3 for count in idle)
    return runs + ramps
