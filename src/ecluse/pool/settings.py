"""PoolSettings: what one pool is configured with, and what in it names a server.

A pool's settings are resolved from the config by the registry and replaced
whole by a reload (Pool.reconfigure). Which of them say where and how a server
connection logs in (login_identity) decides whether a reload reconnects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ecluse.config.model import host_list
from ecluse.config.tls import ServerTls
from ecluse.pool.hosts import ROUND_ROBIN, HostPicker
from ecluse.tcpopts import TcpOptions


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Everything a pool needs to know, resolved from the config."""

    database: str  # the name clients use
    user: str  # the user the pool logs into the server as
    host: str | None  # one host or "a,b,c" (config/model.host_list)
    port: int
    server_dbname: str
    password: str | None
    mode: str  # "session" | "transaction" | "statement"
    pool_size: int
    min_pool_size: int
    reserve_pool: int
    reserve_pool_timeout: float
    server_params: Mapping[str, str]
    connect_query: str | None
    server_reset_query: str
    server_reset_query_always: bool
    server_check_query: str
    server_check_delay: float
    server_lifetime: float
    server_idle_timeout: float
    server_connect_timeout: float
    server_login_retry: float
    query_wait_timeout: float
    max_prepared_statements: int = 0
    server_tls: ServerTls | None = None  # None: server_tls_sslmode is disable
    tcp: TcpOptions | None = None  # socket options of its connections (tcpopts.py)
    load_balance_hosts: str = ROUND_ROBIN  # pool/hosts.py
    target_session_attrs: str = "any"
    server_down_wait: float = 0.0  # pool/launch.py rule 3


def login_identity(s: PoolSettings) -> tuple:
    """What a server connection was opened with: a change means a new connection.

    The host list and how it is used are part of it, as a changed host is:
    servers chosen under the old rules may be ones the new rules refuse.
    """
    return (s.host, s.port, s.server_dbname, s.user, s.password, dict(s.server_params),
            s.connect_query, s.server_tls, s.load_balance_hosts, s.target_session_attrs)


def host_picker(s: PoolSettings) -> HostPicker:
    """Where the connections of a pool with settings ``s`` go (pool/hosts.py)."""
    return HostPicker(host_list(s.host), round_robin=s.load_balance_hosts == ROUND_ROBIN)
