"""Logging into a PostgreSQL server, as a generator (psycopg style).

login() yields the StartupMessage, then is sent each server message as
(type byte, body) and yields the bytes to answer with (b"" for none) until
ReadyForQuery, when it returns the server's parameters and cancel key. The
driver (server/connection.py) owns the socket and the timeout.

Rules:
1. Only messages valid in the login phase are accepted, in their order:
   authentication requests before AuthenticationOk, ParameterStatus,
   BackendKeyData and ReadyForQuery after it; anything else raises
   RemoteProtocolError (the invalid-order class of CVE-2015-4054).
2. Once SCRAM has started, AuthenticationOk is accepted only after the
   server's signature was verified: a server that cannot prove it knows the
   password is refused, even if it says "OK".
3. An ErrorResponse may lack any field (CVE-2026-6666): defaults fill in.
4. What the server sends is bounded (SCRAM fields in protocol/scram.py, and
   the counts of parameters and notices kept here).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field

from ecluse.errors import RemoteProtocolError, ServerLoginFailed
from ecluse.protocol import codes
from ecluse.protocol.backend import (
    decode_authentication,
    decode_backend_key_data,
    decode_error_fields,
    decode_negotiate_protocol_version,
    decode_parameter_status,
    decode_sasl_mechanisms,
)
from ecluse.protocol.codes import Auth, SqlState
from ecluse.protocol.frontend import (
    encode_password,
    encode_sasl_initial_response,
    encode_sasl_response,
)
from ecluse.protocol.md5 import is_md5_secret, md5_response
from ecluse.protocol.messages import BackendKeyData, ErrorResponse
from ecluse.protocol.scram import SCRAM_SHA_256, ScramClientExchange, is_scram_secret
from ecluse.protocol.startup import encode_startup_message

MAX_PARAMETERS = 1000  # ParameterStatus messages kept; real servers send ~15
MAX_NOTICES = 100  # notices kept for the log; more are dropped

_UNSUPPORTED: dict[int, str] = {
    Auth.KERBEROS_V5: "Kerberos V5",
    Auth.GSS: "GSSAPI",
    Auth.GSS_CONTINUE: "GSSAPI",
    Auth.SSPI: "SSPI",
}


@dataclass(slots=True)
class LoginResult:
    """What a finished login leaves: the server's parameters and its cancel key."""

    params: dict[str, str]
    key: BackendKeyData | None
    notices: list[ErrorResponse] = field(default_factory=list)


ServerMessage = tuple[int, bytes]
LoginGen = Generator[bytes, ServerMessage, LoginResult]


def login(params: Mapping[str, str], password: str | None, *,
          scram_keys: tuple[bytes, bytes] | None = None) -> LoginGen:
    """Log into a server with the startup parameters params.

    :param password: plaintext, an "md5..." secret (md5 only), or None.
    :param scram_keys: (ClientKey, ServerKey) to answer SCRAM without a password.
    The first value yielded is the StartupMessage. Raises ServerLoginFailed
    for an ErrorResponse or an authentication request that cannot be
    answered, RemoteProtocolError for a message out of place or malformed.
    """
    result = LoginResult({}, None)
    msg_type, body = yield encode_startup_message(params)
    authenticated = False
    scram: ScramClientExchange | None = None
    while True:
        if msg_type == codes.BE_ERROR_RESPONSE:
            raise _login_error(decode_error_fields(body))
        if msg_type == codes.BE_NOTICE_RESPONSE:
            notice = decode_error_fields(body, notice=True)
            if len(result.notices) < MAX_NOTICES:
                result.notices.append(notice)
            reply = b""
        elif msg_type == codes.BE_NEGOTIATE_PROTOCOL_VERSION and not authenticated:
            # The server speaks an older minor version or ignores our _pq_
            # options; ecluse asks for 3.0 with none, so it can go on.
            decode_negotiate_protocol_version(body)
            reply = b""
        elif msg_type == codes.BE_AUTHENTICATION and not authenticated:
            reply, scram, authenticated = _on_authentication(
                body, params.get("user", ""), password, scram_keys, scram)
        elif msg_type == codes.BE_PARAMETER_STATUS and authenticated:
            status = decode_parameter_status(body)
            if status.name not in result.params and len(result.params) >= MAX_PARAMETERS:
                raise RemoteProtocolError("server sent too many ParameterStatus messages")
            result.params[status.name] = status.value
            reply = b""
        elif msg_type == codes.BE_BACKEND_KEY_DATA and authenticated:
            result.key = decode_backend_key_data(body)
            reply = b""
        elif msg_type == codes.BE_READY_FOR_QUERY and authenticated:
            return result
        else:
            raise RemoteProtocolError(
                f"unexpected message type {_show_type(msg_type)} during server login")
        msg_type, body = yield reply


def _on_authentication(
    body: bytes, user: str, password: str | None, scram_keys: tuple[bytes, bytes] | None,
    scram: ScramClientExchange | None,
) -> tuple[bytes, ScramClientExchange | None, bool]:
    """Answer one 'R' message; return (reply, SCRAM state, authenticated?)."""
    request = decode_authentication(body)
    code = request.code
    if scram is not None and code not in (Auth.SASL_CONTINUE, Auth.SASL_FINAL, Auth.OK):
        raise RemoteProtocolError("server changed authentication method during SASL")
    if code == Auth.OK:
        if scram is not None and not scram.is_complete:
            raise RemoteProtocolError(
                "server accepted the login without completing SCRAM authentication")
        return b"", scram, True
    if code == Auth.CLEARTEXT_PASSWORD:
        if password is None or is_md5_secret(password) or is_scram_secret(password):
            raise _cannot("server asked for a cleartext password, and none is configured")
        return encode_password(password), None, False
    if code == Auth.MD5_PASSWORD:
        if password is None or is_scram_secret(password):
            raise _cannot("server asked for an md5 password, and none is configured")
        return encode_password(md5_response(user, password, request.data)), None, False
    if code == Auth.SASL:
        if scram is not None:
            raise RemoteProtocolError("server restarted SASL authentication")
        scram = _start_scram(request.data, password, scram_keys)
        return encode_sasl_initial_response(SCRAM_SHA_256, scram.client_first()), scram, False
    if code == Auth.SASL_CONTINUE:
        if scram is None:
            raise RemoteProtocolError("server sent SASLContinue without SASL")
        return encode_sasl_response(scram.handle_server_first(request.data)), scram, False
    if code == Auth.SASL_FINAL:
        if scram is None:
            raise RemoteProtocolError("server sent SASLFinal without SASL")
        scram.handle_server_final(request.data)
        return b"", scram, False
    name = _UNSUPPORTED.get(code)
    if name is not None:
        raise _cannot(f"server asked for {name} authentication, which ecluse does not support")
    raise ServerLoginFailed(f"server sent unknown authentication request {code}",
                            sqlstate=SqlState.PROTOCOL_VIOLATION)


def _start_scram(mechanism_list: bytes, password: str | None,
                 scram_keys: tuple[bytes, bytes] | None) -> ScramClientExchange:
    # SCRAM-SHA-256-PLUS may be offered too; ecluse uses no channel binding.
    mechanisms = decode_sasl_mechanisms(mechanism_list)
    if SCRAM_SHA_256 not in mechanisms:
        raise _cannot("server offered no supported SASL mechanism "
                      f"({', '.join(m[:32] for m in mechanisms[:8])})")
    if scram_keys is not None:
        return ScramClientExchange(keys=scram_keys)
    if password is None:
        raise _cannot("server asked for SCRAM authentication, and no password is configured")
    # PostgreSQL cannot derive SCRAM keys from an md5 hash, nor can we.
    if is_md5_secret(password):
        raise _cannot("server asked for SCRAM authentication, but only an md5 hash of the "
                      "password is configured")
    if is_scram_secret(password):
        raise _cannot("server asked for SCRAM authentication, but only a SCRAM verifier is "
                      "configured (it needs the client's keys)")
    return ScramClientExchange(password)


def _cannot(message: str) -> ServerLoginFailed:
    return ServerLoginFailed(message, sqlstate=SqlState.INVALID_AUTHORIZATION_SPECIFICATION)


def _login_error(error: ErrorResponse) -> ServerLoginFailed:
    fields = dict(error.fields)
    sqlstate = fields.get("C") or SqlState.INTERNAL_ERROR
    message = fields.get("M") or "server refused the login"
    return ServerLoginFailed(message, sqlstate=sqlstate, fields=fields)


def _show_type(msg_type: int) -> str:
    return repr(chr(msg_type)) if 0x20 < msg_type < 0x7F else str(msg_type)
