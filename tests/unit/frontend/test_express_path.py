"""The express path changes nothing but the cost (frontend/express.py rule 2).

Differential property: the same clients send the same requests to the same
servers, whose replies arrive cut into the same reads, once with the express
path and once with it switched off. Every byte each client and each server
sees, the pool's server states, and the traffic counters must be identical,
and the express run must really have taken the express path.

The servers are played by a small model of PostgreSQL's replies to simple
Queries (rows, errors, transaction status); no socket is opened.
"""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire import FakeTransport, cut, msg

from ecluse.config import config_from_string
from ecluse.frontend.context import ClientContext
from ecluse.frontend.express import ExpressPath
from ecluse.frontend.expressplan import plan_named_bind
from ecluse.frontend.prepared import ClientStatement, StatementRewriter, server_statement_name
from ecluse.frontend.session import ClientState, FrontendSession
from ecluse.pool.pool import Pool
from ecluse.pool.registry import PoolRegistry
from ecluse.pool.shared import SharedCounts
from ecluse.protocol import codes
from ecluse.protocol.framing import Framer
from ecluse.protocol.replies import ReplyQueue
from ecluse.protocol.startup import encode_startup_message
from ecluse.protocol.tracker import RequestTracker
from ecluse.server.connection import ServerConnection, ServerState
from ecluse.server.prepared import PreparedCache

SERVERS = 3
CLIENTS = 5
CONFIG = f"""
[databases]
app = host=127.0.0.1 port=1
[pgbouncer]
auth_type = trust
pool_mode = {{mode}}
default_pool_size = {SERVERS}
client_login_timeout = 0
"""
PARAMS = {"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "TimeZone": "UTC",
          "server_version": "15.0", "standard_conforming_strings": "on"}
# What clients send; the model below knows how PostgreSQL answers each.
SQL = ["SELECT 1", "BEGIN", "COMMIT", "SELECT 1/0", "", "SELECT 1; SELECT 2",
       "SELECT notice", "SET x = 1", "select 'set x = 1' -- harmless", "ROLLBACK"]


ROW_DESCRIPTION = msg(b"T", b"\0\x01c\0" + b"\0" * 18)


class ModelServer:
    """PostgreSQL's answers to the Queries and extended batches written to one server
    connection (enough of them for this test: both runs meet the same model)."""

    def __init__(self, conn: ServerConnection):
        self.conn = conn
        self.read = 0  # bytes of conn.transport.out already answered
        self.status = b"I"
        self.statements: dict[bytes, str] = {}
        self.portal = ""
        self.skipping = False  # after an error in a batch, until Sync
        self.batch: list[bytes] = []

    def replies(self) -> list[bytes]:
        """One reply per sync point (Query or Sync) not yet answered, in order."""
        out = []
        buf = self.conn.transport.out
        while len(buf) - self.read >= 5:
            length = struct.unpack_from("!I", buf, self.read + 1)[0]
            body = bytes(buf[self.read + 5:self.read + 1 + length])
            kind = bytes(buf[self.read:self.read + 1])
            self.read += 1 + length
            if kind == b"X":  # Terminate: the connection is being closed
                break
            if kind == b"Q":
                out.append(self.answer(body[:-1].decode()) + msg(b"Z", self.status))
            elif kind == b"S":
                self.skipping = False
                out.append(b"".join(self.batch) + msg(b"Z", self.status))
                self.batch = []
            elif not self.skipping:
                self.batch.append(self.extended(kind, body))
        return out

    def extended(self, kind: bytes, body: bytes) -> bytes:
        if kind == b"P":
            name, sql, _rest = body.split(b"\0", 2)
            self.statements[name] = sql.decode()
            return msg(b"1", b"")
        if kind == b"B":
            _portal, name, _rest = body.split(b"\0", 2)
            self.portal = self.statements.get(name, "")
            return msg(b"2", b"")
        if kind == b"D":
            sql = self.statements.get(body[1:-1], "") if body[:1] == b"S" else self.portal
            described = ROW_DESCRIPTION if sql.lower().startswith("select") else msg(b"n", b"")
            return (msg(b"t", b"\0\0") if body[:1] == b"S" else b"") + described
        if kind == b"E":
            reply = self.answer(self.portal).replace(ROW_DESCRIPTION, b"")
            self.skipping = reply.startswith(b"E")
            return reply
        if kind == b"C":
            return msg(b"3", b"")
        return b""  # Flush; CopyFail outside COPY is dropped

    def answer(self, sql: str) -> bytes:
        row = ROW_DESCRIPTION + msg(b"D", b"\0\x01\0\0\0\x011")
        low = sql.lower()
        if self.status == b"E" and low not in ("commit", "rollback"):
            return msg(b"E", b"SERROR\0C25P02\0Maborted\0\0")
        if low == "begin":
            self.status = b"T"
            return msg(b"C", b"BEGIN\0")
        if low in ("commit", "rollback"):
            self.status = b"I"
            return msg(b"C", low.upper().encode() + b"\0")
        if low == "select 1/0":
            self.status = b"E" if self.status != b"I" else b"I"
            return msg(b"E", b"SERROR\0C22012\0Mdivision by zero\0\0")
        if low == "":
            return msg(b"I", b"")
        if low == "select 1; select 2":
            return (row + msg(b"C", b"SELECT 1\0")) * 2
        if low == "select notice":
            return msg(b"N", b"SNOTICE\0C00000\0Mhello\0\0") + row + msg(b"C", b"SELECT 1\0")
        if low.startswith("set ") or low.startswith("reset ") or "set_config" in low:
            return msg(b"C", b"SET\0")
        if "current_setting" in low or "pg_settings" in low:
            return msg(b"C", b"SELECT 0\0")  # the session-state probe: nothing to report
        return row + msg(b"C", b"SELECT 1\0")


def batch(sql: str, name: bytes = b"") -> bytes:
    """What libpq sends for PQexecParams (unnamed) or a named prepare-and-run."""
    text = sql.encode() + b"\0"
    return (msg(b"P", name + b"\0" + text + b"\0\0") + msg(b"B", b"\0" + name + b"\0" + bytes(6))
            + msg(b"D", b"P\0") + msg(b"E", b"\0" + bytes(4)) + msg(b"S", b""))


def without_key(data: bytes) -> bytes:
    """The client's bytes with its BackendKeyData (random per run) zeroed."""
    at = data.find(b"K\0\0\0\x0c")
    return data if at < 0 else data[:at + 5] + bytes(8) + data[at + 13:]


def record_answers(monkeypatch, cls: type, name: str) -> list:
    """Wrap method ``name`` of ``cls``; return the list its answers are appended to."""
    answers = []
    real = getattr(cls, name)

    def recording(self, *args):
        answer = real(self, *args)
        answers.append(answer)
        return answer

    monkeypatch.setattr(cls, name, recording)
    return answers


def run(mode: str, steps, express: bool, monkeypatch, extra_config: str = "",
        shared: bool = False) -> dict:
    if not express:
        monkeypatch.setattr(ExpressPath, "_express_request", lambda self, data: False)
        monkeypatch.setattr(ExpressPath, "_express_pending", lambda self, server: False)
    taken = record_answers(monkeypatch, ServerConnection, "_relay_express")
    taken_back = record_answers(monkeypatch, Pool, "take_back")
    config = config_from_string(CONFIG.format(mode=mode) + extra_config)
    counts = SharedCounts(workers=2, slots=16) if shared else None

    async def go() -> dict:
        # shared: one of two workers (pool/shared.py), the other's clients waiting for
        # this pool whenever a "want" step says so: its servers are lent, not kept.
        ctx = ClientContext(config, PoolRegistry(config, counts=counts))
        pool = ctx.registry.get_pool(config.database("app"), "postgres")
        pool.default_params = dict(PARAMS)
        pool.launch = lambda: False  # no new server: a lent one is gone for good
        models = []
        for _ in range(SERVERS):
            conn = ServerConnection(pool, None, "127.0.0.1", 5432,
                                    asyncio.get_running_loop().create_future())
            conn.transport = FakeTransport()
            conn.params = dict(PARAMS)
            conn.stats = pool.stats
            conn._framer.set_inspect(frozenset(b"ZSEACIsGHW"))
            pool.login.add(conn)
            pool._set_state(conn, ServerState.IDLE)
            models.append(ModelServer(conn))
        clients = []
        for _ in range(CLIENTS):
            session = FrontendSession(ctx)
            session.connection_made(FakeTransport())
            session.data_received(encode_startup_message({"user": "postgres", "database": "app"}))
            assert session.state is ClientState.IDLE
            clients.append(session)
        # Replies due, per server: chunks not yet delivered.
        due: dict[int, list[bytes]] = {i: [] for i in range(SERVERS)}
        for kind, who, what in steps:
            if kind in ("bind_named", "bind_named_described"):
                # Runs statement s1 again, if this client prepared it: no Parse (libpq's
                # PQexecPrepared also describes the portal).
                session = clients[who % CLIENTS]
                if session.state is not ClientState.CLOSED:
                    session.data_received(
                        msg(b"B", b"\0s1\0" + bytes(6)) +
                        (msg(b"D", b"P\0") if kind == "bind_named_described" else b"") +
                        msg(b"E", b"\0" + bytes(4)) + msg(b"S", b""))
            elif kind in ("send", "extended", "named"):
                session = clients[who % CLIENTS]
                if session.state is ClientState.CLOSED:
                    continue
                sql = SQL[what % len(SQL)]
                if kind == "send":
                    session.data_received(msg(b"Q", sql.encode() + b"\0"))
                elif sql != "SELECT 1; SELECT 2":  # one statement per Parse
                    session.data_received(batch(sql, b"" if kind == "extended" else b"s1"))
            elif kind == "want":
                if counts is not None:
                    counts.set_worker(1)
                    counts.set_wanted(pool.key, what % 2 * 5)
                    counts.set_worker(0)
            elif kind == "close":
                # The client goes away, perhaps with its Query outstanding.
                session = clients[who % CLIENTS]
                if session.state is not ClientState.CLOSED:
                    session.transport.closed = True
                    session.connection_lost(None)
            else:
                for i, model in enumerate(models):
                    if not due[i]:
                        for reply in model.replies():
                            due[i].extend(cut(reply, what))
                waiting = [i for i in range(SERVERS) if due[i]]
                if waiting:
                    i = waiting[who % len(waiting)]
                    models[i].conn.data_received(due[i].pop(0))
            await asyncio.sleep(0)
        stats = pool.stats
        return {
            "clients": [without_key(bytes(c.transport.out)) for c in clients],
            "client_states": [c.state for c in clients],
            "servers": [bytes(m.conn.transport.out) for m in models],
            "server_states": [m.conn.state for m in models],
            # Which server the next client gets: the most recently released.
            "idle_order": [[m.conn for m in models].index(conn) for conn in pool.idle],
            "counters": (stats.query_count, stats.xact_count, stats.received, stats.sent,
                         stats.server_assignment_count, stats.client_parse_count,
                         stats.server_parse_count, stats.bind_count,
                         stats.query_seconds.count(), stats.wait_seconds.count()),
            "express": sum(taken),
            "taken_back": sum(taken_back),
        }

    try:
        return asyncio.run(go())
    finally:
        if shared:
            counts.close()


step = st.tuples(st.sampled_from(["send", "send", "extended", "named", "bind_named",
                                  "bind_named_described", "reply", "reply", "close",
                                  "want"]), st.integers(0, 20),
                 st.one_of(st.integers(0, 20), st.lists(st.integers(1, 200), max_size=3)))


def normalise(steps):
    # "send" takes an SQL index, "reply" a list of cut points.
    out = []
    for kind, who, what in steps:
        if kind != "reply":
            out.append((kind, who, what if isinstance(what, int) else len(what)))
        else:
            out.append((kind, who, what if isinstance(what, list) else [what + 1]))
    return out


@pytest.mark.parametrize("shared", [False, True], ids=["one-worker", "two-workers"])
@pytest.mark.parametrize("mode", ["transaction", "statement"])
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=60))
def test_express_path_is_invisible(mode, shared, steps, monkeypatch) -> None:
    assert_invisible(mode, normalise(steps), monkeypatch, shared)


def assert_invisible(mode: str, steps, monkeypatch, shared: bool = False) -> None:
    """The same steps with the express path and without: everything observed equal."""
    with monkeypatch.context() as m:
        fast = run(mode, steps, True, m, shared=shared)
    with monkeypatch.context() as m:
        slow = run(mode, steps, False, m, shared=shared)
    assert slow["express"] == slow["taken_back"] == 0
    for key in ("express", "taken_back"):
        fast.pop(key)
        slow.pop(key)
    assert fast == slow


# Few clients, mostly preparing and running statement s1: a client then often runs a
# statement it prepared on a server that has it, the express way.
named_step = st.tuples(st.sampled_from(["named", "bind_named", "bind_named_described",
                                        "bind_named_described", "send", "reply", "reply",
                                        "reply", "reply", "reply", "reply"]),
                       st.integers(0, 1),
                       # [] is SQL 0 ("SELECT 1") for a request, a whole reply for "reply".
                       st.one_of(st.just([]), st.just([]), st.integers(0, 3),
                                 st.lists(st.integers(1, 200), max_size=2)))


@pytest.mark.parametrize("mode", ["transaction", "statement"])
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(named_step, min_size=1, max_size=40))
def test_express_path_is_invisible_for_named_statements(mode, steps, monkeypatch) -> None:
    assert_invisible(mode, normalise(steps), monkeypatch)


def test_express_path_is_taken_for_a_plain_select(monkeypatch) -> None:
    steps = [("send", 0, 0), ("reply", 0, [])] * 3
    result = run("transaction", steps, True, monkeypatch)
    assert result["express"] == 3
    assert result["taken_back"] == 3  # and back to the idle list in one step
    assert result["server_states"].count(ServerState.IDLE) == SERVERS
    assert result["counters"][0] == 3  # three queries counted


def test_an_unnamed_extended_batch_goes_the_express_way(monkeypatch) -> None:
    steps = [("extended", 0, 0), ("reply", 0, [])] * 3 + [("named", 0, 0), ("reply", 0, [])]
    result = run("transaction", steps, True, monkeypatch)
    assert result["express"] == 3  # the named statement goes the general way
    assert result["counters"][5:8] == (4, 4, 4)  # client and server Parses, Binds
    assert result["clients"][0].endswith(
        msg(b"1", b"") + msg(b"2", b"") + ROW_DESCRIPTION + msg(b"D", b"\0\x01\0\0\0\x011")
        + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I"))


@pytest.mark.parametrize("kind", ["bind_named", "bind_named_described"])
def test_a_named_statement_run_again_goes_the_express_way(kind, monkeypatch) -> None:
    """Prepared once (the general way: the server must be given the statement),
    then run by name: the server already holds it, so the express path sends the
    Bind with the server's name; a name the client never prepared goes the general
    way (which refuses it; this model server does not play that part)."""
    steps = [("named", 0, 0), ("reply", 0, []), (kind, 0, 0), ("reply", 0, []),
             (kind, 0, 0), ("reply", 0, []), (kind, 1, 0), ("reply", 0, [])]
    result = run("transaction", steps, True, monkeypatch)
    assert result["express"] == 2  # client 1's unknown name went the general way
    server_bytes = b"".join(result["servers"])
    assert server_bytes.count(b"\0ecluse_") >= 3  # the Parse and both Binds
    assert b"\0s1\0" not in server_bytes  # the client's name never reaches a server
    rows = msg(b"D", b"\0\x01\0\0\0\x011") + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")
    assert result["clients"][0].endswith(
        msg(b"2", b"") + (ROW_DESCRIPTION if kind == "bind_named_described" else b"") + rows)


@pytest.mark.parametrize("sql, express", [
    ("SELECT 1", True), ("select 'set x = 1' -- harmless", True),
    ("DEALLOCATE ALL", False), ("SET x = 1", False), ("DISCARD ALL", False)])
def test_express_bind_takes_only_a_harmless_statement_the_server_holds(sql, express) -> None:
    """A statement whose SQL may leave session state goes the general way, whose
    reply watch sees it (a prepared DEALLOCATE ALL empties the server's
    statements: psycopg prepares any query run often enough); so does one the
    server does not hold, or that is outdated."""
    rewriter = StatementRewriter()
    tail = sql.encode() + b"\0\0\0"
    stmt = ClientStatement(server_statement_name(tail), tail)
    rewriter._named()[b"s1"] = stmt
    cache = PreparedCache(10)
    data = (msg(b"B", b"\0s1\0" + bytes(6)) + msg(b"D", b"P\0") + msg(b"E", b"\0" + bytes(4))
            + msg(b"S", b""))
    name, name_end, _plan = plan_named_bind(data)
    assert name == b"s1"
    assert rewriter.express_bind(data, name, name_end, cache) is None  # not on this server
    cache.add(stmt.server_name)
    bound = rewriter.express_bind(data, name, name_end, cache)
    if not express:
        assert bound is None
        return
    # The general path's bytes, to the byte.
    rewriter.replies = ReplyQueue()
    general = rewriter.rewrite(Framer(codes.FRONTEND_TYPES, frozenset(codes.FRONTEND_TYPES),
                                      1 << 20).feed(data), cache, RequestTracker())
    assert bound is not None and bound[0] == b"".join(bytes(part) for part in general)
    rewriter.known_good["!" + stmt.server_name] = None  # its result type changed
    assert rewriter.express_bind(data, name, name_end, cache) is None


def test_no_express_for_a_message_longer_than_max_packet_size(monkeypatch) -> None:
    # The general path refuses a Query longer than max_packet_size; so must this one.
    long_sql = "SELECT '" + "x" * 200 + "'"
    steps = [("send", 0, SQL.index("SELECT 1"))]
    SQL.append(long_sql)
    try:
        steps.append(("send", 1, len(SQL) - 1))
        result = run("transaction", [*steps, ("reply", 0, [])], True, monkeypatch,
                     "max_packet_size = 128\n")
    finally:
        SQL.remove(long_sql)
    assert result["express"] == 1  # the short Query only
    assert b"too long" in result["clients"][1]
    assert result["client_states"][1] is ClientState.CLOSED
    assert all(long_sql.encode() not in out for out in result["servers"])


def test_a_client_that_waited_goes_the_express_way_too(monkeypatch) -> None:
    # Four clients, three servers: the fourth waits with its Query buffered, and
    # gets the first server released; all four replies come back the express way.
    steps = [("send", i, 0) for i in range(4)] + [("reply", 0, [])] * 4
    result = run("transaction", steps, True, monkeypatch)
    assert result["express"] == 4, result["express"]
    # All four completions in one step, the first one's server handed to the waiter.
    assert result["taken_back"] == 4
    assert result["counters"][0] == 4
    assert all(out.endswith(b"SELECT 1\0Z\0\0\0\x05I") for out in result["clients"][:4])


def test_a_server_wanted_by_another_worker_is_lent_not_taken_back(monkeypatch) -> None:
    # Two workers, the other's clients waiting for this pool: a server released
    # above this worker's fair share is closed (lent) by the express path too.
    steps = [("send", 0, 0), ("reply", 0, []), ("want", 0, 1), ("send", 1, 0), ("reply", 0, [])]
    result = run("transaction", steps, True, monkeypatch, shared=True)
    assert result["express"] == 2
    assert result["taken_back"] == 1  # the first, before anyone wanted it elsewhere
    lent = [i for i, out in enumerate(result["servers"]) if out.endswith(b"X\0\0\0\x04")]
    assert len(lent) == 1  # Terminate sent, the connection closed
    assert result["server_states"][lent[0]] is not ServerState.IDLE
    assert len(result["idle_order"]) == SERVERS - 1
