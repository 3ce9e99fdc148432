"""Startup parameters follow each client across shared server connections."""

from __future__ import annotations

import psycopg
import pytest


def show(conn: psycopg.Connection, name: str) -> str:
    return conn.execute(f"show {name}").fetchone()[0]


def test_timezone_isolated_between_clients_sharing_a_server(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 1})
    with psycopg.connect(ec.dsn(options="-c TimeZone=Asia/Tokyo"), autocommit=True) as a, \
            psycopg.connect(ec.dsn(), autocommit=True) as b:
        pid_a = a.execute("select pg_backend_pid()").fetchone()[0]
        default_tz = show(b, "timezone")
        assert default_tz != "Asia/Tokyo"
        for _ in range(3):
            assert show(a, "timezone") == "Asia/Tokyo"
            assert show(b, "timezone") == default_tz
        assert b.execute("select pg_backend_pid()").fetchone()[0] == pid_a


def test_startup_parameters_are_applied(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 1})
    dsn = ec.dsn(application_name="app-one",
                 options="-c DateStyle=German -c search_path=pg_catalog")
    with psycopg.connect(dsn, autocommit=True) as a, \
            psycopg.connect(ec.dsn(application_name="app-two"), autocommit=True) as b:
        for _ in range(2):
            assert show(a, "application_name") == "app-one"
            assert show(a, "datestyle").startswith("German")
            assert show(a, "search_path") == "pg_catalog"
            assert show(b, "application_name") == "app-two"
            assert not show(b, "datestyle").startswith("German")
            assert show(b, "search_path") != "pg_catalog"


def test_client_set_of_reported_parameter_follows_client(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 1})
    with psycopg.connect(ec.dsn(), autocommit=True) as a, \
            psycopg.connect(ec.dsn(), autocommit=True) as b:
        default_tz = show(b, "timezone")
        a.execute("set timezone = 'America/Lima'")
        assert show(b, "timezone") == default_tz
        assert show(a, "timezone") == "America/Lima"


def test_client_encoding_from_startup(ecluse_factory):
    ec = ecluse_factory({"pool_mode": "transaction", "default_pool_size": 1})
    with psycopg.connect(ec.dsn(client_encoding="LATIN1"), autocommit=True) as a, \
            psycopg.connect(ec.dsn(), autocommit=True) as b:
        assert show(a, "client_encoding") == "LATIN1"
        assert show(b, "client_encoding") == "UTF8"
        assert a.execute("select 'é'").fetchone() == ("é",)


def test_unknown_option_is_refused_unless_ignored(ecluse_factory):
    ec = ecluse_factory()
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter"):
        psycopg.connect(ec.dsn(options="-c work_mem=64MB"))
    ec2 = ecluse_factory({"ignore_startup_parameters": "work_mem, extra_float_digits"})
    with psycopg.connect(ec2.dsn(options="-c work_mem=64MB"), autocommit=True) as c:
        assert c.execute("select 1").fetchone() == (1,)
