"""PgCluster and the pg fixture: the cluster runs and enforces the auth test's HBA rules."""

from __future__ import annotations

import psycopg
import pytest


def test_psql_returns_unaligned_output(pg) -> None:
    assert pg.psql("select 1") == "1"
    assert pg.psql("select current_database()", dbname="ecluse_test") == "ecluse_test"


@pytest.mark.parametrize("user", ["md5user", "scramuser", "passuser"])
def test_password_roles_log_in_with_their_password(pg_conninfo, user: str) -> None:
    with psycopg.connect(pg_conninfo(user=user, dbname="ecluse_test")) as conn:
        assert conn.execute("select current_user").fetchone() == (user,)


@pytest.mark.parametrize("user", ["md5user", "scramuser", "passuser"])
def test_password_roles_reject_a_wrong_password(pg_conninfo, user: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_conninfo(user=user, password="wrong"))


def test_hba_methods_are_the_ones_asked_for(pg) -> None:
    # A trust line would let a wrong password through and hide a broken auth test.
    methods = pg.psql("select user_name[1] || ' ' || auth_method from pg_hba_file_rules "
                      "where type = 'host' and user_name[1] <> 'all' order by line_number")
    assert methods.splitlines() == [
        "trustuser trust", "md5user md5", "scramuser scram-sha-256", "passuser password",
    ]


def test_md5user_secret_is_stored_as_md5(pg) -> None:
    assert pg.psql("select left(rolpassword, 3) from pg_authid where rolname = 'md5user'") \
        == "md5"
