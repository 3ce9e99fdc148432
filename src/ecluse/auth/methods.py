"""Client authentication: the password exchanges ecluse runs as a server, as generators.

authenticate_client() yields each encoded backend message to send to the
client and is sent the body of the client's next 'p' message; the driver
(frontend/session.py) checks the type byte, owns the timeout, and sends
``outcome.final_message`` then AuthenticationOk when the generator returns.

Rules:
1. The choice of exchange follows PostgreSQL: "md5" upgrades to SCRAM for a
   SCRAM secret, "scram-sha-256" never accepts an md5 hash, "plain" checks a
   cleartext password against any secret kind; "trust" and "any" (PgBouncer's
   meaning) need no password.
2. No user enumeration: an unknown user, or a secret the method cannot use,
   runs the same exchange against a mock secret and fails at the very end
   with the same message as a wrong password, after comparable work. The
   mock SCRAM salt is stable per user name, as PostgreSQL's scram_mock_salt()
   is, so two attempts cannot tell a real user from a missing one.
3. Secrets, hashes and proofs are compared in constant time only.
4. No sockets, no pools, no config import: the method arrives as a string.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Generator
from dataclasses import dataclass

from ecluse.auth.secrets import SecretKind, scram_secret_of, secret_kind
from ecluse.errors import AuthFailed, RemoteProtocolError
from ecluse.protocol.backend import (
    encode_authentication_cleartext,
    encode_authentication_md5,
    encode_authentication_sasl,
    encode_authentication_sasl_continue,
    encode_authentication_sasl_final,
)
from ecluse.protocol.frontend import decode_password, decode_sasl_initial_response
from ecluse.protocol.md5 import md5_secret, verify_md5_response
from ecluse.protocol.scram import (
    DEFAULT_ITERATIONS,
    SCRAM_SHA_256,
    ScramSecret,
    ScramServerExchange,
    derive_scram_keys,
    scram_secret_from_password,
)

TRUST = "trust"
PLAIN = "plain"
MD5 = "md5"
SCRAM = "scram-sha-256"
ANY = "any"
METHODS = frozenset({TRUST, PLAIN, MD5, SCRAM, ANY})

# Key of the mock salts for unknown users: random per process, so they cannot
# be predicted, and fixed for its lifetime, so they look stored.
_MOCK_KEY = secrets.token_bytes(32)
_MOCK_PASSWORD = secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """A successful client authentication.

    ``final_message`` is sent before AuthenticationOk (the AuthenticationSASLFinal
    of a SCRAM exchange, b"" otherwise). ``scram_client_key`` is the ClientKey
    recovered from the client's SCRAM proof, for SCRAM pass-through.
    """

    method: str
    scram_client_key: bytes | None = None
    final_message: bytes = b""


AuthGen = Generator[bytes, bytes, AuthOutcome]

# The outcomes of the methods that exchange nothing: one each, shared by every login.
_PASSWORDLESS = {TRUST: AuthOutcome(TRUST), ANY: AuthOutcome(ANY)}


def passwordless_outcome(method: str) -> AuthOutcome | None:
    """The outcome of ``method`` when it asks the client for nothing ("trust",
    "any"), else None: then authenticate_client runs the exchange. A driver that
    asks first starts no generator for these logins."""
    return _PASSWORDLESS.get(method)


def authenticate_client(method: str, user: str, secret: str | None,
                        scram_iterations: int = DEFAULT_ITERATIONS) -> AuthGen:
    """Authenticate a client by method against its stored secret (None: unknown user).

    :param method: "trust", "plain", "md5", "scram-sha-256" or "any".
    :param scram_iterations: the iteration count of the SCRAM verifier made from a
        plaintext secret (a stored verifier keeps its own).
    Yields backend messages to send; is sent the body of each client 'p'
    message. Returns an AuthOutcome; raises AuthFailed (28P01) for a wrong
    password or unknown user, RemoteProtocolError (08P01) for a malformed
    client message, AuthFailed (28000) for a method this function cannot run.
    """
    trusted = passwordless_outcome(method)
    if trusted is not None:
        return trusted
    if method not in METHODS:
        raise AuthFailed(f'authentication method "{method}" is not supported here',
                         sqlstate="28000")
    kind = secret_kind(secret) if secret is not None else None
    if method == PLAIN:
        client_key = yield from _cleartext_exchange(user, secret, kind)
        return AuthOutcome(PLAIN, scram_client_key=client_key)
    if method == MD5 and kind is not SecretKind.SCRAM_SHA_256:
        yield from _md5_exchange(user, secret)
        return AuthOutcome(MD5)
    return (yield from _scram_exchange(user, secret, kind, scram_iterations))


def _fail(user: str) -> AuthFailed:
    # One message for every failure, so it tells nothing about the user.
    return AuthFailed(f'password authentication failed for user "{user}"')


def _cleartext_exchange(user: str, secret: str | None,
                        kind: SecretKind | None) -> Generator[bytes, bytes, bytes | None]:
    """Check a cleartext password; return the SCRAM ClientKey when the secret is a verifier.

    The key is derived anyway to check the password, and lets the server login
    use SCRAM pass-through as after a SCRAM exchange.
    """
    client_key = None
    body = yield encode_authentication_cleartext()
    password = decode_password(body)
    if secret is None:
        # Do an md5 secret's work, then fail: the user does not exist.
        _compare(md5_secret(user, password), md5_secret(user, _MOCK_PASSWORD))
        ok = False
    elif kind is SecretKind.MD5:
        ok = _compare(md5_secret(user, password), secret)
    elif kind is SecretKind.SCRAM_SHA_256:
        parsed = scram_secret_of(secret)
        assert parsed is not None
        keys = derive_scram_keys(password, parsed.salt, parsed.iterations)
        ok = hmac.compare_digest(keys.server_key, parsed.server_key)
        client_key = keys.client_key
    else:
        ok = hmac.compare_digest(password, secret.encode("utf-8"))
    # PostgreSQL refuses an empty password whatever is stored.
    if not ok or not password:
        raise _fail(user)
    return client_key


def _md5_exchange(user: str, secret: str | None) -> Generator[bytes, bytes, None]:
    salt = secrets.token_bytes(4)
    body = yield encode_authentication_md5(salt)
    response = decode_password(body)
    expected = secret if secret is not None else md5_secret(user, _MOCK_PASSWORD)
    ok = verify_md5_response(expected, user, salt, response)
    if not ok or secret is None:
        raise _fail(user)


def _scram_exchange(user: str, secret: str | None, kind: SecretKind | None,
                    iterations: int) -> Generator[bytes, bytes, AuthOutcome]:
    if kind is SecretKind.SCRAM_SHA_256:
        assert secret is not None
        verifier = scram_secret_of(secret)
        doomed = False
    elif kind is SecretKind.PLAIN:
        assert secret is not None
        verifier = _scram_secret_for_plain(user, secret, iterations)
        doomed = False
    else:
        # Unknown user, or an md5 hash from which SCRAM keys cannot be made:
        # PostgreSQL runs a mock exchange and fails it at the end.
        verifier = _scram_secret_for_plain(user, _MOCK_PASSWORD, iterations)
        doomed = True
    assert verifier is not None
    exchange = ScramServerExchange(verifier, doomed=doomed)

    body = yield encode_authentication_sasl([SCRAM_SHA_256])
    mechanism, data = decode_sasl_initial_response(body)
    if mechanism != SCRAM_SHA_256:
        raise RemoteProtocolError("client selected an invalid SASL authentication mechanism")
    if data is None:
        raise RemoteProtocolError("malformed SCRAM message: no initial response")
    body = yield encode_authentication_sasl_continue(exchange.handle_client_first(data))
    result = exchange.verify_client_final(body)
    if result is None:
        raise _fail(user)
    return AuthOutcome(SCRAM, scram_client_key=result.client_key,
                       final_message=encode_authentication_sasl_final(result.server_final))


def _mock_salt(user: str) -> bytes:
    return hmac.digest(_MOCK_KEY, user.encode("utf-8"), "sha256")[:16]


@functools.lru_cache(maxsize=1024)
def _scram_secret_for_plain(user: str, password: str, iterations: int) -> ScramSecret:
    """Build (once) the SCRAM verifier of a plaintext secret, with the user's stable salt.

    Cached so a plaintext userlist costs one PBKDF2 per user, not per login;
    mock verifiers for unknown users go through the same cache, so both
    paths cost the same.
    """
    return scram_secret_from_password(password, _mock_salt(user), iterations)


def _compare(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
