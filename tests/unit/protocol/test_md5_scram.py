"""md5 and SCRAM-SHA-256 exchanges of protocol/: known vectors, interop with scramp,
bounds on what a peer sends (CVE-2026-6665), and fuzzing of every SCRAM step."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac

import pytest
import scramp
from hypothesis import given, settings
from hypothesis import strategies as st

from ecluse.errors import LocalProtocolError, RemoteProtocolError
from ecluse.protocol.md5 import is_md5_secret, md5_response, md5_secret, verify_md5_response
from ecluse.protocol.scram import (
    MAX_ITERATIONS,
    MAX_NONCE_LENGTH,
    ScramClientExchange,
    ScramSecret,
    ScramServerExchange,
    derive_scram_keys,
    is_scram_secret,
    prepare_password,
    scram_secret_from_password,
    verify_scram_password,
)

SALT16 = bytes(range(16))


def _md5hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- md5 ---------------------------------------------------------------------

def test_md5_secret_matches_postgres_formula() -> None:
    assert md5_secret("md5user", "md5pass") == "md5" + _md5hex(b"md5passmd5user")


def test_md5_secret_literal_vectors() -> None:
    # RFC 1321 test suite: md5("") and md5("message digest"); PostgreSQL hashes
    # password + user, so the split between the two does not matter.
    assert md5_secret("", "") == "md5d41d8cd98f00b204e9800998ecf8427e"
    assert md5_secret(" digest", "message") == "md5f96b697d7cb7938d525a2f31aaf161d0"
    assert md5_secret("c", "ab") == "md5900150983cd24fb0d6963f7d28e17f72"


def test_md5_response_formula_and_salt() -> None:
    salt = b"\x01\x02\x03\x04"
    inner = _md5hex(b"md5passmd5user")
    expected = "md5" + _md5hex(inner.encode() + salt)
    assert md5_response("md5user", "md5pass", salt) == expected
    assert md5_response("md5user", "md5pass", b"\x00\x00\x00\x00") != expected


def test_md5_response_from_secret_equals_from_plaintext() -> None:
    salt = b"\xaa\xbb\xcc\xdd"
    secret = md5_secret("alice", "s3cret")
    assert md5_response("alice", secret, salt) == md5_response("alice", "s3cret", salt)
    # The user only salts the plaintext; a stored secret already contains it.
    assert md5_response("bob", secret, salt) == md5_response("alice", "s3cret", salt)


def test_md5_response_accepts_bytes_password() -> None:
    salt = b"abcd"
    raw = "pässword".encode()
    assert md5_response("u", raw, salt) == md5_response("u", "pässword", salt)
    latin = b"p\xe4ss"  # not UTF-8: hashed as the bytes the client sent
    assert md5_response("u", latin, salt) == "md5" + _md5hex(
        _md5hex(latin + b"u").encode() + salt)


def test_verify_md5_response() -> None:
    salt = b"salt"
    secret = md5_secret("alice", "pw")
    good = md5_response("alice", "pw", salt).encode()
    assert verify_md5_response(secret, "alice", salt, good)
    assert verify_md5_response("pw", "alice", salt, good)  # plaintext secret
    assert not verify_md5_response(secret, "alice", salt, md5_response("alice", "pX", salt)
                                   .encode())
    assert not verify_md5_response(secret, "alice", b"tlas", good)
    assert not verify_md5_response(secret, "alice", salt, b"")
    assert not verify_md5_response(secret, "alice", salt, good.upper())


@pytest.mark.parametrize(("text", "expected"), [
    ("md5" + "0" * 32, True),
    ("md5" + "a" * 32, True),
    ("md5" + "A" * 32, False),  # PostgreSQL's isMD5() wants lowercase hex
    ("md5" + "0" * 31, False),
    ("md5" + "0" * 33, False),
    ("md5" + "g" * 32, False),
    ("MD5" + "0" * 32, False),
    ("password", False),
])
def test_is_md5_secret(text: str, expected: bool) -> None:
    assert is_md5_secret(text) is expected


# --- SCRAM secrets -----------------------------------------------------------

def test_scram_secret_matches_scramp() -> None:
    secret = scram_secret_from_password("pencil", SALT16, 4096)
    salt, stored, server, iterations = scramp.ScramMechanism().make_auth_info(
        "pencil", iteration_count=4096, salt=SALT16)
    assert (secret.salt, secret.stored_key, secret.server_key, secret.iterations) == (
        salt, stored, server, iterations)


def test_scram_secret_formula() -> None:
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", SALT16, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    keys = derive_scram_keys("pencil", SALT16, 4096)
    assert keys.client_key == client_key
    assert keys.stored_key == hashlib.sha256(client_key).digest()
    assert keys.server_key == hmac.digest(salted, b"Server Key", "sha256")


def test_scram_secret_text_round_trip() -> None:
    secret = scram_secret_from_password("pw", SALT16, 4096)
    text = secret.format()
    b64 = base64.b64encode
    assert text == (f"SCRAM-SHA-256$4096:{b64(SALT16).decode()}$"
                    f"{b64(secret.stored_key).decode()}:{b64(secret.server_key).decode()}")
    assert ScramSecret.parse(text) == secret
    assert str(secret) == text
    assert is_scram_secret(text)


def test_scram_secret_random_salt() -> None:
    a, b = scram_secret_from_password("pw"), scram_secret_from_password("pw")
    assert len(a.salt) == 16
    assert a.salt != b.salt
    assert a.iterations == 4096


@pytest.mark.parametrize("text", [
    "",
    "pencil",
    "SCRAM-SHA-256$",
    "SCRAM-SHA-256$4096:c2FsdA==$",
    "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "SCRAM-SHA-256$-1:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "SCRAM-SHA-256$x:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "SCRAM-SHA-256$4096:!!!!$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "SCRAM-SHA-256$4096:$" + "A" * 43 + "=:" + "A" * 43 + "=",
    "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 40 + ":" + "A" * 43 + "=",  # short key
    "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=$extra",
    "SCRAM-SHA-1$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
])
def test_scram_secret_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        ScramSecret.parse(text)
    assert not is_scram_secret(text)


def test_verify_scram_password() -> None:
    secret = scram_secret_from_password("right", SALT16, 4096)
    assert verify_scram_password(secret, "right")
    assert verify_scram_password(secret, b"right")
    assert not verify_scram_password(secret, "wrong")


def test_prepare_password_saslprep_and_fallback() -> None:
    # U+00A0 (no-break space) maps to a space; U+00AD (soft hyphen) to nothing.
    assert prepare_password("a\u00a0b\u00adc") == b"a bc"
    # Prohibited (a control character) or not UTF-8: the raw bytes, as PostgreSQL.
    assert prepare_password("a\x07b") == b"a\x07b"
    assert prepare_password(b"\xff\xfe") == b"\xff\xfe"


# --- SCRAM exchanges ---------------------------------------------------------

def _run(client: ScramClientExchange, server: ScramServerExchange):
    server_first = server.handle_client_first(client.client_first())
    client_final = client.handle_server_first(server_first)
    result = server.verify_client_final(client_final)
    return result


def test_rfc7677_vector() -> None:
    # RFC 7677 §3: user "user", password "pencil".
    client = ScramClientExchange("pencil", user="user", client_nonce="rOprNGfwEbeRWgbNEkqO")
    assert client.client_first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = client.handle_server_first(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client.handle_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert client.is_complete


def test_rfc7677_vector_server_side() -> None:
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    secret = scram_secret_from_password("pencil", salt, 4096)
    server = ScramServerExchange(secret, server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    first = server.handle_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert first == (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    result = server.verify_client_final(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert result is not None
    assert result.server_final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert result.client_key == derive_scram_keys("pencil", salt, 4096).client_key


def test_own_client_and_server() -> None:
    secret = scram_secret_from_password("pw", SALT16, 4096)
    client = ScramClientExchange("pw")
    result = _run(client, ScramServerExchange(secret))
    assert result is not None
    assert result.client_key == derive_scram_keys("pw", SALT16, 4096).client_key
    assert not client.is_complete
    client.handle_server_final(result.server_final)
    assert client.is_complete


def test_wrong_password_fails_on_server() -> None:
    secret = scram_secret_from_password("pw", SALT16, 4096)
    assert _run(ScramClientExchange("not-pw"), ScramServerExchange(secret)) is None


def test_doomed_exchange_fails_even_with_right_password() -> None:
    secret = scram_secret_from_password("pw", SALT16, 4096)
    assert _run(ScramClientExchange("pw"), ScramServerExchange(secret, doomed=True)) is None


def test_client_from_keys() -> None:
    secret = scram_secret_from_password("pw", SALT16, 4096)
    keys = derive_scram_keys("pw", SALT16, 4096)
    client = ScramClientExchange(keys=(keys.client_key, keys.server_key))
    result = _run(client, ScramServerExchange(secret))
    assert result is not None
    client.handle_server_final(result.server_final)
    assert client.is_complete


def test_recovered_client_key_logs_in_again() -> None:
    # SCRAM pass-through: the ClientKey recovered by the server side, with the
    # stored ServerKey, is enough for a second login.
    secret = scram_secret_from_password("pw", SALT16, 4096)
    first = _run(ScramClientExchange("pw"), ScramServerExchange(secret))
    assert first is not None
    client = ScramClientExchange(keys=(first.client_key, secret.server_key))
    second = _run(client, ScramServerExchange(secret))
    assert second is not None
    client.handle_server_final(second.server_final)


def test_client_needs_password_or_keys() -> None:
    with pytest.raises(LocalProtocolError):
        ScramClientExchange()
    with pytest.raises(LocalProtocolError):
        ScramClientExchange("pw", keys=(b"x" * 32, b"y" * 32))
    with pytest.raises(LocalProtocolError):
        ScramClientExchange(keys=(b"short", b"y" * 32))


def test_steps_out_of_order_are_local_errors() -> None:
    client = ScramClientExchange("pw")
    with pytest.raises(LocalProtocolError):
        client.handle_server_first(b"r=x,s=c2FsdA==,i=1")
    server = ScramServerExchange(scram_secret_from_password("pw", SALT16, 4096))
    with pytest.raises(LocalProtocolError):
        server.verify_client_final(b"c=biws,r=x,p=AAAA")


def test_interop_scramp_server_verifies_our_client() -> None:
    salt, stored, server_key, iterations = scramp.ScramMechanism().make_auth_info(
        "pw", iteration_count=4096, salt=SALT16)
    server = scramp.ScramMechanism().make_server(
        lambda _user: (salt, stored, server_key, iterations))
    client = ScramClientExchange("pw", user="alice")
    server.set_client_first(client.client_first().decode())
    client_final = client.handle_server_first(server.get_server_first().encode())
    server.set_client_final(client_final.decode())
    client.handle_server_final(server.get_server_final().encode())
    assert client.is_complete


def test_interop_scramp_server_rejects_our_wrong_password() -> None:
    salt, stored, server_key, iterations = scramp.ScramMechanism().make_auth_info(
        "pw", iteration_count=4096, salt=SALT16)
    server = scramp.ScramMechanism().make_server(
        lambda _user: (salt, stored, server_key, iterations))
    client = ScramClientExchange("wrong", user="alice")
    server.set_client_first(client.client_first().decode())
    client_final = client.handle_server_first(server.get_server_first().encode())
    with pytest.raises(scramp.ScramException):
        server.set_client_final(client_final.decode())


def test_interop_our_server_verifies_scramp_client() -> None:
    secret = scram_secret_from_password("pw", SALT16, 4096)
    server = ScramServerExchange(secret)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "pw")
    first = server.handle_client_first(client.get_client_first().encode())
    client.set_server_first(first.decode())
    result = server.verify_client_final(client.get_client_final().encode())
    assert result is not None
    client.set_server_final(result.server_final.decode())  # raises if the signature is bad
    assert result.client_key == derive_scram_keys("pw", SALT16, 4096).client_key


def test_interop_our_server_rejects_scramp_client_wrong_password() -> None:
    server = ScramServerExchange(scram_secret_from_password("pw", SALT16, 4096))
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", "nope")
    client.set_server_first(server.handle_client_first(client.get_client_first().encode())
                            .decode())
    assert server.verify_client_final(client.get_client_final().encode()) is None


# --- a malicious server (CVE-2026-6665) ---------------------------------------

def _started_client() -> tuple[ScramClientExchange, str]:
    client = ScramClientExchange("pw")
    first = client.client_first().decode()
    return client, first.split("r=", 1)[1]


def _salt_b64() -> str:
    return base64.b64encode(SALT16).decode()


@pytest.mark.parametrize("make_message", [
    lambda n: f"r={n}{'x' * (1 << 20)},s={_salt_b64()},i=4096",  # 1 MB nonce
    lambda n: f"r={n}{'x' * MAX_NONCE_LENGTH},s={_salt_b64()},i=4096",
    lambda n: f"r=someoneelse{n},s={_salt_b64()},i=4096",
    lambda n: f"r={n},s={_salt_b64()},i=4096",  # server added nothing
    # The client's nonce with its last character changed (to one it is not).
    lambda n: f"r={n[:-1]}{'Y' if n.endswith('X') else 'X'}123,s={_salt_b64()},i=4096",
    lambda n: f"r={n}abc,s={_salt_b64()},i=0",
    lambda n: f"r={n}abc,s={_salt_b64()},i=1000000000",
    lambda n: f"r={n}abc,s={_salt_b64()},i={MAX_ITERATIONS + 1}",
    lambda n: f"r={n}abc,s={_salt_b64()},i=-1",
    lambda n: f"r={n}abc,s={_salt_b64()},i=" + "9" * 5000,
    lambda n: f"r={n}abc,s={_salt_b64()},i=",
    lambda n: f"r={n}abc,s={_salt_b64()},i=4O96",
    lambda n: f"r={n}abc,s=not base64!,i=4096",
    lambda n: f"r={n}abc,s=c2FsdA=,i=4096",  # bad padding
    lambda n: f"r={n}abc,s=,i=4096",
    lambda n: f"r={n}abc,s={base64.b64encode(b'x' * 1000).decode()},i=4096",
    lambda n: f"r={n}a\x7fbc,s={_salt_b64()},i=4096",
    lambda n: f"r={n}a,bc,s={_salt_b64()},i=4096",
    lambda n: f"m=ext,r={n}abc,s={_salt_b64()},i=4096",
    lambda n: f"s={_salt_b64()},r={n}abc,i=4096",
    lambda n: f"r={n}abc,s={_salt_b64()}",
    lambda n: "",
])
def test_malicious_server_first_is_refused(make_message) -> None:
    client, nonce = _started_client()
    with pytest.raises(RemoteProtocolError):
        client.handle_server_first(make_message(nonce).encode())
    # The exchange is over: no client-final can be produced afterwards.
    with pytest.raises(LocalProtocolError):
        client.handle_server_first(f"r={nonce}abc,s={_salt_b64()},i=4096".encode())


def test_iteration_bounds_accepted() -> None:
    for iterations in (1, MAX_ITERATIONS // 1000):
        client, nonce = _started_client()
        final = client.handle_server_first(f"r={nonce}abc,s={_salt_b64()},i={iterations}"
                                           .encode())
        assert final.startswith(f"c=biws,r={nonce}abc,p=".encode())


def _client_awaiting_final() -> ScramClientExchange:
    client = ScramClientExchange("pw")
    server = ScramServerExchange(scram_secret_from_password("pw", SALT16, 4096))
    client.handle_server_first(server.handle_client_first(client.client_first()))
    return client


@pytest.mark.parametrize("final", [
    b"v=" + base64.b64encode(b"\0" * 32),  # a signature the server cannot compute
    b"v=" + base64.b64encode(b"\0" * 31),
    b"v=not base64",
    b"v=",
    b"e=invalid-proof",
    b"x=whatever",
    b"",
])
def test_bad_server_final_is_refused(final: bytes) -> None:
    client = _client_awaiting_final()
    with pytest.raises(RemoteProtocolError):
        client.handle_server_final(final)
    assert not client.is_complete


def test_server_signature_from_other_password_is_refused() -> None:
    # An impostor that knows a different password computes a valid-looking
    # signature; the client must still refuse it.
    client = ScramClientExchange("pw")
    impostor = ScramServerExchange(scram_secret_from_password("other", SALT16, 4096))
    client_first = client.client_first()
    server_first = impostor.handle_client_first(client_first)
    client_final = client.handle_server_first(server_first)
    assert impostor.verify_client_final(client_final) is None
    keys = derive_scram_keys("other", SALT16, 4096)
    without_proof = client_final[:client_final.rindex(b",p=")]
    auth = client_first[3:] + b"," + server_first + b"," + without_proof
    forged = b"v=" + base64.b64encode(hmac.digest(keys.server_key, auth, "sha256"))
    with pytest.raises(RemoteProtocolError):
        client.handle_server_final(forged)


# --- a malicious client --------------------------------------------------------

@pytest.mark.parametrize(("first", "sqlstate"), [
    (b"p=tls-server-end-point,,n=,r=abc", "08P01"),
    (b"n,a=admin,n=,r=abc", "0A000"),
    (b"x,,n=,r=abc", "08P01"),
    (b"n,,m=ext,n=,r=abc", "0A000"),
    (b"n,,r=abc", "08P01"),
    (b"n,,n=,r=", "08P01"),
    (b"n,,n=,r=" + b"a" * (MAX_NONCE_LENGTH + 1), "08P01"),
    (b"n,,n=,r=ab\x01c", "08P01"),
    (b"n,,n=,r=abc,bad", "08P01"),
    (b"n,,n=,r=\xff", "08P01"),
    (b"n", "08P01"),
    (b"", "08P01"),
    (b"n,,n=,r=" + b"a" * 5000, "08P01"),
])
def test_malformed_client_first(first: bytes, sqlstate: str) -> None:
    server = ScramServerExchange(scram_secret_from_password("pw", SALT16, 4096))
    with pytest.raises(RemoteProtocolError) as info:
        server.handle_client_first(first)
    assert info.value.sqlstate == sqlstate


def _server_after_first() -> tuple[ScramServerExchange, str]:
    server = ScramServerExchange(scram_secret_from_password("pw", SALT16, 4096))
    first = server.handle_client_first(b"n,,n=,r=clientnonce").decode()
    return server, first.split(",")[0][2:]


def test_client_final_with_foreign_nonce_fails() -> None:
    server, nonce = _server_after_first()
    proof = base64.b64encode(b"\0" * 32).decode()
    assert server.verify_client_final(f"c=biws,r={nonce}X,p={proof}".encode()) is None


@pytest.mark.parametrize("final", [
    "c=biws,r={n}",
    "c=eSws,r={n},p=" + base64.b64encode(b"\0" * 32).decode(),  # "y,," but we got "n,,"
    "c=!!,r={n},p=" + base64.b64encode(b"\0" * 32).decode(),
    "c=biws,r={n},p=" + base64.b64encode(b"\0" * 31).decode(),
    "c=biws,r={n},p=nope!",
    "r={n},c=biws,p=" + base64.b64encode(b"\0" * 32).decode(),
])
def test_malformed_client_final(final: str) -> None:
    server, nonce = _server_after_first()
    with pytest.raises(RemoteProtocolError):
        server.verify_client_final(final.format(n=nonce).encode())


# --- fuzzing: only RemoteProtocolError may escape --------------------------------

_SCRAMISH = st.one_of(
    st.binary(max_size=200),
    st.text(alphabet="rsicpnmvey=,+/aA09\x00\xe9", max_size=120).map(str.encode),
)


@settings(max_examples=300, deadline=None)
@given(_SCRAMISH)
def test_fuzz_server_first(data: bytes) -> None:
    client, _ = _started_client()
    with contextlib.suppress(RemoteProtocolError):
        client.handle_server_first(data)


@settings(max_examples=200, deadline=None)
@given(_SCRAMISH)
def test_fuzz_server_final(data: bytes) -> None:
    client = _client_awaiting_final()
    try:
        client.handle_server_final(data)
    except RemoteProtocolError:
        assert not client.is_complete
    else:
        raise AssertionError("random server-final accepted")


_SECRET = scram_secret_from_password("pw", SALT16, 4096)


@settings(max_examples=300, deadline=None)
@given(_SCRAMISH)
def test_fuzz_client_first(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        ScramServerExchange(_SECRET).handle_client_first(data)


@settings(max_examples=300, deadline=None)
@given(_SCRAMISH)
def test_fuzz_client_final(data: bytes) -> None:
    server = ScramServerExchange(_SECRET)
    server.handle_client_first(b"n,,n=,r=abc")
    try:
        result = server.verify_client_final(data)
    except RemoteProtocolError:
        return
    assert result is None
