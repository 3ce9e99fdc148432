"""A throwaway PostgreSQL cluster for development and tests.

Owns finding the PostgreSQL server binaries (and installing them with apt on a
fresh Debian machine), and the life of one cluster in a data directory: initdb,
configuration, start, stop, and running SQL through psql.

Rules:
1. Standard library only: `make run` and the test fixtures use this before
   anything else is known to work.
2. PostgreSQL refuses to run as root, so when we are root every server-side
   command (initdb, pg_ctl) runs as the ``postgres`` system user and the data
   directory belongs to it.
3. Nothing here imports from the rest of ecluse.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

MIN_VERSION = 15
SERVER_USER = "postgres"
DEBIAN_PACKAGES = (f"postgresql-{MIN_VERSION}", f"postgresql-client-{MIN_VERSION}")
DEBIAN_FALLBACK_PACKAGES = ("postgresql", "postgresql-client")
INSTALL_HINT = (
    f"PostgreSQL {MIN_VERSION} or newer was not found (looked for initdb and postgres in "
    "/usr/lib/postgresql/*/bin and in `pg_config --bindir`). On Debian/Ubuntu install it "
    f"with: apt-get update && apt-get install -y {' '.join(DEBIAN_PACKAGES)} "
    "(or run scripts/bootstrap.sh as root)."
)

_MAX_SOCKET_PATH = 100

# Marks, for a human reading postgresql.conf, where our additions begin.
_CONF_MARKER = "# --- added by ecluse.devcluster ---"


def _is_root() -> bool:
    return os.geteuid() == 0


def _has_server_binaries(bindir: str) -> bool:
    return all(os.access(os.path.join(bindir, exe), os.X_OK) for exe in ("initdb", "postgres"))


def _major_version(version_text: str) -> int | None:
    """Return the major version from text like 'PostgreSQL 15.4' or 'postgres (PostgreSQL) 16'."""
    match = re.search(r"(\d+)(?:\.\d+)?", version_text)
    return int(match.group(1)) if match else None


def _bindir_from_pg_config() -> str | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        version = subprocess.run([pg_config, "--version"], capture_output=True, text=True,
                                 check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    major = _major_version(version)
    if major is None or major < MIN_VERSION or not _has_server_binaries(bindir):
        return None
    return bindir


def find_pg_bindir() -> str:
    """Return the bin directory of the newest PostgreSQL server >= 15 on this machine.

    Debian's versioned directories are searched first, then `pg_config --bindir` from PATH.
    Raises RuntimeError, saying how to install PostgreSQL, when none is found.
    """
    candidates: list[tuple[int, str]] = []
    for bindir in glob.glob("/usr/lib/postgresql/*/bin"):
        major = _major_version(Path(bindir).parent.name)
        if major is not None and major >= MIN_VERSION and _has_server_binaries(bindir):
            candidates.append((major, bindir))
    if candidates:
        return max(candidates)[1]
    bindir = _bindir_from_pg_config()
    if bindir is not None:
        return bindir
    raise RuntimeError(INSTALL_HINT)


def ensure_postgres_installed() -> str:
    """Return the PostgreSQL bin directory, installing the server with apt if it is missing.

    Installing needs root and apt-get; otherwise RuntimeError explains what to install.
    """
    try:
        return find_pg_bindir()
    except RuntimeError:
        if not (_is_root() and shutil.which("apt-get")):
            raise
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("ecluse: PostgreSQL not found; installing it with apt-get", flush=True)
    subprocess.run(["apt-get", "update"], check=True, env=env)
    installed = subprocess.run(["apt-get", "install", "-y", *DEBIAN_PACKAGES], env=env)
    if installed.returncode != 0:
        # Distributions other than Debian 12 may ship another major version.
        subprocess.run(["apt-get", "install", "-y", *DEBIAN_FALLBACK_PACKAGES],
                       check=True, env=env)
    return find_pg_bindir()


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (bind port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _conf_value(value: str) -> str:
    """Quote a postgresql.conf value; quoting is valid for every type and needed for most."""
    return "'" + value.replace("'", "''") + "'"


class PgCluster:
    """One throwaway PostgreSQL cluster living in ``datadir``.

    The server listens on ``host:port`` over TCP and on a unix socket in
    ``<datadir>/socket``; its log goes to ``<datadir>/postgresql.log``.
    """

    def __init__(self, datadir: str, port: int | None = None, host: str = "127.0.0.1"):
        self.datadir = os.path.abspath(datadir)
        self.host = host
        self.port = port if port is not None else find_free_port(host)
        self.socket_dir = os.path.join(self.datadir, "socket")
        if len(os.path.join(self.socket_dir, f".s.PGSQL.{self.port}")) > _MAX_SOCKET_PATH:
            # sun_path holds 107 bytes; a deep checkout would make the server fail to start.
            self.socket_dir = tempfile.mkdtemp(prefix="ecluse-pg-")
        self.log_path = os.path.join(self.datadir, "postgresql.log")
        self.bindir = find_pg_bindir()

    def __repr__(self) -> str:
        return f"PgCluster({self.datadir!r}, port={self.port}, host={self.host!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    def is_initialized(self) -> bool:
        return os.path.exists(os.path.join(self.datadir, "PG_VERSION"))

    def init(self, hba_lines: list[str] | None = None, settings: dict[str, str] | None = None,
             superuser: str = "postgres") -> None:
        """Create the cluster with initdb and write its configuration.

        The data directory must not exist or be empty. ``hba_lines`` replace pg_hba.conf
        (default: trust for local and for 127.0.0.1/32 and ::1/128); ``settings`` are
        appended to postgresql.conf after ours, so they win.
        """
        os.makedirs(self.datadir, exist_ok=True)
        self._give_to_server_user(self.datadir)
        self._run_as_server([
            os.path.join(self.bindir, "initdb"), "-D", self.datadir, "--auth=trust",
            "-U", superuser, "--encoding=UTF8", "--locale=C", "--no-instructions",
        ], "initdb")
        os.makedirs(self.socket_dir, exist_ok=True)
        self._give_to_server_user(self.socket_dir)
        self._write_conf(settings or {})
        self._write_hba(hba_lines)

    def init_standby_of(self, primary: PgCluster, settings: dict[str, str] | None = None) -> None:
        """Make this cluster a streaming standby of ``primary`` (pg_basebackup -R over
        its unix socket, whose pg_hba.conf must allow local replication), not started.
        ``settings`` are appended to the copied postgresql.conf."""
        os.makedirs(self.datadir, mode=0o700)
        self._give_to_server_user(self.datadir)
        self._run_as_server([
            os.path.join(self.bindir, "pg_basebackup"), "-D", self.datadir, "-R",
            "-h", primary.socket_dir, "-p", str(primary.port), "-U", "postgres",
            "-X", "stream", "-c", "fast"], "pg_basebackup")
        # The copy holds the primary's socket lock file and log: not the standby's.
        shutil.rmtree(self.socket_dir)
        os.remove(self.log_path)
        if settings:
            self._write_conf(settings)

    def start(self, timeout: int = 60) -> None:
        """Start the server and wait until it accepts connections.

        Port, listen address and socket directory are passed on the command line too,
        so a data directory made by an earlier run starts where this object says.
        """
        os.makedirs(self.socket_dir, exist_ok=True)
        self._give_to_server_user(self.socket_dir)
        self._pg_ctl("start", "-w", "-t", str(timeout), "-l", self.log_path,
                     "-o", self._server_options(), timeout=timeout + 30)

    def _server_options(self) -> str:
        # pg_ctl hands -o to a shell, hence the quoting.
        return " ".join([
            "-p", str(self.port), "-h", shlex.quote(self.host), "-k", shlex.quote(self.socket_dir),
        ])

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode`` is pg_ctl's: smart, fast or immediate. No-op if stopped."""
        if self.is_running():
            self._pg_ctl("stop", "-w", "-m", mode)

    def restart(self) -> None:
        self.stop()
        self.start()

    def is_running(self) -> bool:
        # pg_ctl status exits 0 when running, 3 when not, 4 without a usable data directory.
        if not self.is_initialized():
            return False
        result = subprocess.run(self._as_server_cmd(["status"]), capture_output=True,
                                timeout=30, **self._server_user_kwargs())
        return result.returncode == 0

    # -- running SQL -------------------------------------------------------------------------

    def psql(self, sql: str, dbname: str = "postgres", user: str = "postgres") -> str:
        """Run ``sql`` with psql over the unix socket and return its unaligned, tuples-only output.

        The script is fed on stdin so that several statements run one by one (CREATE
        DATABASE cannot run inside the implicit transaction of a multi-statement -c).
        Raises RuntimeError carrying psql's stderr when any statement fails.
        """
        cmd = [self._psql_path(), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
               "-h", self.socket_dir, "-p", str(self.port), "-U", user, "-d", dbname, "-f", "-"]
        result = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=120,
                                env=self._clean_env())
        if result.returncode != 0:
            raise RuntimeError(
                f"psql failed (exit {result.returncode}) on {dbname} as {user}: "
                f"{result.stderr.strip()}\nSQL: {sql}")
        return result.stdout.rstrip("\n")

    def _psql_path(self) -> str:
        local = os.path.join(self.bindir, "psql")
        if os.access(local, os.X_OK):
            return local
        return shutil.which("psql") or "/usr/bin/psql"

    # -- configuration files -----------------------------------------------------------------

    def _write_conf(self, settings: dict[str, str]) -> None:
        ours = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": self.socket_dir,
            "max_connections": "200",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",  # pg_ctl -l sends stderr to log_path
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "log_min_messages": "warning",
        }
        ours.update(settings)
        lines = ["", _CONF_MARKER]
        lines += [f"{key} = {_conf_value(value)}" for key, value in ours.items()]
        with open(os.path.join(self.datadir, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.write("\n".join(lines) + "\n")

    def _write_hba(self, hba_lines: list[str] | None) -> None:
        if hba_lines is None:
            hba_lines = [
                "local all all trust",
                "host all all 127.0.0.1/32 trust",
                "host all all ::1/128 trust",
            ]
        path = os.path.join(self.datadir, "pg_hba.conf")
        with open(path, "w", encoding="utf-8") as hba:
            hba.write("\n".join(hba_lines) + "\n")
        self._give_to_server_user(path)

    # -- running as the postgres user --------------------------------------------------------

    def _pg_ctl(self, *args: str, timeout: int = 90) -> None:
        self._run_as_server(self._as_server_cmd(list(args)), f"pg_ctl {args[0]}", timeout)

    def _as_server_cmd(self, args: list[str]) -> list[str]:
        return [os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, *args]

    def _run_as_server(self, cmd: list[str], what: str, timeout: int = 120) -> None:
        # stdin/stdout must not stay tied to the postmaster pg_ctl leaves behind, or
        # capture would wait for it to exit; with -l, pg_ctl redirects the server's output.
        result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=timeout, **self._server_user_kwargs())
        if result.returncode != 0:
            raise RuntimeError(
                f"{what} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}\n{self._log_tail()}")

    def _server_user_kwargs(self) -> dict:
        kwargs: dict = {"cwd": "/", "env": self._clean_env()}
        if _is_root():
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root needs a '{SERVER_USER}' system user for PostgreSQL "
                    "(it comes with the postgresql Debian package)") from None
            kwargs.update(user=SERVER_USER, group=SERVER_USER, extra_groups=[])
        return kwargs

    def _give_to_server_user(self, path: str) -> None:
        """Make ``path`` owned by and reachable for the postgres user when we are root."""
        if not _is_root():
            return
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        # Temp directories made by root are 0700; the server user must at least be able to
        # traverse every parent to reach its data directory (search only, never read).
        # Its own directories are left alone: the server refuses a data directory that
        # others can enter.
        parent = Path(path).parent
        while parent != parent.parent:
            st = parent.stat()
            if st.st_uid != entry.pw_uid and not st.st_mode & stat.S_IXOTH:
                os.chmod(parent, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            parent = parent.parent

    @staticmethod
    def _clean_env() -> dict[str, str]:
        # PG* variables from the caller's shell (PGHOST, PGSERVICE, ...) must not redirect us.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                tail = log.read().splitlines()[-lines:]
        except OSError:
            return "(no server log)"
        return f"last lines of {self.log_path}:\n" + "\n".join(tail)
