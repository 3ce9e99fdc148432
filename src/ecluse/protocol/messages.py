"""Immutable message objects for the few messages ecluse looks inside.

Everything else travels as raw bytes. Objects compare by value so tests read
as "sent X, expected Y".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The first packet of a normal connection: protocol version and parameters."""

    major: int
    minor: int
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """A client asking to upgrade to TLS before StartupMessage."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """A client asking for GSSAPI encryption before StartupMessage."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """An out-of-band request to cancel the query of the session with this key."""

    process_id: int
    secret: bytes


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    """Cancel key sent to a client: 4 bytes of secret in protocol 3.0."""

    process_id: int
    secret: bytes


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    """A run-time parameter the server reports (client_encoding, TimeZone, ...)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    """The server is ready; status is b'I', b'T' or b'E'."""

    status: bytes


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """An ErrorResponse or NoticeResponse: field code (one char) -> value.

    Every field is optional on the wire (CVE-2026-6666): accessors fall back.
    """

    fields: Mapping[str, str]
    is_notice: bool = False

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "XX000")

    @property
    def severity(self) -> str:
        return self.fields.get("V") or self.fields.get("S") or "ERROR"

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


@dataclass(frozen=True, slots=True)
class AuthenticationRequest:
    """An 'R' message: the code and whatever follows it (salt, SASL data, ...)."""

    code: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    """An asynchronous NOTIFY delivered to a listening session."""

    process_id: int
    channel: str
    payload: str


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    """The newest minor version supported and the options not recognised."""

    newest_minor: int
    unrecognized: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CommandComplete:
    """The command tag of a finished statement (e.g. 'SELECT 1')."""

    tag: str


@dataclass(frozen=True, slots=True)
class Query:
    """A simple-protocol query string."""

    sql: str


@dataclass(frozen=True, slots=True)
class Parse:
    """Parse: statement name, query text and parameter type OIDs."""

    statement: str
    query: str
    param_types: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Bind:
    """Bind: portal, statement, parameter formats, values (None = NULL), result formats."""

    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Describe:
    """Describe a statement (kind b'S') or a portal (kind b'P')."""

    kind: bytes
    name: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close a statement (kind b'S') or a portal (kind b'P')."""

    kind: bytes
    name: str


@dataclass(frozen=True, slots=True)
class Execute:
    """Execute a portal, returning at most max_rows rows (0 = all)."""

    portal: str
    max_rows: int = 0


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """The legacy fast-path function call."""

    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0


@dataclass(frozen=True, slots=True)
class CopyFail:
    """A client aborting COPY FROM STDIN with a reason."""

    reason: str


@dataclass(frozen=True, slots=True)
class CopyResponse:
    """CopyInResponse ('G'), CopyOutResponse ('H') or CopyBothResponse ('W')."""

    kind: int
    overall_format: int
    column_formats: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RowDescriptionField:
    """One column of a RowDescription."""

    name: str
    table_oid: int = 0
    column: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0
