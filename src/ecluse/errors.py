"""The one exception tree of ecluse.

Every error that can reach a client carries the SQLSTATE and severity to send
with it, so the layer that catches it only has to encode an ErrorResponse.
"""

from __future__ import annotations


class EcluseError(Exception):
    """Base of every ecluse error."""

    sqlstate = "XX000"
    severity = "FATAL"

    def __init__(self, message: str, *, sqlstate: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.message = message
        if sqlstate is not None:
            self.sqlstate = sqlstate
        self.detail = detail


class ProtocolError(EcluseError):
    """The PostgreSQL wire protocol was not followed."""

    sqlstate = "08P01"


class RemoteProtocolError(ProtocolError):
    """The peer (client or server) sent bytes that break the protocol."""


class LocalProtocolError(ProtocolError):
    """ecluse itself tried to produce an invalid message: a bug."""

    sqlstate = "XX000"


class ConfigError(EcluseError):
    """A configuration file is invalid; names the file and line when known."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = path
        self.line = line


class AuthFailed(EcluseError):
    """A client could not be authenticated (SQLSTATE 28P01 unless stated)."""

    sqlstate = "28P01"


class AuthLookupFailed(EcluseError):
    """auth_query could not tell a client's secret: auth_user's login or the query failed."""

    sqlstate = "08006"


class ClientRefused(EcluseError):
    """A client is refused before or at login (unknown database, limits, ...)."""


class PoolTimeout(EcluseError):
    """A client waited longer than query_wait_timeout for a server."""

    sqlstate = "08P01"


class ServerGone(EcluseError):
    """A server connection failed or closed while it was in use."""

    sqlstate = "08006"


class ServerLoginFailed(EcluseError):
    """Logging into a PostgreSQL server failed; carries the server's fields."""

    def __init__(self, message: str, *, sqlstate: str | None = None, fields: dict | None = None):
        super().__init__(message, sqlstate=sqlstate)
        self.fields = fields or {}
