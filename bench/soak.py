"""Soak test: minutes of pgbench through ecluse, then checks that nothing broke or leaked.

Starts a throwaway PostgreSQL cluster, loads pgbench's tables (scale 10) and runs
``pgbench -M prepared -c 50`` through ecluse in three phases:

1. ``tpcb``: pgbench's default TPC-B-like script, transaction mode, default_pool_size 5;
2. ``select-only``: ``pgbench -S`` against the same ecluse;
3. ``tpcb-session``: the TPC-B script again against a second ecluse in session mode with
   default_pool_size 50 and one pgbench thread per client, for a third of the time
   (``--session-duration 0`` leaves it out).

A phase fails when pgbench exits non-zero or reports a failed or aborted transaction,
when ecluse has died or logged a Traceback, or when, checked straight against
PostgreSQL (never through ecluse), the balances disagree (sum of
pgbench_branches.bbalance, pgbench_tellers.tbalance, pgbench_accounts.abalance and
pgbench_history.delta), pgbench_history holds fewer rows than the TPC-B transactions
pgbench counted, or a backend stays ``idle in transaction``. Prints a table, writes
bench/results/soak-<date>.json and exits 1 on any failure. See bench/README.md.

Rules:
1. A failure is never hidden: each is named on stderr, in the JSON and in the exit status.
2. No timing assertions: TPS is reported, never judged.
3. Every process and temp directory made here is gone when we exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from report import write_json
from targets import EcluseTarget, first_line
from workload import PgbenchResult, clean_env, find_pgbench, pgbench_command, run_pgbench

import ecluse
from ecluse.devcluster import PgCluster, ensure_postgres_installed

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DBNAME = "soak"
USER = "postgres"
PROTOCOL = "prepared"
DEFAULT_DURATION = 180
DEFAULT_CLIENTS = 50
DEFAULT_POOL_SIZE = 5
DEFAULT_SCALE = 10
# pgbench threads in transaction mode; the pool is far smaller than the client count.
TX_THREADS = 2
# How long a backend may stay "idle in transaction" after pgbench has exited.
IDLE_IN_TX_GRACE_S = 10.0
_PROGRESS_RE = re.compile(r"^progress: [0-9.]+ s, ([0-9.]+) tps", re.M)
_TRACEBACK = "Traceback (most recent call last):"


@dataclass(frozen=True, slots=True)
class Phase:
    """One pgbench run: its script, the ecluse it goes through and how hard it pushes."""

    name: str
    mode: str  # ecluse pool_mode
    script: str  # "tpcb" (pgbench's default script) or "select" (-S)
    clients: int
    threads: int
    pool_size: int
    duration: int


class SoakEcluseTarget(EcluseTarget):
    """The bench's EcluseTarget with a chosen pool_mode (the bench always pools transactions)."""

    def __init__(self, *args, pool_mode: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.pool_mode = pool_mode

    def config_text(self) -> str:
        text = super().config_text()
        line = "pool_mode = transaction"
        if line not in text.splitlines():
            raise RuntimeError(f"bench/targets.py no longer writes {line!r}; update soak.py")
        return text.replace(line, f"pool_mode = {self.pool_mode}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Long pgbench -M prepared runs through ecluse, then consistency checks.")
    p.add_argument("--duration", type=int, default=DEFAULT_DURATION, metavar="S",
                   help=f"seconds of each transaction-mode phase (default {DEFAULT_DURATION})")
    p.add_argument("--session-duration", type=int, metavar="S",
                   help="seconds of the session-mode phase (default a third of --duration; "
                        "0 leaves it out)")
    p.add_argument("--clients", type=int, default=DEFAULT_CLIENTS,
                   help=f"pgbench clients (default {DEFAULT_CLIENTS})")
    p.add_argument("--pool-size", type=int, default=DEFAULT_POOL_SIZE,
                   help="default_pool_size in transaction mode (default "
                        f"{DEFAULT_POOL_SIZE}); session mode uses one per client")
    p.add_argument("--scale", type=int, default=DEFAULT_SCALE,
                   help=f"pgbench -i scale (default {DEFAULT_SCALE})")
    p.add_argument("--results-dir", default=str(BENCH_DIR / "results"),
                   help="where soak-<date>.json goes (default bench/results)")
    args = p.parse_args(argv)
    if args.session_duration is None:
        args.session_duration = max(10, args.duration // 3)
    if min(args.duration, args.clients, args.pool_size, args.scale) < 1:
        p.error("--duration, --clients, --pool-size and --scale must be positive")
    if args.session_duration < 0:
        p.error("--session-duration must be 0 or positive")
    return args


def plan(args: argparse.Namespace) -> list[Phase]:
    """Return the phases in run order, grouped by pool mode (one ecluse per mode)."""
    c = args.clients
    phases = [
        Phase("tpcb", "transaction", "tpcb", c, min(c, TX_THREADS), args.pool_size,
              args.duration),
        Phase("select-only", "transaction", "select", c, min(c, TX_THREADS), args.pool_size,
              args.duration),
    ]
    if args.session_duration:
        # In session mode a client keeps its server until it disconnects, and pgbench's
        # -M prepared prepares synchronously, blocking its whole thread: a client waiting
        # for a server would stall the thread-mates that hold one. Hence one thread per
        # client and a pool as large as the client count, so nobody ever waits.
        phases.append(Phase("tpcb-session", "session", "tpcb", c, c, c, args.session_duration))
    return phases


def phase_command(pgbench: str, target: EcluseTarget, phase: Phase) -> list[str]:
    """Return the pgbench command for ``phase``: the bench's command, adapted.

    The bench always runs -S with one thread per core; here the script and thread count
    follow the phase, and -P adds progress lines so that a stall shows in the results.
    """
    cmd = pgbench_command(pgbench, target.host, target.port, DBNAME, USER, phase.clients,
                          PROTOCOL, phase.duration, None)
    if phase.script == "tpcb":
        cmd.remove("-S")
    cmd[cmd.index("-j") + 1] = str(phase.threads)
    # run_pgbench keeps pgbench's last 30 stderr lines: at most ~25 progress lines fit.
    interval = max(10, -(-phase.duration // 25))
    return [*cmd[:-1], "-P", str(interval), cmd[-1]]


def say(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def read_tracebacks(log_path: str) -> list[str]:
    """Return every Traceback block in ``log_path`` (up to 40 lines each), oldest first."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    starts = [i for i, line in enumerate(lines) if _TRACEBACK in line]
    return ["\n".join(lines[max(0, i - 1):i + 40]) for i in starts]


def count_log_levels(log_path: str, levels: tuple[str, ...]) -> dict[str, int]:
    """Count lines of ``log_path`` carrying each of ``levels`` as a word (e.g. " ERROR")."""
    counts = dict.fromkeys(levels, 0)
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                for level in levels:
                    if f" {level}" in line:
                        counts[level] += 1
    except OSError:
        pass
    return counts


class Soak:
    """One soak run: owns the temp directory, the cluster and the ecluse of the moment."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="ecluse-soak-")
        os.chmod(self.tmp, 0o711)  # the postgres user must traverse it when we are root
        self.cluster: PgCluster | None = None
        self.target: SoakEcluseTarget | None = None
        self.pgbench = ""
        self.rows: list[dict] = []
        self.failures: list[str] = []
        self.ecluse_logs: dict[str, dict] = {}
        self.tpcb_transactions = 0
        self.final: dict = {}
        self.started_at = datetime.datetime.now().astimezone()

    def fail(self, message: str) -> None:
        self.failures.append(message)
        say(f"FAILED: {message}")

    # -- set-up and tear-down ----------------------------------------------------------------

    def start_cluster(self) -> None:
        bindir = ensure_postgres_installed()
        self.pgbench = find_pgbench(bindir)
        self.cluster = PgCluster(os.path.join(self.tmp, "pgdata"))
        self.cluster.init(settings={"max_connections": str(self.args.clients + 100),
                                    "shared_buffers": "256MB"})
        say(f"starting PostgreSQL on {self.cluster.host}:{self.cluster.port}")
        self.cluster.start()
        self.cluster.psql(f"CREATE DATABASE {DBNAME}")
        say(f"pgbench -i -s {self.args.scale}")
        init = subprocess.run(
            [self.pgbench, "-i", "-q", "-s", str(self.args.scale), "-h", self.cluster.host,
             "-p", str(self.cluster.port), "-U", USER, DBNAME],
            capture_output=True, text=True, env=clean_env(), timeout=1800)
        if init.returncode != 0:
            raise RuntimeError(f"pgbench -i failed (exit {init.returncode}):\n{init.stderr}")

    def cleanup(self) -> None:
        """Stop ecluse, then PostgreSQL, then remove the temp directory."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if self.target is not None:
            try:
                self.target.stop()
            except Exception as exc:
                say(f"stopping ecluse: {exc}")
        if self.cluster is not None:
            try:
                self.cluster.stop()
            except Exception as exc:
                say(f"stopping PostgreSQL: {exc}")
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- running -----------------------------------------------------------------------------

    def run_all(self) -> None:
        phases = plan(self.args)
        for mode in dict.fromkeys(p.mode for p in phases):
            self.run_mode(mode, [p for p in phases if p.mode == mode])
        self.final, problems = self.check_database(settle=False)
        for problem in problems:
            self.fail(f"after the last phase: {problem}")
        self.check_server_log()

    def run_mode(self, mode: str, phases: list[Phase]) -> None:
        """Start one ecluse in ``mode``, run its phases, stop it and read its log."""
        assert self.cluster is not None
        psql = shutil.which("psql") or os.path.join(self.cluster.bindir, "psql")
        target = SoakEcluseTarget(
            os.path.join(self.tmp, f"ecluse-{mode}"), self.cluster.host, self.cluster.port,
            DBNAME, phases[0].pool_size, psql, pool_mode=mode)
        self.target = target
        try:
            target.start()
        except RuntimeError as exc:
            self.fail(f"ecluse in {mode} mode did not start: {exc}")
            target.stop()
            self.target = None
            return
        say(f"ecluse ({mode} mode, default_pool_size {phases[0].pool_size}) listening on "
            f"{target.host}:{target.port} (pid {target.pid})")
        for phase in phases:
            self.rows.append(self.run_phase(target, phase))
            if not target.is_alive():
                break
        seen = len(read_tracebacks(target.log_path))
        target.stop()
        self.target = None
        tracebacks = read_tracebacks(target.log_path)
        if len(tracebacks) > seen:
            self.fail(f"ecluse ({mode} mode) logged a Traceback while shutting down:\n"
                      + tracebacks[seen])
        self.ecluse_logs[mode] = {
            "tracebacks": len(tracebacks),
            "lines_by_level": count_log_levels(target.log_path, ("WARNING", "ERROR",
                                                                 "CRITICAL")),
            "first_traceback": tracebacks[0] if tracebacks else None,
        }

    def run_phase(self, target: SoakEcluseTarget, phase: Phase) -> dict:
        """Run one phase's pgbench, then every check; return the phase's row."""
        cmd = phase_command(self.pgbench, target, phase)
        say(f"phase {phase.name} ({phase.mode} mode, {phase.duration} s): "
            f"pgbench {shlex.join(cmd[1:])}")
        row: dict = asdict(phase)
        row["command"] = shlex.join(["pgbench", *cmd[1:]])
        tracebacks_before = len(read_tracebacks(target.log_path))
        timeout = phase.duration + 120
        started = time.monotonic()
        try:
            result = run_pgbench(cmd, timeout=timeout, log_prefix=None)
        except subprocess.TimeoutExpired:
            result = PgbenchResult(error=f"pgbench still running after {timeout} s; killed")
        row["wall_s"] = round(time.monotonic() - started, 1)
        intervals = [float(v) for v in _PROGRESS_RE.findall(result.output)]
        row.update(tps=result.tps, transactions=result.transactions, failed=result.failed,
                   min_interval_tps=min(intervals) if intervals else None,
                   pgbench_error=result.error)
        problems = []
        if result.error:
            problems.append(f"pgbench: {result.error}")
        elif "aborted" in result.output:
            problems.append("pgbench reported aborted clients")
        if phase.script == "tpcb":
            self.tpcb_transactions += result.transactions or 0
        if not target.is_alive():
            code = target.proc.returncode if target.proc is not None else None
            problems.append(f"ecluse died (exit status {code})")
        new_tracebacks = read_tracebacks(target.log_path)[tracebacks_before:]
        if new_tracebacks:
            problems.append(f"ecluse logged {len(new_tracebacks)} Traceback(s); the first:\n"
                            + new_tracebacks[0])
        row["checks"], db_problems = self.check_database(settle=True)
        problems += db_problems
        row["problems"] = problems
        row["status"] = "FAILED" if problems else "ok"
        if problems:
            row["pgbench_output"] = result.output
            row["ecluse_log_tail"] = target.log_tail(40)
            for problem in problems:
                self.fail(f"phase {phase.name}: {problem}")
            say(f"pgbench output:\n{result.output or '(nothing)'}")
            say(row["ecluse_log_tail"])
        say(f"phase {phase.name}: {result.transactions} transactions, tps {result.tps}, "
            f"failed {result.failed}, {row['status']}")
        return row

    # -- checks straight against PostgreSQL --------------------------------------------------

    def check_database(self, settle: bool) -> tuple[dict, list[str]]:
        """Check balances and open transactions directly on PostgreSQL.

        With ``settle``, backends left ``idle in transaction`` get IDLE_IN_TX_GRACE_S to
        finish (pgbench has only just exited). Returns the figures and the problems found.
        """
        assert self.cluster is not None
        problems = []
        out = self.cluster.psql(
            "SELECT (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches),"
            " (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers),"
            " (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts),"
            " (SELECT coalesce(sum(delta), 0) FROM pgbench_history),"
            " (SELECT count(*) FROM pgbench_history)", dbname=DBNAME)
        names = ("branches", "tellers", "accounts", "history", "history_rows")
        balances = dict(zip(names, map(int, out.split("|")), strict=True))
        sums = {k: balances[k] for k in names[:4]}
        if len(set(sums.values())) != 1:
            problems.append(f"balances disagree: {sums}")
        if balances["history_rows"] < self.tpcb_transactions:
            problems.append(f"pgbench_history has {balances['history_rows']} rows but pgbench "
                            f"counted {self.tpcb_transactions} TPC-B transactions")
        backends = self.backends()
        deadline = time.monotonic() + (IDLE_IN_TX_GRACE_S if settle else 0)
        while backends["idle_in_transaction"] and time.monotonic() < deadline:
            time.sleep(0.5)
            backends = self.backends()
        if backends["idle_in_transaction"]:
            problems.append(f"{backends['idle_in_transaction']} backend(s) idle in "
                            f"transaction: {backends['idle_in_transaction_detail']}")
        return {"balances": balances,
                "tpcb_transactions_so_far": self.tpcb_transactions,
                "backends": backends}, problems

    def backends(self) -> dict:
        """Return the soak database's backends: total, idle in transaction, and which."""
        assert self.cluster is not None
        out = self.cluster.psql(
            "SELECT count(*), count(*) FILTER (WHERE state LIKE 'idle in transaction%'),"
            " coalesce(string_agg(pid || ' ' || state || ': ' || left(query, 80), '; ')"
            " FILTER (WHERE state LIKE 'idle in transaction%'), '')"
            f" FROM pg_stat_activity WHERE datname = '{DBNAME}'"
            " AND pid <> pg_backend_pid()")
        total, idle_tx, detail = out.split("|", 2)
        return {"total": int(total), "idle_in_transaction": int(idle_tx),
                "idle_in_transaction_detail": detail}

    def check_server_log(self) -> None:
        """Record how many ERROR/FATAL/PANIC lines PostgreSQL logged (not a failure alone)."""
        assert self.cluster is not None
        self.final["postgres_log"] = count_log_levels(
            self.cluster.log_path, ("ERROR:", "FATAL:", "PANIC:"))
        if self.final["postgres_log"]["PANIC:"]:
            self.fail("PostgreSQL logged a PANIC")

    # -- describing the run ------------------------------------------------------------------

    def document(self) -> dict:
        assert self.cluster is not None
        return {
            "date": datetime.date.today().isoformat(),
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "passed": not self.failures,
            "failures": self.failures,
            "machine": {
                "nproc": os.cpu_count(),
                "loadavg_end": list(os.getloadavg()),
                "postgres_version": self.cluster.psql("SHOW server_version"),
                "pgbench_version": first_line([self.pgbench, "--version"]),
                "ecluse_version": first_line([sys.executable, "-m", "ecluse", "--version"]),
                "ecluse_git": first_line(["git", "-C", str(REPO_DIR), "rev-parse", "--short",
                                          "HEAD"]),
                "ecluse_module": os.path.dirname(ecluse.__file__),
            },
            "settings": {"duration_s": self.args.duration,
                         "session_duration_s": self.args.session_duration,
                         "clients": self.args.clients, "pool_size": self.args.pool_size,
                         "scale": self.args.scale, "protocol": PROTOCOL},
            "phases": self.rows,
            "ecluse_logs": self.ecluse_logs,
            "final": self.final,
        }


def text_table(rows: list[dict]) -> str:
    """Return the phases as a fixed-width table."""
    head = ("phase", "mode", "clients", "duration", "transactions", "TPS", "failed",
            "min TPS/interval", "status")
    lines = [head]
    for r in rows:
        lines.append((
            r["name"], r["mode"], str(r["clients"]), f"{r['duration']} s",
            "n/a" if r["transactions"] is None else f"{r['transactions']:,}",
            "n/a" if r["tps"] is None else f"{r['tps']:,.0f}",
            "n/a" if r["failed"] is None else str(r["failed"]),
            "n/a" if r["min_interval_tps"] is None else f"{r['min_interval_tps']:,.0f}",
            r["status"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True))
                     .rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A shell without job control may start us with SIGINT ignored; we want Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    soak = Soak(args)
    try:
        soak.start_cluster()
        soak.run_all()
        doc = soak.document()
    except KeyboardInterrupt:
        say("interrupted; cleaning up (no results written)")
        return 130
    finally:
        soak.cleanup()
    print(text_table(doc["phases"]))
    print("balances after the last phase (straight from PostgreSQL): "
          + ", ".join(f"{k} {v}" for k, v in doc["final"]["balances"].items()))
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, f"soak-{doc['date']}.json")
    write_json(path, doc)
    say(f"wrote {os.path.relpath(path)}")
    if doc["failures"]:
        print(f"soak FAILED ({len(doc['failures'])} problem(s)):")
        for failure in doc["failures"]:
            print(f"  - {failure.splitlines()[0]}")
        return 1
    print("soak passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
