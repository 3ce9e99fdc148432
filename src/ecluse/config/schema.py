"""What each configuration key means: its field name and value parser.

Three tables, one per section: [pgbouncer] settings, options of a [databases]
entry and options of a [users] entry. Plus the PgBouncer settings that ecluse
knows by name but does not implement, which load into Settings.extra without a
warning so that an existing pgbouncer.ini loads cleanly; except those it cannot
honour at all (UNHONOURABLE), which warn, saying why, when set. A test checks that
SETTINGS covers every field of Settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from ecluse.config.model import AuthType, LogFormat, LogLevel, PoolMode, SslMode
from ecluse.config.values import (
    BadValue,
    enum_parser,
    int_parser,
    parse_bool,
    parse_list,
    parse_octal_mode,
    parse_optional_str,
    parse_seconds,
    parse_str,
    parse_tls_protocols,
)

Parser = Callable[[str], Any]

_count = int_parser(minimum=0)
_positive = int_parser(minimum=1)
_port = int_parser(minimum=1, maximum=65535)
_pool_mode = enum_parser(PoolMode)


def _seconds_or_unset(text: str) -> float | None:
    """A [databases]/[users] duration: -1 leaves it unset (the next level's value
    applies), as in PgBouncer."""
    return None if text.strip() == "-1" else parse_seconds(text)


_sslmode = enum_parser(SslMode)
_log_level = enum_parser(LogLevel)

# The facilities PgBouncer accepts for syslog_facility (logging.handlers.SysLogHandler
# knows them all by these names).
SYSLOG_FACILITIES = ("auth", "authpriv", "daemon", "user", "local0", "local1", "local2",
                     "local3", "local4", "local5", "local6", "local7")


def _parse_log_level(text: str) -> LogLevel | None:
    # Empty means "not set": the level then comes from verbose and -v/-q.
    return _log_level(text) if text else None


def _parse_syslog_facility(text: str) -> str:
    lowered = text.lower()
    if lowered not in SYSLOG_FACILITIES:
        raise BadValue("one of " + ", ".join(SYSLOG_FACILITIES))
    return lowered


# A run-time parameter's name: an identifier, or an extension's dotted one.
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)*")
# Startup packet keys that are no run-time parameters (PgBouncer refuses options).
_NOT_PARAMETERS = frozenset({"user", "database", "options", "replication"})


def _parse_hosts(text: str) -> str | None:
    """A [databases] host: one host, IP address or unix-socket directory, or a
    comma-separated list of them (PgBouncer's host list), kept as "a,b,c"."""
    if not text:
        return None
    hosts = [part.strip() for part in text.split(",")]
    if not all(hosts):
        raise BadValue("a host name, IP address or unix-socket directory, or a "
                       "comma-separated list of them without empty entries")
    return ",".join(hosts)


def _one_of(*choices: str) -> Parser:
    """A parser for one of ``choices``, case-insensitively, as PgBouncer's lookups."""
    expected = "one of " + ", ".join(choices)

    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise BadValue(expected)
        return text.lower()

    return parse


def _parse_tracked_names(text: str) -> tuple[str, ...]:
    names = parse_list(text)
    for name in names:
        if not _PARAMETER_NAME.fullmatch(name) or name.lower() in _NOT_PARAMETERS:
            raise BadValue("a comma-separated list of run-time parameter names "
                           "(not user, database, options or replication)")
    return names


SETTINGS: MappingProxyType[str, Parser] = MappingProxyType(
    {
        "listen_addr": parse_str,
        "listen_port": _port,
        "unix_socket_dir": parse_str,
        "unix_socket_mode": parse_octal_mode,
        "auth_type": enum_parser(AuthType),
        "auth_file": parse_optional_str,
        "auth_user": parse_optional_str,
        "auth_query": parse_str,
        "auth_dbname": parse_optional_str,
        "auth_hba_file": parse_optional_str,
        "auth_ident_file": parse_optional_str,
        "admin_users": parse_list,
        "stats_users": parse_list,
        "pool_mode": _pool_mode,
        "max_client_conn": _count,
        "default_pool_size": _count,
        "min_pool_size": _count,
        "reserve_pool_size": _count,
        "reserve_pool_timeout": parse_seconds,
        "max_db_connections": _count,
        "max_user_connections": _count,
        "max_db_client_connections": _count,
        "max_user_client_connections": _count,
        "server_reset_query": parse_str,
        "server_reset_query_always": parse_bool,
        "server_check_query": parse_str,
        "server_check_delay": parse_seconds,
        "server_fast_close": parse_bool,
        "server_lifetime": parse_seconds,
        "server_idle_timeout": parse_seconds,
        "server_connect_timeout": parse_seconds,
        "server_login_retry": parse_seconds,
        "server_down_wait": parse_seconds,
        "primary_after_write": parse_seconds,
        "scram_iterations": _positive,
        "dns_max_ttl": parse_seconds,
        "dns_nxdomain_ttl": parse_seconds,
        "query_timeout": parse_seconds,
        "query_wait_timeout": parse_seconds,
        "query_wait_notify": parse_seconds,
        "cancel_wait_timeout": parse_seconds,
        "client_idle_timeout": parse_seconds,
        "client_login_timeout": parse_seconds,
        "autodb_idle_timeout": parse_seconds,
        "idle_transaction_timeout": parse_seconds,
        "transaction_timeout": parse_seconds,
        "ignore_startup_parameters": parse_list,
        "track_extra_parameters": _parse_tracked_names,
        "application_name_add_host": parse_bool,
        "disable_pqexec": parse_bool,
        "logfile": parse_optional_str,
        "log_level": _parse_log_level,
        "log_format": enum_parser(LogFormat),
        "syslog": parse_bool,
        "syslog_ident": parse_str,
        "syslog_facility": _parse_syslog_facility,
        "pidfile": parse_optional_str,
        "max_packet_size": _positive,
        "max_startup_packet_size": _positive,
        "shutdown_timeout": parse_seconds,
        "workers": int_parser(minimum=1, maximum=256),
        "peer_id": int_parser(minimum=0, maximum=255),
        "drain_rate": _positive,
        "verbose": _count,
        "user": parse_optional_str,
        "server_round_robin": parse_bool,
        "log_connections": parse_bool,
        "log_disconnections": parse_bool,
        "log_pooler_errors": parse_bool,
        "stats_period": parse_seconds,
        "log_stats": parse_bool,
        "listen_backlog": int_parser(minimum=1, maximum=65535),
        "so_reuseport": parse_bool,
        "tcp_defer_accept": parse_bool,
        "tcp_keepalive": parse_bool,
        # Linux's bounds (net/ipv4/tcp.c: MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL,
        # MAX_TCP_KEEPCNT); 0 leaves the OS default.
        "tcp_keepidle": int_parser(minimum=0, maximum=32767),
        "tcp_keepintvl": int_parser(minimum=0, maximum=32767),
        "tcp_keepcnt": int_parser(minimum=0, maximum=127),
        "tcp_user_timeout": int_parser(minimum=0, maximum=2147483647),
        "tcp_socket_buffer": int_parser(minimum=0, maximum=2147483647),
        "unix_socket_group": parse_optional_str,
        "max_prepared_statements": _count,
        "client_tls_sslmode": _sslmode,
        "client_tls_key_file": parse_optional_str,
        "client_tls_cert_file": parse_optional_str,
        "client_tls_ca_file": parse_optional_str,
        "client_tls_protocols": parse_tls_protocols,
        "client_tls_ciphers": parse_str,
        "client_tls_ecdhcurve": parse_str,
        "client_tls_dheparams": _one_of("none", "auto", "legacy"),
        "server_tls_sslmode": _sslmode,
        "server_tls_key_file": parse_optional_str,
        "server_tls_cert_file": parse_optional_str,
        "server_tls_ca_file": parse_optional_str,
        "server_tls_protocols": parse_tls_protocols,
        "server_tls_ciphers": parse_str,
        "metrics_listen": parse_str,
        "api_token": parse_str,
    }
)

# PgBouncer settings accepted and kept as text in Settings.extra. Moving one
# into SETTINGS (and a field of Settings) is how it becomes implemented.
KNOWN_UNIMPLEMENTED: frozenset[str] = frozenset(
    {
        "auth_ldap_options",
        "client_tls13_ciphers",
        "conffile",
        "dns_zone_check_period",
        "job_name",
        "pkt_buf",
        "resolv_conf",
        "sbuf_loopcnt",
        "server_tls13_ciphers",
        "service_name",
        "suspend_timeout",
    }
)

# Known settings ecluse cannot honour at all, with why: set to anything but
# PgBouncer's default (empty), they are a warning at their line saying so.
UNHONOURABLE: MappingProxyType[str, str] = MappingProxyType({
    name: "Python's ssl module cannot set TLS 1.3 cipher suites (OpenSSL has "
          "SSL_CTX_set_ciphersuites, ssl has no binding for it): OpenSSL's default "
          "TLS 1.3 suites are used; *_tls_ciphers applies to TLS 1.2 and older only"
    for name in ("client_tls13_ciphers", "server_tls13_ciphers")
})

# Options of a [databases] entry. Both spellings of the reserve pool are
# PgBouncer's: "reserve_pool" is the older one, still accepted there.
DATABASE_OPTIONS: MappingProxyType[str, tuple[str, Parser]] = MappingProxyType(
    {
        "host": ("host", _parse_hosts),
        "port": ("port", _port),
        "load_balance_hosts": ("load_balance_hosts", _one_of("round-robin", "disable")),
        "target_session_attrs": ("target_session_attrs",
                                 _one_of("any", "read-write", "read-only", "primary", "standby")),
        "dbname": ("dbname", parse_optional_str),
        "user": ("user", parse_optional_str),
        "password": ("password", parse_str),
        "pool_size": ("pool_size", _count),
        "min_pool_size": ("min_pool_size", _count),
        "reserve_pool": ("reserve_pool", _count),
        "reserve_pool_size": ("reserve_pool", _count),
        "pool_mode": ("pool_mode", _pool_mode),
        "max_db_connections": ("max_db_connections", _count),
        "max_db_client_connections": ("max_db_client_connections", _count),
        "connect_query": ("connect_query", parse_str),
        "client_encoding": ("client_encoding", parse_str),
        "datestyle": ("datestyle", parse_str),
        "timezone": ("timezone", parse_str),
        "application_name": ("application_name", parse_str),
        "auth_user": ("auth_user", parse_optional_str),
        "auth_dbname": ("auth_dbname", parse_optional_str),
        "auth_query": ("auth_query", parse_str),
        "server_lifetime": ("server_lifetime", parse_seconds),
        "query_wait_timeout": ("query_wait_timeout", _seconds_or_unset),
        "read_db": ("read_db", parse_optional_str),
        "shards": ("shards", parse_list),
        "sharding_key": ("sharding_key", parse_optional_str),
        "sharding_function": ("sharding_function", _one_of("pg_bigint_hash", "pg_text_hash")),
        "default_shard": ("default_shard", _count),
    }
)

# Options of a [users] entry.
PEER_OPTIONS: MappingProxyType[str, tuple[str, Parser]] = MappingProxyType(
    {
        "host": ("host", parse_str),
        "port": ("port", _port),
        "pool_size": ("pool_size", _positive),
    }
)

USER_OPTIONS: MappingProxyType[str, tuple[str, Parser]] = MappingProxyType(
    {
        "pool_mode": ("pool_mode", _pool_mode),
        "max_user_connections": ("max_user_connections", _count),
        "max_user_client_connections": ("max_user_client_connections", _count),
        "pool_size": ("pool_size", _count),
        "reserve_pool_size": ("reserve_pool_size", _count),
        "query_timeout": ("query_timeout", _seconds_or_unset),
        "query_wait_timeout": ("query_wait_timeout", _seconds_or_unset),
        "idle_transaction_timeout": ("idle_transaction_timeout", _seconds_or_unset),
        "transaction_timeout": ("transaction_timeout", _seconds_or_unset),
        "client_idle_timeout": ("client_idle_timeout", _seconds_or_unset),
    }
)
