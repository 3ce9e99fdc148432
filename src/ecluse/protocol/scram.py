"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both sides, sans-IO.

ecluse plays the server when it authenticates a client (ScramServerExchange)
and the client when it logs into PostgreSQL (ScramClientExchange). Each is a
small state machine fed with the SASL payloads and returning the payloads to
send; the generators in auth/methods.py and server/login.py frame them.
scramp does the key maths (PBKDF2, HMAC, SASLprep).

Rules:
1. Every field from the peer is bounded before it is used: message length,
   nonce length and alphabet, salt size and base64, iteration count. A server
   can no longer make us overflow or spin on its server-first-message (the
   class of CVE-2026-6665); a violation raises RemoteProtocolError and the
   exchange ends without a client-final-message.
2. The client side refuses a login until the server has proved, with its
   ServerSignature, that it knows the password: a server that cannot is an
   impostor.
3. Secrets and proofs are compared with hmac.compare_digest only.
4. No channel binding: the mechanism is "SCRAM-SHA-256" and the GS2 header
   "n,,"; "SCRAM-SHA-256-PLUS" is recognised in a server's list and ignored.
5. No I/O, no asyncio, no config; nothing from ecluse but errors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from scramp.utils import ScramException, hi, saslprep

from ecluse.errors import LocalProtocolError, RemoteProtocolError

SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"
SCRAM_PREFIX = "SCRAM-SHA-256$"

DEFAULT_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
DEFAULT_SALT_LENGTH = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
MIN_ITERATIONS = 1
# A peer choosing the iteration count chooses how long we spin in PBKDF2:
# 10**6 is ~0.5 s of CPU, far above any real server and far below a DoS
# (iteration counts of 0 or 10**9 are the CVE-2026-6665 test cases).
MAX_ITERATIONS = 1_000_000
MAX_NONCE_LENGTH = 1024  # bytes of a nonce from the peer, ours included
MAX_SALT_LENGTH = 256  # decoded bytes of a salt from the peer
MAX_MESSAGE_LENGTH = 4096  # bytes of one SCRAM message from the peer
_MAX_STORED_ITERATIONS = 0x7FFFFFFF  # PostgreSQL keeps the count as an int
_NONCE_BYTES = 18  # what PostgreSQL and libpq use (SCRAM_RAW_NONCE_LEN)
_KEY_LENGTH = 32  # SHA-256 output
_GS2_NO_BINDING = "n,,"
_CBIND_NO_BINDING = base64.b64encode(_GS2_NO_BINDING.encode()).decode()  # "biws"


@dataclass(frozen=True, slots=True)
class ScramKeys:
    """The keys derived from a password: ClientKey, StoredKey = H(ClientKey), ServerKey."""

    client_key: bytes
    stored_key: bytes
    server_key: bytes


@dataclass(frozen=True, slots=True)
class ScramSecret:
    """A SCRAM-SHA-256 verifier as PostgreSQL stores it in pg_authid.

    Text form: ``SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>``.
    """

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, text: str) -> ScramSecret:
        """Parse the stored text form; raise ValueError if it is not one.

        As strict as PostgreSQL's parse_scram_secret(): base64 must decode,
        both keys must be 32 bytes, the iteration count must be positive.
        """
        if not text.startswith(SCRAM_PREFIX):
            raise ValueError("not a SCRAM-SHA-256 secret")
        try:
            params, keys = text[len(SCRAM_PREFIX):].split("$")
            iter_text, salt_text = params.split(":")
            stored_text, server_text = keys.split(":")
        except ValueError:
            raise ValueError("malformed SCRAM-SHA-256 secret") from None
        if not iter_text.isascii() or not iter_text.isdigit() or len(iter_text) > 10:
            raise ValueError("malformed SCRAM-SHA-256 secret: iteration count")
        iterations = int(iter_text)
        if not MIN_ITERATIONS <= iterations <= _MAX_STORED_ITERATIONS:
            raise ValueError("malformed SCRAM-SHA-256 secret: iteration count")
        salt = _b64decode(salt_text)
        stored_key = _b64decode(stored_text)
        server_key = _b64decode(server_text)
        if salt is None or not salt or stored_key is None or server_key is None:
            raise ValueError("malformed SCRAM-SHA-256 secret: invalid base64")
        if len(stored_key) != _KEY_LENGTH or len(server_key) != _KEY_LENGTH:
            raise ValueError("malformed SCRAM-SHA-256 secret: key length")
        return cls(iterations, salt, stored_key, server_key)

    def format(self) -> str:
        """Return the stored text form."""
        return (
            f"{SCRAM_PREFIX}{self.iterations}:{_b64encode(self.salt)}"
            f"${_b64encode(self.stored_key)}:{_b64encode(self.server_key)}"
        )

    def __str__(self) -> str:
        return self.format()


def is_scram_secret(text: str) -> bool:
    """Say whether text parses as a stored SCRAM-SHA-256 secret."""
    try:
        ScramSecret.parse(text)
    except ValueError:
        return False
    return True


def prepare_password(password: str | bytes) -> bytes:
    """Normalise a password with SASLprep the way PostgreSQL's pg_saslprep() does.

    A password that is not valid UTF-8, or that SASLprep prohibits, is used
    as its raw bytes, which is what PostgreSQL and libpq fall back to; so the
    same input always derives the same keys on both sides.
    """
    if isinstance(password, bytes):
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            return password
    else:
        text = password
    try:
        return saslprep(text).encode("utf-8")
    except ScramException:
        return text.encode("utf-8", "surrogateescape")


def derive_scram_keys(password: str | bytes, salt: bytes, iterations: int) -> ScramKeys:
    """Derive ClientKey, StoredKey and ServerKey from a password (RFC 5802 §3).

    The caller bounds iterations: this runs PBKDF2 for exactly that many rounds.
    """
    salted = hi(hashlib.sha256, prepare_password(password), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    server_key = _hmac(salted, b"Server Key")
    return ScramKeys(client_key, hashlib.sha256(client_key).digest(), server_key)


def scram_secret_from_password(
    password: str | bytes, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> ScramSecret:
    """Build the stored SCRAM-SHA-256 secret for a password (a random 16-byte salt by default)."""
    if salt is None:
        salt = secrets.token_bytes(DEFAULT_SALT_LENGTH)
    if not salt or not MIN_ITERATIONS <= iterations <= _MAX_STORED_ITERATIONS:
        raise ValueError("a SCRAM secret needs a salt and a positive iteration count")
    keys = derive_scram_keys(password, salt, iterations)
    return ScramSecret(iterations, salt, keys.stored_key, keys.server_key)


def verify_scram_password(secret: ScramSecret, password: str | bytes) -> bool:
    """Check a plaintext password against a stored SCRAM secret.

    Used when a client sends its password in clear (auth_type plain) and only
    a SCRAM verifier is known; PostgreSQL's scram_verify_plain_password()
    compares the ServerKey the same way.
    """
    keys = derive_scram_keys(password, secret.salt, secret.iterations)
    return hmac.compare_digest(keys.server_key, secret.server_key)


def make_nonce() -> str:
    """Return a fresh printable nonce: 18 random bytes, base64."""
    return _b64encode(secrets.token_bytes(_NONCE_BYTES))


# --- ecluse as the SCRAM server (authenticating a client) -------------------

@dataclass(frozen=True, slots=True)
class ScramServerResult:
    """A verified client-final-message: what to send back and the recovered ClientKey.

    ClientKey = ClientProof XOR ClientSignature; with the stored ServerKey it
    lets ecluse log into a server as this client without the password.
    """

    server_final: bytes
    client_key: bytes


class ScramServerExchange:
    """The server side of one SCRAM-SHA-256 exchange against a stored secret.

    Call handle_client_first() with the SASLInitialResponse data, send back
    what it returns in AuthenticationSASLContinue, then call
    verify_client_final() with the SASLResponse data. A "doomed" exchange
    runs every step against the secret and always fails at the end, so a
    client cannot tell an unknown user from a wrong password.
    """

    __slots__ = ("_auth_prefix", "_doomed", "_gs2_header", "_nonce", "_secret", "_server_nonce",
                 "_state")

    def __init__(self, secret: ScramSecret, *, doomed: bool = False,
                 server_nonce: str | None = None):
        self._secret = secret
        self._doomed = doomed
        self._server_nonce = make_nonce() if server_nonce is None else server_nonce
        self._state = "client-first"
        self._gs2_header = ""
        self._nonce = ""
        self._auth_prefix = ""

    def handle_client_first(self, data: bytes) -> bytes:
        """Parse the client-first-message and return the server-first-message.

        Raises RemoteProtocolError for a malformed message or one asking for
        channel binding, an authorization identity or a mandatory extension.
        """
        self._advance("client-first", "client-final")
        text = _decode_peer(data, "client-first-message")
        gs2_header, bare = _split_gs2_header(text)
        attrs = bare.split(",")
        if attrs[0].startswith("m="):
            raise RemoteProtocolError("client requires an unsupported SCRAM extension",
                                      sqlstate="0A000")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise RemoteProtocolError("malformed SCRAM message: expected username and nonce")
        _check_extensions(attrs[2:])
        client_nonce = attrs[1][2:]
        _check_nonce(client_nonce)
        self._gs2_header = gs2_header
        self._nonce = client_nonce + self._server_nonce
        server_first = (
            f"r={self._nonce},s={_b64encode(self._secret.salt)},i={self._secret.iterations}"
        )
        # AuthMessage = client-first-message-bare "," server-first-message "," ...
        self._auth_prefix = f"{bare},{server_first},"
        return server_first.encode("ascii")

    def verify_client_final(self, data: bytes) -> ScramServerResult | None:
        """Check the client-final-message; return the server-final-message and ClientKey.

        Returns None when the proof is wrong, the nonce is not ours, or the
        exchange is doomed (PostgreSQL fails the login then, with 28P01).
        Raises RemoteProtocolError for a malformed message.
        """
        self._advance("client-final", "done")
        text = _decode_peer(data, "client-final-message")
        cut = text.rfind(",p=")
        if cut < 0:
            raise RemoteProtocolError("malformed SCRAM message: no client proof")
        without_proof, proof_text = text[:cut], text[cut + 3:]
        attrs = without_proof.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            raise RemoteProtocolError("malformed SCRAM message: expected channel binding "
                                      "and nonce")
        _check_extensions(attrs[2:])
        cbind = _b64decode(attrs[0][2:])
        # The c= attribute must repeat the GS2 header of the client-first-message
        # (RFC 5802 §5.1); with no channel binding there is no data after it.
        if cbind is None or cbind != self._gs2_header.encode("ascii"):
            raise RemoteProtocolError("SCRAM channel binding check failed")
        proof = _b64decode(proof_text)
        if proof is None or len(proof) != _KEY_LENGTH:
            raise RemoteProtocolError("malformed SCRAM message: invalid client proof")
        nonce_ok = hmac.compare_digest(attrs[1][2:].encode("ascii", "replace"),
                                       self._nonce.encode("ascii"))
        auth_message = (self._auth_prefix + without_proof).encode("utf-8")
        client_key = _xor(proof, _hmac(self._secret.stored_key, auth_message))
        proof_ok = hmac.compare_digest(hashlib.sha256(client_key).digest(),
                                       self._secret.stored_key)
        if not (proof_ok and nonce_ok) or self._doomed:
            return None
        server_signature = _hmac(self._secret.server_key, auth_message)
        return ScramServerResult(b"v=" + _b64encode(server_signature).encode("ascii"),
                                 client_key)

    def _advance(self, expected: str, following: str) -> None:
        if self._state != expected:
            raise LocalProtocolError(f"SCRAM server step out of order (at {self._state})")
        self._state = following


# --- ecluse as the SCRAM client (logging into PostgreSQL) -------------------

class ScramClientExchange:
    """The client side of one SCRAM-SHA-256 exchange, from a password or from keys.

    Send client_first() in SASLInitialResponse, pass the AuthenticationSASLContinue
    data to handle_server_first() and send what it returns in SASLResponse, then
    pass the AuthenticationSASLFinal data to handle_server_final(). With
    ``keys=(client_key, server_key)`` no password is needed (SCRAM pass-through).
    """

    __slots__ = ("_client_first_bare", "_client_nonce", "_keys", "_password",
                 "_server_signature", "_state")

    def __init__(self, password: str | bytes | None = None, *,
                 keys: tuple[bytes, bytes] | None = None, user: str = "",
                 client_nonce: str | None = None):
        """:param user: the n= attribute; PostgreSQL ignores it, so libpq sends "" too."""
        if (password is None) == (keys is None):
            raise LocalProtocolError("SCRAM client needs either a password or keys")
        if keys is not None and any(len(k) != _KEY_LENGTH for k in keys):
            raise LocalProtocolError("SCRAM keys must be 32 bytes each")
        self._password = password
        self._keys = keys
        self._client_nonce = make_nonce() if client_nonce is None else client_nonce
        escaped = user.replace("=", "=3D").replace(",", "=2C")
        self._client_first_bare = f"n={escaped},r={self._client_nonce}"
        self._server_signature = b""
        self._state = "client-first"

    @property
    def is_complete(self) -> bool:
        """True once the server's signature has been verified."""
        return self._state == "done"

    def client_first(self) -> bytes:
        """Return the client-first-message (GS2 header "n,,": no channel binding)."""
        self._advance("client-first", "server-first")
        return (_GS2_NO_BINDING + self._client_first_bare).encode("utf-8")

    def handle_server_first(self, data: bytes) -> bytes:
        """Check the server-first-message and return the client-final-message.

        Raises RemoteProtocolError, before any key is derived, for a message
        over MAX_MESSAGE_LENGTH, a nonce that does not extend ours or exceeds
        MAX_NONCE_LENGTH, a salt that is not base64 or too long, or an
        iteration count outside MIN_ITERATIONS..MAX_ITERATIONS (CVE-2026-6665).
        """
        self._advance("server-first", "server-final")
        text = _decode_peer(data, "server-first-message")
        attrs = text.split(",")
        if attrs[0].startswith("m="):
            raise RemoteProtocolError("server requires an unsupported SCRAM extension")
        if (len(attrs) < 3 or not attrs[0].startswith("r=") or not attrs[1].startswith("s=")
                or not attrs[2].startswith("i=")):
            raise RemoteProtocolError("malformed SCRAM server-first-message")
        _check_extensions(attrs[3:])
        nonce = attrs[0][2:]
        _check_nonce(nonce)
        # The server must extend our nonce with its own (RFC 5802 §5.1); an
        # unrelated nonce means a replayed or forged exchange.
        if len(nonce) <= len(self._client_nonce) or not nonce.startswith(self._client_nonce):
            raise RemoteProtocolError("SCRAM server nonce does not extend the client nonce")
        salt = _b64decode(attrs[1][2:])
        if salt is None or not salt or len(salt) > MAX_SALT_LENGTH:
            raise RemoteProtocolError("SCRAM server sent an invalid salt")
        iterations = _parse_iterations(attrs[2][2:])

        keys = self._client_keys(salt, iterations)
        without_proof = f"c={_CBIND_NO_BINDING},r={nonce}"
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        stored_key = hashlib.sha256(keys[0]).digest()
        proof = _xor(keys[0], _hmac(stored_key, auth_message))
        self._server_signature = _hmac(keys[1], auth_message)
        return f"{without_proof},p={_b64encode(proof)}".encode("ascii")

    def handle_server_final(self, data: bytes) -> None:
        """Verify the server-final-message; return only if the server proved itself.

        Raises RemoteProtocolError for an error attribute, a malformed message
        or a ServerSignature that does not match.
        """
        self._advance("server-final", "failed")
        text = _decode_peer(data, "server-final-message")
        first = text.split(",")[0]
        if first.startswith("e="):
            reason = first[2:66]
            raise RemoteProtocolError(f"SCRAM authentication failed on the server: {reason}")
        signature = _b64decode(first[2:]) if first.startswith("v=") else None
        if signature is None:
            raise RemoteProtocolError("malformed SCRAM server-final-message")
        if not hmac.compare_digest(signature, self._server_signature):
            raise RemoteProtocolError(
                "SCRAM server signature is wrong: the server does not know the password")
        self._state = "done"

    def _client_keys(self, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
        if self._keys is not None:
            return self._keys
        assert self._password is not None
        keys = derive_scram_keys(self._password, salt, iterations)
        return keys.client_key, keys.server_key

    def _advance(self, expected: str, following: str) -> None:
        if self._state != expected:
            raise LocalProtocolError(f"SCRAM client step out of order (at {self._state})")
        self._state = following


# --- helpers ---------------------------------------------------------------

def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def _xor(a: bytes, b: bytes) -> bytes:
    if len(a) != len(b):
        raise LocalProtocolError("SCRAM keys of different lengths")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Decode strict base64 (no stray characters); None if it is not."""
    if not text.isascii():
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _decode_peer(data: bytes, what: str) -> str:
    """Bound and decode one SCRAM message from the peer."""
    if len(data) > MAX_MESSAGE_LENGTH:
        raise RemoteProtocolError(f"SCRAM {what} too long")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"malformed SCRAM {what}: not UTF-8") from None
    if not text or "\0" in text:
        raise RemoteProtocolError(f"malformed SCRAM {what}")
    return text


def _split_gs2_header(text: str) -> tuple[str, str]:
    """Split the client-first-message into its GS2 header and the bare message."""
    flag, sep, rest = text.partition(",")
    if not sep:
        raise RemoteProtocolError("malformed SCRAM message: no GS2 header")
    if flag.startswith("p="):
        # We never offer SCRAM-SHA-256-PLUS, so a client asking for binding
        # picked a mechanism it was not offered.
        raise RemoteProtocolError("client requires SCRAM channel binding, "
                                  "but SCRAM-SHA-256 was selected")
    if flag not in ("n", "y"):
        raise RemoteProtocolError("malformed SCRAM message: bad GS2 channel binding flag")
    authzid, sep, bare = rest.partition(",")
    if not sep:
        raise RemoteProtocolError("malformed SCRAM message: no GS2 header")
    if authzid:
        raise RemoteProtocolError("client uses authorization identity, but it is not "
                                  "supported", sqlstate="0A000")
    return f"{flag},,", bare


def _check_nonce(nonce: str) -> None:
    # RFC 5802: printable = %x21-2B / %x2D-7E (printable ASCII except ",").
    if not nonce or len(nonce) > MAX_NONCE_LENGTH:
        raise RemoteProtocolError("SCRAM nonce is empty or too long")
    if not all("!" <= c <= "~" for c in nonce):
        raise RemoteProtocolError("SCRAM nonce has invalid characters")


def _check_extensions(attrs: list[str]) -> None:
    for attr in attrs:
        if len(attr) < 2 or attr[1] != "=" or not attr[0].isascii() or not attr[0].isalpha():
            raise RemoteProtocolError("malformed SCRAM message: bad attribute")


def _parse_iterations(text: str) -> int:
    # Checked as text first, so a 10**6-digit count is never converted.
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise RemoteProtocolError("SCRAM server sent an invalid iteration count")
    iterations = int(text)
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise RemoteProtocolError(
            f"SCRAM iteration count {iterations} outside {MIN_ITERATIONS}..{MAX_ITERATIONS}")
    return iterations
