"""The immutable configuration objects: Settings, DatabaseConfig, UserConfig and Config.

Rules:
1. Every object here is frozen; mappings are read-only views. Reload builds a
   new Config and diffs it (diff.py), it never mutates one in place.
2. Defaults are PgBouncer's, so a pgbouncer.ini that relies on them behaves
   the same under ecluse. Durations are float seconds.
3. No parsing and no I/O here: loader.py turns files into these objects.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ecluse.auth.hba import HbaRule
    from ecluse.auth.ident import IdentMaps

# The name of the [databases] entry used for any database not listed.
FALLBACK_DATABASE = "*"

# PgBouncer's default auth_query.
# PgBouncer's query, schema-qualified, and refusing a password past its VALID UNTIL
# (CVE-2025-2291: PostgreSQL would refuse it too).
DEFAULT_AUTH_QUERY = ("SELECT usename, CASE WHEN valuntil < pg_catalog.now() THEN NULL "
                      "ELSE passwd END FROM pg_catalog.pg_shadow WHERE usename = $1")


def _empty_mapping() -> Mapping[str, str]:
    return MappingProxyType({})


class PoolMode(enum.Enum):
    """When a server connection goes back to the pool."""

    SESSION = "session"
    TRANSACTION = "transaction"
    STATEMENT = "statement"


class SslMode(enum.Enum):
    """PgBouncer's client_tls_sslmode and server_tls_sslmode values (libpq's names)."""

    # Looked up in a set or dict at every login: identity hashing (members are
    # singletons) keeps that in C, where Enum's own __hash__ is Python code.
    __hash__ = object.__hash__

    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


class LogFormat(enum.Enum):
    """log_format (ecluse's): how each log line is written (logsetup.py)."""

    TEXT = "text"
    JSON = "json"


class LogLevel(enum.Enum):
    """log_level (ecluse's): the least severe level logged; overrides verbose and -v/-q."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


# PgBouncer's "secure" protocol set, the default of both *_tls_protocols.
SECURE_TLS_PROTOCOLS = ("tlsv1.2", "tlsv1.3")


class AuthType(enum.Enum):
    """How clients authenticate (PgBouncer's auth_type values)."""

    # Looked up in a set or dict at every login: identity hashing (members are
    # singletons) keeps that in C, where Enum's own __hash__ is Python code.
    __hash__ = object.__hash__

    TRUST = "trust"
    PLAIN = "plain"
    MD5 = "md5"
    SCRAM_SHA_256 = "scram-sha-256"
    ANY = "any"
    CERT = "cert"
    HBA = "hba"


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """One [databases] entry: where the server is and per-database pool overrides.

    None for an override means "use the global setting". A host of None or one
    starting with "/" means a unix socket (None: the default socket directory);
    a host may be a comma-separated list of them (host_list), all on one port.
    """

    name: str
    host: str | None = None
    port: int = 5432
    load_balance_hosts: str = "round-robin"  # or "disable" (pool/hosts.py)
    target_session_attrs: str = "any"  # read-write, read-only, primary, standby
    dbname: str | None = None
    user: str | None = None
    password: str | None = None
    pool_size: int | None = None
    min_pool_size: int | None = None
    reserve_pool: int | None = None
    pool_mode: PoolMode | None = None
    max_db_connections: int | None = None
    max_db_client_connections: int | None = None
    connect_query: str | None = None
    client_encoding: str | None = None
    datestyle: str | None = None
    timezone: str | None = None
    application_name: str | None = None
    auth_user: str | None = None
    auth_dbname: str | None = None
    auth_query: str | None = None
    server_lifetime: float | None = None
    query_wait_timeout: float | None = None
    # Another [databases] entry whose pool serves this database's read-only
    # requests in transaction and statement mode (routing/readwrite.py).
    read_db: str | None = None
    # Sharding (routing/shards.py): the [databases] entries that hold the shards,
    # in shard order; this entry's own host and dbname then serve no client.
    shards: tuple[str, ...] = ()
    sharding_key: str | None = None  # [table.]column read from SQL (routing/shardkeys.py)
    sharding_function: str = "pg_bigint_hash"  # or pg_text_hash
    default_shard: int = 0  # where a client's requests that name no key go at first

    def server_dbname(self) -> str:
        """Return the database name to ask the server for."""
        return self.dbname if self.dbname is not None else self.name

    def is_unix_socket(self) -> bool:
        """Say whether this database's first host is a unix socket."""
        return host_list(self.host)[0].startswith("/")

    def has_host_list(self) -> bool:
        """Say whether host names several hosts (SHOW DATABASES' load_balance_hosts)."""
        return self.host is not None and "," in self.host


def host_list(host: str | None) -> tuple[str, ...]:
    """The hosts a [databases] host value names, in order; None is the default
    unix-socket directory, /tmp, as PgBouncer built with its defaults."""
    if host is None:
        return ("/tmp",)
    return tuple(host.split(","))


@dataclass(frozen=True, slots=True)
class UserConfig:
    """One [users] entry: per-user overrides (PgBouncer's keys)."""

    name: str
    pool_mode: PoolMode | None = None
    max_user_connections: int | None = None
    max_user_client_connections: int | None = None
    pool_size: int | None = None
    reserve_pool_size: int | None = None
    # Client timeouts in seconds (None: [pgbouncer]'s applies; pool/janitor.py).
    query_timeout: float | None = None
    query_wait_timeout: float | None = None
    idle_transaction_timeout: float | None = None
    transaction_timeout: float | None = None
    client_idle_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """The [pgbouncer] section, with PgBouncer's defaults.

    ``extra`` holds PgBouncer settings that ecluse knows by name but does not
    implement yet, as raw strings, so a full pgbouncer.ini loads without noise.
    """

    listen_addr: str = ""  # empty: no TCP listener, as in PgBouncer
    listen_port: int = 6432
    unix_socket_dir: str = "/tmp"  # empty: no unix socket
    unix_socket_mode: int = 0o777
    auth_type: AuthType = AuthType.MD5
    auth_file: str | None = None
    # auth_query (auth/auth_query.py): how to find the secret of a user not in auth_file.
    auth_user: str | None = None
    auth_query: str = DEFAULT_AUTH_QUERY
    auth_dbname: str | None = None
    auth_hba_file: str | None = None  # pg_hba.conf rules for auth_type = hba (auth/hba.py)
    auth_ident_file: str | None = None  # user name maps for HBA's map= (auth/ident.py)
    admin_users: tuple[str, ...] = ()
    stats_users: tuple[str, ...] = ()
    pool_mode: PoolMode = PoolMode.SESSION
    max_client_conn: int = 100
    default_pool_size: int = 20
    min_pool_size: int = 0
    reserve_pool_size: int = 0
    reserve_pool_timeout: float = 5.0
    max_db_connections: int = 0  # 0: unlimited
    max_user_connections: int = 0  # 0: unlimited
    max_db_client_connections: int = 0  # clients per database; 0: unlimited
    max_user_client_connections: int = 0  # clients per user; 0: unlimited
    server_reset_query: str = "DISCARD ALL"
    server_reset_query_always: bool = False
    server_check_query: str = "select 1"
    server_check_delay: float = 30.0
    # Session mode: a server marked to close (RECONNECT, RELOAD) closes, with its
    # client, at the end of the client's transaction, not of its session.
    server_fast_close: bool = False
    server_lifetime: float = 3600.0
    server_idle_timeout: float = 600.0
    server_connect_timeout: float = 15.0
    server_login_retry: float = 15.0
    # How long clients queued for a server that cannot be reached keep waiting for it
    # to come back (a restart, a failover) before they are told; 0: at once, as
    # PgBouncer (pool/launch.py, holds_waiters).
    server_down_wait: float = 0.0
    # read_db: after a client's request that is not read-only, its reads too go to
    # the primary for this long, so that it reads its own writes (routing/readwrite.py).
    primary_after_write: float = 0.0
    # PBKDF2 rounds of the SCRAM verifier ecluse makes from a plaintext auth_file or
    # auth_query secret, for clients that log in with SCRAM (PgBouncer's setting).
    scram_iterations: int = 4096
    # How long a server host name's addresses (or its lookup's failure) are kept
    # before the next lookup (server/dns.py).
    dns_max_ttl: float = 15.0
    dns_nxdomain_ttl: float = 15.0
    query_timeout: float = 0.0
    query_wait_timeout: float = 120.0
    query_wait_notify: float = 5.0  # a notice to a client queued longer; 0: none
    cancel_wait_timeout: float = 10.0  # how long a cancel may take to deliver; 0: no limit
    client_idle_timeout: float = 0.0
    client_login_timeout: float = 60.0
    # Pools of databases made from the "*" entry, unused this long, are removed.
    autodb_idle_timeout: float = 3600.0
    idle_transaction_timeout: float = 0.0
    transaction_timeout: float = 0.0  # a transaction longer than this closes its client
    ignore_startup_parameters: tuple[str, ...] = ()
    # Parameters kept in step per client besides PgBouncer's five and search_path
    # (server/params.py); as in PgBouncer, a restart applies a change.
    track_extra_parameters: tuple[str, ...] = ("IntervalStyle",)
    application_name_add_host: bool = False
    disable_pqexec: bool = False  # refuse the simple Query protocol (frontend/noquery.py)
    logfile: str | None = None
    # Logging (logsetup.py). log_level None: from verbose and -v/-q, as in PgBouncer.
    log_level: LogLevel | None = None
    log_format: LogFormat = LogFormat.TEXT
    syslog: bool = False
    syslog_ident: str = "ecluse"
    syslog_facility: str = "daemon"
    pidfile: str | None = None
    max_packet_size: int = 2147483647  # limit on one protocol message
    max_startup_packet_size: int = 10000
    shutdown_timeout: float = 30.0  # ecluse: how long SIGINT/SIGTERM waits for transactions
    # Worker processes (supervisor.py); one per core unless set. 1: a single process.
    workers: int = field(default_factory=lambda: max(1, min(os.cpu_count() or 1, 256)))
    # Rolling restart (SIGUSR2): idle clients an old worker closes per second.
    drain_rate: int = 100
    # This ecluse's number in a group behind one load balancer ([peers]); 0: none.
    peer_id: int = 0
    verbose: int = 0
    user: str | None = None
    server_round_robin: bool = False
    log_connections: bool = True
    log_disconnections: bool = True
    log_pooler_errors: bool = True
    stats_period: float = 60.0
    log_stats: bool = True  # a stats line per database every stats_period
    # TCP options (tcpopts.py), PgBouncer's names, units and defaults; 0: the OS default.
    listen_backlog: int = 128
    so_reuseport: bool = False  # several ecluse processes on one port (workers aside)
    unix_socket_group: str | None = None  # the unix socket's group (unix_socket_mode's g)
    tcp_defer_accept: bool = sys.platform.startswith("linux")
    tcp_keepalive: bool = True
    tcp_keepidle: int = 0  # seconds
    tcp_keepintvl: int = 0  # seconds
    tcp_keepcnt: int = 0
    tcp_user_timeout: int = 0  # milliseconds
    tcp_socket_buffer: int = 0  # bytes, SO_SNDBUF and SO_RCVBUF
    max_prepared_statements: int = 200  # per server; 0: no statement-name rewriting
    # TLS towards clients (config/tls.py builds the contexts).
    client_tls_sslmode: SslMode = SslMode.DISABLE
    client_tls_key_file: str | None = None
    client_tls_cert_file: str | None = None
    client_tls_ca_file: str | None = None
    client_tls_protocols: tuple[str, ...] = SECURE_TLS_PROTOCOLS
    client_tls_ciphers: str = "default"
    client_tls_ecdhcurve: str = "auto"  # auto, none or a curve name (config/tls.py)
    client_tls_dheparams: str = "auto"  # none, auto or legacy
    # TLS towards servers.
    server_tls_sslmode: SslMode = SslMode.DISABLE
    server_tls_key_file: str | None = None
    server_tls_cert_file: str | None = None
    server_tls_ca_file: str | None = None
    server_tls_protocols: tuple[str, ...] = SECURE_TLS_PROTOCOLS
    server_tls_ciphers: str = "default"
    # The HTTP listener (admin/http.py): Prometheus /metrics, /health and the JSON
    # API. Empty: no listener. api_token guards the API; empty: the API answers 403.
    metrics_listen: str = ""
    api_token: str = ""
    extra: Mapping[str, str] = field(default_factory=_empty_mapping)


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One [peers] entry: another ecluse (or PgBouncer) of the same group, for cancels."""

    peer_id: int
    host: str
    port: int = 6432
    pool_size: int | None = None  # cancels in flight to it at once (None: default_pool_size)


@dataclass(frozen=True, slots=True)
class Config:
    """A whole loaded configuration, and the precedence rules between its parts."""

    settings: Settings = field(default_factory=Settings)
    databases: Mapping[str, DatabaseConfig] = field(default_factory=_empty_mapping)
    users: Mapping[str, UserConfig] = field(default_factory=_empty_mapping)
    auth: Mapping[str, str] = field(default_factory=_empty_mapping)  # user -> secret
    hba: tuple[HbaRule, ...] | None = None  # auth_hba_file's rules, if it is set
    ident: IdentMaps | None = None  # auth_ident_file's maps, if it is set
    peers: Mapping[int, PeerConfig] = field(default_factory=_empty_mapping)  # by peer_id
    path: str | None = None
    warnings: tuple[str, ...] = ()

    def database(self, name: str) -> DatabaseConfig | None:
        """Return the entry for database ``name``.

        Falls back to the "*" entry, renamed to ``name`` so that it connects to
        the database of the same name; returns None if neither exists.
        """
        db = self.databases.get(name)
        if db is not None:
            return db
        fallback = self.databases.get(FALLBACK_DATABASE)
        if fallback is None:
            return None
        return dataclasses.replace(fallback, name=name)

    def pool_mode_for(self, db: DatabaseConfig, user: str) -> PoolMode:
        """Return the pool mode: the user's, else the database's, else the global one."""
        user_cfg = self.users.get(user)
        if user_cfg is not None and user_cfg.pool_mode is not None:
            return user_cfg.pool_mode
        if db.pool_mode is not None:
            return db.pool_mode
        return self.settings.pool_mode

    def pool_size_for(self, db: DatabaseConfig, user: str) -> int:
        """Return the pool size: the user's, else the database's, else default_pool_size."""
        user_cfg = self.users.get(user)
        if user_cfg is not None and user_cfg.pool_size is not None:
            return user_cfg.pool_size
        if db.pool_size is not None:
            return db.pool_size
        return self.settings.default_pool_size

    def min_pool_size_for(self, db: DatabaseConfig) -> int:
        """Return the database's min_pool_size, else the global one."""
        return _first(db.min_pool_size, self.settings.min_pool_size)

    def reserve_pool_for(self, db: DatabaseConfig, user: str | None = None) -> int:
        """Return the user's reserve_pool_size, else the database's reserve_pool, else
        the global reserve_pool_size."""
        user_cfg = self.users.get(user) if user is not None else None
        return _first(user_cfg.reserve_pool_size if user_cfg is not None else None,
                      db.reserve_pool, self.settings.reserve_pool_size)

    def server_lifetime_for(self, db: DatabaseConfig) -> float:
        """Return the database's server_lifetime, else the global one."""
        return _first(db.server_lifetime, self.settings.server_lifetime)

    def query_wait_timeout_for(self, db: DatabaseConfig, user: str) -> float:
        """Return the user's query_wait_timeout, else the database's, else the global
        one (PgBouncer's order)."""
        user_cfg = self.users.get(user)
        return _first(user_cfg.query_wait_timeout if user_cfg is not None else None,
                      db.query_wait_timeout, self.settings.query_wait_timeout)

    def client_timeouts_for(self, user: str) -> tuple[float, float, float, float]:
        """client_timeouts for a client logged in as ``user``."""
        return client_timeouts(self.settings, self.users.get(user))

    def max_db_connections_for(self, db: DatabaseConfig) -> int:
        """Return the database's max_db_connections, else the global one (0: unlimited)."""
        return _first(db.max_db_connections, self.settings.max_db_connections)

    def max_db_client_connections_for(self, db: DatabaseConfig) -> int:
        """Return the database's client limit, else the global one (0: unlimited)."""
        return _first(db.max_db_client_connections, self.settings.max_db_client_connections)

    def max_user_client_connections_for(self, user: str) -> int:
        """Return the user's client limit, else the global one (0: unlimited)."""
        user_cfg = self.users.get(user)
        override = user_cfg.max_user_client_connections if user_cfg is not None else None
        return _first(override, self.settings.max_user_client_connections)

    def max_user_connections_for(self, user: str) -> int:
        """Return the user's max_user_connections, else the global one (0: unlimited)."""
        user_cfg = self.users.get(user)
        override = user_cfg.max_user_connections if user_cfg is not None else None
        return _first(override, self.settings.max_user_connections)


def peer_pool_size(peer: PeerConfig, s: Settings) -> int:
    """How many cancels may be in flight to ``peer`` at once: its pool_size, else
    default_pool_size (PgBouncer's peer pools)."""
    return _first(peer.pool_size, s.default_pool_size)


def client_timeouts(s: Settings, user: UserConfig | None) -> tuple[float, float, float, float]:
    """(client_idle_timeout, idle_transaction_timeout, query_timeout,
    transaction_timeout) for a client whose [users] entry is ``user``: the entry's
    where set, else [pgbouncer]'s."""
    if user is None:
        return (s.client_idle_timeout, s.idle_transaction_timeout, s.query_timeout,
                s.transaction_timeout)
    return (_first(user.client_idle_timeout, s.client_idle_timeout),
            _first(user.idle_transaction_timeout, s.idle_transaction_timeout),
            _first(user.query_timeout, s.query_timeout),
            _first(user.transaction_timeout, s.transaction_timeout))


def _first(*values: Any) -> Any:
    """The first value that is set (not None): a more specific level's override.
    (A loop, not next() over a generator: several run at every login.)"""
    for value in values:
        if value is not None:
            return value
    return None
