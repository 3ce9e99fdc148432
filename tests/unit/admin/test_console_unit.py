"""admin/console.py without sockets: parsing, authorization, reply framing."""

from __future__ import annotations

import pytest

from ecluse.admin.commands import COMMANDS, AdminError
from ecluse.admin.console import AdminConsole, may_log_in
from ecluse.config import Config
from ecluse.config.model import Settings
from ecluse.frontend.context import ClientContext
from ecluse.pool.registry import PoolRegistry
from ecluse.protocol import backend as be
from ecluse.protocol.framing import Framer

_BACKEND = frozenset(b"RSKZECDTNIns1t23AGHWdc")


def make_console(user: str) -> AdminConsole:
    config = Config(settings=Settings(admin_users=("admin",), stats_users=("stats",)))
    return AdminConsole(ClientContext(config, PoolRegistry(config)), user)


def message_types(data: bytes) -> list[str]:
    framer = Framer(_BACKEND, _BACKEND, 1 << 20)
    return [chr(t) for t, _raw, start, _end in framer.feed(data) if start]


@pytest.mark.parametrize(("query", "name", "arg"), [
    ("SHOW POOLS", "SHOW POOLS", ""),
    ("  show pools ;", "SHOW POOLS", ""),
    ("pause", "PAUSE", ""),
    ('PAUSE "my db"', "PAUSE", "my db"),
    ("resume app", "RESUME", "app"),
])
def test_lookup_follows_pgbouncer_grammar(query, name, arg):
    command, got = make_console("admin").lookup(query)
    assert (command.name, got) == (name, arg)


@pytest.mark.parametrize("query", ["SHOW", "SHOW POOLS x", "SHOW NOTHING", "PAUSE a b",
                                   "SHOW POOLS; SHOW STATS", "select 1"])
def test_lookup_refuses_what_pgbouncer_refuses(query):
    with pytest.raises(AdminError, match="invalid command"):
        make_console("admin").lookup(query)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_stats_user_gets_only_read_only_commands(name):
    reply = make_console("stats").answer(name)
    if COMMANDS[name].read_only:
        assert isinstance(reply, bytes) and b"admin access needed" not in reply
    else:
        assert isinstance(reply, bytes)
        assert message_types(reply) == ["E", "Z"] and b"admin access needed" in reply


def test_show_reply_is_framed_like_pgbouncer():
    reply = make_console("admin").answer("SHOW VERSION")
    assert message_types(reply) == ["T", "D", "C", "Z"]
    assert reply.endswith(be.encode_command_complete("SHOW") + be.encode_ready_for_query(b"I"))
    assert message_types(make_console("admin").answer("SHOW HELP")) == ["N", "C", "Z"]
    assert message_types(make_console("admin").answer(";")) == ["I", "Z"]


def test_login_needs_a_listed_user():
    settings = Settings(admin_users=("admin",), stats_users=("stats",))
    assert may_log_in(settings, "admin") and may_log_in(settings, "stats")
    assert not may_log_in(settings, "postgres")


@pytest.mark.parametrize(("query", "name", "arg"), [
    ("SHUTDOWN WAIT_FOR_CLIENTS", "SHUTDOWN", "WAIT_FOR_CLIENTS"),
    ("kill_client 12", "KILL_CLIENT", "12"),
    ("wait_close", "WAIT_CLOSE", ""),
    ("show state", "SHOW STATE", ""),
])
def test_lookup_of_control_commands(query, name, arg):
    command, got = make_console("admin").lookup(query)
    assert (command.name, got) == (name, arg)


@pytest.mark.parametrize(("query", "message"), [
    ("DISABLE", b"a database is required"),
    ("ENABLE", b"a database is required"),
    ("DISABLE nosuchdb", b"no such database: nosuchdb"),
    ("KILL pgbouncer", b"cannot kill admin db: pgbouncer"),
    ("RECONNECT ecluse", b"cannot reconnect admin db: ecluse"),
    ("WAIT_CLOSE pgbouncer", b"cannot wait in admin db: pgbouncer"),
    ("KILL_CLIENT abc", b"invalid client pointer supplied"),
    ("KILL_CLIENT 99", b"client not found"),
    ("SHUTDOWN NOW", b"invalid command"),
    ("SHUTDOWN", b"shutdown not possible here"),  # no worker behind this context
])
def test_control_command_errors_use_pgbouncer_wording(query, message):
    reply = make_console("admin").answer(query)
    assert isinstance(reply, bytes) and message_types(reply) == ["E", "Z"]
    assert message in reply


def test_suspend_shows_in_show_state_and_resume_undoes_it():
    console = make_console("admin")
    assert b"suspended" in console.answer("SHOW STATE")
    assert message_types(console.answer("SUSPEND")) == ["C", "Z"]
    assert console.ctx.registry.suspended and console.ctx.registry.paused_all
    assert b"already suspended/paused" in console.answer("SUSPEND")
    console.answer("RESUME")
    assert not console.ctx.registry.suspended and not console.ctx.registry.paused_all
