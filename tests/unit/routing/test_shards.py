"""routing/shards.py over generated pipelines: requests naming a shard by a key
literal, a parameter (text or binary, unnamed or named statement), a comment
hint, several shards, or none, framed by the session's own framer rules. The
router's answers are checked against a model built from shard_of alone:
which shards a request names (rule 1), the pool of the first (rule 2, 3),
how many follow it to its server (rule 5), what must wait or end the client
while a server is linked (rules 4, 5); and the config errors of shards=.
"""

from __future__ import annotations

import contextlib
import struct
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit.routing.test_readwrite import DESCRIBE_EXECUTE_SYNC, framer, parse, query
from wire import cut, msg

from ecluse.config.loader import config_from_string
from ecluse.errors import ConfigError
from ecluse.frontend.prepared import ClientStatement
from ecluse.routing.shardhash import shard_of
from ecluse.routing.shards import (
    FORWARD,
    HOLD,
    MOVE,
    ShardError,
    ShardRouter,
    request_shards,
    request_spans,
    spec_for,
    transaction_statement,
)

SHARDS = 3
CONFIG = config_from_string(
    "[databases]\n"
    + "".join(f"app_{n} = host=/tmp dbname=d{n}\n" for n in range(SHARDS))
    + "app = shards=app_0,app_1,app_2 sharding_key=users.user_id\n")
SPEC = spec_for(CONFIG, "app")
KEYED = "select name from users where user_id = $1"
STATEMENTS = {b"keyed": ClientStatement("ecluse_1", KEYED.encode() + b"\0\0\0"),
              b"plain": ClientStatement("ecluse_2", b"select 1\0\0\0")}


def shard(key: int) -> int:
    return shard_of(str(key), SHARDS, "pg_bigint_hash")


def bind(name: str, key: int | None, binary: bool = False) -> bytes:
    if key is None:
        params = struct.pack("!HH", 0, 0)
    elif binary:
        params = struct.pack("!HHHi", 1, 1, 1, 8) + struct.pack("!q", key)
    else:
        text = str(key).encode()
        params = struct.pack("!HHi", 0, 1, len(text)) + text
    return msg(b"B", b"\0" + name.encode() + b"\0" + params + struct.pack("!H", 0))


keys = st.integers(-(2**63), 2**63 - 1)

# One request: (wire bytes, the shards it names).
request = st.one_of(
    keys.map(lambda k: (query(f"select * from users where user_id = {k}"), {shard(k)})),
    keys.map(lambda k: (query(f"update users set name = 'x' where users.user_id = {k}; "
                              "select 1"), {shard(k)})),
    st.just((query("select now()"), set())),
    st.tuples(keys, keys).map(lambda ks: (
        query(f"select * from users where user_id in ({ks[0]}, {ks[1]})"),
        {shard(ks[0]), shard(ks[1])})),
    st.tuples(keys, st.booleans()).map(lambda kb: (
        parse("", KEYED) + bind("", kb[0], kb[1]) + DESCRIBE_EXECUTE_SYNC, {shard(kb[0])})),
    st.tuples(keys, st.booleans()).map(lambda kb: (
        bind("keyed", kb[0], kb[1]) + DESCRIBE_EXECUTE_SYNC, {shard(kb[0])})),
    st.just((bind("plain", None) + DESCRIBE_EXECUTE_SYNC, set())),
    st.integers(0, SHARDS - 1).map(lambda n: (query(f"/* shard: {n} */ select 1"), {n})),
    keys.map(lambda k: (query(f"/* sharding_key: {k} */ delete from t"), {shard(k)})),
    st.just((msg(b"S", b""), set())),
)


class Registry:
    """What a ShardRouter reads of the pool registry: the config and a pool per
    database entry."""

    def __init__(self):
        self.config = CONFIG
        self.pools = {}

    def get_pool(self, db, user):
        return self.pools.setdefault(db.name, SimpleNamespace(
            settings=SimpleNamespace(database=db.name)))


def router(current: int = 0) -> ShardRouter:
    registry = Registry()
    home = registry.get_pool(CONFIG.databases[f"app_{current}"], "u")
    return ShardRouter(home, registry, "app", current)


def framed(requests, cuts=()) -> list:
    f = framer()
    pieces = []
    for chunk in cut(b"".join(raw for raw, _ in requests), list(cuts)):
        pieces += f.feed(chunk)
    return pieces


@settings(max_examples=300, deadline=None)
@given(requests=st.lists(request, min_size=1, max_size=5),
       cuts=st.lists(st.integers(0, 2000), max_size=3))
def test_each_request_names_the_shards_of_its_keys(requests, cuts):
    pieces = framed(requests, cuts)
    spans = request_spans(pieces)
    assert len(spans) == len(requests)
    for (first, last), (_raw, named) in zip(spans, requests, strict=True):
        assert request_shards(pieces[first:last], STATEMENTS, SPEC)[0] == named


@settings(max_examples=300, deadline=None)
@given(requests=st.lists(request, min_size=1, max_size=5), current=st.integers(0, 2))
def test_the_first_request_picks_the_pool_and_those_after_follow_while_they_may(
        requests, current):
    pieces = framed(requests)
    r = router(current)
    named = requests[0][1]
    if len(named) > 1:
        with pytest.raises(ShardError):
            r.choose(pieces, STATEMENTS, "u")
        return
    pool = r.choose(pieces, STATEMENTS, "u")
    linked = named.pop() if named else current
    assert pool.settings.database == f"app_{linked}"
    # sendable: the first request, and the following ones naming that shard or none.
    spans = request_spans(pieces)
    count = spans[0][1]
    for (_first, last), (_raw, shards) in zip(spans[1:], requests[1:], strict=True):
        if shards - {linked}:
            break
        count = last
    assert r.sendable(pieces, STATEMENTS, pool) == count


@settings(max_examples=300, deadline=None)
@given(requests=st.lists(request, min_size=1, max_size=5), linked=st.integers(0, 2),
       in_transaction=st.booleans())
def test_what_arrives_while_linked_joins_waits_or_ends_the_client(requests, linked,
                                                                   in_transaction):
    pieces = framed(requests)
    r = router()
    pool = r.registry.get_pool(CONFIG.databases[f"app_{linked}"], "u")
    elsewhere = next((shards for _raw, shards in requests if shards - {linked}), None)
    if elsewhere is None:
        assert r.holds(pieces, STATEMENTS, in_transaction, pool) == FORWARD
    elif in_transaction:
        with pytest.raises(ShardError):
            r.holds(pieces, STATEMENTS, in_transaction, pool)
    else:
        assert r.holds(pieces, STATEMENTS, in_transaction, pool) == HOLD


@given(key=keys, linked=st.integers(0, 2), named=st.booleans(), acted=st.booleans())
def test_the_rest_of_a_request_naming_another_shard_moves_it_or_ends_the_client(
        key, linked, named, acted):
    """Its start is on the linked server already. If that start only prepared and
    described (asyncpg's Parse, Describe, Flush), the request moves: the server's
    part is ended unseen and the unnamed Parse is replayed on the next server.
    If the start acted (a Bind, an Execute), the client is ended."""
    name = "keyed" if named else ""
    opening = parse(name, KEYED) + msg(b"D", b"S" + name.encode() + b"\0") + msg(b"H", b"")
    if acted:
        opening += bind(name, 1) + msg(b"E", b"\0" + struct.pack("!I", 0)) + msg(b"H", b"")
    f = framer()
    first = f.feed(opening)
    rest = f.feed(bind(name, key) + DESCRIBE_EXECUTE_SYNC)
    r = router()
    pool = r.registry.get_pool(CONFIG.databases[f"app_{linked}"], "u")
    if acted and shard(1) != linked:  # a new request for another shard: it waits
        assert r.holds(first, STATEMENTS, False, pool) == HOLD
        return
    # What names no other shard is sent, and the request is left open.
    assert r.holds(first, STATEMENTS, False, pool) == FORWARD
    assert r.open_request
    if shard(key) == linked:
        assert r.holds(rest, STATEMENTS, False, pool) == FORWARD
        assert not r.open_request
    elif acted:
        with pytest.raises(ShardError):
            r.holds(rest, STATEMENTS, False, pool)
    else:
        assert r.holds(rest, STATEMENTS, False, pool) == MOVE
        r.moved()
        assert not r.open_request
        assert r.take_replay() == (None if named else parse("", KEYED))
        # Routed afresh once the server is released: to the key's shard.
        assert r.choose(rest, STATEMENTS, "u").settings.database == f"app_{shard(key)}"
        assert r.take_replay() is None


def test_a_lone_begin_waits_for_the_request_that_names_the_shard():
    r = router()
    assert r.answer_idle("select 1", "u") is None
    assert r.answer_idle("commit", "u") is None  # no transaction: the server warns
    answer = r.answer_idle("BEGIN ISOLATION LEVEL SERIALIZABLE", "u")
    assert (answer.tag, answer.status) == ("BEGIN", b"T")
    assert r.answer_idle("begin", "u") is None  # the server warns of it
    answer = r.answer_idle("set shard to '2'", "u")
    assert (answer.tag, answer.status, r.shard) == ("SET", b"T", 2)
    assert r.take_begin() == "BEGIN ISOLATION LEVEL SERIALIZABLE"
    assert r.take_begin() is None
    assert r.answer_idle("start transaction read only", "u").tag == "START TRANSACTION"
    answer = r.answer_idle("commit and chain", "u")
    assert (answer.tag, answer.status) == ("COMMIT", b"T")  # a new one begins
    answer = r.answer_idle("abort", "u")
    assert (answer.tag, answer.status, r.begin) == ("ROLLBACK", b"I", None)
    with pytest.raises(ShardError):
        r.answer_idle("SET SHARD TO 3", "u")


@pytest.mark.parametrize("sql, kind", [
    ("begin", "BEGIN"), (" START TRANSACTION ISOLATION LEVEL READ COMMITTED;", "START"),
    ("end", "COMMIT"), ("rollback and no chain", "ROLLBACK"),
    ("begin; select 1", None), ("rollback to savepoint a", None), ("beginx", None),
    ("commit prepared 'x'", None), ("-- begin\nselect 1", None)])
def test_transaction_statements(sql, kind):
    stmt = transaction_statement(sql)
    assert (stmt.kind.name.removeprefix("TRANS_STMT_") if stmt else None) == kind


@pytest.mark.parametrize("entry, error", [
    ("app = shards=app_0,nope", "shard 'nope' is not a database"),
    ("app = shards=app_0,app", "names the database itself"),
    ("app = shards=app_0,app_0", "lists a database twice"),
    ("app = shards=app_0,app_1 default_shard=2", "default_shard 2 is not a shard"),
    ("app = shards=app_0,app_1 read_db=app_1", "has no read_db"),
    ("app = shards=app_0,app_1 sharding_key='a.b.c.d'", "sharding_key"),
    ("app = sharding_key=id", "need shards"),
    ("app = shards=app_0,app_1 sharding_function=md5", "sharding_function"),
    ("* = shards=app_0,app_1", "'*' cannot be sharded"),
])
def test_config_errors_name_the_line(entry, error):
    text = "[databases]\napp_0 = dbname=a\napp_1 = dbname=b\n" + entry + "\n"
    with pytest.raises(ConfigError) as err:
        config_from_string(text)
    assert error in str(err.value)
    assert ":4" in str(err.value) or "line 4" in str(err.value)


# Any message the framer passes whole, with any body: what a client may send.
junk_message = st.tuples(st.sampled_from(b"QPBDESHCFXdcf"), st.binary(max_size=40)).map(
    lambda tb: msg(bytes((tb[0],)), tb[1]))


@settings(max_examples=500, deadline=None)
@given(messages=st.lists(st.one_of(junk_message, request.map(lambda r: r[0])), min_size=1,
                         max_size=6),
       linked=st.integers(0, 2), in_transaction=st.booleans(), cuts=st.lists(
           st.integers(0, 400), max_size=3))
def test_malformed_messages_never_break_the_router(messages, linked, in_transaction, cuts):
    """Whatever the bodies, the router answers or raises ShardError (a refusal the
    session turns into an error for that client); nothing else escapes."""
    pieces = framed([(m, None) for m in messages], cuts)
    r = router()
    pool = r.registry.get_pool(CONFIG.databases[f"app_{linked}"], "u")
    for call in (lambda: r.choose(pieces, STATEMENTS, "u") if pieces else None,
                 lambda: r.sendable(pieces, STATEMENTS, pool),
                 lambda: r.holds(pieces, STATEMENTS, in_transaction, pool),
                 lambda: [r.answer_idle(bytes(raw[5:-1]).decode("utf-8", "replace"), "u")
                          for t, raw, s, e in pieces if t == ord("Q") and s and e]):
        with contextlib.suppress(ShardError):
            call()


@pytest.mark.parametrize("sql, named", [
    ("select 1 from orders", set()),
    ("SELECT name FROM users WHERE USER_ID = 42", {42}),
    ('select name from users where "user_id" = 42', {42}),
    # A Unicode escape spells the name without its letters: still parsed.
    ('select name from users where U&"\\0075ser_id" = 42', {42}),
    ("select name from users where u&\"\\0075ser_id\" = 7", {7}),
])
def test_texts_not_spelling_the_key_are_not_parsed_yet_escapes_are(sql, named):
    pieces = framed([(query(sql), None)])
    assert request_shards(pieces, STATEMENTS, SPEC)[0] == {shard(k) for k in named}
