"""The OpenAPI 3 description of the HTTP listener (admin/http.py), served at /openapi.json.

Rules:
1. Every route admin/http.py serves is described here; a test walks the
   aiohttp router and checks it, and validates the document.
2. A plain dict, no I/O: the document is data.
"""

from __future__ import annotations

from typing import Any

from ecluse import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ERROR, description)


# The answers every token-protected route may give besides its own.
_AUTH_ERRORS = {
    "401": _error("Missing or wrong bearer token."),
    "403": _error("The API is disabled: no api_token is configured."),
}

_DATABASE_QUERY = {
    "name": "database", "in": "query", "required": False,
    "description": "Act on this database only (as the console's optional argument).",
    "schema": {"type": "string"},
}

_DATABASE_PATH = {
    "name": "name", "in": "path", "required": True,
    "description": "A database of the [databases] section.",
    "schema": {"type": "string"},
}


def _rows(description: str) -> dict[str, Any]:
    return _json({"type": "array", "items": {"$ref": "#/components/schemas/Row"}},
                 description)


def _listing(summary: str, command: str) -> dict[str, Any]:
    return {"get": {
        "summary": summary,
        "description": f"The rows of the console's {command}, one object per row, keyed by "
                       "PgBouncer's column names; integer columns are numbers.",
        "operationId": command.lower().replace(" ", "_"),
        "security": [{"bearer": []}],
        "responses": {"200": _rows(f"The rows of {command}."), **_AUTH_ERRORS},
    }}


def _action(summary: str, operation: str, done: str, *, with_db: bool,
            path_db: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": _json({"$ref": "#/components/schemas/ActionResult"}, f"{done}."),
        "404": _error("No such database."),
        "409": _error("Refused in the current state (for example already paused)."),
        **_AUTH_ERRORS,
    }
    op: dict[str, Any] = {"summary": summary, "operationId": operation,
                          "security": [{"bearer": []}], "responses": responses}
    if with_db:
        op["parameters"] = [_DATABASE_PATH if path_db else _DATABASE_QUERY]
    return {"post": op}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "ecluse HTTP API",
        "version": __version__,
        "description": "Metrics, health and administration of one ecluse worker. "
                       "/metrics and /health are open; every other route needs "
                       "`Authorization: Bearer <api_token>` and answers 403 while no "
                       "api_token is configured.",
    },
    "paths": {
        "/metrics": {"get": {
            "summary": "Prometheus metrics",
            "description": "Text exposition format (OpenMetrics when the Accept header "
                           "asks for it).",
            "operationId": "metrics",
            "security": [],
            "responses": {"200": {"description": "The metrics.", "content": {
                "text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/health": {"get": {
            "summary": "Health for load balancers",
            "description": "200 when every configured database is reachable: some pool of "
                           "it has a server logged in, or else a PostgreSQL answers an "
                           "SSLRequest at its address. 503 otherwise, or while shutting down.",
            "operationId": "health",
            "security": [],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/Health"}, "Every database reachable."),
                "503": _json({"$ref": "#/components/schemas/Health"},
                             "Some database unreachable, or shutting down; see reason."),
            },
        }},
        "/pools": _listing("Pools (SHOW POOLS)", "SHOW POOLS"),
        "/clients": _listing("Client connections (SHOW CLIENTS)", "SHOW CLIENTS"),
        "/servers": _listing("Server connections (SHOW SERVERS)", "SHOW SERVERS"),
        "/pause": _action("Pause (console PAUSE [db])", "pause",
                          "Paused: no server is busy any more", with_db=True),
        "/resume": _action("Resume (console RESUME [db])", "resume", "Resumed", with_db=True),
        "/reload": {"post": {
            "summary": "Reload the configuration files (console RELOAD, SIGHUP)",
            "operationId": "reload",
            "security": [{"bearer": []}],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/ActionResult"}, "Reloaded."),
                "409": _error("The new configuration was refused; the old one keeps running."),
                "501": _error("Reload is not available."),
                **_AUTH_ERRORS,
            },
        }},
        "/databases/{name}/disable": _action(
            "Refuse new logins to a database (console DISABLE db)", "disable_database",
            "Disabled", with_db=True, path_db=True),
        "/databases/{name}/enable": _action(
            "Allow new logins to a database again (console ENABLE db)", "enable_database",
            "Enabled", with_db=True, path_db=True),
        "/openapi.json": {"get": {
            "summary": "This document",
            "operationId": "openapi",
            "security": [{"bearer": []}],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document."),
                          **_AUTH_ERRORS},
        }},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "The api_token setting."}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "ActionResult": {"type": "object", "required": ["status"], "properties": {
                "status": {"type": "string"},
                "database": {"type": "string", "nullable": True}}},
            "Row": {"type": "object", "additionalProperties": {
                "nullable": True,
                "oneOf": [{"type": "string"}, {"type": "integer"}]}},
            "Health": {"type": "object", "required": ["status"], "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "reason": {"type": "string"},
                "databases": {"type": "object", "additionalProperties": {
                    "type": "object", "required": ["reachable", "via"], "properties": {
                        "reachable": {"type": "boolean"},
                        "via": {"type": "string", "enum": ["pool", "probe"]},
                        "error": {"type": "string"}}}}}},
        },
    },
}
