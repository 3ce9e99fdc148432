"""The HTTP listener (metrics_listen): Prometheus /metrics, /health and a JSON admin API.

It runs on aiohttp inside the worker's event loop, so handlers read the
worker's ClientContext directly, never from another thread. With several
workers each serves the same address (SO_REUSEPORT) and answers for the whole
node through admin/node.py: listings are the console's merged SHOW results,
actions run on every worker, /metrics sums every worker's figures.

Rules:
1. Authorization is checked in one place, the middleware: /metrics and
   /health are open (scrapers and load balancers carry no token); every
   other route needs ``Authorization: Bearer <api_token>``, compared in
   constant time. With no api_token configured those routes answer 403:
   the API is off until someone sets a token (secure by default).
2. The admin actions call the console's own handlers (admin/commands.py)
   and the listings decode the console's own SHOW results (admin/show.py),
   so the HTTP API and the console cannot drift apart.
3. Read only except for the POST routes, which change nothing the console
   could not change.

/health decides from the pools first: a database is reachable when some pool
of it has a server logged in (idle, active or being reset/checked). Only a
database with no such server is probed: a connection to its host and an
SSLRequest, which any PostgreSQL answers with one byte ('S' or 'N') before
authentication, so no credentials are needed and nothing logs in. The probe
proves a PostgreSQL listens, not that ecluse's login there would succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from ecluse.admin import commands, show
from ecluse.admin.metrics import EcluseCollector, NodeCollector, metrics_registry
from ecluse.admin.openapi import OPENAPI
from ecluse.config.model import FALLBACK_DATABASE, DatabaseConfig, host_list
from ecluse.protocol import backend as be
from ecluse.protocol.startup import encode_ssl_request

if TYPE_CHECKING:
    from ecluse.frontend.context import ClientContext

log = logging.getLogger("ecluse.http")

OPEN_PATHS = frozenset({"/metrics", "/health"})
PROBE_TIMEOUT = 2.0  # seconds for /health's probe of one database, at most

_CTX = web.AppKey("ctx", object)
_REGISTRY = web.AppKey("registry", object)
_COLLECTOR = web.AppKey("collector", object)
_HEADER = struct.Struct("!cI")
# PostgreSQL types the SHOW results use, to JSON types; anything else stays text.
_INT_OIDS = frozenset({20, 21, 23, 1700})


def _json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _ctx(request: web.Request) -> ClientContext:
    return request.app[_CTX]  # type: ignore[return-value]


@web.middleware
async def _authorize(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
    if request.path in OPEN_PATHS:
        return await handler(request)
    # Read per request so a reload that changes api_token takes effect at once.
    token = _ctx(request).config.settings.api_token
    if not token:
        return _json_error(403, "the HTTP API is disabled: set api_token to enable it")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest: the time taken must not tell how much of the token matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()):
        return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="ecluse"'})
    return await handler(request)


# --- open routes -----------------------------------------------------------------

async def get_metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    node = _ctx(request).node
    if node is not None:  # the other workers' figures, summed by NodeCollector
        request.app[_COLLECTOR].remote = await node.remote_metrics()
    body = encoder(request.app[_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": content_type})


async def get_health(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    if ctx.shutting_down or ctx.shutdown_mode is not None:
        return web.json_response({"status": "unavailable", "reason": "shutting down"},
                                 status=503)
    databases = [db for db in ctx.config.databases.values() if db.name != FALLBACK_DATABASE]
    pools = result_rows(await _show(ctx, "SHOW POOLS", show.show_pools))  # the whole node's
    results = await asyncio.gather(*(_database_health(ctx, db, pools) for db in databases))
    report = {db.name: result for db, result in zip(databases, results, strict=True)}
    down = sorted(name for name, r in report.items() if not r["reachable"])
    if down:
        reason = "no server reachable for database(s): " + ", ".join(down)
        return web.json_response({"status": "unavailable", "reason": reason,
                                  "databases": report}, status=503)
    return web.json_response({"status": "ok", "databases": report})


async def _database_health(ctx: ClientContext, db: DatabaseConfig,
                           pools: list[dict[str, Any]]) -> dict[str, Any]:
    for pool in pools:
        if pool["database"] == db.name and (pool["sv_idle"] or pool["sv_active"]
                                            or pool["sv_used"] or pool["sv_tested"]):
            return {"reachable": True, "via": "pool"}
    error = await probe_server(db, min(PROBE_TIMEOUT,
                                       ctx.config.settings.server_connect_timeout or PROBE_TIMEOUT))
    if error is None:
        return {"reachable": True, "via": "probe"}
    return {"reachable": False, "via": "probe", "error": error}


async def probe_server(db: DatabaseConfig, timeout: float) -> str | None:
    """Check that a PostgreSQL answers at the database's address; None when it does.

    Sends an SSLRequest and reads the one-byte answer, then hangs up without
    a TLS handshake or a login. Returns why the check failed otherwise.
    """
    host = host_list(db.host)[0]  # the first of a host list
    writer = None
    try:
        async with asyncio.timeout(timeout):
            if host.startswith("/"):
                reader, writer = await asyncio.open_unix_connection(
                    f"{host}/.s.PGSQL.{db.port}")
            else:
                reader, writer = await asyncio.open_connection(host, db.port)
            writer.write(encode_ssl_request())
            answer = await reader.read(1)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    if answer not in (b"S", b"N"):
        return "the server did not answer like PostgreSQL"
    return None


# --- listings ----------------------------------------------------------------------

def result_rows(result: bytes) -> list[dict[str, Any]]:
    """Decode a SHOW result (RowDescription then DataRows) into one dict per row.

    Integer and numeric columns become JSON numbers, NULL becomes null, the
    rest stays text.
    """
    rows: list[dict[str, Any]] = []
    names: list[str] = []
    ints: list[bool] = []
    pos = 0
    while pos < len(result):
        kind, length = _HEADER.unpack_from(result, pos)
        body = result[pos + 5:pos + 1 + length]
        pos += 1 + length
        if kind == b"T":
            fields = be.decode_row_description(body)
            names = [f.name for f in fields]
            ints = [f.type_oid in _INT_OIDS for f in fields]
        elif kind == b"D":
            values = be.decode_data_row(body)
            rows.append({name: None if v is None else int(v) if is_int else v.decode()
                         for name, v, is_int in zip(names, values, ints, strict=True)})
    return rows


async def _show(ctx: ClientContext, name: str, builder: Callable[[ClientContext], bytes]
                ) -> bytes:
    """A SHOW result of this worker, or of the whole node when there are several."""
    local = builder(ctx)
    if ctx.node is None:
        return local
    return await ctx.node.show(name, local + be.encode_command_complete("SHOW"))


def _listing(name: str, builder: Callable[[ClientContext], bytes]
             ) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(result_rows(await _show(_ctx(request), name, builder)))
    return handler


# --- actions -------------------------------------------------------------------------

async def _run_command(name: str, ctx: ClientContext, database: str) -> web.Response | None:
    """Run a console command (on every worker); None when it succeeded, else the error."""
    command = commands.COMMANDS[name]
    try:
        if ctx.node is not None:
            reply = ctx.node.run(command, database, f"{name} {_quote(database)}")
        else:
            reply = command.handler(ctx, database)
        if inspect.isawaitable(reply):
            await reply
    except commands.AdminError as exc:
        status = 404 if exc.message.startswith("no such database") else 409
        return _json_error(status, exc.message)
    return None


def _quote(database: str) -> str:
    """A database name as one word of the console's grammar (admin/console.py)."""
    return '"' + database.replace('"', '""') + '"' if database else ""


def _action(name: str, done: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A POST route taking an optional ?database=, as the console's PAUSE [db]."""
    async def route(request: web.Request) -> web.Response:
        database = request.query.get("database", "")
        error = await _run_command(name, _ctx(request), database)
        if error is not None:
            return error
        return web.json_response({"status": done, "database": database or None})
    return route


def _database_action(name: str, done: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A POST route on /databases/{name}/..., as the console's DISABLE db."""
    async def route(request: web.Request) -> web.Response:
        database = request.match_info["name"]
        error = await _run_command(name, _ctx(request), database)
        if error is not None:
            return error
        return web.json_response({"status": done, "database": database})
    return route


async def post_reload(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    if ctx.node is not None:  # every worker re-reads the files
        try:
            await ctx.node.run(commands.COMMANDS["RELOAD"], "", "RELOAD")  # type: ignore[misc]
        except commands.AdminError as exc:
            return _json_error(409, exc.message)
        return web.json_response({"status": "reloaded"})
    reload_config = ctx.reload_config
    if reload_config is None:
        return _json_error(501, "reload is not available in this worker")
    outcome: Any = reload_config()
    if inspect.isawaitable(outcome):
        outcome = await outcome
    if outcome is not None:
        # The new configuration was refused; the old one keeps running.
        return _json_error(409, str(outcome))
    return web.json_response({"status": "reloaded"})


async def get_openapi(_request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)



def build_app(ctx: ClientContext) -> web.Application:
    """The aiohttp application serving ``ctx``'s metrics and API."""
    app = web.Application(middlewares=[_authorize])
    app[_CTX] = ctx
    collector = NodeCollector(ctx) if ctx.node is not None else EcluseCollector(ctx)
    app[_REGISTRY] = metrics_registry(ctx, collector)
    app[_COLLECTOR] = collector
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/health", get_health)
    app.router.add_get("/pools", _listing("SHOW POOLS", show.show_pools))
    app.router.add_get("/clients", _listing("SHOW CLIENTS", show.show_clients))
    app.router.add_get("/servers", _listing("SHOW SERVERS", show.show_servers))
    app.router.add_post("/pause", _action("PAUSE", "paused"))
    app.router.add_post("/resume", _action("RESUME", "resumed"))
    app.router.add_post("/reload", post_reload)
    app.router.add_post("/databases/{name}/disable", _database_action("DISABLE", "disabled"))
    app.router.add_post("/databases/{name}/enable", _database_action("ENABLE", "enabled"))
    app.router.add_get("/openapi.json", get_openapi)
    return app


def parse_listen(address: str) -> tuple[str, int]:
    """Split metrics_listen ("host:port", "[v6]:port" or ":port") into host and port."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics_listen: expected host:port, got {address!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class HttpServer:
    """A running HTTP listener; stop() closes it."""

    def __init__(self, runner: web.AppRunner, address: str):
        self._runner = runner
        self.address = address

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_http(ctx: ClientContext, address: str, reuse_port: bool = False) -> HttpServer:
    """Start serving metrics and the API on ``address`` in the running loop.

    With several workers every worker binds the address with ``reuse_port``
    (SO_REUSEPORT) and answers for the whole node (admin/node.py), so any of
    them may take a request and the node is one scrape target, during a
    rolling restart too. Raises OSError when the address cannot be bound,
    ValueError when it does not parse.
    """
    host, port = parse_listen(address)
    # access_log off: every scrape and health check would log a line. A short
    # shutdown_timeout: the worker's own shutdown has already waited for clients,
    # and a POST /pause still waiting must not hold the exit for a minute.
    runner = web.AppRunner(build_app(ctx), access_log=None, handle_signals=False,
                           shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = []
    for sock in runner.addresses:
        bound.append(f"[{sock[0]}]:{sock[1]}" if ":" in str(sock[0]) else f"{sock[0]}:{sock[1]}")
    return HttpServer(runner, ", ".join(bound) or address)
