"""The admin console's command table: command word → handler, and who may run it.

Every command declares ``read_only``. admin/console.py checks it in one place
before calling any handler, so a new command cannot forget authorization:
stats_users may run read-only commands only (CVE-2026-6667 was a PgBouncer
command that skipped its own admin check). tests/integration/test_admin_console.py
walks this table.

A handler takes the worker's ClientContext and the command's argument and
returns the reply body (result rows and CommandComplete, no ReadyForQuery), or
a coroutine producing it when the command must wait (PAUSE). It raises
AdminError for an error the client should see.
"""

from __future__ import annotations

import asyncio
import logging
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
         "\tSHOW LISTS\n"
         "\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES\n"
         "\tPAUSE [<db>]\n"
         "\tRESUME [<db>]")


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
        if not registry.paused_all and not registry.paused_dbs:
            raise AdminError("pooler is not paused/suspended")
        registry.paused_all = False
        log.info("RESUME command issued")
        pools = [p for p in registry if p.settings.database not in registry.paused_dbs]
    for pool in pools:
        pool.resume()
    return be.encode_command_complete("RESUME")


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
)}
