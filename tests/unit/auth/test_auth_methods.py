"""authenticate_client(): every method against every kind of secret, driven in
memory by a scripted client (ecluse's own SCRAM client and scramp's)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

import pytest
import scramp
from hypothesis import given, settings
from hypothesis import strategies as st

from ecluse.auth import methods
from ecluse.auth.methods import AuthOutcome, authenticate_client
from ecluse.auth.secrets import scram_secret_of
from ecluse.errors import AuthFailed, RemoteProtocolError
from ecluse.protocol.backend import decode_sasl_mechanisms
from ecluse.protocol.codes import Auth
from ecluse.protocol.frontend import encode_sasl_initial_response
from ecluse.protocol.md5 import md5_response, md5_secret
from ecluse.protocol.scram import (
    ScramClientExchange,
    ScramSecret,
    derive_scram_keys,
    scram_secret_from_password,
)

USER = "alice"
PASSWORD = "correct horse"
SALT = bytes(range(16))
SECRETS: dict[str, str | None] = {
    "plain": PASSWORD,
    "md5": md5_secret(USER, PASSWORD),
    "scram": scram_secret_from_password(PASSWORD, SALT, 4096).format(),
    "unknown": None,
}
FAILED = f'password authentication failed for user "{USER}"'


def _split(message: bytes) -> tuple[int, int, bytes]:
    """Return (type, auth code, data) of an encoded Authentication message."""
    assert message[0] == ord("R")
    (length,) = struct.unpack("!I", message[1:5])
    assert length == len(message) - 1
    (code,) = struct.unpack("!i", message[5:9])
    return message[0], code, message[9:]


def _body(frontend_message: bytes) -> bytes:
    assert frontend_message[0] == ord("p")
    return frontend_message[5:]


class Client:
    """A scripted client answering whatever the generator asks for."""

    def __init__(self, password: str, user: str = USER, use_scramp: bool = False,
                 mechanism: str = "SCRAM-SHA-256"):
        self.password = password
        self.user = user
        self.use_scramp = use_scramp
        self.mechanism = mechanism
        self.codes: list[int] = []
        self.scram: ScramClientExchange | None = None
        self.scramp: scramp.ScramClient | None = None

    def answer(self, message: bytes) -> bytes:
        _, code, data = _split(message)
        self.codes.append(code)
        if code == Auth.CLEARTEXT_PASSWORD:
            return self.password.encode() + b"\0"
        if code == Auth.MD5_PASSWORD:
            return md5_response(self.user, self.password, data).encode() + b"\0"
        if code == Auth.SASL:
            assert decode_sasl_mechanisms(data) == ["SCRAM-SHA-256"]
            if self.use_scramp:
                self.scramp = scramp.ScramClient(["SCRAM-SHA-256"], self.user, self.password)
                first = self.scramp.get_client_first().encode()
            else:
                self.scram = ScramClientExchange(self.password)
                first = self.scram.client_first()
            return _body(encode_sasl_initial_response(self.mechanism, first))
        if code == Auth.SASL_CONTINUE:
            if self.scramp is not None:
                self.scramp.set_server_first(data.decode())
                return self.scramp.get_client_final().encode()
            assert self.scram is not None
            return self.scram.handle_server_first(data)
        raise AssertionError(f"unexpected request {code}")

    def finish(self, outcome: AuthOutcome) -> None:
        """Check AuthenticationSASLFinal like a real client would."""
        if not outcome.final_message:
            return
        _, code, data = _split(outcome.final_message)
        assert code == Auth.SASL_FINAL
        if self.scramp is not None:
            self.scramp.set_server_final(data.decode())
        else:
            assert self.scram is not None
            self.scram.handle_server_final(data)
            assert self.scram.is_complete


def run(method: str, secret: str | None, client: Client,
        scram_iterations: int = 4096) -> AuthOutcome:
    gen = authenticate_client(method, USER, secret, scram_iterations)
    try:
        message = next(gen)
        while True:
            message = gen.send(client.answer(message))
    except StopIteration as stop:
        outcome = stop.value
    client.finish(outcome)
    return outcome


# --- method choice --------------------------------------------------------------

@pytest.mark.parametrize("method", ["trust", "any"])
@pytest.mark.parametrize("kind", list(SECRETS))
def test_trust_and_any_ask_nothing(method: str, kind: str) -> None:
    gen = authenticate_client(method, USER, SECRETS[kind])
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == AuthOutcome(method)


# (method, secret kind) -> the request the client must see first
EXCHANGES = {
    ("plain", "plain"): Auth.CLEARTEXT_PASSWORD,
    ("plain", "md5"): Auth.CLEARTEXT_PASSWORD,
    ("plain", "scram"): Auth.CLEARTEXT_PASSWORD,
    ("md5", "plain"): Auth.MD5_PASSWORD,
    ("md5", "md5"): Auth.MD5_PASSWORD,
    ("md5", "scram"): Auth.SASL,  # PostgreSQL upgrades md5 to SCRAM for a SCRAM secret
    ("scram-sha-256", "plain"): Auth.SASL,
    ("scram-sha-256", "scram"): Auth.SASL,
}


@pytest.mark.parametrize(("method", "kind"), list(EXCHANGES))
def test_right_password_succeeds(method: str, kind: str) -> None:
    client = Client(PASSWORD)
    outcome = run(method, SECRETS[kind], client)
    assert client.codes[0] == EXCHANGES[method, kind]
    if client.codes[0] == Auth.SASL:
        assert outcome.method == "scram-sha-256"
        assert client.codes == [Auth.SASL, Auth.SASL_CONTINUE]
        assert outcome.scram_client_key is not None
    else:
        assert outcome.method == method
        # A cleartext password checked against a verifier yields the ClientKey
        # too (for SCRAM pass-through); md5 never can.
        if kind == "scram":
            verifier = ScramSecret.parse(SECRETS[kind])
            assert outcome.scram_client_key is not None
            assert hashlib.sha256(outcome.scram_client_key).digest() == verifier.stored_key
        else:
            assert outcome.scram_client_key is None
        assert outcome.final_message == b""


@pytest.mark.parametrize(("method", "kind"), list(EXCHANGES))
def test_wrong_password_fails(method: str, kind: str) -> None:
    client = Client("wrong horse")
    with pytest.raises(AuthFailed) as info:
        run(method, SECRETS[kind], client)
    assert info.value.message == FAILED
    assert info.value.sqlstate == "28P01"
    assert client.codes[0] == EXCHANGES[method, kind]


@pytest.mark.parametrize(("method", "first"), [
    ("plain", Auth.CLEARTEXT_PASSWORD),
    ("md5", Auth.MD5_PASSWORD),
    ("scram-sha-256", Auth.SASL),
])
def test_unknown_user_fails_like_wrong_password(method: str, first: int) -> None:
    client = Client(PASSWORD)
    with pytest.raises(AuthFailed) as unknown:
        run(method, None, client)
    # The whole exchange ran, as for a real user, before failing.
    assert client.codes[0] == first
    if first == Auth.SASL:
        assert client.codes == [Auth.SASL, Auth.SASL_CONTINUE]
    with pytest.raises(AuthFailed) as wrong:
        run(method, SECRETS["plain"], Client("wrong horse"))
    assert unknown.value.message == wrong.value.message == FAILED
    assert unknown.value.sqlstate == wrong.value.sqlstate == "28P01"


def test_scram_method_refuses_md5_secret_after_full_exchange() -> None:
    # PostgreSQL cannot run SCRAM from an md5 hash: it runs a mock exchange and fails.
    client = Client(PASSWORD)
    with pytest.raises(AuthFailed) as info:
        run("scram-sha-256", SECRETS["md5"], client)
    assert info.value.message == FAILED
    assert client.codes == [Auth.SASL, Auth.SASL_CONTINUE]


def _server_first_salt(method: str, user: str, secret: str | None) -> str:
    gen = authenticate_client(method, user, secret)
    next(gen)
    client = ScramClientExchange("x")
    _, code, data = _split(gen.send(_body(encode_sasl_initial_response(
        "SCRAM-SHA-256", client.client_first()))))
    assert code == Auth.SASL_CONTINUE
    attrs = dict(a.split("=", 1) for a in data.decode().split(","))
    assert attrs["i"] == "4096"
    gen.close()
    return attrs["s"]


def test_mock_salt_is_stable_per_user() -> None:
    # A random salt per attempt would tell an unknown user from a real one.
    ghost = _server_first_salt("scram-sha-256", "ghost", None)
    assert ghost == _server_first_salt("scram-sha-256", "ghost", None)
    assert ghost != _server_first_salt("scram-sha-256", "phantom", None)
    assert _server_first_salt("scram-sha-256", USER, PASSWORD) == _server_first_salt(
        "scram-sha-256", USER, PASSWORD)


def test_unsupported_method_string() -> None:
    with pytest.raises(AuthFailed) as info:
        next(authenticate_client("cert", USER, PASSWORD))
    assert info.value.sqlstate == "28000"


def test_empty_password_refused_even_if_stored_empty() -> None:
    with pytest.raises(AuthFailed):
        run("plain", "", Client(""))


# --- SCRAM specifics ------------------------------------------------------------------

def test_recovered_client_key_equals_derived() -> None:
    outcome = run("scram-sha-256", SECRETS["scram"], Client(PASSWORD))
    assert outcome.scram_client_key == derive_scram_keys(PASSWORD, SALT, 4096).client_key


@pytest.mark.parametrize("kind", ["plain", "scram"])
def test_scramp_client_interop(kind: str) -> None:
    client = Client(PASSWORD, use_scramp=True)
    outcome = run("scram-sha-256", SECRETS[kind], client)  # finish() checks the signature
    assert outcome.method == "scram-sha-256"


def test_scramp_client_wrong_password() -> None:
    with pytest.raises(AuthFailed):
        run("scram-sha-256", SECRETS["scram"], Client("nope", use_scramp=True))


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1", "PLAIN", ""])
def test_wrong_mechanism_is_protocol_violation(mechanism: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        run("scram-sha-256", SECRETS["scram"], Client(PASSWORD, mechanism=mechanism))
    assert info.value.sqlstate == "08P01"


def _scram_gen_at_initial_response() -> Callable[[bytes], object]:
    gen = authenticate_client("scram-sha-256", USER, SECRETS["scram"])
    next(gen)
    return gen.send


@pytest.mark.parametrize("body", [
    b"SCRAM-SHA-256\0\xff\xff\xff\xff",  # length -1: no initial response
    b"SCRAM-SHA-256\0\x00\x00\x00\x10abc",  # length longer than the data
    b"SCRAM-SHA-256\0\x80\x00\x00\x00",
    b"SCRAM-SHA-256",  # unterminated name
    b"SCRAM-\xff\0\x00\x00\x00\x00",  # not UTF-8
    b"",
])
def test_malformed_initial_response(body: bytes) -> None:
    send = _scram_gen_at_initial_response()
    with pytest.raises(RemoteProtocolError):
        send(body)


def test_client_final_with_foreign_nonce_fails_auth() -> None:
    send = _scram_gen_at_initial_response()
    client = ScramClientExchange(PASSWORD)
    server_first = _split(send(_body(encode_sasl_initial_response(
        "SCRAM-SHA-256", client.client_first()))))[2]
    final = client.handle_server_first(server_first)
    nonce = server_first.split(b",")[0][2:]
    tampered = final.replace(nonce, nonce[:-1] + (b"A" if nonce[-1:] != b"A" else b"B"))
    assert tampered != final
    with pytest.raises((AuthFailed, RemoteProtocolError)):
        send(tampered)


@pytest.mark.parametrize("method", ["plain", "md5"])
@pytest.mark.parametrize("body", [b"", b"no terminator", b"two\0nuls\0"])
def test_malformed_password_message(method: str, body: bytes) -> None:
    gen = authenticate_client(method, USER, SECRETS["plain"])
    next(gen)
    with pytest.raises(RemoteProtocolError):
        gen.send(body)


# --- fuzzing: only AuthFailed and RemoteProtocolError may escape -----------------------

@settings(max_examples=200, deadline=None)
@given(method=st.sampled_from(["plain", "md5", "scram-sha-256"]),
       kind=st.sampled_from(list(SECRETS)),
       bodies=st.lists(st.binary(max_size=120), min_size=1, max_size=3))
def test_fuzz_client_messages(method: str, kind: str, bodies: list[bytes]) -> None:
    gen = authenticate_client(method, USER, SECRETS[kind])
    next(gen)
    try:
        for body in bodies:
            gen.send(body)
    except (AuthFailed, RemoteProtocolError):
        pass
    except StopIteration as stop:
        raise AssertionError(f"random bytes authenticated: {stop.value}") from None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_client_final(data: bytes) -> None:
    send = _scram_gen_at_initial_response()
    send(_body(encode_sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abcdef")))
    try:
        send(data)
    except (AuthFailed, RemoteProtocolError):
        pass
    except StopIteration as stop:
        raise AssertionError(f"random bytes authenticated: {stop.value}") from None


@pytest.mark.parametrize("method", ["plain", "md5", "scram-sha-256"])
def test_unknown_user_fails_even_with_the_mock_password(method: str) -> None:
    # Failing must not rest on the mock secret being unguessable.
    with pytest.raises(AuthFailed) as info:
        run(method, None, Client(methods._MOCK_PASSWORD))
    assert info.value.message == FAILED


class IterationsSeen(Client):
    """A SCRAM client that notes the iteration count the server-first message names."""

    iterations: int | None = None

    def answer(self, message: bytes) -> bytes:
        _, code, data = _split(message)
        if code == Auth.SASL_CONTINUE:
            fields = dict(f.split("=", 1) for f in data.decode().split(","))
            self.iterations = int(fields["i"])
        return super().answer(message)


@pytest.mark.parametrize(("kind", "secret", "expected"), [
    ("plaintext secret", PASSWORD, 5000),  # made with scram_iterations
    ("unknown user", None, 5000),  # its mock exchange too: no difference to see
    ("stored verifier", SECRETS["scram"], None),  # keeps its own count
])
def test_scram_iterations_make_the_verifier_of_a_plaintext_secret(kind, secret, expected):
    client = IterationsSeen(PASSWORD)
    if secret is None:
        with pytest.raises(AuthFailed):
            run("scram-sha-256", secret, client, scram_iterations=5000)
    else:
        assert run("scram-sha-256", secret, client, scram_iterations=5000).method == "scram-sha-256"
    stored = scram_secret_of(SECRETS["scram"]).iterations
    assert client.iterations == (expected if expected is not None else stored), kind
    assert stored != 5000
