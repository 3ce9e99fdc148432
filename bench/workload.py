"""Run pgbench against one target and turn its output and logs into numbers.

Throughput comes from pgbench's summary ("tps = ... (without initial connection
time)"); latency percentiles come from its per-transaction logs (``--log``),
whose third field is the transaction's latency in microseconds.

Besides pgbench's -M modes (simple, extended, prepared) a run may be
``churn``: ``-M simple -C``, a new connection (startup and login) for every
transaction, the pattern of clients that do not pool on their side. With -C
pgbench's tps includes the connection time.

Rules:
1. No timing assertions: a slow or failed run is recorded, never judged.
2. Log files are deleted once read; a 10 s run at 30k tps writes ~10 MB.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import resource
import shutil
import signal
import subprocess
from dataclasses import dataclass

# Above this many log lines we keep every k-th one; percentiles stay stable to well
# under 1 % and reading stays around a second.
MAX_LATENCY_SAMPLES = 1_000_000
_APPROX_LOG_LINE_BYTES = 28

# "without initial connection time" normally; with -C pgbench 15 prints "including
# reconnection times" instead.
_TPS_RE = re.compile(r"^tps = ([0-9.]+) \((?:without initial connection time|"
                     r"including reconnection times)\)", re.M)
CHURN = "churn"  # pseudo-protocol: -M simple -C
# pgbench holds a socket per client; 2,000 clients need more than the usual soft limit.
_FD_MARGIN = 64
_TX_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)


@dataclass(slots=True)
class PgbenchResult:
    """What one pgbench run produced; fields are None when pgbench did not report them."""

    tps: float | None = None
    transactions: int | None = None
    failed: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    latency_samples: int = 0
    error: str | None = None
    output: str = ""  # pgbench's stdout and stderr, kept to explain a failed run


def find_pgbench(bindir: str | None = None) -> str:
    """Return the pgbench executable, preferring the server's bin directory."""
    if bindir:
        candidate = os.path.join(bindir, "pgbench")
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("pgbench")
    if found is None:
        raise RuntimeError("pgbench not found (Debian: apt-get install postgresql-client)")
    return found


def clean_env(sslmode: str | None = None) -> dict[str, str]:
    """Return our environment without PG* variables, which could redirect pgbench or psql.

    With ``sslmode`` (libpq's: disable, require, ...), PGSSLMODE is set to it; without,
    libpq's default (prefer) applies.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if sslmode is not None:
        env["PGSSLMODE"] = sslmode
    return env


def pgbench_threads(clients: int) -> int:
    """Return pgbench's -j: one thread per core, at least 2, never more than clients.

    pgbench waits with ppoll, so a thread is not limited to FD_SETSIZE clients; more
    threads than cores would only compete with the pooler for them.
    """
    return max(1, min(clients, max(2, os.cpu_count() or 2)))


def pgbench_command(pgbench: str, host: str, port: int, dbname: str, user: str,
                    clients: int, protocol: str, duration: int,
                    log_prefix: str | None) -> list[str]:
    """Build the select-only pgbench command line.

    ``protocol`` is pgbench's -M (simple, extended or prepared) or ``churn``
    (-M simple -C).
    """
    mode = ["-M", "simple", "-C"] if protocol == CHURN else ["-M", protocol]
    cmd = [
        pgbench, "-n", "-S", *mode, "-c", str(clients), "-j", str(pgbench_threads(clients)),
        "-T", str(duration), "-h", host, "-p", str(port), "-U", user,
    ]
    if log_prefix is not None:
        cmd += ["--log", f"--log-prefix={log_prefix}"]
    return [*cmd, dbname]


def run_pgbench(cmd: list[str], timeout: float, log_prefix: str | None,
                sslmode: str | None = None) -> PgbenchResult:
    """Run ``cmd``, parse the summary and, with ``log_prefix``, the latency logs.

    ``sslmode`` goes to pgbench as PGSSLMODE (see clean_env). pgbench is killed if it
    outlives ``timeout`` seconds or if we are interrupted.
    """
    clients = int(cmd[cmd.index("-c") + 1]) if "-c" in cmd else 1
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env(sslmode),
                            start_new_session=True,
                            preexec_fn=lambda: raise_nofile(clients + _FD_MARGIN))
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    latencies = read_latencies(log_prefix) if log_prefix is not None else []
    result = parse_summary(out)
    # stderr first (per-client errors, at most the last 30 lines), then the summary.
    result.output = "\n".join([*err.strip().splitlines()[-30:], out.strip()]).strip()
    if proc.returncode == 0 and result.tps is None and result.transactions == 0:
        # pgbench's -T clock runs while its clients connect; none got to a transaction.
        result.error = ("no transaction finished within -T (the clients' logins took "
                        "the whole run)")
    elif proc.returncode != 0 or result.tps is None:
        tail = " | ".join((err or out).strip().splitlines()[-3:])
        result.error = f"pgbench exit {proc.returncode}: {tail}"
    elif result.failed:
        # pgbench exits 0 when failed transactions were only counted; still not a clean run.
        tail = " | ".join(err.strip().splitlines()[-3:])
        result.error = f"{result.failed} failed transactions" + (f": {tail}" if tail else "")
    if latencies:
        latencies.sort()
        result.latency_samples = len(latencies)
        result.p50_ms = percentile(latencies, 50) / 1000
        result.p99_ms = percentile(latencies, 99) / 1000
        result.mean_ms = sum(latencies) / len(latencies) / 1000
    return result


def raise_nofile(wanted: int) -> None:
    """Raise the soft RLIMIT_NOFILE of this process to ``wanted``, within the hard limit.

    Runs in pgbench's child before exec (preexec_fn): pgbench opens one socket per
    client and refuses to start when the limit is below the client count.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def parse_summary(out: str) -> PgbenchResult:
    """Pick tps, transaction and failure counts out of pgbench's summary."""
    result = PgbenchResult()
    if m := _TPS_RE.search(out):
        result.tps = float(m.group(1))
    if m := _TX_RE.search(out):
        result.transactions = int(m.group(1))
    if m := _FAILED_RE.search(out):
        result.failed = int(m.group(1))
    return result


def read_latencies(log_prefix: str) -> list[int]:
    """Return transaction latencies (µs) from pgbench's logs ``<prefix>.*``, then delete them.

    pgbench writes one file per thread. Lines whose latency is "failed" or "skipped"
    are left out. Above MAX_LATENCY_SAMPLES lines, every k-th line is kept.
    """
    paths = sorted(glob.glob(glob.escape(log_prefix) + ".*"))
    total_bytes = sum(os.path.getsize(p) for p in paths)
    stride = max(1, math.ceil(total_bytes / _APPROX_LOG_LINE_BYTES / MAX_LATENCY_SAMPLES))
    latencies: list[int] = []
    for path in paths:
        with open(path, "rb") as f:
            for i, line in enumerate(f):
                if i % stride:
                    continue
                fields = line.split(None, 3)
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies.append(int(fields[2]))
        os.unlink(path)
    return latencies


def percentile(sorted_values: list[int], pct: float) -> float:
    """Return the nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])
