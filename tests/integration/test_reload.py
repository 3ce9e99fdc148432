"""Live reload: RELOAD, SIGHUP and SET change the running config without dropping clients."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

import psycopg
import pytest

from integration.test_admin_console import ADMIN_SETTINGS, admin_conn, pool_row, wait_for
from integration.test_pgbench import processed_without_failures


def rewrite(ec, *replacements: tuple[str, str]) -> None:
    """Apply (old line pattern, new line) replacements to ecluse's config file."""
    text = ec.config_path.read_text()
    for pattern, new in replacements:
        text, n = re.subn(pattern, new, text, flags=re.MULTILINE)
        assert n, f"{pattern!r} not in the config"
    ec.config_path.write_text(text)


def add_database(ec, line: str) -> None:
    text = ec.config_path.read_text()
    ec.config_path.write_text(text.replace("[databases]\n", f"[databases]\n{line}\n", 1))


def backends(pg_conn, dbname: str) -> int:
    return pg_conn.execute(
        "select count(*) from pg_stat_activity where datname = %s and backend_type = "
        "'client backend' and pid <> pg_backend_pid()", (dbname,)).fetchone()[0]


@pytest.fixture
def pg_conn(pg):
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        yield conn


def config_value(console, key: str) -> tuple[str, str]:
    for row in console.execute("SHOW CONFIG", prepare=False).fetchall():
        if row[0] == key:
            return row[1], row[3]
    raise AssertionError(f"{key} not in SHOW CONFIG")


def test_reload_adds_a_database_and_a_broken_file_is_refused(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console, psycopg.connect(ec.dsn(), autocommit=True) as client:
        with pytest.raises(psycopg.OperationalError, match="does not exist"):
            psycopg.connect(ec.dsn(dbname="newdb"))
        backend = re.search(r"host=\S+ port=\d+", ec.config_path.read_text()).group(0)
        add_database(ec, f"newdb = {backend} dbname=postgres")
        console.execute("RELOAD", prepare=False)
        with psycopg.connect(ec.dsn(dbname="newdb"), autocommit=True) as other:
            assert other.execute("select current_database()").fetchone()[0] == "postgres"
        good = ec.config_path.read_text()
        # A broken file: refused as a whole, the running config stays, traffic goes on.
        ec.config_path.write_text(good + "default_pool_size = lots\n")
        with pytest.raises(psycopg.Error, match=r"RELOAD failed.*default_pool_size"):
            console.execute("RELOAD", prepare=False)
        assert client.execute("select 1").fetchone() == (1,)
        assert config_value(console, "default_pool_size")[0] == "5"
        with psycopg.connect(ec.dsn(dbname="newdb"), autocommit=True) as other:
            assert other.execute("select 1").fetchone() == (1,)
    assert "RELOAD refused, the running config stays" in ec.log()


def test_reload_shrinks_a_pool(ecluse_factory, pg_conn):
    ec = ecluse_factory({**ADMIN_SETTINGS, "default_pool_size": 4})
    clients = [psycopg.connect(ec.dsn()) for _ in range(4)]
    try:
        for c in clients:  # four open transactions: four servers
            c.execute("select 1")
        assert backends(pg_conn, "ecluse_test") == 4
        rewrite(ec, (r"^default_pool_size = 4$", "default_pool_size = 2"))
        with admin_conn(ec) as console:
            console.execute("RELOAD", prepare=False)
            for c in clients:  # in-flight transactions finish on their servers
                assert c.execute("select 2").fetchone() == (2,)
                c.commit()
            assert wait_for(lambda: backends(pg_conn, "ecluse_test") <= 2)
            assert config_value(console, "default_pool_size")[0] == "2"
            # Four clients now share two servers.
            for c in clients:
                assert c.execute("select 3").fetchone() == (3,)
                c.commit()
            assert backends(pg_conn, "ecluse_test") <= 2
    finally:
        for c in clients:
            c.close()


def test_reload_moves_servers_between_transactions(ecluse_factory):
    """A changed database entry reconnects servers; an open transaction keeps its own."""
    ec = ecluse_factory(ADMIN_SETTINGS)
    with psycopg.connect(ec.dsn()) as in_tx, \
            psycopg.connect(ec.dsn(), autocommit=True) as idle:
        in_tx.execute("select 1")  # transaction open on an ecluse_test server
        assert idle.execute("select current_database()").fetchone()[0] == "ecluse_test"
        rewrite(ec, (r"^ecluse_test = (.*)dbname=ecluse_test$", r"ecluse_test = \1dbname=postgres"))
        ec.signal(signal.SIGHUP)
        assert wait_for(lambda: idle.execute("select current_database()").fetchone()[0]
                        == "postgres")
        assert in_tx.execute("select current_database()").fetchone()[0] == "ecluse_test"
        in_tx.commit()
        assert in_tx.execute("select current_database()").fetchone()[0] == "postgres"
    assert "SIGHUP received" in ec.log()


def test_removed_database_drains_and_pool_mode_change_applies_to_new_clients(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console, psycopg.connect(ec.dsn(dbname="postgres")) as staying, \
            psycopg.connect(ec.dsn(), autocommit=True) as old_mode:
        staying.execute("select 1")
        old_mode.execute("select 1")
        rewrite(ec, (r"^postgres = .*$", ""),
                (r"^pool_mode = transaction$", "pool_mode = session"))
        console.execute("RELOAD", prepare=False)
        with pytest.raises(psycopg.OperationalError, match="does not exist"):
            psycopg.connect(ec.dsn(dbname="postgres"))
        assert staying.execute("select 2").fetchone() == (2,)  # not dropped
        staying.commit()
        assert old_mode.execute("select 3").fetchone() == (3,)
        with psycopg.connect(ec.dsn(), autocommit=True) as new_client:
            new_client.execute("select 1")
            modes = {row[-2] for row in console.execute("SHOW POOLS", prepare=False).fetchall()
                     if row[0] == "ecluse_test"}
            assert "session" in modes


def test_set_changes_online_settings_only(ecluse_factory):
    ec = ecluse_factory(ADMIN_SETTINGS)
    with admin_conn(ec) as console, psycopg.connect(ec.dsn(), autocommit=True) as client:
        client.execute("select 1")
        console.execute("SET default_pool_size = 3", prepare=False)
        assert config_value(console, "default_pool_size") == ("3", "yes")
        assert pool_row(console)["pool_mode"] == "transaction"
        console.execute("SET query_wait_timeout = '7'", prepare=False)
        assert config_value(console, "query_wait_timeout")[0] == "7"
        for bad, message in (("SET listen_port = 1", "cannot be changed with SET"),
                             ("SET no_such_key = 1", "unknown config parameter"),
                             ("SET default_pool_size = many", "invalid value"),
                             ("SET auth_file = '/etc/passwd'", "edit the file and RELOAD")):
            with pytest.raises(psycopg.Error, match=message):
                console.execute(bad, prepare=False)
        assert config_value(console, "listen_port")[1] == "no"
        assert client.execute("select 2").fetchone() == (2,)
    with admin_conn(ec, user="stats") as stats_console, \
            pytest.raises(psycopg.Error, match="admin access needed"):
        stats_console.execute("SET default_pool_size = 9", prepare=False)


def test_reloads_under_pgbench_lose_no_transaction(ecluse_factory, pg):
    """pgbench through ecluse while the config is reloaded over and over (pool sizes
    up and down, a database added): every transaction succeeds."""
    ec = ecluse_factory({**ADMIN_SETTINGS, "default_pool_size": 4})
    env = dict(os.environ, PGPASSWORD="", PGCONNECT_TIMEOUT="10")
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", ec.host, "-p", str(ec.port),
                    "-U", "postgres", "ecluse_test"], check=True, capture_output=True,
                   env=env, timeout=120)
    stop = threading.Event()
    reloads = []

    def keep_reloading() -> None:
        sizes = [2, 6, 3, 5]
        with admin_conn(ec) as console:
            while not stop.is_set():
                size = sizes[len(reloads) % len(sizes)]
                rewrite(ec, (r"^default_pool_size = \d+$", f"default_pool_size = {size}"))
                console.execute("RELOAD", prepare=False)
                reloads.append(size)
                stop.wait(0.3)

    thread = threading.Thread(target=keep_reloading)
    thread.start()
    try:
        out = subprocess.run(
            ["pgbench", "-n", "-c", "20", "-j", "2", "-T", "8", "-h", ec.host,
             "-p", str(ec.port), "-U", "postgres", "ecluse_test"],
            capture_output=True, text=True, env=env, timeout=120)
    finally:
        stop.set()
        thread.join()
    assert out.returncode == 0, out.stderr
    assert len(reloads) >= 5
    processed = processed_without_failures(out)
    assert processed > 0


def test_api_token_never_shows(ecluse_factory):
    ec = ecluse_factory({**ADMIN_SETTINGS, "api_token": "s3cret-token"})
    with admin_conn(ec, user="stats") as console:
        assert config_value(console, "api_token")[0] == "********"
    with admin_conn(ec) as console:
        console.execute("SET api_token = 'other-s3cret'", prepare=False)
        assert config_value(console, "api_token")[0] == "********"
    assert "s3cret" not in ec.log()
