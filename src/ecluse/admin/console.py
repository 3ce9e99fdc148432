"""The admin console session: who may log in, and Query text → reply bytes.

The virtual databases ``pgbouncer`` and ``ecluse`` (commands.ADMIN_DATABASES)
reach this console instead of a pool; no server is ever involved.
frontend/session.py (through frontend/consolelink.py) authenticates the
client as any other, asks ``may_log_in``, then feeds each whole message to
``on_message``: a simple Query is answered by ``answer``, the extended query
protocol (Parse/Bind/Describe/Execute/Sync/Close/Flush) by admin/extended.py,
which runs the same commands through ``run``.

Rules:
1. Sans-IO: ``answer`` returns the bytes to send (ending in ReadyForQuery),
   or an awaitable of them for a command that waits (PAUSE); the session
   writes them.
2. Authorization is checked here, once, in ``run``, from the command table's
   ``read_only`` flag (commands.py), never inside a handler.
3. With several workers, ``run`` answers for the node (admin/node.py); a
   console of another worker's link (``local``) answers for this worker only.
4. The extended protocol takes no parameters (PgBouncer's console speaks only
   the simple protocol; ecluse also answers drivers that always use the
   extended one, such as asyncpg).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from ecluse.admin.commands import ADMIN_DATABASES, COMMANDS, AdminError, Command, Reply
from ecluse.admin.extended import ExtendedQuery
from ecluse.admin.show import VERSION_STRING
from ecluse.protocol import backend as be

if TYPE_CHECKING:
    from ecluse.config.model import Settings
    from ecluse.frontend.context import ClientContext

__all__ = ["ADMIN_DATABASES", "AdminConsole", "is_admin_database", "may_log_in"]

# PgBouncer's grammar (src/admin.c cmd_normal_rx): a word, an optional second
# word, an optional semicolon. A word is [0-9a-z_]+ or a "quoted" identifier.
_WORD = r'("(?:[^"]|"")+"|[0-9A-Za-z_]+)'
_COMMAND = re.compile(r"^\s*" + _WORD + r"(?:\s+" + _WORD + r")?\s*(?:;\s*)?$")
_READY = be.encode_ready_for_query(b"I")
_SET = re.compile(r"^\s*SET\s+(.+)$", re.IGNORECASE | re.DOTALL)


def is_admin_database(database: str) -> bool:
    return database in ADMIN_DATABASES


def may_log_in(settings: Settings, user: str) -> bool:
    """Say whether ``user`` may use the console at all (admin_users or stats_users).

    PgBouncer applies these lists whatever auth_type is (its one exception, the
    pooler's own OS user over the unix socket, is not implemented).
    """
    return user in settings.admin_users or user in settings.stats_users


def welcome_parameters(params: dict[str, str]) -> dict[str, str]:
    """The ParameterStatus values a console client is told, as PgBouncer's fakes."""
    return {
        "server_version": VERSION_STRING.replace(" ", "/"),
        "server_encoding": "UTF8",
        "client_encoding": params.get("client_encoding", "UTF8"),
        "DateStyle": "ISO",
        "TimeZone": "UTC",
        "standard_conforming_strings": "on",
        "integer_datetimes": "on",
        "application_name": params.get("application_name", ""),
    }


def _unquote(word: str | None) -> str:
    if not word:
        return ""
    if word.startswith('"'):
        return word[1:-1].replace('""', '"')
    return word


class AdminConsole:
    """One console client's view: its rights, and the answer to each query."""

    def __init__(self, ctx: ClientContext, user: str, local: bool = False):
        self.ctx = ctx
        self.user = user
        # ``local``: another worker of the node asking over the control socket
        # (admin/node.py): trusted, and answered for this worker alone.
        self.local = local
        self.is_admin = local or user in ctx.config.settings.admin_users
        self._extended = ExtendedQuery(self)

    def on_message(self, msg_type: int, body: bytes) -> bytes | Awaitable[bytes]:
        """Answer one whole client message (Query or extended protocol) after login."""
        return self._extended.on_message(msg_type, body)

    def lookup(self, query: str) -> tuple[Command, str]:
        """Find the command a query names, and its argument; raise AdminError if none."""
        set_match = _SET.match(query)
        if set_match is not None:  # SET key = value: more words than other commands
            return COMMANDS["SET"], set_match.group(1)
        match = _COMMAND.match(query)
        if match is None:
            raise AdminError(f"invalid command '{query}', use SHOW HELP;")
        first, second = _unquote(match.group(1)), _unquote(match.group(2))
        if first.upper() == "SHOW":
            name, arg = f"SHOW {second.upper()}", ""
        else:
            name, arg = first.upper(), second
        command = COMMANDS.get(name)
        if command is None or (arg and not command.takes_arg):
            raise AdminError(f"invalid command '{query}', use SHOW HELP;")
        return command, arg

    def answer(self, query: str) -> bytes | Awaitable[bytes]:
        """Return the whole reply to one Query, ReadyForQuery included."""
        if not query.strip(" \t\r\n;"):
            return be.encode_empty_query_response() + _READY
        if self.local and self.ctx.node is not None:
            own = self.ctx.node.local_query(query)  # the link's own commands
            if own is not None:
                return own + _READY
        try:
            reply = self.run(query)
        except AdminError as exc:
            return _error(exc)
        if isinstance(reply, bytes):
            return reply + _READY
        return _finish(reply)

    def run(self, query: str) -> Reply:
        """Run the command a query names; return its reply body (no ReadyForQuery).

        Raises AdminError for an unknown command or missing rights; a reply
        that is awaitable may raise it too.
        """
        command, arg = self.lookup(query)
        # The one authorization check (CVE-2026-6667 class): stats_users
        # get read-only commands, whatever the handler does.
        if not command.read_only and not self.is_admin:
            raise AdminError("admin access needed")
        node = self.ctx.node
        if node is None:
            return command.handler(self.ctx, arg)
        if self.local:  # asked by another worker: this worker's part only
            node.on_local(command)
            return command.handler(self.ctx, arg)
        return node.run(command, arg, query)


async def _finish(reply: Awaitable[bytes]) -> bytes:
    try:
        return await reply + _READY
    except AdminError as exc:
        return _error(exc)


def _error(exc: AdminError) -> bytes:
    return be.encode_error_response(exc.message, exc.sqlstate) + _READY
