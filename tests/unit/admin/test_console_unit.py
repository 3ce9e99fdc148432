"""admin/console.py and admin/extended.py without sockets: parsing, authorization,
reply framing, and the extended query protocol."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.types.numeric import NumericBinaryLoader

from ecluse.admin.commands import COMMANDS, AdminError
from ecluse.admin.console import AdminConsole, may_log_in
from ecluse.admin.extended import encode_numeric, split_messages
from ecluse.config import Config
from ecluse.config.model import Settings
from ecluse.errors import RemoteProtocolError
from ecluse.frontend.context import ClientContext
from ecluse.pool.registry import PoolRegistry
from ecluse.protocol import backend as be
from ecluse.protocol import codes
from ecluse.protocol import frontend as fe
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


# --- the extended query protocol (admin/extended.py) --------------------------------

# Commands whose answer does not change between two runs on an idle context.
STABLE_QUERIES = ["SHOW VERSION", "SHOW LISTS", "SHOW STATE", "SHOW DATABASES", "SHOW CONFIG",
                  "SHOW HELP", "SHOW MEM", "SHOW TOTALS", ""]


def feed(console: AdminConsole, *messages: bytes) -> list[tuple[str, bytes]]:
    """Send whole frontend messages one by one; return the backend messages answered."""
    out: list[tuple[str, bytes]] = []
    for raw in messages:
        reply = console.on_message(raw[0], raw[5:])
        assert isinstance(reply, bytes)
        out += [(k.decode(), m) for k, m in split_messages(reply)]
    return out


def kinds(replies: list[tuple[str, bytes]]) -> list[str]:
    return [k for k, _ in replies]


def simple_rows(query: str) -> list[bytes]:
    reply = make_console("admin").answer(query)
    assert isinstance(reply, bytes)
    return [m for k, m in split_messages(reply) if k == b"D"]


def test_extended_answers_like_postgresql():
    console = make_console("stats")
    got = feed(console, fe.encode_parse("s", "SHOW VERSION"), fe.encode_describe(b"S", "s"),
               fe.encode_bind("", "s"), fe.encode_describe(b"P", ""), fe.encode_execute(""),
               fe.encode_sync())
    assert kinds(got) == ["1", "t", "T", "2", "T", "D", "C", "Z"]
    assert [m for k, m in got if k == "D"] == simple_rows("SHOW VERSION")
    # Control commands describe as NoData and run at Execute only.
    got = feed(console, fe.encode_parse("", "PAUSE"), fe.encode_describe(b"S", ""),
               fe.encode_bind("", ""), fe.encode_execute(""), fe.encode_sync())
    assert kinds(got) == ["1", "t", "n", "2", "E", "Z"]
    assert b"admin access needed" in got[4][1]
    assert not console.ctx.registry.paused_all


def test_extended_errors_skip_to_sync():
    console = make_console("admin")
    got = feed(console, fe.encode_bind("", "missing"), fe.encode_parse("", "SHOW VERSION"),
               fe.encode_bind("", ""), fe.encode_execute(""), fe.encode_query("SHOW VERSION"),
               fe.encode_sync(), fe.encode_sync())
    assert kinds(got) == ["E", "Z", "Z"]
    assert b"26000" in got[0][1]


@pytest.mark.parametrize(("messages", "sqlstate", "text"), [
    ([fe.encode_parse("", "SHOW POOLS", [23])], b"08P01", b"no parameters"),
    ([fe.encode_parse("", "SHOW POOLS"), fe.encode_bind("", "", [b"1"])], b"08P01",
     b"bind message supplies 1 parameters"),
    ([fe.encode_parse("", "SHOW POOLS"), fe.encode_bind("", "", result_formats=[2])],
     b"22023", b"unsupported format code: 2"),
    ([fe.encode_parse("", "SHOW VERSION"), fe.encode_bind("", "", result_formats=[0, 1]),
      fe.encode_execute("")], b"08P01", b"2 result formats but query has 1 columns"),
    ([fe.encode_parse("a", "SHOW STATE"), fe.encode_parse("a", "SHOW STATE")], b"42P05",
     b'prepared statement "a" already exists'),
    ([fe.encode_execute("nope")], b"34000", b'portal "nope" does not exist'),
    ([fe.encode_describe(b"S", "")], b"26000", b"unnamed prepared statement does not exist"),
    ([fe.encode_parse("", "SHOW NOTHING")], b"08P01", b"invalid command"),
])
def test_extended_errors_are_postgresqls(messages, sqlstate, text):
    got = feed(make_console("admin"), *messages, fe.encode_sync())
    error = next(m for k, m in got if k == "E")
    assert sqlstate in error and text in error
    assert kinds(got)[-1] == "Z" and kinds(got).count("E") == 1


def test_binary_results_carry_the_same_figures():
    console = make_console("admin")
    got = feed(console, fe.encode_parse("", "SHOW LISTS"), fe.encode_bind("", "", (), (), [0, 1]),
               fe.encode_describe(b"P", ""), fe.encode_execute(""), fe.encode_sync())
    fields = be.decode_row_description(got[2][1][5:])
    assert [f.format for f in fields] == [0, 1]
    rows = [be.decode_data_row(m[5:]) for k, m in got if k == "D"]
    text = [be.decode_data_row(m[5:]) for m in simple_rows("SHOW LISTS")]
    assert [(r[0], int.from_bytes(r[1], "big", signed=True)) for r in rows] == \
        [(r[0], int(r[1])) for r in text]


def test_flush_and_stray_copy_messages_answer_nothing():
    console = make_console("admin")
    assert feed(console, fe.encode_flush(), fe.encode_copy_data(b"x"), fe.encode_copy_done()) == []
    with pytest.raises(RemoteProtocolError):
        console.on_message(codes.FE_FUNCTION_CALL, b"")


@settings(max_examples=200, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, places=None))
def test_numeric_binary_matches_psycopgs_decoder(value: Decimal):
    assert NumericBinaryLoader(1700).load(encode_numeric(str(value))) == value


@st.composite
def batches(draw):
    """Batches of extended messages over stable commands, each ending in Sync.

    Each portal: Parse (named or not), maybe Describe, Bind, maybe Describe,
    then Executes with row limits until it completes; portals of a batch are
    interleaved at random, keeping each one's order.
    """
    out = []
    for b in range(draw(st.integers(1, 4))):
        plans = []
        for p in range(draw(st.integers(1, 3))):
            query = draw(st.sampled_from(STABLE_QUERIES))
            stmt = f"s{b}_{p}" if draw(st.booleans()) else ""
            portal = f"p{p}"
            ops = [("parse", stmt, query, portal)]
            if draw(st.booleans()):
                ops.append(("describe_s", stmt, query, portal))
            ops.append(("bind", stmt, query, portal))
            if draw(st.booleans()):
                ops.append(("describe_p", stmt, query, portal))
            limits = [*draw(st.lists(st.integers(1, 5), max_size=3)), 0]
            ops += [("execute", stmt, query, portal, n) for n in limits]
            plans.append(ops)
        if any(op[1] == "" for ops in plans for op in ops) and len(plans) > 1:
            plans = plans[:1]  # the unnamed statement would be replaced mid-plan
        order = draw(st.permutations([i for i, ops in enumerate(plans) for _ in ops]))
        cursors = [0] * len(plans)
        batch = []
        for i in order:
            batch.append(plans[i][cursors[i]])
            cursors[i] += 1
        fail_at = draw(st.none() | st.integers(0, len(batch)))
        out.append((batch, fail_at))
    return out


def _encode(op: tuple) -> bytes:
    kind, stmt, query, portal = op[:4]
    if kind == "parse":
        return fe.encode_parse(stmt, query)
    if kind == "describe_s":
        return fe.encode_describe(b"S", stmt)
    if kind == "bind":
        return fe.encode_bind(portal, stmt)
    if kind == "describe_p":
        return fe.encode_describe(b"P", portal)
    return fe.encode_execute(portal, op[4])


def _inject_error(console: AdminConsole) -> bool:
    got = feed(console, fe.encode_parse("", "NOT A COMMAND"))
    assert kinds(got) == ["E"]
    return True


@settings(max_examples=150, deadline=None)
@given(batches())
def test_any_interleaving_gives_one_ready_per_sync_and_simple_rows(plan):
    console = make_console("admin")
    for batch, fail_at in plan:
        rows: dict[str, list[bytes]] = {}
        failed = False
        for i, op in enumerate(batch):
            if i == fail_at:
                failed = _inject_error(console)
            got = feed(console, _encode(op))
            if failed:
                assert got == []  # discarded until Sync
                continue
            assert "E" not in kinds(got) and "Z" not in kinds(got)
            if op[0] == "execute":
                assert "T" not in kinds(got)
                rows.setdefault(op[3], []).extend(m for k, m in got if k == "D")
        if fail_at == len(batch):
            failed = _inject_error(console)
        got = feed(console, fe.encode_sync())
        assert kinds(got) == ["Z"]
        # Parse stored named statements for good: drop them for the next batch.
        for _kind, stmt, *_ in batch:
            if stmt:
                console.on_message(codes.FE_CLOSE, fe.encode_close(b"S", stmt)[5:])
        if not failed:
            for portal_rows, query in ((rows.get(op[3], []), op[2]) for op in batch
                                       if op[0] == "parse"):
                assert portal_rows == simple_rows(query)


def test_describe_follows_the_users_rights():
    query = [fe.encode_parse("", "SHOW FDS"), fe.encode_describe(b"S", ""), fe.encode_sync()]
    assert kinds(feed(make_console("stats"), *query)) == ["1", "t", "n", "Z"]
    got = feed(make_console("admin"), *query)
    assert kinds(got) == ["1", "t", "T", "Z"]
    assert be.decode_row_description(got[2][1][5:])[0].name == "fd"
