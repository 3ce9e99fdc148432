"""The HTTP API of a real ecluse: token checks, listings, admin actions, health, OpenAPI."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest
from fixtures.fix_ecluse import free_port
from openapi_spec_validator import validate

TOKEN = "s3cret-token-for-tests"
PROTECTED = [("GET", "/pools"), ("GET", "/clients"), ("GET", "/servers"),
             ("GET", "/openapi.json"), ("POST", "/pause"), ("POST", "/resume"),
             ("POST", "/reload"), ("POST", "/databases/ecluse_test/disable"),
             ("POST", "/databases/ecluse_test/enable")]


def start_api(ecluse_factory, token: str | None = TOKEN, databases=None,
              avoid: tuple[int, ...] = (), **settings):
    while True:
        port = free_port()
        conf: dict[str, Any] = {"metrics_listen": f"127.0.0.1:{port}", **settings}
        if token is not None:
            conf["api_token"] = token
        ec = ecluse_factory(conf, databases=databases, start=False)
        # free_port() may hand out the same port twice in a row.
        if port != ec.port and not {port, ec.port} & set(avoid):
            break
    ec.start()
    wait_listening(port)
    ec.api = f"http://127.0.0.1:{port}"
    return ec


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Wait for the HTTP listener: ecluse's client port listens before it does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def call(ec, method: str, path: str, token: str | None = TOKEN,
         headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """Send one request; return (status, decoded JSON body or text, headers)."""
    req = urllib.request.Request(ec.api + path, method=method, data=b"" if method == "POST"
                                 else None, headers=dict(headers or {}))
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, body, hdrs = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        status, body, hdrs = exc.code, exc.read(), exc.headers
    except urllib.error.URLError as exc:
        raise AssertionError(f"{method} {path}: {exc}\n{ec.log()}") from exc
    if hdrs.get("Content-Type", "").startswith("application/json"):
        return status, json.loads(body), hdrs
    return status, body.decode(), hdrs


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def pool_row(ec, database: str = "ecluse_test") -> dict:
    status, rows, _ = call(ec, "GET", "/pools")
    assert status == 200
    return next((r for r in rows if r["database"] == database), {})


# --- authorization -------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_without_api_token_configured_the_api_is_forbidden(ecluse_factory, method, path):
    ec = start_api(ecluse_factory, token=None)
    status, body, _ = call(ec, method, path, token="anything")
    assert status == 403
    assert "api_token" in body["error"]
    status, _, _ = call(ec, method, path, token=None)
    assert status == 403


def test_metrics_and_health_are_open(ecluse_factory):
    ec = start_api(ecluse_factory, token=None)
    status, text, _ = call(ec, "GET", "/metrics", token=None)
    assert status == 200 and "ecluse_transactions_total" in text
    status, body, _ = call(ec, "GET", "/health", token=None)
    assert status == 200 and body["status"] == "ok"


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_missing_or_wrong_token_is_401(ecluse_factory, method, path):
    ec = start_api(ecluse_factory)
    status, body, headers = call(ec, method, path, token=None)
    assert status == 401
    assert "token" in body["error"]
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert call(ec, method, path, token=TOKEN + "x")[0] == 401
    assert call(ec, method, path, token=TOKEN[:-1])[0] == 401
    assert call(ec, method, path, token=None, headers={"Authorization": f"Basic {TOKEN}"})[0] == 401


def test_right_token_is_200(ecluse_factory):
    ec = start_api(ecluse_factory)
    for path in ("/pools", "/clients", "/servers", "/openapi.json"):
        assert call(ec, "GET", path)[0] == 200, path


# --- listings --------------------------------------------------------------------------

def test_listings_match_the_console(ecluse_factory):
    ec = start_api(ecluse_factory, admin_users="admin")
    with psycopg.connect(ec.dsn(), autocommit=True) as conn, \
            psycopg.connect(ec.dsn(user="admin", dbname="pgbouncer"),
                            autocommit=True) as console:
        conn.execute("SELECT 1")
        for command, path in (("SHOW POOLS", "/pools"), ("SHOW CLIENTS", "/clients"),
                              ("SHOW SERVERS", "/servers")):
            cur = console.execute(command)
            columns = [d.name for d in cur.description]
            console_rows = cur.fetchall()
            status, rows, _ = call(ec, "GET", path)
            assert status == 200
            assert rows and all(list(r) == columns for r in rows), path
            assert len(rows) == len(console_rows), path
        clients = call(ec, "GET", "/clients")[1]
        mine = [c for c in clients if c["database"] == "ecluse_test"]
        assert len(mine) == 1 and mine[0]["user"] == "postgres"
        assert isinstance(mine[0]["port"], int)
        servers = call(ec, "GET", "/servers")[1]
        assert any(s["database"] == "ecluse_test" and s["state"] == "idle" for s in servers)
        pool = pool_row(ec)
        assert pool["cl_active"] == 1 and pool["sv_idle"] == 1
        assert pool["pool_mode"] == "transaction"


# --- actions ---------------------------------------------------------------------------

def test_pause_holds_queries_until_resume(ecluse_factory):
    ec = start_api(ecluse_factory)
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        status, body, _ = call(ec, "POST", "/pause")
        assert (status, body["status"]) == (200, "paused")
        assert call(ec, "POST", "/pause")[0] == 409  # already paused
        done = threading.Event()
        result: list = []

        def query() -> None:
            result.append(conn.execute("SELECT 42").fetchone()[0])
            done.set()

        thread = threading.Thread(target=query)
        thread.start()
        try:
            assert wait_for(lambda: pool_row(ec).get("cl_waiting") == 1)
            assert not done.is_set()
        finally:
            status, body, _ = call(ec, "POST", "/resume")
            thread.join(30)
        assert (status, body["status"]) == (200, "resumed")
        assert result == [42]
        assert call(ec, "POST", "/resume")[0] == 409  # not paused any more


def test_pause_one_database(ecluse_factory):
    ec = start_api(ecluse_factory)
    status, body, _ = call(ec, "POST", "/pause?database=ecluse_test")
    assert (status, body["database"]) == (200, "ecluse_test")
    with psycopg.connect(ec.dsn(dbname="postgres"), autocommit=True) as other:
        assert other.execute("SELECT 1").fetchone() == (1,)  # another database runs on
    assert call(ec, "POST", "/pause?database=nope")[0] == 404
    assert call(ec, "POST", "/resume?database=ecluse_test")[0] == 200


def test_disable_and_enable_logins(ecluse_factory):
    ec = start_api(ecluse_factory)
    with psycopg.connect(ec.dsn(), autocommit=True) as before:
        status, body, _ = call(ec, "POST", "/databases/ecluse_test/disable")
        assert (status, body["status"]) == (200, "disabled")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(ec.dsn()).close()
        assert before.execute("SELECT 1").fetchone() == (1,)  # logged-in clients stay
    status, body, _ = call(ec, "POST", "/databases/ecluse_test/enable")
    assert (status, body["status"]) == (200, "enabled")
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert call(ec, "POST", "/databases/nope/disable")[0] == 404
    assert call(ec, "POST", "/databases/pgbouncer/disable")[0] == 409


def test_reload(ecluse_factory):
    ec = start_api(ecluse_factory)
    status, body, _ = call(ec, "POST", "/reload")
    if status == 501:
        pytest.skip("this worker has no reload_config")
    assert (status, body["status"]) == (200, "reloaded")
    text = ec.config_path.read_text()
    ec.config_path.write_text(text + "pool_mode = no_such_mode\n")
    status, body, _ = call(ec, "POST", "/reload")
    assert status == 409
    assert body["error"]
    # The running config stayed: the API still answers with the same token.
    assert call(ec, "GET", "/pools")[0] == 200


# --- health ----------------------------------------------------------------------------

def test_health_ok_from_probe_then_from_pool(ecluse_factory, pg):
    ec = start_api(ecluse_factory)
    status, body, _ = call(ec, "GET", "/health", token=None)
    assert status == 200
    assert body["databases"]["ecluse_test"] == {"reachable": True, "via": "probe"}
    with psycopg.connect(ec.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        status, body, _ = call(ec, "GET", "/health", token=None)
    assert status == 200
    assert body["databases"]["ecluse_test"] == {"reachable": True, "via": "pool"}


def test_health_503_when_a_database_is_unreachable(ecluse_factory, pg):
    closed = free_port()
    ec = start_api(ecluse_factory, databases={
        "ecluse_test": f"host={pg.host} port={pg.port} dbname=ecluse_test",
        "gone": f"host=127.0.0.1 port={closed} dbname=gone",
    }, avoid=(closed,))
    status, body, _ = call(ec, "GET", "/health", token=None)
    assert status == 503
    assert body["status"] == "unavailable"
    assert "gone" in body["reason"] and "ecluse_test" not in body["reason"]
    assert body["databases"]["gone"]["reachable"] is False
    assert body["databases"]["gone"]["error"]
    assert body["databases"]["ecluse_test"]["reachable"] is True


# --- OpenAPI -----------------------------------------------------------------------------

def test_openapi_document_is_valid_and_lists_every_route(ecluse_factory):
    ec = start_api(ecluse_factory)
    status, doc, _ = call(ec, "GET", "/openapi.json")
    assert status == 200
    validate(doc)
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {(m, p.replace("ecluse_test", "{name}")) for m, p in PROTECTED} | {
        ("GET", "/metrics"), ("GET", "/health")}
    assert served == documented
    assert "api_token" in json.dumps(doc["info"])
