"""auth_query and SCRAM pass-through against the real test cluster.

The cluster (fixtures/fix_pg.py) asks md5user for md5 and scramuser for
SCRAM-SHA-256 over TCP and trusts postgres, which plays auth_user here (only a
superuser may read pg_shadow). ecluse has no secret of its own for the client
users: it looks them up, and logs into the server with the md5 hash or with
the ClientKey recovered from the client's SCRAM proof.
"""

from __future__ import annotations

import asyncio
import hashlib

import asyncpg
import psycopg
import pytest

from integration.test_auth import login_sqlstate


def connect_asyncpg(ec, user: str, password: str) -> str:
    async def attempt() -> str:
        conn = await asyncpg.connect(host=ec.host, port=ec.port, user=user, password=password,
                                     database="ecluse_test", ssl=False)
        try:
            return await conn.fetchval("select current_user")
        finally:
            await conn.close()

    return asyncio.run(attempt())


@pytest.fixture
def auth_query_ecluse(ecluse_factory):
    return ecluse_factory({"auth_type": "md5", "auth_user": "postgres"})


@pytest.mark.parametrize("user", ["md5user", "scramuser"])
def test_auth_query_user_logs_in_with_psycopg_and_asyncpg(auth_query_ecluse, pg, user):
    ec = auth_query_ecluse
    password = pg.passwords[user]
    with psycopg.connect(ec.dsn(user=user, password=password), autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == (user,)
    assert connect_asyncpg(ec, user, password) == user
    assert login_sqlstate(ec, user, password) is None


@pytest.mark.parametrize("user", ["md5user", "scramuser", "nosuchuser", "x' OR '1'='1",
                                  "postgres' --"])
def test_wrong_password_and_unknown_user_fail_alike(auth_query_ecluse, user):
    ec = auth_query_ecluse
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(host=ec.host, port=ec.port, user=user, password="wrong",
                        dbname="ecluse_test", sslmode="disable")
    assert f'password authentication failed for user "{user}"' in str(err.value)
    assert login_sqlstate(ec, user, "wrong") == "28P01"


@pytest.mark.parametrize("user", ["md5user", "scramuser"])
def test_auth_query_with_cleartext_client_password(ecluse_factory, pg, user):
    """auth_type plain checks the password against the looked-up hash or verifier;
    for a verifier, the keys derived from it log into the SCRAM server."""
    ec = ecluse_factory({"auth_type": "plain", "auth_user": "postgres"})
    with psycopg.connect(ec.dsn(user=user, password=pg.passwords[user]),
                         autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == (user,)
    assert login_sqlstate(ec, user, "wrong") == "28P01"


def test_scram_auth_type_refuses_md5_secret_from_auth_query(ecluse_factory, pg):
    ec = ecluse_factory({"auth_type": "scram-sha-256", "auth_user": "postgres"})
    with pytest.raises(psycopg.OperationalError,
                       match='password authentication failed for user "md5user"'):
        psycopg.connect(ec.dsn(user="md5user", password=pg.passwords["md5user"]))
    with psycopg.connect(ec.dsn(user="scramuser", password=pg.passwords["scramuser"]),
                         autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == ("scramuser",)


def test_auth_query_per_database_settings(ecluse_factory, pg):
    """auth_user, auth_query and auth_dbname on the [databases] line override the globals."""
    backend = f"host={pg.host} port={pg.port}"
    query = "SELECT rolname, rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1"
    ec = ecluse_factory(
        {"auth_type": "md5", "auth_user": "nobody_at_all"},
        databases={
            "ecluse_test": f"{backend} dbname=ecluse_test auth_user=postgres "
                           f"auth_dbname=authdb auth_query='{query}'",
            "authdb": f"{backend} dbname=postgres",
        })
    with psycopg.connect(ec.dsn(user="md5user", password=pg.passwords["md5user"]),
                         autocommit=True) as conn:
        assert conn.execute("select current_database()").fetchone() == ("ecluse_test",)
    # The other database uses the global auth_user, which cannot log in.
    with pytest.raises(psycopg.OperationalError, match="authentication lookup failed"):
        psycopg.connect(ec.dsn(user="md5user", password="x", dbname="authdb"))


def test_lookup_failures_are_clear_fatal_errors(ecluse_factory, pg):
    ec = ecluse_factory({"auth_type": "md5", "auth_user": "md5user"})  # no password for it
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(ec.dsn(user="scramuser", password=pg.passwords["scramuser"]))
    assert 'authentication lookup failed for user "scramuser"' in str(err.value)
    ec2 = ecluse_factory({"auth_type": "md5", "auth_user": "postgres",
                          "auth_query": "SELECT usename, passwd FROM no_such_table "
                                        "WHERE usename = $1"})
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(ec2.dsn(user="scramuser", password=pg.passwords["scramuser"]))
    assert "no_such_table" in str(err.value)
    for proc in (ec, ec2):
        log = proc.log()
        assert "auth_query" in log
        assert "scrampass" not in log and "SCRAM-SHA-256$" not in log


def test_auth_file_user_does_not_use_auth_query(ecluse_factory, pg):
    """A user in auth_file keeps its secret there, even when the server's differs."""
    ec = ecluse_factory({"auth_type": "md5", "auth_user": "postgres"},
                        userlist={"md5user": "other-password"})
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(ec.dsn(user="md5user", password=pg.passwords["md5user"]))


def scram_verifier(pg, user: str) -> str:
    with psycopg.connect(pg.conninfo(user="postgres"), autocommit=True) as conn:
        row = conn.execute("select rolpassword from pg_authid where rolname = %s",
                           (user,)).fetchone()
    assert row is not None and row[0].startswith("SCRAM-SHA-256$")
    return row[0]


def test_scram_pass_through_with_verifier_in_userlist(ecluse_factory, pg):
    """ecluse holds only scramuser's verifier; the server demands SCRAM; the client's keys do it."""
    ec = ecluse_factory({"auth_type": "scram-sha-256", "pool_mode": "transaction"},
                        userlist={"scramuser": scram_verifier(pg, "scramuser")})
    dsn = ec.dsn(user="scramuser", password=pg.passwords["scramuser"])
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        # Two clients at once: the second server connection logs in with the keys too.
        a.execute("begin")
        b.execute("begin")
        assert a.execute("select current_user").fetchone() == ("scramuser",)
        assert b.execute("select current_user").fetchone() == ("scramuser",)
        pids = {a.execute("select pg_backend_pid()").fetchone(),
                b.execute("select pg_backend_pid()").fetchone()}
        assert len(pids) == 2
        a.execute("commit")
        b.execute("commit")
    assert connect_asyncpg(ec, "scramuser", pg.passwords["scramuser"]) == "scramuser"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(ec.dsn(user="scramuser", password="wrong"))


def test_scram_pass_through_with_verifier_from_auth_query(ecluse_factory, pg):
    ec = ecluse_factory({"auth_type": "scram-sha-256", "auth_user": "postgres",
                         "pool_mode": "session"})
    for _ in range(2):  # the second login comes from the cache and a fresh server
        with psycopg.connect(ec.dsn(user="scramuser", password=pg.passwords["scramuser"]),
                             autocommit=True) as conn:
            assert conn.execute("select current_user").fetchone() == ("scramuser",)
    assert "scrampass" not in ec.log()


def test_search_path_of_auth_user_cannot_shadow_pg_shadow(ecluse_factory, pg):
    """auth_user's own search_path puts a look-alike pg_shadow first; ecluse pins
    search_path for the lookup, so the real catalog still answers."""
    fake = "md5" + hashlib.md5(b"hacked" + b"md5user").hexdigest()
    pg.psql("CREATE ROLE authq LOGIN SUPERUSER;"
            "ALTER ROLE authq SET search_path = evil, pg_catalog;", dbname="ecluse_test")
    pg.psql("CREATE SCHEMA evil;"
            "CREATE TABLE evil.pg_shadow (usename name, passwd text);"
            f"INSERT INTO evil.pg_shadow VALUES ('md5user', '{fake}');", dbname="ecluse_test")
    try:
        with psycopg.connect(pg.conninfo(user="authq", dbname="ecluse_test")) as direct:
            # Without the pin, the look-alike wins.
            assert direct.execute("SELECT passwd FROM pg_shadow WHERE usename = 'md5user'"
                                  ).fetchone() == (fake,)
        ec = ecluse_factory({"auth_type": "md5", "auth_user": "authq"})
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(ec.dsn(user="md5user", password="hacked"))
        with psycopg.connect(ec.dsn(user="md5user", password=pg.passwords["md5user"]),
                             autocommit=True) as conn:
            assert conn.execute("select current_user").fetchone() == ("md5user",)
    finally:
        pg.psql("DROP SCHEMA evil CASCADE;", dbname="ecluse_test")
        pg.psql("DROP ROLE authq;")


def test_expired_password_is_refused_as_postgresql_does(ecluse_factory, pg):
    """CVE-2025-2291: a password past the role's VALID UNTIL must not log in."""
    pg.psql("CREATE ROLE expuser LOGIN PASSWORD 'exppass' VALID UNTIL '2001-01-01'")
    try:
        ec = ecluse_factory({"auth_type": "md5", "auth_user": "postgres"})
        assert login_sqlstate(ec, "expuser", "exppass") == "28P01"
        pg.psql("ALTER ROLE expuser VALID UNTIL 'infinity'")
        fresh = ecluse_factory({"auth_type": "md5", "auth_user": "postgres"})  # no cache
        assert login_sqlstate(fresh, "expuser", "exppass") is None
    finally:
        pg.psql("DROP ROLE expuser")


def test_client_startup_parameters_never_reach_the_lookup(ecluse_factory, pg):
    """CVE-2025-12819: the client's startup parameters (here a search_path) are
    not applied to the connection that runs auth_query."""
    pg.psql("CREATE SCHEMA malicious_schema;"
            "CREATE FUNCTION public.ecluse_lookup(u text, OUT usename name, OUT passwd text) "
            "LANGUAGE plpgsql AS $$ BEGIN "
            "IF pg_catalog.current_setting('search_path') LIKE '%malicious%' THEN "
            "RAISE EXCEPTION 'client search_path reached the auth connection'; END IF; "
            "SELECT s.usename, s.passwd INTO usename, passwd FROM pg_catalog.pg_shadow s "
            "WHERE s.usename = u; END $$;", dbname="ecluse_test")
    try:
        ec = ecluse_factory({"auth_type": "md5", "auth_user": "postgres",
                             "auth_query": "SELECT * FROM public.ecluse_lookup($1)"})
        dsn = ec.dsn(user="md5user", password=pg.passwords["md5user"])
        with psycopg.connect(dsn, options="-c search_path=malicious_schema,public",
                             autocommit=True) as conn:
            assert conn.execute("select current_user, current_setting('search_path')"
                                ).fetchone() == ("md5user", "malicious_schema,public")
    finally:
        pg.psql("DROP SCHEMA malicious_schema; DROP FUNCTION public.ecluse_lookup(text);",
                dbname="ecluse_test")
