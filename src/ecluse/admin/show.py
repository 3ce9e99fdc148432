"""SHOW result builders for the admin console: PgBouncer's columns, ecluse's figures.

Each builder reads a worker's ClientContext (config, pools, client sessions)
and returns the RowDescription and DataRows of one result, without
CommandComplete; admin/console.py frames the reply.

Rules:
1. Column names, order and types are PgBouncer's (src/admin.c, src/stats.c;
   documented at https://www.pgbouncer.org/usage.html), so that existing
   exporters and scripts read ecluse unchanged.
2. Never invent a figure: a column ecluse has no honest value for is 0 (or
   NULL/empty where PgBouncer itself sends that) and is named in
   NEUTRAL_COLUMNS.
3. Read only: nothing here changes a pool or a session.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ecluse import __version__
from ecluse.config.diff import settable
from ecluse.config.model import Settings
from ecluse.protocol import backend as be
from ecluse.protocol.messages import RowDescriptionField
from ecluse.stats.period import totals_by_database

if TYPE_CHECKING:
    from ecluse.frontend.context import ClientContext
    from ecluse.pool.pool import Pool

# PgBouncer's tuple-descriptor letters (pktbuf_write_RowDescription):
# s text, i int4, q int8, N numeric, T timestamp sent as text.
_TYPES = {"s": (25, -1), "T": (25, -1), "i": (23, 4), "q": (20, 8), "N": (1700, -1)}

Columns = Sequence[tuple[str, str]]

VERSION_STRING = f"ecluse {__version__}"

# SHOW STATS and friends (PgBouncer src/stats.c), read from stats/counters.py;
# averages are over the last stats_period (stats/period.py).
STATS_FIELDS = ("server_assignment_count", "xact_count", "query_count", "received", "sent",
                "xact_time", "query_time", "wait_time", "client_parse_count",
                "server_parse_count", "bind_count", "client_connect_count")
_TOTAL_NAMES = {"received": "total_received", "sent": "total_sent"}
_AVG_NAMES = {"received": "avg_recv", "sent": "avg_sent"}
_SHORT_NAMES = {"received": "bytes_received", "sent": "bytes_sent"}
_COUNTER_OF = {"xact_time": "xact_time_us", "query_time": "query_time_us",
               "wait_time": "wait_time_us"}  # PoolStats' names for the time fields

# Columns always sent as 0 (or empty) because ecluse has no honest figure for
# them yet. Keyed by command; a test checks each exists in that command's columns.
NEUTRAL_COLUMNS: dict[str, frozenset[str]] = {
    # Cancel requests are forwarded at once, never queued: there is no
    # cancel-request list to count. Servers being cancelled are in sv_used.
    "SHOW POOLS": frozenset({"cl_active_cancel_req", "cl_waiting_cancel_req",
                             "sv_active_cancel", "sv_being_canceled"}),
    # ecluse allocates no slabs and has no DNS cache (asyncio resolves). These
    # are rows of SHOW LISTS (its columns are list, items).
    "SHOW LISTS": frozenset({"free_clients", "free_servers", "dns_names", "dns_zones",
                             "dns_queries", "dns_pending", "peers", "peer_pools"}),
    # remote_pid of a client: ecluse does not read peer credentials.
    "SHOW CLIENTS": frozenset({"remote_pid", "prepared_statements"}),
    "SHOW SERVERS": frozenset({"wait", "wait_us"}),
}


def encode_result(columns: Columns, rows: Iterable[Sequence[Any]]) -> bytes:
    """Encode a RowDescription and one DataRow per row (values as text, None as NULL)."""
    fields = []
    for name, kind in columns:
        oid, size = _TYPES[kind]
        fields.append(RowDescriptionField(name, type_oid=oid, type_size=size))
    out = [be.encode_row_description(fields)]
    for row in rows:
        out.append(be.encode_data_row(None if v is None else _text(v).encode() for v in row))
    return b"".join(out)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _timestamp(monotonic: float) -> str:
    """Format a time.monotonic() instant as PgBouncer prints times (UTC here)."""
    wall = time.time() - (time.monotonic() - monotonic)
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host:
        return addr or "unix", 0
    return host, int(port) if port.isdigit() else 0


# --- SHOW VERSION / CONFIG ---------------------------------------------------

def show_version(ctx: ClientContext) -> bytes:
    return encode_result([("version", "s")], [[VERSION_STRING]])


def show_config(ctx: ClientContext) -> bytes:
    settings = ctx.config.settings
    rows = []
    for f in dataclasses.fields(Settings):
        if f.name == "extra":
            continue
        default = f.default if f.default is not dataclasses.MISSING else ""
        value = getattr(settings, f.name)
        if f.name == "unix_socket_mode":  # PgBouncer prints it in octal
            value, default = f"0{value:o}", f"0{default:o}"
        rows.append([f.name, _none_empty(value), _none_empty(default),
                     "yes" if settable(f.name) else "no"])
    for key, value in sorted(settings.extra.items()):
        rows.append([key, value, "", "no"])
    return encode_result([("key", "s"), ("value", "s"), ("default", "s"), ("changeable", "s")],
                         rows)


def _none_empty(value: Any) -> Any:
    return "" if value is None else value


# --- SHOW DATABASES / USERS / LISTS ------------------------------------------

_DATABASES = (("name", "s"), ("host", "s"), ("port", "i"), ("database", "s"),
              ("force_user", "s"), ("pool_size", "i"), ("min_pool_size", "i"),
              ("reserve_pool_size", "i"), ("server_lifetime", "i"), ("pool_mode", "s"),
              ("load_balance_hosts", "s"), ("max_connections", "i"),
              ("current_connections", "i"), ("max_client_connections", "i"),
              ("current_client_connections", "i"), ("paused", "i"), ("disabled", "i"))


def show_databases(ctx: ClientContext) -> bytes:
    cfg = ctx.config
    rows = []
    for db in cfg.databases.values():
        user = db.user or ""
        paused = ctx.registry.paused_all or db.name in ctx.registry.paused_dbs
        disabled = db.name in ctx.registry.disabled_dbs
        rows.append([
            db.name, db.host, db.port, db.server_dbname(), db.user,
            cfg.pool_size_for(db, user), cfg.min_pool_size_for(db), cfg.reserve_pool_for(db),
            int(cfg.settings.server_lifetime),
            db.pool_mode.value if db.pool_mode is not None else None,
            None,  # load_balance_hosts: PgBouncer sends NULL for a single host
            cfg.max_db_connections_for(db), ctx.registry.db_server_count(db.name),
            cfg.max_db_client_connections_for(db), ctx.db_clients[db.name],
            int(paused), int(disabled),
        ])
    return encode_result(_DATABASES, rows)


_USERS = (("name", "s"), ("pool_size", "s"), ("reserve_pool_size", "s"), ("pool_mode", "s"),
          ("max_user_connections", "i"), ("current_connections", "i"),
          ("max_user_client_connections", "i"), ("current_client_connections", "i"))


def show_users(ctx: ClientContext) -> bytes:
    cfg = ctx.config
    names = sorted(set(cfg.users) | set(cfg.auth) | set(ctx.user_clients))
    rows = []
    for name in names:
        user = cfg.users.get(name)
        rows.append([
            name,
            str(user.pool_size) if user is not None and user.pool_size is not None else "",
            "",  # ecluse has no per-user reserve_pool_size
            user.pool_mode.value if user is not None and user.pool_mode is not None else None,
            cfg.max_user_connections_for(name), ctx.registry.user_server_count(name),
            cfg.max_user_client_connections_for(name), ctx.user_clients[name],
        ])
    return encode_result(_USERS, rows)


def show_lists(ctx: ClientContext) -> bytes:
    pools = list(ctx.registry)
    clients = [c for c in ctx.clients]
    login = sum(1 for c in clients if c.state.value in ("login", "auth", "welcome"))
    servers = sum(p.total() - p.launching for p in pools)
    users = set(ctx.config.users) | set(ctx.config.auth) | {p.settings.user for p in pools}
    rows = [("databases", len(ctx.config.databases)), ("users", len(users)), ("peers", 0),
            ("pools", len(pools)), ("peer_pools", 0), ("free_clients", 0),
            ("used_clients", len(clients)), ("login_clients", login), ("free_servers", 0),
            ("used_servers", servers), ("dns_names", 0), ("dns_zones", 0),
            ("dns_queries", 0), ("dns_pending", 0)]
    return encode_result([("list", "s"), ("items", "i")], rows)


# --- SHOW POOLS / CLIENTS / SERVERS ------------------------------------------

_POOLS = (("database", "s"), ("user", "s"), ("cl_active", "i"), ("cl_waiting", "i"),
          ("cl_active_cancel_req", "i"), ("cl_waiting_cancel_req", "i"), ("sv_active", "i"),
          ("sv_active_cancel", "i"), ("sv_being_canceled", "i"), ("sv_idle", "i"),
          ("sv_used", "i"), ("sv_tested", "i"), ("sv_login", "i"), ("maxwait", "i"),
          ("maxwait_us", "i"), ("pool_mode", "s"), ("load_balance_hosts", "s"))


def show_pools(ctx: ClientContext) -> bytes:
    active: dict[int, int] = {}
    waiting: dict[int, int] = {}
    for client in ctx.clients:
        pool = client.pool
        if pool is None:
            continue
        state = client.state.value
        if state == "waiting":
            waiting[id(pool)] = waiting.get(id(pool), 0) + 1
        elif state in ("idle", "active"):
            active[id(pool)] = active.get(id(pool), 0) + 1
    rows = []
    for pool in ctx.registry:
        wait = pool.waiters.oldest_wait()
        tested = sum(1 for s in pool.used if s.state.value == "tested")
        rows.append([
            pool.settings.database, pool.settings.user,
            active.get(id(pool), 0), waiting.get(id(pool), 0), 0, 0,
            len(pool.active), 0, 0, len(pool.idle), len(pool.used) - tested, tested,
            len(pool.login) + pool.launching,
            int(wait), int((wait - int(wait)) * 1_000_000), pool.settings.mode, None,
        ])
    return encode_result(_POOLS, rows)


SOCKET_COLUMNS = (("type", "s"), ("user", "s"), ("database", "s"), ("replication", "s"),
                  ("state", "s"), ("addr", "s"), ("port", "i"), ("local_addr", "s"),
                  ("local_port", "i"), ("connect_time", "T"), ("request_time", "T"),
                  ("wait", "i"), ("wait_us", "i"), ("close_needed", "i"), ("ptr", "s"),
                  ("link", "s"), ("remote_pid", "i"), ("tls", "s"), ("application_name", "s"),
                  ("prepared_statements", "i"), ("id", "i"))


def show_clients(ctx: ClientContext) -> bytes:
    now = time.monotonic()
    rows = []
    for c in sorted(ctx.clients, key=lambda c: c.connected_at):
        state = c.state.value
        if state not in ("idle", "active", "waiting"):
            continue  # PgBouncer lists logged-in clients only
        addr, port = _split_addr(c.peer)
        local = ""
        if c.transport is not None:
            sock = c.transport.get_extra_info("sockname")
            local = f"{sock[0]}:{sock[1]}" if isinstance(sock, tuple) else ""
        laddr, lport = _split_addr(local)
        waited = now - c.request_started if state == "waiting" and c.request_started else 0.0
        rows.append([
            "C", c.user, c.database, "none", "idle" if c.server is None and state == "active"
            else state, addr, port, laddr, lport,
            _timestamp(c.connected_at), _timestamp(c.last_activity),
            int(waited), int((waited - int(waited)) * 1_000_000), 0,
            f"{id(c):#x}", f"{id(c.server):#x}" if c.server is not None else "", 0,
            "TLS" if c.tls else "", c.params.get("application_name", ""),
            0,  # prepared_statements: the client-side count is not kept apart yet
            c.id,  # what KILL_CLIENT takes
        ])
    return encode_result(SOCKET_COLUMNS, rows)


def show_servers(ctx: ClientContext) -> bytes:
    rows = []
    for pool in ctx.registry:
        for server in _servers_of(pool):
            state = server.state.value
            laddr, lport = _split_addr(server.local_addr)
            client = server.client
            app = getattr(client, "params", {}).get("application_name", "") if client else ""
            rows.append([
                "S", pool.settings.user, pool.settings.database, "none",
                "new" if state == "login" else state,
                server.host, server.port, laddr, lport,
                _timestamp(server.created_at), _timestamp(server.last_used),
                0, 0, int(server.close_when_released),
                f"{id(server):#x}", f"{id(client):#x}" if client is not None else "",
                server.key.process_id if server.key is not None else 0,
                "TLS" if server.tls else "", app, len(server.prepared),
                id(server) & 0x7FFFFFFF,
            ])
    return encode_result(SOCKET_COLUMNS, rows)


def _servers_of(pool: Pool) -> list:
    return [*pool.active, *pool.idle, *pool.used, *pool.login]


# --- SHOW STATE ----------------------------------------------------------------

def show_state(ctx: ClientContext) -> bytes:
    """The pooler-wide pause mode, as PgBouncer's one of active/paused/suspended.

    PAUSE of a single database leaves the pooler "active", as in PgBouncer.
    """
    registry = ctx.registry
    suspended = registry.suspended
    paused = registry.paused_all and not suspended
    active = not suspended and not paused
    return encode_result([("key", "s"), ("value", "s")], [
        ("active", "yes" if active else "no"), ("paused", "yes" if paused else "no"),
        ("suspended", "yes" if suspended else "no")])


# --- SHOW STATS ----------------------------------------------------------------

def _totals(ctx: ClientContext) -> list[tuple[str, dict[str, int]]]:
    """Per-database counters in SHOW STATS' field order (times in microseconds)."""
    merged = totals_by_database(ctx.registry)
    return [(db, _stats_row(stats.as_dict())) for db, stats in sorted(merged.items())]


def _stats_row(counts: dict[str, int]) -> list[int]:
    return [counts.get(_COUNTER_OF.get(f, f), 0) for f in STATS_FIELDS]


def _averages(ctx: ClientContext) -> dict[str, list[int]]:
    return {db: _stats_row(avg) for db, avg in ctx.stats_averages.items()}


def show_stats(ctx: ClientContext) -> bytes:
    names = [_TOTAL_NAMES.get(f, f"total_{f}") for f in STATS_FIELDS] + \
        [_AVG_NAMES.get(f, f"avg_{f}") for f in STATS_FIELDS]
    columns = [("database", "s")] + [(n, "N") for n in names]
    averages = _averages(ctx)
    rows = [[db, *totals, *averages.get(db, [0] * len(STATS_FIELDS))]
            for db, totals in _totals(ctx)]
    return encode_result(columns, rows)


def show_stats_totals(ctx: ClientContext) -> bytes:
    columns = [("database", "s")] + [(_SHORT_NAMES.get(f, f), "N") for f in STATS_FIELDS]
    return encode_result(columns, [[db, *totals] for db, totals in _totals(ctx)])


def show_stats_averages(ctx: ClientContext) -> bytes:
    columns = [("database", "s")] + [(_SHORT_NAMES.get(f, f), "N") for f in STATS_FIELDS]
    averages = _averages(ctx)
    rows = [[db, *averages.get(db, [0] * len(STATS_FIELDS))] for db, _ in _totals(ctx)]
    return encode_result(columns, rows)
