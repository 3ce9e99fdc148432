"""The things pgbench is pointed at: PostgreSQL directly, PgBouncer, and ecluse.

Both poolers get the same PgBouncer-format config (transaction pooling, trust
auth, one database ``bench``), run as one process each, in their own session so
that a Ctrl-C in the terminal reaches only us and we stop them in order.

Both poolers keep server-side prepared statements per server connection
(``max_prepared_statements = 200``), which ``pgbench -M prepared`` needs in
transaction mode. PgBouncer learnt that in 1.21; an older PgBouncer is not run
with ``-M prepared`` at all (``unsupported()``), since pgbench would only fail
with ``prepared statement "P_0" already exists``.

Rules:
1. Every process started here is stopped by ``stop()``, by its own pid/group.
2. PgBouncer refuses to run as root, so when we are root it runs as ``postgres``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time

from procstat import tree_cpu_seconds
from workload import clean_env

from ecluse.devcluster import find_free_port

PGBOUNCER_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
SERVER_USER = "postgres"
BENCH_USER = "postgres"
# Server-side prepared statements kept per server connection: ecluse's default, and the
# value PgBouncer's own documentation suggests trying first.
MAX_PREPARED_STATEMENTS = 200
# The first PgBouncer that tracks protocol-level prepared statements in transaction mode.
PGBOUNCER_PREPARED_SINCE = (1, 21)
_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


class Target:
    """Where pgbench connects; the base class is the direct connection to PostgreSQL."""

    name = "direct"

    def __init__(self, host: str, port: int, dbname: str):
        self.host = host
        self.port = port
        self.dbname = dbname

    @property
    def pid(self) -> int | None:
        """The pooler's pid, whose process tree is charged for CPU; None for direct."""
        return None

    def start(self) -> None:
        """Nothing to start for a direct connection."""

    def stop(self) -> None:
        """Nothing to stop for a direct connection."""

    def is_alive(self) -> bool:
        return True

    def cpu_seconds(self) -> float | None:
        """Return the CPU seconds used so far by the pooler's process tree (None if none)."""
        return tree_cpu_seconds(self.pid) if self.pid is not None else None

    def version(self) -> str | None:
        return None

    def unsupported(self, protocol: str) -> str | None:
        """Return why pgbench ``-M protocol`` cannot run against this target, or None."""
        return None


class PoolerTarget(Target):
    """A pooler run as a child process from a config file in its own temp directory."""

    def __init__(self, workdir: str, pg_host: str, pg_port: int, dbname: str, pool_size: int,
                 psql: str):
        super().__init__("127.0.0.1", find_free_port("127.0.0.1"), dbname)
        self.workdir = workdir
        self.pg_host = pg_host
        self.pg_port = pg_port
        self.pool_size = pool_size
        self.psql = psql
        self.config_path = os.path.join(workdir, "pooler.ini")
        self.log_path = os.path.join(workdir, "pooler.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def extra_settings(self) -> list[str]:
        """Return ``key = value`` lines this pooler adds to the shared [pgbouncer] section."""
        return []

    def config_text(self) -> str:
        """Return the PgBouncer-format config both poolers are given."""
        return "\n".join([
            "[databases]",
            f"{self.dbname} = host={self.pg_host} port={self.pg_port} dbname={self.dbname}",
            "",
            "[pgbouncer]",
            f"listen_addr = {self.host}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {os.path.join(self.workdir, 'userlist.txt')}",
            "pool_mode = transaction",
            f"default_pool_size = {self.pool_size}",
            "max_client_conn = 10000",
            "log_connections = 0",
            "log_disconnections = 0",
            *self.extra_settings(),
            "",
        ])

    def write_config(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(self.config_text())
        # With auth_type = trust PgBouncer still wants the user listed in auth_file.
        with open(os.path.join(self.workdir, "userlist.txt"), "w", encoding="utf-8") as f:
            f.write(f'"{BENCH_USER}" ""\n')

    def command(self) -> list[str]:
        raise NotImplementedError

    def popen_kwargs(self) -> dict:
        return {}

    def start(self, timeout: float = 30.0) -> None:
        """Start the pooler and wait until a query passes through it."""
        self.write_config()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=self.workdir, env=clean_env(), start_new_session=True,
                **self.popen_kwargs())
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_alive():
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            probe = subprocess.run(
                [self.psql, "-X", "-A", "-t", "-h", self.host, "-p", str(self.port),
                 "-U", BENCH_USER, "-d", self.dbname, "-c", "select 1"],
                capture_output=True, text=True, timeout=15, env=clean_env())
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer within {timeout:.0f} s: "
                                   f"{probe.stderr.strip()}\n{self.log_tail()}")
            time.sleep(0.2)

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the pooler's process group: SIGTERM, then SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Workers left behind in the group (the leader gone first) get the same end.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return f"last lines of {self.log_path}:\n" + "\n".join(tail)


class PgBouncerTarget(PoolerTarget):
    """Debian's PgBouncer, one process."""

    name = "pgbouncer"

    def __init__(self, *args, executable: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.executable = executable
        self._version = first_line([executable, "--version"])

    @staticmethod
    def find() -> str | None:
        """Return the pgbouncer executable, or None when it is not installed."""
        for path in PGBOUNCER_PATHS:
            if os.access(path, os.X_OK):
                return path
        return shutil.which("pgbouncer")

    def write_config(self) -> None:
        super().write_config()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            for path in (self.workdir, self.config_path, self.log_path,
                         os.path.join(self.workdir, "userlist.txt")):
                if not os.path.exists(path):
                    open(path, "a").close()
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def command(self) -> list[str]:
        return [self.executable, self.config_path]

    def popen_kwargs(self) -> dict:
        if os.geteuid() != 0:
            return {}
        return {"user": SERVER_USER, "group": SERVER_USER, "extra_groups": []}

    def version(self) -> str | None:
        return self._version

    def supports_prepared(self) -> bool:
        """Tell whether this PgBouncer keeps prepared statements in transaction mode."""
        numbers = parse_version(self._version)
        return numbers is not None and numbers >= PGBOUNCER_PREPARED_SINCE

    def unsupported(self, protocol: str) -> str | None:
        if protocol != "prepared" or self.supports_prepared():
            return None
        need = ".".join(map(str, PGBOUNCER_PREPARED_SINCE))
        if parse_version(self._version) is None:
            return (f"cannot tell the PgBouncer version ({self._version!r}); "
                    f"-M prepared needs {need}+")
        return (f"{self._version} has no prepared statements in transaction mode; "
                f"needs {need}+")

    def extra_settings(self) -> list[str]:
        # Older versions reject the unknown key, so it is written only where it means something.
        if self.supports_prepared():
            return [f"max_prepared_statements = {MAX_PREPARED_STATEMENTS}"]
        return []


class EcluseTarget(PoolerTarget):
    """ecluse, run as ``python -m ecluse config.ini`` with this interpreter."""

    name = "ecluse"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "ecluse", self.config_path]

    def version(self) -> str | None:
        return first_line([sys.executable, "-m", "ecluse", "--version"])

    def extra_settings(self) -> list[str]:
        # ecluse's default, spelled out so that -M prepared never depends on a default moving.
        return [f"max_prepared_statements = {MAX_PREPARED_STATEMENTS}"]

    @staticmethod
    def check() -> str | None:
        """Return why ecluse cannot be benchmarked, or None when ``--help`` works."""
        try:
            probe = subprocess.run([sys.executable, "-m", "ecluse", "--help"],
                                   capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        if probe.returncode != 0:
            return (probe.stderr.strip().splitlines() or ["python -m ecluse --help failed"])[-1]
        return None


def parse_version(text: str | None) -> tuple[int, int] | None:
    """Return (major, minor) from a line such as ``PgBouncer 1.18.0``, or None."""
    m = _VERSION_RE.search(text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def first_line(cmd: list[str]) -> str | None:
    """Return the first output line of ``cmd``, or None if it cannot run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines and out.returncode == 0 else None
