"""Logging as an operator sees it, from a real ecluse process: JSON lines, the
log_connections / log_disconnections / log_pooler_errors switches, logfile reopen
on SIGHUP and log settings applied by a reload."""

from __future__ import annotations

import json
import signal
import socket
import struct
import time
from pathlib import Path

import psycopg
import pytest

ADMIN = {"admin_users": "admin"}


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def run_one_query(ec) -> None:
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def clients_of(ec, database: str) -> int:
    with psycopg.connect(ec.dsn(user="admin", dbname="pgbouncer"), autocommit=True) as c:
        cur = c.execute("SHOW CLIENTS")
        col = [d.name for d in cur.description].index("database")
        return sum(1 for row in cur.fetchall() if row[col] == database)


def json_lines(text: str) -> list[dict]:
    """Parse every line; fail on any line that is not one JSON object."""
    out = []
    for line in text.splitlines():
        if line.strip():
            record = json.loads(line)
            assert isinstance(record, dict), line
            out.append(record)
    return out


def test_json_format_writes_one_object_per_line(ecluse_factory):
    ec = ecluse_factory({"log_format": "json"})
    run_one_query(ec)
    records = json_lines(ec.log())
    assert records, "no log lines"
    for record in records:
        assert {"ts", "level", "logger", "pid", "msg"} <= record.keys()
        assert record["pid"] == ec.proc.pid
    logins = [r for r in records if "login ok" in r["msg"]]
    assert logins and logins[0]["level"] == "info"
    assert logins[0]["logger"].split(".")[0] == "ecluse"
    assert "ecluse_test/postgres" in logins[0]["msg"]


@pytest.mark.parametrize("enabled", [False, True])
def test_log_connections_governs_login_lines(ecluse_factory, enabled):
    ec = ecluse_factory({"log_connections": enabled})
    run_one_query(ec)
    # The login is logged before the client hears ReadyForQuery, so it is in the
    # file by the time the query above returned.
    log = ec.log()
    assert ("login attempt" in log) is enabled
    assert ("login ok" in log) is enabled


def login_and_drop(ec) -> None:
    """Log in over a raw socket, wait for ReadyForQuery, then close without Terminate."""
    params = b"user\0postgres\0database\0ecluse_test\0\0"
    startup = struct.pack("!ii", 8 + len(params), 196608) + params
    with socket.create_connection((ec.host, ec.port), timeout=10) as sock:
        sock.sendall(startup)
        received = b""
        while b"Z\0\0\0\x05I" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"ecluse closed the connection: {received!r}"
            received += chunk


@pytest.mark.parametrize("enabled", [False, True])
def test_log_disconnections_governs_the_closed_line(ecluse_factory, enabled):
    ec = ecluse_factory({"log_disconnections": enabled, **ADMIN})
    # Without Terminate (the client just goes away).
    login_and_drop(ec)
    # The line is written just before the client leaves SHOW CLIENTS: once it is
    # gone, the line is there or never will be.
    assert wait_for(lambda: clients_of(ec, "ecluse_test") == 0)
    closed = [line for line in ec.log().splitlines()
              if "closed the connection" in line and "ecluse_test/postgres" in line]
    assert bool(closed) is enabled


@pytest.mark.parametrize("enabled", [False, True])
def test_log_disconnections_governs_the_terminate_line(ecluse_factory, enabled):
    """A client that says goodbye (Terminate, what psql and psycopg send): PgBouncer's
    "closing because: client close request" line, only with log_disconnections."""
    ec = ecluse_factory({"log_disconnections": enabled, **ADMIN})
    for autocommit in (True, False):  # leaves idle, and leaves linked to a server
        conn = psycopg.connect(ec.dsn(), autocommit=autocommit)
        conn.execute("select 1")
        conn.close()
    assert wait_for(lambda: clients_of(ec, "ecluse_test") == 0)
    lines = [line for line in ec.log().splitlines()
             if "client close request" in line and "ecluse_test/postgres" in line]
    assert len(lines) == (2 if enabled else 0)


@pytest.mark.parametrize("enabled", [False, True])
def test_log_pooler_errors_governs_errors_sent_to_clients(ecluse_factory, enabled):
    ec = ecluse_factory({"log_pooler_errors": enabled, "log_format": "json"})
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(ec.dsn(dbname="no_such_db"))
    # ecluse logs the error before it writes it to the client.
    errors = [r for r in json_lines(ec.log()) if "pooler error" in r["msg"]]
    if not enabled:
        assert errors == []
        return
    assert len(errors) == 1
    assert errors[0]["level"] == "warning"
    assert errors[0]["sqlstate"] == "3D000"
    assert errors[0]["database"] == "no_such_db"
    assert 'database "no_such_db" does not exist' in errors[0]["msg"]


def test_sighup_reopens_a_rotated_logfile(ecluse_factory, tmp_path: Path):
    logfile = tmp_path / "pooler.log"
    ec = ecluse_factory({"logfile": str(logfile)})
    assert wait_for(lambda: "listening on" in logfile.read_text())
    rotated = tmp_path / "pooler.log.1"
    logfile.rename(rotated)  # logrotate's default (no copytruncate)
    ec.signal(signal.SIGHUP)
    assert wait_for(logfile.exists), "SIGHUP did not reopen the logfile"
    run_one_query(ec)
    new, old = logfile.read_text(), rotated.read_text()
    assert "login ok" in new
    assert "listening on" in old and "login ok" not in old


def config_value(ec, key: str) -> str | None:
    with psycopg.connect(ec.dsn(user="admin", dbname="pgbouncer"), autocommit=True) as c:
        for row in c.execute("SHOW CONFIG").fetchall():
            if row[0] == key:
                return row[1]
    return None


def test_reload_applies_log_format_and_level(ecluse_factory):
    ec = ecluse_factory(ADMIN)
    config = ec.config_path.read_text()
    ec.config_path.write_text(config.replace("[pgbouncer]\n",
                                             "[pgbouncer]\nlog_format = json\n"))
    ec.signal(signal.SIGHUP)
    # The running config and the log handlers change in the same loop callback.
    assert wait_for(lambda: config_value(ec, "log_format") == "json")
    mark = len(ec.log().splitlines())
    run_one_query(ec)
    records = json_lines("\n".join(ec.log().splitlines()[mark:]))
    assert any(r["msg"].endswith("login ok (pool_mode=transaction)") for r in records)

    # log_level overrides the -v the fixture passes: info lines stop.
    ec.config_path.write_text(config.replace("[pgbouncer]\n",
                                             "[pgbouncer]\nlog_level = error\n"))
    ec.signal(signal.SIGHUP)
    assert wait_for(lambda: config_value(ec, "log_level") == "error")
    mark = len(ec.log().splitlines())
    run_one_query(ec)
    assert not [line for line in ec.log().splitlines()[mark:] if "login ok" in line]
