"""The admin console's command table: command word → handler, and who may run it.

Every command declares ``read_only``. admin/console.py checks it in one place
before calling any handler, so a new command cannot forget authorization:
stats_users may run read-only commands only (CVE-2026-6667 was a PgBouncer
command that skipped its own admin check). tests/integration/test_admin_console.py
walks this table.

A handler takes the worker's ClientContext and the command's argument and
returns the reply body (result rows and CommandComplete, no ReadyForQuery), or
a coroutine producing it when the command must wait (PAUSE, WAIT_CLOSE). It
raises AdminError for an error the client should see. Names, argument rules
and error wording are PgBouncer's (src/admin.c, doc/usage.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ecluse.admin import show
from ecluse.errors import EcluseError
from ecluse.protocol import backend as be

if TYPE_CHECKING:
    from ecluse.frontend.context import ClientContext
    from ecluse.pool.pool import Pool

log = logging.getLogger("ecluse.admin")

# The virtual database names that reach the console instead of a pool.
ADMIN_DATABASES = frozenset({"pgbouncer", "ecluse"})

Reply = bytes | Awaitable[bytes]
_PAUSE_POLL = 0.05  # seconds between checks while PAUSE waits for servers


class AdminError(EcluseError):
    """A console command failed; sent as ERROR, the session goes on.

    PgBouncer answers every console error with SQLSTATE 08P01 (its
    send_pooler_error default); so does ecluse.
    """

    def __init__(self, message: str, sqlstate: str = "08P01"):
        super().__init__(message, sqlstate=sqlstate)


@dataclass(frozen=True, slots=True)
class Command:
    """One console command."""

    name: str  # as typed, upper case: "SHOW POOLS", "PAUSE"
    handler: Callable[[ClientContext, str], Reply]
    read_only: bool  # True: stats_users may run it too
    takes_arg: bool = False  # an optional database name


def _show(builder: Callable[[ClientContext], bytes]) -> Callable[[ClientContext, str], Reply]:
    def handler(ctx: ClientContext, _arg: str) -> Reply:
        return builder(ctx) + be.encode_command_complete("SHOW")
    return handler


_HELP = ("\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n"
         "\tSHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE\n"
         "\tSHOW DNS_HOSTS|DNS_ZONES|PEERS|PEER_POOLS\n"
         "\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n"
         "\tSHOW PREPARED_STATEMENTS|POOL_WAITS\n"
         "\tSET key = arg\n"
         "\tRELOAD\n"
         "\tPAUSE [<db>]\n"
         "\tRESUME [<db>]\n"
         "\tDISABLE <db>\n"
         "\tENABLE <db>\n"
         "\tRECONNECT [<db>]\n"
         "\tKILL [<db>]\n"
         "\tKILL_CLIENT <client_id>\n"
         "\tSUSPEND\n"
         "\tRESTART\n"
         "\tSHUTDOWN\n"
         "\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n"
         "\tWAIT_CLOSE [<db>]")


def show_help(_ctx: ClientContext, _arg: str) -> Reply:
    """Answer as PgBouncer does: one NOTICE "Console usage" whose detail lists the commands."""
    notice = be.encode_error_fields({"S": "NOTICE", "C": "00000", "M": "Console usage",
                                     "D": _HELP}, notice=True)
    return notice + be.encode_command_complete("SHOW")


# --- PAUSE / RESUME --------------------------------------------------------------

def _target_pools(ctx: ClientContext, database: str) -> list[Pool]:
    return [p for p in ctx.registry if not database or p.settings.database == database]


def _check_database(ctx: ClientContext, database: str, verb: str) -> None:
    if database.lower() in ADMIN_DATABASES:
        raise AdminError(f"cannot {verb} admin db: {database}")
    if ctx.config.database(database) is None:
        raise AdminError(f"no such database: {database}")


def pause(ctx: ClientContext, database: str) -> Reply:
    """Stop handing servers out; answer once no server is busy, as PgBouncer.

    New requests queue in the pools (Pool.acquire honours ``paused``); the
    reply waits until every server of the paused pools is back (transaction
    mode: the transaction ended; session mode: the client left), then the
    idle servers are closed.
    """
    registry = ctx.registry
    if registry.paused_all:
        raise AdminError("already suspended/paused")
    if database:
        _check_database(ctx, database, "pause")
        registry.paused_dbs.add(database)
        log.info("PAUSE '%s' command issued", database)
    else:
        registry.paused_all = True
        log.info("PAUSE command issued")
    for pool in _target_pools(ctx, database):
        pool.paused = True
    return _wait_paused(ctx, database)


def _is_busy(pool: Pool) -> bool:
    return bool(pool.active or pool.used)


async def _wait_paused(ctx: ClientContext, database: str) -> bytes:
    while True:
        pools = [p for p in _target_pools(ctx, database) if p.paused]
        if not pools:  # RESUME came first
            return be.encode_command_complete("PAUSE")
        if not any(_is_busy(p) for p in pools):
            break
        await asyncio.sleep(_PAUSE_POLL)
    for pool in pools:
        pool.close_all(lambda server: True)  # idle ones now; none is busy
    return be.encode_command_complete("PAUSE")


def resume(ctx: ClientContext, database: str) -> Reply:
    """Let paused pools hand servers out again and serve their queues."""
    registry = ctx.registry
    if database:
        if ctx.config.database(database) is None:
            raise AdminError(f"no such database: {database}")
        if database not in registry.paused_dbs and not registry.paused_all:
            raise AdminError(f"database {database} is not paused")
        registry.paused_dbs.discard(database)
        log.info("RESUME '%s' command issued", database)
        pools = [p for p in _target_pools(ctx, database) if not registry.paused_all]
    else:
        if ctx.shutting_down or ctx.shutdown_mode is not None:
            raise AdminError("pooler is shutting down")
        if not registry.paused_all and not registry.paused_dbs:
            raise AdminError("pooler is not paused/suspended")
        registry.paused_all = False
        log.info("RESUME command issued")
        if registry.suspended:
            _end_suspend(ctx)
        pools = [p for p in registry if p.settings.database not in registry.paused_dbs]
    for pool in pools:
        pool.resume()
    return be.encode_command_complete("RESUME")


# --- DISABLE / ENABLE / RECONNECT ---------------------------------------------------

def _require_database(ctx: ClientContext, database: str, verb: str) -> None:
    if not database:
        raise AdminError("a database is required")
    _check_database(ctx, database, verb)


def disable(ctx: ClientContext, database: str) -> Reply:
    """Refuse new client logins to a database; its clients logged in stay."""
    _require_database(ctx, database, "disable")
    log.info("DISABLE '%s' command issued", database)
    ctx.registry.disabled_dbs.add(database)
    return be.encode_command_complete("DISABLE")


def enable(ctx: ClientContext, database: str) -> Reply:
    """Let a DISABLEd database take client logins again."""
    _require_database(ctx, database, "enable")
    log.info("ENABLE '%s' command issued", database)
    ctx.registry.disabled_dbs.discard(database)
    return be.encode_command_complete("ENABLE")


def reconnect(ctx: ClientContext, database: str) -> Reply:
    """Close idle servers now and busy ones when released, as PgBouncer's dirty tag.

    A server still logging in is not marked: it was launched with the same
    configuration, and ecluse has no RELOAD that could have changed it.
    """
    if database:
        _check_database(ctx, database, "reconnect")
        log.info("RECONNECT '%s' command issued", database)
    else:
        log.info("RECONNECT command issued")
    for pool in _target_pools(ctx, database):
        pool.close_all(lambda server: True)
    return be.encode_command_complete("RECONNECT")


def wait_close(ctx: ClientContext, database: str) -> Reply:
    """Answer once no server of the database (or any) is left marked close_needed."""
    if database:
        if database.lower() in ADMIN_DATABASES:
            raise AdminError(f"cannot wait in admin db: {database}")
        if ctx.config.database(database) is None:
            raise AdminError(f"no such database: {database}")
        log.info("WAIT_CLOSE '%s' command issued", database)
    else:
        log.info("WAIT_CLOSE command issued")
    return _wait_closed(ctx, database)


def _servers_of(pool: Pool) -> list:
    return [*pool.active, *pool.idle, *pool.used, *pool.login]


async def _wait_closed(ctx: ClientContext, database: str) -> bytes:
    # Pools created meanwhile are looked at too: harmless, they hold no marked server.
    while any(server.close_when_released for pool in _target_pools(ctx, database)
              for server in _servers_of(pool)):
        await asyncio.sleep(_PAUSE_POLL)
    return be.encode_command_complete("WAIT_CLOSE")


# --- KILL / KILL_CLIENT ---------------------------------------------------------------

def kill(ctx: ClientContext, database: str) -> Reply:
    """Drop every client and server of a database (or all) now; keep it paused.

    As PgBouncer, the database stays paused afterwards: new clients log in
    and wait for a server until RESUME.
    """
    registry = ctx.registry
    if registry.paused_all:
        raise AdminError("already suspended/paused")
    if database:
        _check_database(ctx, database, "kill")
        log.info("KILL '%s' command issued", database)
        databases = {database}
    else:
        log.info("KILL command issued")
        databases = {pool.settings.database for pool in registry}
    registry.paused_dbs |= databases
    for pool in _target_pools(ctx, database):
        _kill_pool(ctx, pool)
    return be.encode_command_complete("KILL")


def _kill_pool(ctx: ClientContext, pool: Pool) -> None:
    pool.paused = True
    servers = _servers_of(pool)
    for client in list(ctx.clients):
        if client.pool is pool:
            client.fatal(EcluseError("database removed", sqlstate="08P01"))
    # The clients gave their servers back; none may serve again, busy or not.
    pool.close_all()
    for server in servers + _servers_of(pool):
        server.close()


# The client states SHOW CLIENTS lists, hence the ones KILL_CLIENT can name.
_LISTED = frozenset({"idle", "active", "waiting"})


def kill_client(ctx: ClientContext, arg: str) -> Reply:
    """Close the one client whose SHOW CLIENTS id is ``arg``, with a FATAL."""
    if not arg.isdigit():  # PgBouncer: sscanf("%llu")
        raise AdminError("invalid client pointer supplied")
    target = int(arg)
    for client in list(ctx.clients):
        if client.id == target and client.state.value in _LISTED:
            log.info("KILL_CLIENT %d command issued (%s)", target, client)
            client.fatal(EcluseError("admin forced disconnect", sqlstate="08P01"))
            return be.encode_command_complete("KILL_CLIENT")
    raise AdminError("client not found")


# --- SUSPEND ---------------------------------------------------------------------------

def suspend(ctx: ClientContext, arg: str) -> Reply:
    """Pause every pool and stop reading from every client until RESUME.

    An approximation of PgBouncer's SUSPEND, which flushes the socket buffers
    and stops (for an online restart that hands sockets over, which ecluse
    does not do): here no client is read from and no server handed out;
    what servers still send is relayed. Console clients are still read, so
    RESUME can be typed. Clients logging in meanwhile are not suspended but
    wait for a server, their pool being paused.
    """
    registry = ctx.registry
    if registry.paused_all:
        raise AdminError("already suspended/paused")
    if registry.paused_dbs:
        raise AdminError("cannot suspend with paused databases")
    log.info("SUSPEND command issued")
    registry.paused_all = registry.suspended = True
    for pool in registry:
        pool.paused = True
    for client in list(ctx.clients):
        if client.console is None:
            client.suspend_reading()
    return be.encode_command_complete("SUSPEND")


def _end_suspend(ctx: ClientContext) -> None:
    ctx.registry.suspended = False
    for client in list(ctx.clients):
        client.end_suspend()


def on_console_left(ctx: ClientContext) -> None:
    """Undo a SUSPEND once no console client is left, as PgBouncer does.

    Nobody could type RESUME any more; the clients would hang for good.
    Called by frontend/session.py when a console client goes. With several
    workers (admin/node.py) the links of other workers are no console users:
    a worker suspended by another's console waits for that one to end it,
    and the worker whose console left ends it everywhere.
    """
    registry = ctx.registry
    if not registry.suspended or any(c.console is not None and not c.console.local
                                     for c in ctx.clients):
        return
    node = ctx.node
    if node is not None:
        if node.suspended_by_peer:
            return
        node.resume_others()
    log.info("admin disappeared when suspended, doing RESUME")
    registry.paused_all = False
    _end_suspend(ctx)
    for pool in registry:
        if pool.settings.database not in registry.paused_dbs:
            pool.resume()


# --- SHUTDOWN --------------------------------------------------------------------------

_SHUTDOWN_MODES = frozenset({"", "WAIT_FOR_SERVERS", "WAIT_FOR_CLIENTS"})


def shutdown(ctx: ClientContext, arg: str) -> Reply:
    """Shut the worker down: at once (gracefully), or once servers or clients are gone.

    Plain SHUTDOWN gets no reply, as in PgBouncer: the connection stays open
    until the worker's shutdown path closes it. The WAIT_FOR_ modes stop
    listening, answer, and leave the waiting to the worker.
    """
    mode = check_shutdown(ctx, arg)
    log.info("SHUTDOWN%s command issued", f" {mode}" if mode else "")
    ctx.begin_shutdown(mode)
    if not mode:
        return asyncio.get_running_loop().create_future()  # never answered
    return be.encode_command_complete("SHUTDOWN")


def check_shutdown(ctx: ClientContext, arg: str) -> str:
    """The SHUTDOWN mode ``arg`` names, if this worker can start it; else AdminError."""
    mode = arg.upper()
    if mode not in _SHUTDOWN_MODES:
        raise AdminError(f"invalid command 'SHUTDOWN {arg}', use SHOW HELP;")
    if ctx.begin_shutdown is None:
        raise AdminError("shutdown not possible here")
    if ctx.shutting_down or ctx.shutdown_mode is not None:
        raise AdminError("pooler is shutting down")
    return mode


# --- RESTART (ecluse's own) ---------------------------------------------------------

def restart(ctx: ClientContext, _arg: str) -> Reply:
    """Roll the workers over, as SIGUSR2 to the supervisor does (supervisor.py).

    Answered at once: the new generation starts on the same sockets and the
    old one drains; this console's own worker is among those draining.
    """
    if ctx.node is None:
        raise AdminError("RESTART needs several workers (workers > 1): a single process "
                         "has no supervisor to start its successor")
    log.info("RESTART command issued")
    os.kill(os.getppid(), signal.SIGUSR2)
    return be.encode_command_complete("RESTART")


# --- RELOAD / SET (admin/reload.py) ---------------------------------------------------

def _reload(ctx: ClientContext, arg: str) -> Reply:
    from ecluse.admin.reload import reload  # admin/reload.py imports this module

    return reload(ctx, arg)


def _set(ctx: ClientContext, arg: str) -> Reply:
    from ecluse.admin.reload import set_setting

    return set_setting(ctx, arg)


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("SHOW HELP", show_help, read_only=True),
    Command("SHOW VERSION", _show(show.show_version), read_only=True),
    Command("SHOW CONFIG", _show(show.show_config), read_only=True),
    Command("SHOW DATABASES", _show(show.show_databases), read_only=True),
    Command("SHOW POOLS", _show(show.show_pools), read_only=True),
    Command("SHOW CLIENTS", _show(show.show_clients), read_only=True),
    Command("SHOW SERVERS", _show(show.show_servers), read_only=True),
    Command("SHOW LISTS", _show(show.show_lists), read_only=True),
    Command("SHOW USERS", _show(show.show_users), read_only=True),
    Command("SHOW STATS", _show(show.show_stats), read_only=True),
    Command("SHOW STATS_TOTALS", _show(show.show_stats_totals), read_only=True),
    Command("SHOW STATS_AVERAGES", _show(show.show_stats_averages), read_only=True),
    Command("PAUSE", pause, read_only=False, takes_arg=True),
    Command("RESUME", resume, read_only=False, takes_arg=True),
    Command("DISABLE", disable, read_only=False, takes_arg=True),
    Command("ENABLE", enable, read_only=False, takes_arg=True),
    Command("RECONNECT", reconnect, read_only=False, takes_arg=True),
    Command("KILL", kill, read_only=False, takes_arg=True),
    Command("KILL_CLIENT", kill_client, read_only=False, takes_arg=True),
    Command("SUSPEND", suspend, read_only=False),
    Command("WAIT_CLOSE", wait_close, read_only=False, takes_arg=True),
    Command("SHUTDOWN", shutdown, read_only=False, takes_arg=True),
    Command("RESTART", restart, read_only=False),
    Command("SHOW STATE", _show(show.show_state), read_only=True),
    Command("SHOW TOTALS", _show(show.show_totals), read_only=True),
    Command("SHOW SOCKETS", _show(show.show_sockets), read_only=True),
    Command("SHOW ACTIVE_SOCKETS", _show(show.show_active_sockets), read_only=True),
    # Admin only, as in PgBouncer (its rows would carry cancel keys and secrets).
    Command("SHOW FDS", _show(show.show_fds), read_only=False),
    Command("SHOW MEM", _show(show.show_mem), read_only=True),
    Command("SHOW DNS_HOSTS", _show(show.show_dns_hosts), read_only=True),
    Command("SHOW PEERS", _show(show.show_peers), read_only=True),
    Command("SHOW PEER_POOLS", _show(show.show_peer_pools), read_only=True),
    Command("SHOW DNS_ZONES", _show(show.show_dns_zones), read_only=True),
    # ecluse's own (not in PgBouncer): README's console section.
    Command("SHOW PREPARED_STATEMENTS", _show(show.show_prepared_statements), read_only=True),
    Command("SHOW POOL_WAITS", _show(show.show_pool_waits), read_only=True),
    Command("RELOAD", _reload, read_only=False),
    Command("SET", _set, read_only=False, takes_arg=True),
)}
