"""Sharding (shards=, routing/shards.py) against three real databases, one per
shard, with psycopg, asyncpg and raw wire messages. Where a row landed is read
straight from each shard's database, and compared with shard_of, which
tests/integration/test_shard_hash_oracle.py checks against PostgreSQL's own
PARTITION BY HASH.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import psycopg
import pytest
from wire import RawClient, msg, queries_apart

from ecluse.routing.shardhash import shard_of
from integration.test_host_lists import primary_and_standby  # noqa: F401 - fixture

SHARDS = 3
DBS = [f"ecluse_shard_{n}" for n in range(SHARDS)]
TABLES = ("create table users (user_id bigint primary key, name text); "
          "create table orders (user_id bigint, amount int)")


@pytest.fixture(scope="module")
def shard_dbs(pg):
    for db in DBS:
        pg.psql(f"DROP DATABASE IF EXISTS {db}")
        pg.psql(f"CREATE DATABASE {db}")
        pg.psql(TABLES, dbname=db)
    yield pg
    for db in DBS:
        pg.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.fixture
def ec(ecluse_factory, shard_dbs):
    pg = shard_dbs
    backend = f"host={pg.host} port={pg.port}"
    databases = {f"app_{n}": f"{backend} dbname={db}" for n, db in enumerate(DBS)}
    databases["app"] = ("shards=" + ",".join(f"app_{n}" for n in range(SHARDS))
                        + " sharding_key=user_id")
    yield ecluse_factory({"pool_mode": "transaction", "default_pool_size": 3}, databases)
    for db in DBS:
        pg.psql("truncate users, orders", dbname=db)


def shard(user_id: int) -> int:
    return shard_of(str(user_id), SHARDS, "pg_bigint_hash")


def ids_by_shard(pg, table: str = "users") -> list[set[int]]:
    """The user_ids each shard's database holds, read without ecluse."""
    found = []
    for db in DBS:
        with psycopg.connect(pg.conninfo(dbname=db), autocommit=True) as conn:
            found.append({r[0] for r in conn.execute(f"select user_id from {table}")})
    return found


def expected(ids) -> list[set[int]]:
    out: list[set[int]] = [set() for _ in range(SHARDS)]
    for i in ids:
        out[shard(i)].add(i)
    return out


def test_rows_land_on_the_shard_of_their_key_and_are_read_back_from_it(ec, shard_dbs):
    ids = [*list(range(-20, 40)), 2 ** 40, -2 ** 62]
    assert len({shard(i) for i in ids}) == SHARDS  # the test spreads over every shard
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as conn:
        for i in ids[::2]:  # literal keys: the simple protocol
            conn.execute(psycopg.sql.SQL("insert into users (user_id, name) values ({}, 'lit')")
                         .format(psycopg.sql.Literal(i)))
        for i in ids[1::2]:  # parameters: the extended protocol, unnamed statement
            conn.execute("insert into users (name, user_id) values ('param', %s)", (i,))
        for i in ids:
            assert conn.execute("select user_id from users where user_id = %s",
                                (i,)).fetchone() == (i,)
            assert conn.execute(f"select current_database() from users u "
                                f"where u.user_id = {i}").fetchone() == (DBS[shard(i)],)
            # Prepared by psycopg under a name: the Bind is judged by its text.
            assert conn.execute("select name from users where user_id = %s", (i,),
                                prepare=True).fetchone() is not None
    assert ids_by_shard(shard_dbs) == expected(ids)


def test_asyncpg_named_statements_and_binary_parameters(ec, shard_dbs):
    ids = list(range(100, 130))

    async def run() -> list:
        conn = await asyncpg.connect(ec.url(dbname="app"))
        try:
            for i in ids:  # asyncpg sends bigints in binary
                await conn.execute("insert into orders (user_id, amount) values ($1, $2)",
                                   i, i * 10)
            return [await conn.fetchval("select sum(amount) from orders where user_id = $1",
                                        i) for i in ids]
        finally:
            await conn.close()
    assert asyncio.run(run()) == [i * 10 for i in ids]
    assert ids_by_shard(shard_dbs, "orders") == expected(ids)


def test_shard_choice_by_set_and_by_comment(ec):
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as conn:
        def db() -> str:
            return conn.execute("select current_database()").fetchone()[0]
        assert db() == DBS[0]  # default_shard
        conn.execute("SET SHARD TO '2'")
        assert db() == DBS[2]
        assert conn.execute("/* shard: 1 */ select current_database()").fetchone() \
            == (DBS[1],)
        assert db() == DBS[2]  # a hint routes its own request only
        conn.execute("set sharding key to '7'")
        assert db() == DBS[shard(7)]
        conn.execute("SET ecluse.shard = 1")
        assert db() == DBS[1]
        assert conn.execute("/* sharding_key: 12 */ select current_database()") \
            .fetchone() == (DBS[shard(12)],)
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SET SHARD TO '9'")
        assert err.value.sqlstate == "22023" and "0 to 2" in str(err.value)
        assert db() == DBS[1]  # the client is still there, on its shard


def test_a_request_naming_two_shards_is_refused_and_the_client_goes_on(ec, shard_dbs):
    a, b = 1, next(i for i in range(2, 100) if shard(i) != shard(1))
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute(f"insert into users (user_id, name) values ({a}, 'x'), ({b}, 'y')")
        assert err.value.sqlstate == "0A000"
        with pytest.raises(psycopg.Error) as err:
            conn.execute("select * from users where user_id in (%s, %s)", (a, b))
        assert err.value.sqlstate == "0A000"
        conn.execute("insert into users (user_id, name) values (%s, 'x')", (a,))
        conn.execute("insert into users (user_id, name) values (%s, 'y')", (b,))
    assert ids_by_shard(shard_dbs) == expected([a, b])
    assert ec.log().count("pooler error: a request may use one shard") == 2


def test_a_transaction_runs_on_the_shard_its_first_request_names(ec, shard_dbs):
    a = 5
    same = next(i for i in range(6, 200) if shard(i) == shard(a))
    other = next(i for i in range(6, 200) if shard(i) != shard(a))
    with psycopg.connect(ec.dsn(dbname="app")) as conn:  # psycopg sends BEGIN alone
        conn.execute("insert into users (user_id, name) values (%s, 'a')", (a,))
        conn.execute("insert into users (user_id, name) values (%s, 'same')", (same,))
        assert conn.execute("select current_database()").fetchone() == (DBS[shard(a)],)
        # Choosing the transaction's own shard inside it: answered by ecluse.
        conn.execute(f"SET SHARD TO '{shard(a)}'")
        conn.commit()
        conn.execute("insert into users (user_id, name) values (%s, 'rolled back')", (other,))
        conn.rollback()
        # A BEGIN and its ROLLBACK with nothing between: answered by ecluse.
        conn.execute("rollback")
    assert ids_by_shard(shard_dbs) == expected([a, same])
    conn = psycopg.connect(ec.dsn(dbname="app"))
    try:
        conn.execute("insert into users (user_id, name) values (%s, 'lost')", (same + 1000,))
        other = next(i for i in range(300, 400) if shard(i) != shard(same + 1000))
        with pytest.raises(psycopg.Error) as err:
            conn.execute("insert into users (user_id, name) values (%s, 'elsewhere')", (other,))
        assert err.value.sqlstate == "0A000"
        assert "cannot join" in str(err.value)
    finally:
        conn.close()
    # Neither insert of the ended transaction stayed anywhere.
    assert ids_by_shard(shard_dbs) == expected([a, same])


def test_pipelined_requests_for_different_shards_each_reach_their_own(ec, shard_dbs):
    ids = list(range(500, 530))
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as conn:
        with conn.pipeline() as p:
            cursors = []
            for i in ids:
                cursors.append(conn.execute("insert into users (user_id, name) values (%s, 'p') "
                                            "returning current_database()", (i,)))
                p.sync()  # each its own request, as its own implicit transaction
        assert [c.fetchone()[0] for c in cursors] == [DBS[shard(i)] for i in ids]
    # Without Sync between them, a pipeline is one request, one implicit
    # transaction on the server: over two shards, it is refused whole if it
    # arrives whole, else the client is ended (its first part already ran on
    # one shard) and that part rolled back.
    other = next(i for i in range(600, 700) if shard(i) != shard(600))
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as err, conn.pipeline():
            conn.execute("insert into users (user_id, name) values (%s, 'x')", (600,))
            conn.execute("insert into users (user_id, name) values (%s, 'x')", (other,))
        assert conn.closed or err.value.sqlstate == "0A000"
    assert "a request may use one shard" in ec.log()
    assert ids_by_shard(shard_dbs) == expected(ids)


def test_a_write_behind_a_slow_read_on_another_shard_waits_for_it(ec, shard_dbs):
    a = 1
    b = next(i for i in range(2, 100) if shard(i) != shard(a))
    first, second = queries_apart(
        ec, "app", f"select current_database(), pg_sleep(0.5) from users where user_id = {a}",
        f"insert into users (user_id, name) values ({b}, 'w') returning current_database()",
        0.1)
    assert not [t for t, _ in first + second if t == b"E"]
    assert next(body for t, body in second if t == b"D").endswith(DBS[shard(b)].encode())
    assert ids_by_shard(shard_dbs) == expected([b])


def test_requests_sent_together_before_any_server_is_linked_are_split_by_shard(ec,
                                                                              shard_dbs):
    """One write with several requests reaches ecluse while the first waits for a
    new server: at the link, only the requests for its shard go along."""
    other = next(i for i in range(701, 800) if shard(i) != shard(700))
    ids = [700, other, 800, 801]
    client = RawClient(ec, dbname="app")
    try:
        client.send(b"".join(
            msg(b"Q", f"insert into users (user_id, name) values ({i}, 'r') "
                      "returning current_database()\0".encode()) for i in ids))
        replies = [client.read_until(b"Z") for _ in ids]
    finally:
        client.close()
    assert not [t for reply in replies for t, _ in reply if t == b"E"]
    assert [next(body for t, body in reply if t == b"D")[6:].decode() for reply in replies] \
        == [DBS[shard(i)] for i in ids]
    assert ids_by_shard(shard_dbs) == expected(ids)


@pytest.fixture(scope="module")
def sharded_replicas(primary_and_standby):  # noqa: F811 - the imported fixture
    """Two shard databases on a primary, streamed to a hot standby, each with the
    users table and on_standby() (true where it runs during recovery)."""
    primary, standby = primary_and_standby
    for db in ("shard_a", "shard_b"):
        primary.psql(f"DROP DATABASE IF EXISTS {db}")
        primary.psql(f"CREATE DATABASE {db}")
        primary.psql(TABLES + "; create function on_standby() returns bool language sql "
                     "as 'select pg_last_wal_replay_lsn() is not null'", dbname=db)
    deadline = time.monotonic() + 30
    while not replayed(standby):
        assert time.monotonic() < deadline, "the standby never replayed the shards"
        time.sleep(0.1)
    return primary, standby


def replayed(standby) -> bool:
    try:
        return standby.psql("select to_regprocedure('on_standby()') is not null",
                            dbname="shard_b") == "t"
    except RuntimeError:  # not even the database yet
        return False


def test_each_shard_reads_from_its_own_replica_and_writes_to_its_primary(
        ecluse_factory, sharded_replicas):
    primary, standby = sharded_replicas
    dbs = ["shard_a", "shard_b"]
    databases = {"app": "shards=s0,s1 sharding_key=user_id"}
    for n, db in enumerate(dbs):
        databases[f"s{n}"] = f"host={primary.socket_dir} port={primary.port} dbname={db} " \
                             f"read_db=s{n}_ro"
        databases[f"s{n}_ro"] = f"host={standby.socket_dir} port={standby.port} dbname={db}"
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 3}, databases)

    def on(i: int) -> str:
        return dbs[shard_of(str(i), 2, "pg_bigint_hash")]
    ids = list(range(1000, 1012))
    with psycopg.connect(ec.dsn(dbname="app"), autocommit=True) as conn:
        for i in ids:
            assert conn.execute("insert into users (user_id, name) values (%s, 'r') "
                                "returning on_standby(), current_database()", (i,)).fetchone() \
                == (False, on(i))
        deadline = time.monotonic() + 30
        while conn.execute("select count(*) from users where user_id = %s",
                           (ids[-1],)).fetchone() != (1,):
            assert time.monotonic() < deadline, "the standby never replayed the rows"
            time.sleep(0.1)
        for i in ids:
            # A read: the key's shard, on the standby; prepared too.
            assert conn.execute("select on_standby(), current_database(), user_id from users "
                                "where user_id = %s", (i,)).fetchone() == (True, on(i), i)
            assert conn.execute("select on_standby(), current_database() from users "
                                "where user_id = %s", (i,), prepare=True).fetchone() \
                == (True, on(i))
        with conn.transaction():  # a transaction on the key's primary from its BEGIN
            assert conn.execute("select on_standby(), current_database() from users "
                                "where user_id = %s", (ids[0],)).fetchone() \
                == (False, on(ids[0]))
    # A write pipelined behind a slow read of the same shard waits for it, then goes
    # to that shard's primary.
    same = next(i for i in range(2000, 2100) if on(i) == on(ids[0]))
    first, second = queries_apart(
        ec, "app", f"select on_standby() from users, pg_sleep(0.5) where user_id = {ids[0]}",
        f"insert into users (user_id, name) values ({same}, 'w') returning on_standby()", 0.2)
    assert not [t for t, _ in first + second if t == b"E"]
    assert [body for t, body in first if t == b"D"] == [b"\0\x01\0\0\0\x01t"]
    assert [body for t, body in second if t == b"D"] == [b"\0\x01\0\0\0\x01f"]


def test_a_bad_shard_hint_behind_other_requests_is_refused_alone(ec):
    """Requests sent together, one naming a shard that does not exist: that one gets
    22023, those around it their answers, whether they were buffered while a server
    was found or arrived while one was linked."""
    client = RawClient(ec, dbname="app")
    try:
        for _ in range(2):  # first with no server in the pool yet, then with one idle
            client.send(msg(b"Q", b"select 1, pg_sleep(0.2)\0")
                        + msg(b"Q", b"/* shard: 9 */ select 2\0")
                        + msg(b"Q", b"select 3\0"))
            replies = [client.read_until(b"Z") for _ in range(3)]
            assert [t for t, _ in replies[0] if t == b"E"] == []
            assert b"C22023\0" in next(body for t, body in replies[1] if t == b"E")
            assert next(body for t, body in replies[2] if t == b"D").endswith(b"3")
    finally:
        client.close()
