"""Per-database and per-user client limits (PgBouncer's max_db_client_connections,
max_user_client_connections): the client over the limit gets 53300, the others
are untouched, and a slot frees when a client leaves."""

from __future__ import annotations

import psycopg
import pytest


def refused(ec, **kw) -> str | None:
    try:
        with psycopg.connect(ec.dsn(**kw), autocommit=True) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("where", ["global", "database"])
def test_database_client_limit(ecluse_factory, pg, where):
    backend = f"host={pg.host} port={pg.port}"
    extra = " max_db_client_connections=2" if where == "database" else ""
    settings = {"max_db_client_connections": 2} if where == "global" else {}
    ec = ecluse_factory(settings, databases={
        "ecluse_test": f"{backend} dbname=ecluse_test{extra}",
        "postgres": f"{backend} dbname=postgres"})
    first = psycopg.connect(ec.dsn(), autocommit=True)
    second = psycopg.connect(ec.dsn(), autocommit=True)
    try:
        error = refused(ec)
        assert error is not None and "max_db_client_connections" in error
        # The limit counts each database on its own, set globally or per database.
        assert refused(ec, dbname="postgres") is None
        assert first.execute("select 1").fetchone() == (1,)
        first.close()
        assert refused(ec) is None  # the slot came back
    finally:
        first.close()
        second.close()


def test_user_client_limit(ecluse_factory):
    ec = ecluse_factory(users={"postgres": "max_user_client_connections=1"})
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        error = refused(ec)
        assert error is not None and "max_user_client_connections" in error
        assert conn.execute("select 2").fetchone() == (2,)
    assert refused(ec) is None
