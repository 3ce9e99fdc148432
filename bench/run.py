"""Benchmark ecluse against PgBouncer and a direct connection, in one interleaved run.

Starts a throwaway PostgreSQL cluster, loads pgbench's tables, starts each pooler
once with the same PgBouncer-format config (PgBouncer; ecluse with 1 worker and
with one per core), then runs ``pgbench -S`` for every (target, clients,
protocol), protocol being pgbench's -M simple, extended or prepared (skipped,
and reported "unsupported", where a target cannot do it) or ``churn`` (-M
simple -C, at the --churn-clients only), each plain and, for the
--tls-protocols, over TLS (PGSSLMODE=require towards a cluster with ssl = on
and a second instance of each pooler that requires TLS), repeating the whole
grid --repeat times with the targets taken round-robin inside each repetition,
so that drift on the machine (thermal, other load) is shared out between them.
Then, pooler by pooler, it opens --idle-clients idle logged-in clients from
separate processes (idleclients.py) and reads the pooler's memory. Medians,
the idle table and the issue's goals ("met"/"not met") go to stdout and to
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

import goals
import report
from idleclients import hold_idle_clients
from plan import (
    FD_HEADROOM,
    IDLE_SETTLE_S,
    estimate_seconds,
    grid_cells,
    idle_workers_needed,
    join_ints,
    parse_args,
    run_duration,
)
from procstat import descendants, open_files_limit, tree_cpu_seconds, tree_memory_kb
from targets import (
    DEFAULT_MAX_CLIENT_CONN,
    EcluseTarget,
    PgBouncerTarget,
    PoolerTarget,
    Target,
    TlsFiles,
    ecluse_name,
    first_line,
    make_tls_files,
)
from workload import CHURN, clean_env, find_pgbench, pgbench_command, run_pgbench

import ecluse
from ecluse.devcluster import PgCluster, ensure_postgres_installed

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DBNAME = "bench"
USER = "postgres"


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _raise_fd_limit(wanted: int) -> None:
    """Let us and our children (the poolers included) open ``wanted`` descriptors.

    Raising the hard limit needs CAP_SYS_RESOURCE (root, usually); without it we go
    as far as the hard limit, and the idle-clients rows say where that stopped them.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and wanted > hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return
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
        self.idle: list[dict] = []
        self.loadavg_start = list(os.getloadavg())
        # Read now, not at the end: the checkout may get new commits during a long run.
        self.git_head = first_line(["git", "-C", str(REPO_DIR), "rev-parse", "--short",
                                    "HEAD"])

    # -- set-up and tear-down ----------------------------------------------------------------

    def check_targets(self) -> list[str]:
        """Return the requested targets that can run; record why the others are skipped."""
        wanted = []
        ecluse_why = None
        if any(n.startswith("ecluse") for n in self.args.target_names):
            ecluse_why = EcluseTarget.check()
        # target_names is already in TARGETS order: tables and plots list targets alike.
        for name in self.args.target_names:
            if name == "pgbouncer" and PgBouncerTarget.find() is None:
                self.skipped[name] = ("pgbouncer is not installed "
                                      "(Debian: apt-get install -y pgbouncer)")
            elif name.startswith("ecluse") and ecluse_why is not None:
                self.skipped[name] = f"`python -m ecluse --help` fails: {ecluse_why}"
            else:
                wanted.append(name)
        for name, why in self.skipped.items():
            say(f"skipping {name}: {why}")
        return wanted

    def start_cluster(self) -> None:
        bindir = ensure_postgres_installed()
        self.pgbench = find_pgbench(bindir)
        max_clients = max(self.args.clients + self.args.churn_clients, default=1)
        self.cluster = PgCluster(os.path.join(self.tmp, "pgdata"))
        settings = {
            # The direct rows' clients, plus the servers every pooler instance keeps
            # (pool size 20 each, TLS instances included) while they run.
            "max_connections": str(max(700, max_clients + 400)),
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
        psql = self.psql()
        variants = [None, self.tls] if self.tls is not None else [None]
        conn = self.max_client_conn()
        for name in names:
            for tls in variants:
                workdir = os.path.join(self.tmp, name + ("-tls" if tls else ""))
                target: Target
                if name == "direct":
                    target = Target(host, port, DBNAME, tls)
                elif name == "pgbouncer":
                    target = PgBouncerTarget(
                        workdir, host, port, DBNAME, self.args.pool_size, psql, tls,
                        max_client_conn=conn,
                        executable=PgBouncerTarget.find() or "pgbouncer")
                else:
                    target = EcluseTarget(workdir, host, port, DBNAME, self.args.pool_size,
                                          psql, tls, max_client_conn=conn,
                                          workers=int(name.removeprefix("ecluse-w")))
                if not self.start(target):
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

    def psql(self) -> str:
        assert self.cluster is not None
        return shutil.which("psql") or os.path.join(self.cluster.bindir, "psql")

    def start(self, target: Target) -> bool:
        """Start ``target``; False, with the reason recorded among the skipped, if it fails."""
        try:
            target.start()
        except RuntimeError as exc:
            target.stop()
            self.skipped[target.label] = f"did not start: {str(exc).splitlines()[0]}"
            say(f"skipping {target.label}: {exc}")
            return False
        return True

    def max_client_conn(self) -> int:
        """Return a max_client_conn no client of this run can exceed (warm-up and probes too)."""
        a = self.args
        most = max(a.clients + a.churn_clients + a.idle_clients, default=0)
        return max(DEFAULT_MAX_CLIENT_CONN, most + 1000)

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
        cells = grid_cells(self.args.clients, self.args.protocols, self.args.churn_clients)
        for rep in range(self.args.repeat):
            k = rep % len(self.targets)
            rotated = self.targets[k:] + self.targets[:k]
            for clients, protocol in cells:
                order += [(rep, target, clients, protocol) for target in rotated
                          if (target.name, protocol) not in self.unsupported
                          and (target.tls is None or protocol in self.args.tls_protocols)]
        return order

    def measure(self, rep: int, target: Target, clients: int, protocol: str) -> dict:
        """Run pgbench once against ``target`` and return the raw figures."""
        a = self.args
        run: dict = {"target": target.name, "protocol": protocol,
                     "tls": target.tls is not None, "clients": clients,
                     "rep": rep + 1, "duration_s": run_duration(a.duration, clients)}
        if not target.is_alive():
            run["error"] = f"{target.label} is not running"
            return run
        prefix = os.path.join(self.logdir, f"{target.label}-{protocol}-{clients}-{rep}")
        cmd = pgbench_command(self.pgbench, target.host, target.port, DBNAME, USER,
                              clients, protocol, run["duration_s"], prefix)
        pg_pid = self.postmaster_pid()
        cpu0 = target.cpu_seconds()
        pg0 = tree_cpu_seconds(pg_pid) if pg_pid else None
        started = time.monotonic()
        result = run_pgbench(cmd, timeout=run["duration_s"] + 120 + clients,
                             log_prefix=prefix,
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
        poolers = sum(isinstance(t, PoolerTarget) and t.tls is None for t in self.targets)
        eta = round(estimate_seconds([(c, p) for _, _, c, p in order], self.args.duration,
                                     self.args.idle_clients, poolers))
        say(f"{len(order)} runs of {self.args.duration} s (+1 s per 1,000 clients), "
            "then idle clients "
            f"{join_ints(self.args.idle_clients) or 'none'} on {poolers} poolers: "
            f"about {eta // 60} min {eta % 60} s")
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

    def run_idle(self) -> None:
        """Make each plain pooler hold each --idle-clients count in turn; record memory.

        Runs after the pgbench grid, so that tearing down 100,000 sockets never
        overlaps a throughput run.
        """
        poolers = [t for t in self.targets if isinstance(t, PoolerTarget) and t.tls is None]
        for count in self.args.idle_clients:
            for target in poolers:
                self.record_idle(target, count)
        extra = self.start_idle_only_target()
        if extra is not None:
            try:
                for count in self.args.idle_clients:
                    self.record_idle(extra, count)
            finally:
                extra.stop()

    def start_idle_only_target(self) -> EcluseTarget | None:
        """Start ecluse with --idle-workers workers for the idle phase alone, or None.

        One process holds at most the hard RLIMIT_NOFILE's worth of clients, which
        only root with CAP_SYS_RESOURCE can raise: with the default --idle-workers,
        this target has just enough workers for the largest count under that limit,
        and is started only when the ecluse targets of the grid have fewer.
        """
        a = self.args
        if not a.idle_clients or not any(n.startswith("ecluse") for n in a.target_names) \
                or any(n.startswith("ecluse") for n in self.skipped):
            return None
        workers = a.idle_workers
        if workers is None:
            workers = idle_workers_needed(max(a.idle_clients), _nofile_hard())
            if workers <= max(1, a.workers if "ecluse-wN" in a.targets else 1):
                return None
        name = ecluse_name(workers)
        if workers < 1 or name in a.target_names:
            return None
        assert self.cluster is not None
        target = EcluseTarget(os.path.join(self.tmp, name + "-idle"), self.cluster.host,
                              self.cluster.port, DBNAME, a.pool_size, self.psql(), None,
                              max_client_conn=self.max_client_conn(), workers=workers)
        if not self.start(target):
            return None
        say(f"{name} (idle clients only: {workers} workers under the hard descriptor "
            f"limit {_nofile_hard() or 'none'}) listening on {target.host}:{target.port}")
        return target

    def record_idle(self, target: PoolerTarget, count: int) -> None:
        row = self.hold_idle(target, count)
        self.idle.append(row)
        after = row.get("after") or {}
        say(f"idle {target.label:<10} asked {count:,}, held {row.get('reached', 0):,}"
            f", rss {after.get('rss_kb', 0) / 1024:,.1f} MB, pss "
            f"{(after.get('pss_kb') or 0) / 1024:,.1f} MB"
            + (f" ({row['why']})" if row.get("why") else ""))

    def hold_idle(self, target: PoolerTarget, count: int) -> dict:
        """Open ``count`` idle clients on ``target``, read its memory, close them again."""
        row: dict = {"target": target.name, "asked": count}
        pid = target.pid
        if pid is None or not target.is_alive():
            row["error"] = f"{target.label} is not running"
            return row
        before = tree_memory_kb(pid)
        started = time.monotonic()
        hold = hold_idle_clients(target.host, target.port, count, USER, DBNAME)
        try:
            row["ramp_s"] = round(time.monotonic() - started, 2)
            time.sleep(IDLE_SETTLE_S)
            row.update(before=before, after=tree_memory_kb(pid), reached=hold.reached,
                       errors=hold.errors(), client_processes=len(hold.procs),
                       pooler_alive=target.is_alive(),
                       pooler_nofile=[open_files_limit(p) for p in [pid, *descendants(pid)]])
        finally:
            hold.close()
        row["client_nofile_hard"] = _nofile_hard()
        if row["reached"] < count:
            row["why"] = idle_shortfall(row)
            row["pooler_log_tail"] = target.log_tail(10)
        time.sleep(IDLE_SETTLE_S)  # let the pooler close the sockets before the next count
        return row

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
            # Which build: the distribution's (PGO, LTO) or a plain source build
            # differ by 5-8% in ecluse's CPU per transaction (scripts/bootstrap.sh).
            "python_executable": os.path.realpath(sys.executable),
            "uvloop_version": _dist_version("uvloop"),
            "postgres_version": self.cluster.psql("SHOW server_version"),
            "pgbench_version": first_line([self.pgbench, "--version"]),
            "pgbouncer_version": (pgbouncer.version() if pgbouncer
                                  else first_line([pgb_exe, "--version"]) if pgb_exe else None),
            "ecluse_version": first_line([sys.executable, "-m", "ecluse", "--version"]),
            "ecluse_git": self.git_head,  # of this checkout, at the start of the run
            # The package actually run (PYTHONPATH may point at another checkout).
            "ecluse_module": os.path.dirname(ecluse.__file__),
            # Whether the ecluse processes ran the compiled byte scans (ecluse/accel.py).
            "ecluse_accelerators": first_line([
                sys.executable, "-c", "import ecluse.frontend.express, ecluse.server.connection;"
                "from ecluse import accel; print(accel.describe())"]),
        }

    def idle_only_names(self) -> list[str]:
        """The idle-only ecluse targets (start_idle_only_target) that hold rows."""
        grid = {t.name for t in self.targets}
        return list(dict.fromkeys(r["target"] for r in self.idle
                                  if r["target"].startswith("ecluse") and r["target"] not in grid))

    def document(self) -> dict:
        a = self.args
        names = list(dict.fromkeys(t.name for t in self.targets))
        started = {(t.name, t.tls is not None) for t in self.targets}
        order = [(t, p, tls, c) for p in a.protocols
                 for c in (a.churn_clients if p == CHURN else a.clients) for t in names
                 for tls in (False, True) if (t, tls) in started
                 and (not tls or p in a.tls_protocols)]
        median = report.medians(self.runs, order, self.unsupported)
        ecluse_1, ecluse_n = ecluse_name(1), ecluse_name(a.workers)
        return {
            "date": datetime.date.today().isoformat(),
            "finished_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": self.machine_info(),
            "settings": {
                "duration_s": a.duration, "repeat": a.repeat, "clients": a.clients,
                "protocols": a.protocols, "targets": names, "pool_size": a.pool_size,
                "churn_clients": a.churn_clients, "idle_clients": a.idle_clients,
                "ecluse_workers": a.workers, "max_client_conn": self.max_client_conn(),
                "churn": "pgbench -S -M simple -C: a new connection per transaction; "
                         "its tps includes connection time",
                "tls_protocols": a.tls_protocols,
                "tls": (None if self.tls is None else
                        f"{self.tls.description}; pgbench PGSSLMODE=require on TLS rows, "
                        "disable on plain rows; PostgreSQL ssl = on; each pooler a second "
                        "instance with client_tls_sslmode = require; poolers to "
                        "PostgreSQL always plain (server_tls_sslmode = disable)"),
                "scale": a.scale, "quick": a.quick, "workload": "pgbench -S (select-only)",
                "pgbench_threads": "min(clients, max(2, cores))",
                "order": "per repetition: clients, then protocol, then targets "
                         "round-robin (rotated each repetition)",
            },
            "skipped_targets": self.skipped,
            "unsupported": [{"target": t, "protocol": p, "reason": why}
                            for (t, p), why in self.unsupported.items()],
            "median": median,
            "prepared_vs_extended": report.prepared_gain(median),
            "tls_cost": report.tls_cost(median),
            "idle": self.idle,
            "goals": goals.all_goals(median, self.idle, ecluse_1, ecluse_n, a.churn_clients,
                                     idle_only=self.idle_only_names()),
            "runs": self.runs,
        }


def _nofile_hard() -> int | None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard


def idle_shortfall(row: dict) -> str:
    """Explain why fewer idle clients logged in than asked, from what hold_idle saw."""
    parts = []
    if row.get("errors"):
        parts.append("; ".join(f"{n:,} x {why}" for why, n in row["errors"].items()))
    if not row.get("pooler_alive", True):
        parts.append("the pooler died")
    limits = [n for n in row.get("pooler_nofile") or [] if n]
    if limits:
        procs = len(row["pooler_nofile"])
        parts.append(f"pooler open-files limit {min(limits):,}"
                     + (f" per process x {procs} processes" if procs > 1 else ""))
    if (hard := row.get("client_nofile_hard")) is not None and hard < row["asked"]:
        parts.append(f"hard RLIMIT_NOFILE {hard:,} here, which poolers inherit and only "
                     "root with CAP_SYS_RESOURCE can raise")
    return "; ".join(parts) or "unknown"


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
    # Each pooler holds every idle client plus its servers; pgbench its clients.
    _raise_fd_limit(max(args.idle_clients + args.clients + args.churn_clients, default=0)
                    + FD_HEADROOM)
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
        if args.protocols:
            bench.warm_up()
        bench.run_all()
        bench.run_idle()
        doc = bench.document()
    except KeyboardInterrupt:
        say("interrupted; cleaning up (no results written)")
        return 130
    finally:
        bench.cleanup()
    if doc["median"]:
        print(report.text_table(doc["median"]))
    if doc["tls_cost"]:
        print()
        print(report.tls_text_table(doc["median"]))
    for line in [*report.gain_lines(doc["prepared_vs_extended"]),
                 *report.tls_lines(doc["tls_cost"])]:
        print(line)
    if doc["idle"]:
        print()
        print(report.idle_text_table(doc["idle"]))
    print()
    print("Goals of issue 6:")
    for line in goals.goal_lines(doc["goals"]):
        print(line)
    for path in report.write_all(args.results_dir, doc):
        say(f"wrote {os.path.relpath(path)}")
    # Only a run that wrote the published results replaces the README's copy of them.
    if (Path(args.results_dir).resolve() == BENCH_DIR / "results"
            and args.protocols and args.readme):
        readme = REPO_DIR / "README.md"
        if report.update_readme(str(readme), doc, "bench/results/latest.png"):
            say(f"updated the latest results in {os.path.relpath(readme)}")
        else:
            say(f"{os.path.relpath(readme)} has no {report.README_START} marker; "
                "not updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
