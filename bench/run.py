"""Benchmark ecluse against PgBouncer and a direct connection, in one interleaved run.

Starts a throwaway PostgreSQL cluster, loads pgbench's tables, starts each pooler
once with the same PgBouncer-format config, then runs ``pgbench -S`` for every
(target, clients, protocol), protocol being pgbench's -M simple, extended or
prepared (skipped, and reported "unsupported", where a target cannot do it),
each plain and, for the --tls-protocols, over TLS (PGSSLMODE=require towards a
cluster with ssl = on and a second instance of each pooler that requires TLS),
repeating the whole grid --repeat times with the
targets taken round-robin inside each repetition, so that drift on the machine
(thermal, other load) is shared out between them. Medians go to stdout and to
bench/results/ as JSON, a PNG plot and a markdown table. See bench/README.md.

Rules:
1. No timing assertions: this measures, it never fails on a number.
2. Every process and temp directory made here is gone when we exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import report
from procstat import tree_cpu_seconds
from targets import (
    EcluseTarget,
    PgBouncerTarget,
    PoolerTarget,
    Target,
    TlsFiles,
    first_line,
    make_tls_files,
)
from workload import clean_env, find_pgbench, pgbench_command, run_pgbench

import ecluse
from ecluse.devcluster import PgCluster, ensure_postgres_installed

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
TARGETS = ("direct", "pgbouncer", "ecluse")
PROTOCOLS = ("simple", "extended", "prepared")
DBNAME = "bench"
USER = "postgres"
QUICK_DURATION = 3
DEFAULT_DURATION = 10
DEFAULT_REPEAT = 3
DEFAULT_CLIENTS = [1, 10, 100, 500]
# --quick: one pass over fewer client counts, about 2 minutes for the 3 targets x 3 protocols.
QUICK_REPEAT = 1
QUICK_CLIENTS = [1, 10, 100]
# --quick measures TLS with one protocol only (the first asked for, simple by default).
QUICK_TLS_PROTOCOLS = 1


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
                        f"{','.join(map(str, DEFAULT_CLIENTS))}, "
                        f"{','.join(map(str, QUICK_CLIENTS))} with --quick)")
    p.add_argument("--protocols", type=_choices(PROTOCOLS), default=list(PROTOCOLS),
                   help=f"pgbench -M modes (default {','.join(PROTOCOLS)})")
    p.add_argument("--targets", type=_choices(TARGETS), default=list(TARGETS),
                   help="what to benchmark (default direct,pgbouncer,ecluse)")
    p.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure every target with TLS between pgbench and it "
                        "(default on)")
    p.add_argument("--tls-protocols", type=_choices(PROTOCOLS),
                   help="the -M modes measured with TLS too (default all of --protocols; "
                        "with --quick only the first)")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_DURATION} s runs, {QUICK_REPEAT} repetition, clients "
                        f"{','.join(map(str, QUICK_CLIENTS))}, TLS with one protocol and a "
                        "shorter warm-up "
                        "(each can still be set explicitly)")
    p.add_argument("--pool-size", type=int, default=20,
                   help="default_pool_size of both poolers (default 20)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    p.add_argument("--results-dir", default=str(BENCH_DIR / "results"),
                   help="where the JSON, PNG and markdown go (default bench/results)")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = QUICK_DURATION if args.quick else DEFAULT_DURATION
    if args.repeat is None:
        args.repeat = QUICK_REPEAT if args.quick else DEFAULT_REPEAT
    if args.clients is None:
        args.clients = list(QUICK_CLIENTS if args.quick else DEFAULT_CLIENTS)
    if not args.tls:
        args.tls_protocols = []
    elif args.tls_protocols is None:
        ordered = [m for m in PROTOCOLS if m in args.protocols]
        args.tls_protocols = ordered[:QUICK_TLS_PROTOCOLS] if args.quick else ordered
    elif unknown := [m for m in args.tls_protocols if m not in args.protocols]:
        p.error(f"--tls-protocols {','.join(unknown)} not among --protocols")
    if args.duration < 1 or args.repeat < 1 or args.pool_size < 1 or args.scale < 1:
        p.error("--duration, --repeat, --pool-size and --scale must be positive")
    return args


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _raise_fd_limit() -> None:
    """Let us and our children open as many sockets as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Bench:
    """One benchmark run: owns the temp directory, the cluster and the targets."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="ecluse-bench-")
        os.chmod(self.tmp, 0o711)  # the postgres user must traverse it when we are root
        self.logdir = os.path.join(self.tmp, "pgbench-logs")
        os.makedirs(self.logdir)
        self.cluster: PgCluster | None = None
        self.tls: TlsFiles | None = None
        self.targets: list[Target] = []  # plain and TLS instances, in TARGETS order
        self.skipped: dict[str, str] = {}
        self.unsupported: dict[tuple[str, str], str] = {}  # (target, protocol) -> why
        self.reported_failures: set[tuple[str, str, bool]] = set()
        self.pgbench = ""
        self.runs: list[dict] = []
        self.loadavg_start = list(os.getloadavg())
        # Read now, not at the end: the checkout may get new commits during a long run.
        self.git_head = first_line(["git", "-C", str(REPO_DIR), "rev-parse", "--short",
                                    "HEAD"])

    # -- set-up and tear-down ----------------------------------------------------------------

    def check_targets(self) -> list[str]:
        """Return the requested targets that can run; record why the others are skipped."""
        wanted = []
        for name in self.args.targets:
            if name == "pgbouncer" and PgBouncerTarget.find() is None:
                self.skipped[name] = ("pgbouncer is not installed "
                                      "(Debian: apt-get install -y pgbouncer)")
            elif name == "ecluse" and (why := EcluseTarget.check()) is not None:
                self.skipped[name] = f"`python -m ecluse --help` fails: {why}"
            else:
                wanted.append(name)
        wanted.sort(key=TARGETS.index)  # tables and plots always list targets the same way
        for name, why in self.skipped.items():
            say(f"skipping {name}: {why}")
        return wanted

    def start_cluster(self) -> None:
        bindir = ensure_postgres_installed()
        self.pgbench = find_pgbench(bindir)
        max_clients = max(self.args.clients)
        self.cluster = PgCluster(os.path.join(self.tmp, "pgdata"))
        settings = {
            "max_connections": str(max(700, max_clients + 100)),
            "shared_buffers": "256MB",
        }
        if self.args.tls_protocols:
            self.tls = make_tls_files(os.path.join(self.tmp, "tls"))
            say(f"TLS with a {self.tls.description}")
            # Plain rows still connect with sslmode=disable: TLS is offered, not imposed.
            settings.update(ssl="on", ssl_cert_file=self.tls.cert_file,
                            ssl_key_file=self.tls.key_file)
        self.cluster.init(settings=settings)
        say(f"starting PostgreSQL on {self.cluster.host}:{self.cluster.port}")
        self.cluster.start()
        self.cluster.psql(f"CREATE DATABASE {DBNAME}")
        say(f"pgbench -i -s {self.args.scale}")
        subprocess.run(
            [self.pgbench, "-i", "-q", "-s", str(self.args.scale), "-h", self.cluster.host,
             "-p", str(self.cluster.port), "-U", USER, DBNAME],
            check=True, capture_output=True, env=clean_env(), timeout=1800)

    def start_targets(self, names: list[str]) -> None:
        assert self.cluster is not None
        host, port = self.cluster.host, self.cluster.port
        psql = shutil.which("psql") or os.path.join(self.cluster.bindir, "psql")
        variants = [None, self.tls] if self.tls is not None else [None]
        for name in names:
            for tls in variants:
                workdir = os.path.join(self.tmp, name + ("-tls" if tls else ""))
                target: Target
                if name == "direct":
                    target = Target(host, port, DBNAME, tls)
                elif name == "pgbouncer":
                    target = PgBouncerTarget(
                        workdir, host, port, DBNAME, self.args.pool_size, psql, tls,
                        executable=PgBouncerTarget.find() or "pgbouncer")
                else:
                    target = EcluseTarget(workdir, host, port, DBNAME, self.args.pool_size,
                                          psql, tls)
                try:
                    target.start()
                except RuntimeError as exc:
                    target.stop()
                    self.skipped[target.label] = f"did not start: {str(exc).splitlines()[0]}"
                    say(f"skipping {target.label}: {exc}")
                    continue
                if isinstance(target, PoolerTarget):
                    say(f"{target.label} listening on {target.host}:{target.port} "
                        f"(pid {target.pid})")
                self.targets.append(target)
                for protocol in self.args.protocols:
                    if (why := target.unsupported(protocol)) is not None:
                        if (name, protocol) not in self.unsupported:
                            say(f"not running {name} with -M {protocol}: {why}")
                        self.unsupported[name, protocol] = why

    def cleanup(self) -> None:
        """Stop the poolers, then PostgreSQL, then remove the temp directory."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        for target in reversed(self.targets):
            try:
                target.stop()
            except Exception as exc:
                say(f"stopping {target.label}: {exc}")
        if self.cluster is not None:
            try:
                self.cluster.stop()
            except Exception as exc:
                say(f"stopping PostgreSQL: {exc}")
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- measuring ---------------------------------------------------------------------------

    def postmaster_pid(self) -> int | None:
        assert self.cluster is not None
        try:
            with open(os.path.join(self.cluster.datadir, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def warm_up(self) -> None:
        """Open the poolers' server connections and warm the caches before measuring."""
        seconds = 1 if self.args.quick else 2
        for target in self.targets:
            cmd = pgbench_command(self.pgbench, target.host, target.port, DBNAME, USER,
                                  10, "simple", seconds, None)
            result = run_pgbench(cmd, timeout=seconds + 60, log_prefix=None,
                                 sslmode=target.sslmode)
            if result.error:
                say(f"warm-up of {target.label}: {result.error}")

    def schedule(self) -> list[tuple[int, Target, int, str]]:
        """Return the run order: per repetition the whole grid, targets innermost.

        The target order rotates from one repetition to the next, so no target always
        runs right after the same neighbour. A TLS instance takes part only for the
        --tls-protocols.
        """
        order = []
        for rep in range(self.args.repeat):
            k = rep % len(self.targets)
            rotated = self.targets[k:] + self.targets[:k]
            for clients in self.args.clients:
                for protocol in self.args.protocols:
                    order += [(rep, target, clients, protocol) for target in rotated
                              if (target.name, protocol) not in self.unsupported
                              and (target.tls is None
                                   or protocol in self.args.tls_protocols)]
        return order

    def measure(self, rep: int, target: Target, clients: int, protocol: str) -> dict:
        """Run pgbench once against ``target`` and return the raw figures."""
        a = self.args
        run: dict = {"target": target.name, "protocol": protocol,
                     "tls": target.tls is not None, "clients": clients,
                     "rep": rep + 1, "duration_s": a.duration}
        if not target.is_alive():
            run["error"] = f"{target.label} is not running"
            return run
        prefix = os.path.join(self.logdir, f"{target.label}-{protocol}-{clients}-{rep}")
        cmd = pgbench_command(self.pgbench, target.host, target.port, DBNAME, USER,
                              clients, protocol, a.duration, prefix)
        pg_pid = self.postmaster_pid()
        cpu0 = target.cpu_seconds()
        pg0 = tree_cpu_seconds(pg_pid) if pg_pid else None
        started = time.monotonic()
        result = run_pgbench(cmd, timeout=a.duration + 120 + clients, log_prefix=prefix,
                             sslmode=target.sslmode)
        run["wall_s"] = round(time.monotonic() - started, 3)
        cpu1 = target.cpu_seconds()
        pg1 = tree_cpu_seconds(pg_pid) if pg_pid else None
        run.update(tps=result.tps, transactions=result.transactions, failed=result.failed,
                   p50_ms=result.p50_ms, p99_ms=result.p99_ms, mean_ms=result.mean_ms,
                   latency_samples=result.latency_samples, error=result.error)
        kilo_tx = (result.transactions or 0) / 1000
        run["cpu_s"] = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
        run["cpu_s_per_1k_tx"] = (run["cpu_s"] / kilo_tx
                                  if run["cpu_s"] is not None and kilo_tx else None)
        run["postgres_cpu_s"] = pg1 - pg0 if pg0 is not None and pg1 is not None else None
        run["postgres_cpu_s_per_1k_tx"] = (run["postgres_cpu_s"] / kilo_tx
                                           if run["postgres_cpu_s"] is not None and kilo_tx
                                           else None)
        if result.error:
            run["pgbench_output"] = result.output
            if isinstance(target, PoolerTarget):
                run["pooler_log_tail"] = target.log_tail(30)
        return run

    def report_failure(self, run: dict) -> None:
        """Print pgbench's output and the pooler's log the first time a combination fails."""
        key = (run["target"], run["protocol"], run["tls"])
        if key in self.reported_failures:
            return
        self.reported_failures.add(key)
        tls = " over TLS" if run["tls"] else ""
        say(f"{run['target']} -M {run['protocol']}{tls} failed; pgbench said:\n"
            + (run.get("pgbench_output") or "(nothing)"))
        if run.get("pooler_log_tail"):
            say(run["pooler_log_tail"])

    def run_all(self) -> None:
        order = self.schedule()
        eta = len(order) * (self.args.duration + 1)
        say(f"{len(order)} runs of {self.args.duration} s (about {eta // 60} min {eta % 60} s)")
        for n, (rep, target, clients, protocol) in enumerate(order, 1):
            run = self.measure(rep, target, clients, protocol)
            self.runs.append(run)
            if run.get("tps") is not None:
                cpu = run["cpu_s_per_1k_tx"]
                summary = (f"{run['tps']:,.0f} tps, p50 {run['p50_ms'] or 0:.3f} ms, "
                           f"p99 {run['p99_ms'] or 0:.3f} ms, cpu/1k tx "
                           + ("n/a" if cpu is None else f"{cpu:.4f} s"))
            else:
                summary = "no result"
            if run.get("error"):
                summary += f" [{run['error']}]"
            say(f"[{n:>3}/{len(order)}] rep {rep + 1} {target.label:<13} {protocol:<8} "
                f"c={clients:<4} {summary}")
            if run.get("error"):
                self.report_failure(run)
            time.sleep(0.5)  # let exiting backends and sockets settle

    # -- describing the run ------------------------------------------------------------------

    def machine_info(self) -> dict:
        assert self.cluster is not None
        pgbouncer = next((t for t in self.targets if isinstance(t, PgBouncerTarget)), None)
        pgb_exe = PgBouncerTarget.find()
        return {
            "nproc": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "cpu_model": _cpu_model(),
            "mem_total_gb": _mem_total_gb(),
            # 1/5/15-minute load averages before the first run and after the last: other
            # work on the machine shows up here (the benchmark itself raises them too).
            "loadavg_start": self.loadavg_start,
            "loadavg_end": list(os.getloadavg()),
            "kernel": platform.release(),
            "python_version": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "uvloop_version": _dist_version("uvloop"),
            "postgres_version": self.cluster.psql("SHOW server_version"),
            "pgbench_version": first_line([self.pgbench, "--version"]),
            "pgbouncer_version": (pgbouncer.version() if pgbouncer
                                  else first_line([pgb_exe, "--version"]) if pgb_exe else None),
            "ecluse_version": first_line([sys.executable, "-m", "ecluse", "--version"]),
            "ecluse_git": self.git_head,  # of this checkout, at the start of the run
            # The package actually run (PYTHONPATH may point at another checkout).
            "ecluse_module": os.path.dirname(ecluse.__file__),
        }

    def document(self) -> dict:
        a = self.args
        names = list(dict.fromkeys(t.name for t in self.targets))
        started = {(t.name, t.tls is not None) for t in self.targets}
        order = [(t, p, tls, c) for p in a.protocols for c in a.clients for t in names
                 for tls in (False, True) if (t, tls) in started
                 and (not tls or p in a.tls_protocols)]
        median = report.medians(self.runs, order, self.unsupported)
        return {
            "date": datetime.date.today().isoformat(),
            "finished_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": self.machine_info(),
            "settings": {
                "duration_s": a.duration, "repeat": a.repeat, "clients": a.clients,
                "protocols": a.protocols, "targets": names, "pool_size": a.pool_size,
                "tls_protocols": a.tls_protocols,
                "tls": (None if self.tls is None else
                        f"{self.tls.description}; pgbench PGSSLMODE=require on TLS rows, "
                        "disable on plain rows; PostgreSQL ssl = on; each pooler a second "
                        "instance with client_tls_sslmode = require; poolers to "
                        "PostgreSQL always plain (server_tls_sslmode = disable)"),
                "scale": a.scale, "quick": a.quick, "workload": "pgbench -S (select-only)",
                "pgbench_threads": "min(clients, 2)",
                "order": "per repetition: clients, then protocol, then targets "
                         "round-robin (rotated each repetition)",
            },
            "skipped_targets": self.skipped,
            "unsupported": [{"target": t, "protocol": p, "reason": why}
                            for (t, p), why in self.unsupported.items()],
            "median": median,
            "prepared_vs_extended": report.prepared_gain(median),
            "tls_cost": report.tls_cost(median),
            "runs": self.runs,
        }


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _mem_total_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A shell without job control may start us with SIGINT ignored; we want Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    _raise_fd_limit()
    bench = Bench(args)
    try:
        names = bench.check_targets()
        if not names:
            say("no target can run")
            return 1
        bench.start_cluster()
        bench.start_targets(names)
        if not bench.targets:
            say("no target started")
            return 1
        bench.warm_up()
        bench.run_all()
        doc = bench.document()
    except KeyboardInterrupt:
        say("interrupted; cleaning up (no results written)")
        return 130
    finally:
        bench.cleanup()
    print(report.text_table(doc["median"]))
    if doc["tls_cost"]:
        print()
        print(report.tls_text_table(doc["median"]))
    for line in [*report.gain_lines(doc["prepared_vs_extended"]),
                 *report.tls_lines(doc["tls_cost"])]:
        print(line)
    for path in report.write_all(args.results_dir, doc):
        say(f"wrote {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
