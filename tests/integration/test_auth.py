"""Authentication on both sides: clients against the auth_file, ecluse against
PostgreSQL with whatever method the server asks for."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os

import asyncpg
import psycopg
import pytest


def login_sqlstate(ec, user: str, password: str | None = None,
                   dbname: str = "ecluse_test") -> str | None:
    """Log in with asyncpg (whose errors carry the SQLSTATE); None on success."""
    async def attempt() -> str | None:
        try:
            conn = await asyncpg.connect(host=ec.host, port=ec.port, user=user,
                                         password=password, database=dbname, ssl=False)
        except asyncpg.PostgresError as exc:
            return exc.sqlstate
        await conn.close()
        return None

    return asyncio.run(attempt())


def md5_secret(user: str, password: str) -> str:
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def scram_secret(password: str, iterations: int = 4096) -> str:
    """A SCRAM-SHA-256 secret as PostgreSQL stores it (RFC 5802 / 7677)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


SECRETS = {
    "plaintext": lambda u, p: p,
    "md5": md5_secret,
    "scram": lambda u, p: scram_secret(p),
}

# (auth_type, secret kind) pairs PostgreSQL itself accepts.
WORKING = [
    ("plain", "plaintext"), ("plain", "md5"), ("plain", "scram"),
    ("md5", "plaintext"), ("md5", "md5"), ("md5", "scram"),
    ("scram-sha-256", "plaintext"), ("scram-sha-256", "scram"),
]


@pytest.fixture
def forced_user_db(pg):
    return {"ecluse_test": f"host={pg.host} port={pg.port} dbname=ecluse_test user=trustuser"}


@pytest.mark.parametrize(("auth_type", "kind"), WORKING)
def test_client_auth_methods(ecluse_factory, forced_user_db, auth_type, kind):
    ec = ecluse_factory({"auth_type": auth_type}, databases=forced_user_db,
                        userlist={"alice": SECRETS[kind]("alice", "s3cret 'pw")})
    with psycopg.connect(ec.dsn(user="alice", password="s3cret 'pw"), autocommit=True) as c:
        # The forced user logs into the server; the client is alice to ecluse.
        assert c.execute("select current_user").fetchone() == ("trustuser",)
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(ec.dsn(user="alice", password="wrong"))
    assert 'password authentication failed for user "alice"' in str(err.value)
    assert login_sqlstate(ec, "alice", "wrong") == "28P01"
    assert login_sqlstate(ec, "alice", "s3cret 'pw") is None


@pytest.mark.parametrize("auth_type", ["plain", "md5", "scram-sha-256"])
def test_unknown_user_gets_the_same_error_as_a_wrong_password(ecluse_factory, forced_user_db,
                                                             auth_type):
    ec = ecluse_factory({"auth_type": auth_type}, databases=forced_user_db,
                        userlist={"alice": "pw"})
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(ec.dsn(user="mallory", password="pw"))
    assert 'password authentication failed for user "mallory"' in str(err.value)
    assert login_sqlstate(ec, "mallory", "pw") == "28P01"


def test_scram_client_refused_with_md5_secret(ecluse_factory, forced_user_db):
    """PostgreSQL cannot run SCRAM from an md5 hash, and neither can ecluse."""
    ec = ecluse_factory({"auth_type": "scram-sha-256"}, databases=forced_user_db,
                        userlist={"alice": md5_secret("alice", "pw")})
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(ec.dsn(user="alice", password="pw"))


def test_trust_accepts_any_password(ecluse_factory, forced_user_db):
    ec = ecluse_factory({"auth_type": "trust"}, databases=forced_user_db)
    with psycopg.connect(ec.dsn(user="whoever", password="x"), autocommit=True) as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_unknown_database_is_3D000(ecluse):
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(ecluse.dsn(dbname="no_such_db"))
    assert 'database "no_such_db" does not exist' in str(err.value)
    assert login_sqlstate(ecluse, "postgres", dbname="no_such_db") == "3D000"


@pytest.mark.parametrize("user", ["md5user", "scramuser", "passuser"])
def test_server_auth_with_password_from_auth_file(ecluse_factory, pg, user):
    """The server asks md5, SCRAM or cleartext; ecluse answers from the auth_file."""
    ec = ecluse_factory(
        {"auth_type": "md5"},
        databases={"ecluse_test": f"host={pg.host} port={pg.port} dbname=ecluse_test"},
        userlist={user: pg.passwords[user]},
    )
    with psycopg.connect(ec.dsn(user=user, password=pg.passwords[user]), autocommit=True) as c:
        assert c.execute("select current_user").fetchone() == (user,)


def test_server_md5_auth_with_stored_md5_hash(ecluse_factory, pg):
    """PgBouncer's trick: an md5 hash in the auth_file is enough for md5 server auth."""
    ec = ecluse_factory(
        {"auth_type": "md5"},
        databases={"ecluse_test": f"host={pg.host} port={pg.port} dbname=ecluse_test"},
        userlist={"md5user": md5_secret("md5user", pg.passwords["md5user"])},
    )
    dsn = ec.dsn(user="md5user", password=pg.passwords["md5user"])
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select current_user").fetchone() == ("md5user",)


@pytest.mark.parametrize("user", ["md5user", "scramuser"])
def test_server_auth_with_password_on_database_line(ecluse_factory, pg, user):
    pw = pg.passwords[user]
    ec = ecluse_factory(
        {"auth_type": "trust"},
        databases={"ecluse_test": f"host={pg.host} port={pg.port} dbname=ecluse_test "
                                  f"user={user} password={pw}"},
    )
    with psycopg.connect(ec.dsn(user="anyone"), autocommit=True) as c:
        assert c.execute("select current_user").fetchone() == (user,)


def test_wrong_server_password_reaches_client_as_auth_error(ecluse_factory, pg):
    ec = ecluse_factory(
        {"auth_type": "trust"},
        databases={"ecluse_test": f"host={pg.host} port={pg.port} dbname=ecluse_test "
                                  f"user=scramuser password=not-it",
                   "ok": f"host={pg.host} port={pg.port} dbname=ecluse_test user=trustuser"},
    )
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(ec.dsn(user="anyone"))
    assert "password authentication failed" in str(err.value)
    assert login_sqlstate(ec, "anyone") == "28P01"
    # ecluse itself is still fine for other databases.
    with psycopg.connect(ec.dsn(dbname="ok", user="anyone"), autocommit=True) as c:
        assert c.execute("select current_user").fetchone() == ("trustuser",)
