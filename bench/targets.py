"""The things pgbench is pointed at: PostgreSQL directly, PgBouncer, and ecluse.

Both poolers get the same PgBouncer-format config (transaction pooling, trust
auth, one database ``bench``), each in its own session so that a Ctrl-C in the
terminal reaches only us and we stop them in order. PgBouncer is one process;
ecluse runs once with ``workers = 1`` (target ``ecluse-w1``) and once with one
worker per core (``ecluse-wN``, named with the real N, e.g. ``ecluse-w2``): a
supervisor and N forked workers, whose CPU and memory are summed over the
process tree. ecluse counts the pool size node-wide, over all its workers, so
every pooler holds at most ``default_pool_size`` server connections.

``max_client_conn`` is set by the caller above the largest number of clients
the run opens (pgbench's and the idle clients'), so that no pooler refuses a
client for its own limit; the open-files limit the poolers inherit from us is
the one that may still bind (see idleclients.py).

Both poolers keep server-side prepared statements per server connection
(``max_prepared_statements = 200``), which ``pgbench -M prepared`` needs in
transaction mode. PgBouncer learnt that in 1.21; an older PgBouncer is not run
with ``-M prepared`` at all (``unsupported()``), since pgbench would only fail
with ``prepared statement "P_0" already exists``.

Each target comes plain or with TLS towards pgbench (``tls``): a TLS pooler is a
second instance with ``client_tls_sslmode = require`` and a throwaway self-signed
certificate (``make_tls_files``), so that a plain client is refused rather than
measured by mistake; pgbench is told its sslmode through ``Target.sslmode``.
Poolers always talk plain TCP to PostgreSQL (``server_tls_sslmode = disable``,
written out because PgBouncer's default is prefer and the bench cluster has
``ssl = on``), so the TLS figures are the cost of client-side TLS alone.

Rules:
1. Every process started here is stopped by ``stop()``, by its own pid/group.
2. PgBouncer refuses to run as root, so when we are root it runs as ``postgres``;
   so does PostgreSQL, and the TLS key belongs to ``postgres`` (mode 0600), which
   both of them and a root ecluse can read.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

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
# The bench's certificate: RSA 2048, the common default; pgbench connects once per client
# (no -C) and its tps excludes connection time, so the handshake is not what is measured.
_TLS_KEY_BITS = 2048
_TLS_DAYS = 2
DEFAULT_MAX_CLIENT_CONN = 10_000


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A self-signed certificate and its key, PEM files the servers can read."""

    cert_file: str
    key_file: str
    description: str


def make_tls_files(directory: str) -> TlsFiles:
    """Write a throwaway self-signed certificate for localhost/127.0.0.1 into ``directory``.

    Uses the ``cryptography`` package (the test extra), else ``openssl req``. When we
    are root, the key is given to the ``postgres`` user: PostgreSQL refuses a key it
    cannot read or one that others may read, and PgBouncer runs as that user too.
    Raises RuntimeError when neither way works.
    """
    os.makedirs(directory, mode=0o711, exist_ok=True)
    cert_file = os.path.join(directory, "server.crt")
    key_file = os.path.join(directory, "server.key")
    try:
        _write_cert_with_cryptography(cert_file, key_file)
        how = "cryptography"
    except ImportError:
        _write_cert_with_openssl(cert_file, key_file)
        how = "openssl req"
    os.chmod(key_file, 0o600)
    os.chmod(cert_file, 0o644)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        for path in (directory, cert_file, key_file):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return TlsFiles(cert_file, key_file,
                    f"self-signed RSA {_TLS_KEY_BITS} certificate made with {how}")


def _write_cert_with_cryptography(cert_file: str, key_file: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=_TLS_KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_TLS_DAYS))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    # Created 0600 before the key is written, so it is never readable by others.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _write_cert_with_openssl(cert_file: str, key_file: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("TLS needs the cryptography package or the openssl command")
    done = subprocess.run(
        [openssl, "req", "-x509", "-newkey", f"rsa:{_TLS_KEY_BITS}", "-nodes", "-sha256",
         "-days", str(_TLS_DAYS), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", key_file, "-out", cert_file],
        capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"openssl req failed: {done.stderr.strip()}")


class Target:
    """Where pgbench connects; the base class is the direct connection to PostgreSQL.

    With ``tls``, pgbench connects with sslmode=require, otherwise with sslmode=disable
    (the bench cluster speaks TLS when the run has any TLS rows, so libpq's default,
    prefer, would quietly use it).
    """

    name = "direct"

    def __init__(self, host: str, port: int, dbname: str, tls: TlsFiles | None = None):
        self.host = host
        self.port = port
        self.dbname = dbname
        self.tls = tls

    @property
    def sslmode(self) -> str:
        """The libpq sslmode pgbench and psql use towards this target."""
        return "require" if self.tls is not None else "disable"

    @property
    def label(self) -> str:
        """The name with the TLS flag, for messages: ``ecluse`` or ``ecluse+tls``."""
        return f"{self.name}+tls" if self.tls is not None else self.name

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
                 psql: str, tls: TlsFiles | None = None,
                 max_client_conn: int = DEFAULT_MAX_CLIENT_CONN):
        super().__init__("127.0.0.1", find_free_port("127.0.0.1"), dbname, tls)
        self.max_client_conn = max_client_conn
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

    def tls_settings(self) -> list[str]:
        """Return the client_tls_* lines: require TLS from clients, or nothing when plain."""
        if self.tls is None:
            return []
        return ["client_tls_sslmode = require",
                f"client_tls_key_file = {self.tls.key_file}",
                f"client_tls_cert_file = {self.tls.cert_file}"]

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
            f"max_client_conn = {self.max_client_conn}",
            "log_connections = 0",
            "log_disconnections = 0",
            # Plain towards PostgreSQL in every case; see the module docstring.
            "server_tls_sslmode = disable",
            *self.tls_settings(),
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
                raise RuntimeError(f"{self.label} exited at start:\n{self.log_tail()}")
            probe = subprocess.run(
                [self.psql, "-X", "-A", "-t", "-h", self.host, "-p", str(self.port),
                 "-U", BENCH_USER, "-d", self.dbname, "-c", "select 1"],
                capture_output=True, text=True, timeout=15, env=clean_env(self.sslmode))
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} did not answer within {timeout:.0f} s: "
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
    """ecluse, run as ``python -m ecluse config.ini`` with this interpreter.

    ``workers`` is ecluse's setting of that name; the target is called
    ``ecluse-w<workers>``.
    """

    def __init__(self, *args, workers: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.workers = workers
        self.name = ecluse_name(workers)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "ecluse", self.config_path]

    def version(self) -> str | None:
        return first_line([sys.executable, "-m", "ecluse", "--version"])

    def extra_settings(self) -> list[str]:
        # ecluse's default, spelled out so that -M prepared never depends on a default moving.
        return [f"max_prepared_statements = {MAX_PREPARED_STATEMENTS}",
                f"workers = {self.workers}"]

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


def ecluse_name(workers: int) -> str:
    """Return the target name of ecluse with ``workers`` worker processes."""
    return f"ecluse-w{workers}"


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
