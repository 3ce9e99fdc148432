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
from ecluse.config.diff import SECRET_SETTINGS, settable
from ecluse.config.model import Settings, peer_pool_size
from ecluse.protocol import backend as be
from ecluse.protocol.messages import RowDescriptionField
from ecluse.stats.period import totals_by_database

if TYPE_CHECKING:
    from ecluse.frontend.context import ClientContext
    from ecluse.pool.pool import Pool

# PgBouncer's tuple-descriptor letters (pktbuf_write_RowDescription):
# s text, i int4, q int8, N numeric, T timestamp sent as text, b bytea.
_TYPES = {"s": (25, -1), "T": (25, -1), "i": (23, 4), "q": (20, 8), "N": (1700, -1),
          "b": (17, -1)}

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
    # ecluse allocates no slabs and watches no DNS zones (its resolver is the
    # system's). These are rows of SHOW LISTS (its columns are list, items).
    "SHOW LISTS": frozenset({"free_clients", "free_servers", "dns_zones", "dns_pending"}),
    # A peer's cancels log in to nothing: each is one connection, sent and closed.
    "SHOW PEER_POOLS": frozenset({"sv_login"}),
    # remote_pid of a client: ecluse does not read peer credentials.
    "SHOW CLIENTS": frozenset({"remote_pid", "prepared_statements"}),
    "SHOW SERVERS": frozenset({"wait", "wait_us"}),
    # PgBouncer's debug columns are positions in its own I/O buffers; ecluse's
    # buffers are asyncio's. pkt_avail (bytes received and held for a server)
    # and send_avail (bytes queued in the transport) are real; the rest are 0.
    "SHOW SOCKETS": frozenset({"remote_pid", "wait", "wait_us", "recv_pos", "pkt_pos",
                               "pkt_remain", "send_pos", "send_remain"}),
    "SHOW ACTIVE_SOCKETS": frozenset({"remote_pid", "wait", "wait_us", "recv_pos",
                                      "pkt_pos", "pkt_remain", "send_pos", "send_remain"}),
}

# Commands whose result always has the columns and no rows, and why.
EMPTY_RESULTS: dict[str, str] = {
    # PgBouncer lists its sockets for an online restart (pgbouncer -R hands them
    # to the new process with SCM_RIGHTS). ecluse restarts differently (the
    # supervisor keeps the listening sockets); listing client and server fds
    # with their cancel keys would hand secrets out for no use.
    "SHOW FDS": "PgBouncer lists what its -R takeover passes; ecluse has no -R "
                "(a roll-over hands clients over between its own workers instead)",
    # PgBouncer's slab allocator caches; ecluse allocates Python objects.
    "SHOW MEM": "ecluse has no slab caches",
    # PgBouncer's zone serial checks (dns_zone_check_period) need SOA queries the
    # system resolver cannot make; ecluse's cache (server/dns.py) has no zones.
    "SHOW DNS_ZONES": "ecluse watches no DNS zones",
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
        if f.name in SECRET_SETTINGS and value:
            value = "********"  # stats_users may read SHOW CONFIG
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
            int(cfg.server_lifetime_for(db)),
            db.pool_mode.value if db.pool_mode is not None else None,
            # PgBouncer's value only for a host list, NULL for a single host.
            db.load_balance_hosts if db.has_host_list() else None,
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
            # NULL when the user has no override, as PgBouncer.
            str(user.pool_size) if user is not None and user.pool_size is not None else None,
            str(user.reserve_pool_size)
            if user is not None and user.reserve_pool_size is not None else None,
            user.pool_mode.value if user is not None and user.pool_mode is not None else None,
            cfg.max_user_connections_for(name), ctx.registry.user_server_count(name),
            cfg.max_user_client_connections_for(name), ctx.user_clients[name],
        ])
    return encode_result(_USERS, rows)


def show_lists(ctx: ClientContext) -> bytes:
    pools = list(ctx.registry)
    clients = visible_clients(ctx)
    login = sum(1 for c in clients if c.state.value in ("login", "auth", "welcome"))
    servers = sum(p.total() - p.launching for p in pools)
    users = set(ctx.config.users) | set(ctx.config.auth) | {p.settings.user for p in pools}
    peers = len(_peers(ctx))
    rows = [("databases", len(ctx.config.databases)), ("users", len(users)), ("peers", peers),
            ("pools", len(pools)), ("peer_pools", peers), ("free_clients", 0),
            ("used_clients", len(clients)), ("login_clients", login), ("free_servers", 0),
            ("used_servers", servers), ("dns_names", len(ctx.registry.dns)),
            ("dns_zones", 0), ("dns_queries", ctx.registry.dns.pending()),
            ("dns_pending", 0)]
    return encode_result([("list", "s"), ("items", "i")], rows)


# --- SHOW PEERS / PEER_POOLS -----------------------------------------------------

def _peers(ctx: ClientContext) -> list:
    """The [peers] entries other than this ecluse itself (PgBouncer ignores its own)."""
    return [p for peer_id, p in sorted(ctx.config.peers.items())
            if peer_id != ctx.config.settings.peer_id]


def show_peers(ctx: ClientContext) -> bytes:
    settings = ctx.config.settings
    return encode_result((("peer_id", "i"), ("host", "s"), ("port", "i"), ("pool_size", "i")),
                         [(p.peer_id, p.host, p.port, peer_pool_size(p, settings))
                          for p in _peers(ctx)])


def show_peer_pools(ctx: ClientContext) -> bytes:
    """Per peer: cancels passed on and not yet answered (each its own connection to
    the peer), and those waiting for one of the peer's pool_size places."""
    rows = []
    for peer in _peers(ctx):
        active, waiting = ctx.peer_cancels.counts(peer.peer_id) \
            if ctx.peer_cancels is not None else (0, 0)
        rows.append((str(peer.peer_id), active, waiting, active, 0))
    return encode_result((("database", "s"), ("cl_active_cancel_req", "i"),
                          ("cl_waiting_cancel_req", "i"), ("sv_active_cancel", "i"),
                          ("sv_login", "i")), rows)


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
            int(wait), int((wait - int(wait)) * 1_000_000), pool.settings.mode,
            # As SHOW DATABASES: NULL for a single host.
            pool.settings.load_balance_hosts if len(pool.hosts) > 1 else None,
        ])
    return encode_result(_POOLS, rows)


SOCKET_COLUMNS = (("type", "s"), ("user", "s"), ("database", "s"), ("replication", "s"),
                  ("state", "s"), ("addr", "s"), ("port", "i"), ("local_addr", "s"),
                  ("local_port", "i"), ("connect_time", "T"), ("request_time", "T"),
                  ("wait", "i"), ("wait_us", "i"), ("close_needed", "i"), ("ptr", "s"),
                  ("link", "s"), ("remote_pid", "i"), ("tls", "s"), ("application_name", "s"),
                  ("prepared_statements", "i"), ("id", "i"))


def _client_row(c: Any, now: float, state: str) -> list[Any]:
    """One client's SOCKET_COLUMNS, ``state`` as the command names it."""
    addr, port = _split_addr(c.peer)
    local = ""
    if c.transport is not None:
        sock = c.transport.get_extra_info("sockname")
        local = f"{sock[0]}:{sock[1]}" if isinstance(sock, tuple) else ""
    laddr, lport = _split_addr(local)
    waiting = c.state.value == "waiting"
    waited = now - c.request_started if waiting and c.request_started else 0.0
    return [
        "C", c.user, c.database, "none", state, addr, port, laddr, lport,
        _timestamp(c.connected_at), _timestamp(c.last_activity),
        int(waited), int((waited - int(waited)) * 1_000_000), 0,
        f"{id(c):#x}", f"{id(c.server):#x}" if c.server is not None else "", 0,
        "TLS" if c.tls else "", c.params.get("application_name", ""),
        0,  # prepared_statements: the client-side count is not kept apart yet
        c.id,  # what KILL_CLIENT takes
    ]


def visible_clients(ctx: ClientContext) -> list[Any]:
    """The worker's clients but the links of other workers of the node (admin/node.py)."""
    return [c for c in ctx.clients
            if getattr(c, "console", None) is None or not c.console.local]


def show_clients(ctx: ClientContext) -> bytes:
    now = time.monotonic()
    rows = []
    for c in sorted(visible_clients(ctx), key=lambda c: c.connected_at):
        state = c.state.value
        if state not in ("idle", "active", "waiting"):
            continue  # PgBouncer lists logged-in clients only
        shown = "idle" if c.server is None and state == "active" else state
        rows.append(_client_row(c, now, shown))
    return encode_result(SOCKET_COLUMNS, rows)


def _server_row(pool: Pool, server: Any, state: str) -> list[Any]:
    """One server's SOCKET_COLUMNS, ``state`` as the command names it."""
    laddr, lport = _split_addr(server.local_addr)
    client = server.client
    app = getattr(client, "params", {}).get("application_name", "") if client else ""
    return [
        "S", pool.settings.user, pool.settings.database, "none", state,
        server.host, server.port, laddr, lport,
        _timestamp(server.created_at), _timestamp(server.last_used),
        0, 0, int(server.close_when_released),
        f"{id(server):#x}", f"{id(client):#x}" if client is not None else "",
        server.key.process_id if server.key is not None else 0,
        "TLS" if server.tls else "", app, len(server.prepared),
        server.id,
    ]


def show_servers(ctx: ClientContext) -> bytes:
    rows = []
    for pool in ctx.registry:
        for server in _servers_of(pool):
            state = server.state.value
            rows.append(_server_row(pool, server, "new" if state == "login" else state))
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


# --- SHOW TOTALS ---------------------------------------------------------------

# SHOW TOTALS' row names for STATS_FIELDS (PgBouncer's PgStats member names).
_TOTALS_NAMES = {"received": "client_bytes", "sent": "server_bytes",
                 "client_parse_count": "ps_client_parse_count",
                 "server_parse_count": "ps_server_parse_count", "bind_count": "ps_bind_count"}
# An average time is per transaction, query or assignment: across databases it
# is weighted by how many of those each database had per second.
_TIME_WEIGHT = {"xact_time": "xact_count", "query_time": "query_count",
                "wait_time": "server_assignment_count"}


def show_totals(ctx: ClientContext) -> bytes:
    """SHOW STATS summed over every database, as name/value rows (PgBouncer 1.23+).

    Totals are exact sums. Averages: rates are summed; time averages are the
    databases' averages weighted by their per-second counts (which are whole
    numbers, so a database under one event per second weighs nothing unless
    every database does, then their plain mean is given).
    """
    totals = [0] * len(STATS_FIELDS)
    for _db, row in _totals(ctx):
        totals = [a + b for a, b in zip(totals, row, strict=True)]
    averages = list(_averages(ctx).values())
    rows = [(f"total_{_TOTALS_NAMES.get(f, f)}", v) for f, v in zip(STATS_FIELDS, totals,
                                                                     strict=True)]
    for i, f in enumerate(STATS_FIELDS):
        rows.append((f"avg_{_TOTALS_NAMES.get(f, f)}", _total_average(averages, i, f)))
    return encode_result([("name", "s"), ("value", "N")], rows)


def _total_average(averages: list[list[int]], i: int, field: str) -> int:
    values = [row[i] for row in averages]
    weight_field = _TIME_WEIGHT.get(field)
    if weight_field is None:
        return sum(values)
    w = STATS_FIELDS.index(weight_field)
    weights = [row[w] for row in averages]
    if sum(weights) > 0:
        return sum(v * n for v, n in zip(values, weights, strict=True)) // sum(weights)
    nonzero = [v for v in values if v]
    return sum(nonzero) // len(nonzero) if nonzero else 0


# --- SHOW SOCKETS / ACTIVE_SOCKETS -----------------------------------------------

DEBUG_SOCKET_COLUMNS = (*SOCKET_COLUMNS, ("recv_pos", "i"), ("pkt_pos", "i"),
                        ("pkt_remain", "i"), ("send_pos", "i"), ("send_remain", "i"),
                        ("pkt_avail", "i"), ("send_avail", "i"))
_CLIENT_SOCKET_STATE = {"idle": "cl_active", "active": "cl_active", "waiting": "cl_waiting",
                        "login": "cl_login", "auth": "cl_login", "welcome": "cl_login"}


def _buffered(conn: Any) -> tuple[int, int]:
    """Bytes received and held for the peer, bytes queued for sending."""
    held = getattr(conn, "_pending_bytes", 0)  # a client's requests waiting for a server
    transport = conn.transport
    queued = transport.get_write_buffer_size() if transport is not None else 0
    return held, queued


def _debug_sockets(ctx: ClientContext, only_active: bool) -> bytes:
    now = time.monotonic()
    rows = []
    for pool in ctx.registry:
        for state, servers in (("sv_active", pool.active), ("sv_idle", pool.idle),
                               ("sv_used", pool.used), ("sv_login", pool.login)):
            for server in list(servers):
                held, queued = _buffered(server)
                if only_active and not (held or queued):
                    continue
                shown = "sv_tested" if server.state.value == "tested" else state
                rows.append([*_server_row(pool, server, shown), 0, 0, 0, 0, 0, held, queued])
    for c in sorted(ctx.clients, key=lambda c: c.connected_at):
        state = _CLIENT_SOCKET_STATE.get(c.state.value)
        if state is None or c.console is not None:
            continue  # closed, or a console client (PgBouncer lists no admin socket)
        held, queued = _buffered(c)
        if only_active and not (held or queued):
            continue
        rows.append([*_client_row(c, now, state), 0, 0, 0, 0, 0, held, queued])
    return encode_result(DEBUG_SOCKET_COLUMNS, rows)


def show_sockets(ctx: ClientContext) -> bytes:
    """Every client and server socket, with PgBouncer's buffer columns."""
    return _debug_sockets(ctx, only_active=False)


def show_active_sockets(ctx: ClientContext) -> bytes:
    """The sockets with bytes buffered in either direction."""
    return _debug_sockets(ctx, only_active=True)


# --- SHOW FDS / MEM / DNS_ZONES (columns, no rows: EMPTY_RESULTS), DNS_HOSTS ------

_FDS = (("fd", "i"), ("task", "s"), ("user", "s"), ("database", "s"), ("addr", "s"),
        ("port", "i"), ("cancel", "q"), ("link", "i"), ("client_encoding", "s"),
        ("std_strings", "s"), ("datestyle", "s"), ("timezone", "s"), ("password", "s"),
        ("scram_client_key", "b"), ("scram_server_key", "b"))


def show_fds(ctx: ClientContext) -> bytes:
    return encode_result(_FDS, [])


def show_mem(ctx: ClientContext) -> bytes:
    return encode_result([("name", "s"), ("size", "i"), ("used", "i"), ("free", "i"),
                          ("memtotal", "i")], [])


def show_dns_hosts(ctx: ClientContext) -> bytes:
    """The server host names this worker looked up: seconds until the next lookup,
    the addresses it hands out in turn (empty after a failed lookup)."""
    return encode_result([("hostname", "s"), ("ttl", "q"), ("addrs", "s")],
                         ctx.registry.dns.rows())


def show_dns_zones(ctx: ClientContext) -> bytes:
    return encode_result([("zonename", "s"), ("serial", "q"), ("count", "i")], [])


# --- ecluse's own: SHOW PREPARED_STATEMENTS / POOL_WAITS ---------------------------

def show_prepared_statements(ctx: ClientContext) -> bytes:
    """One row per pooler-wide statement name a pool knows, and how many servers hold it.

    ``servers`` counts the pool's servers that confirmed the statement (their
    own count of every statement they hold is SHOW SERVERS' prepared_statements).
    """
    rows = []
    for pool in ctx.registry:
        servers = _servers_of(pool)
        for name in list(pool.known_statements):
            held = sum(1 for s in servers if name in s.prepared.present)
            rows.append([pool.settings.database, pool.settings.user, name, held,
                         len(servers)])
    return encode_result([("database", "s"), ("user", "s"), ("name", "s"), ("servers", "i"),
                          ("pool_servers", "i")], rows)


_WAITS = (("database", "s"), ("user", "s"), ("wait_count", "q"), ("wait_p50_us", "q"),
          ("wait_p90_us", "q"), ("wait_p99_us", "q"), ("query_count", "q"),
          ("query_p50_us", "q"), ("query_p99_us", "q"))


def _quantile_us(histogram: Any, q: float) -> int | None:
    """The upper bound of the bucket holding the q-quantile, in µs; NULL past the last bound."""
    bound = histogram.quantile(q)
    return None if bound == float("inf") else round(bound * 1_000_000)


def show_pool_waits(ctx: ClientContext) -> bytes:
    """Per pool: how long clients queued for a server, and how long queries took.

    Figures come from stats/counters.py's histograms, so each quantile is the
    upper bound of its bucket (100 µs to 60 s), not an exact value.
    """
    rows = []
    for pool in ctx.registry:
        wait, query = pool.stats.wait_seconds, pool.stats.query_seconds
        rows.append([pool.settings.database, pool.settings.user, wait.count(),
                     _quantile_us(wait, 0.5), _quantile_us(wait, 0.9), _quantile_us(wait, 0.99),
                     query.count(), _quantile_us(query, 0.5), _quantile_us(query, 0.99)])
    return encode_result(_WAITS, rows)
