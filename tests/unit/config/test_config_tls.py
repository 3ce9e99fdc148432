"""TLS settings: parsing, validation at load, and the contexts config/tls.py builds."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest

from ecluse.config.loader import config_from_string, load_config
from ecluse.config.model import SslMode
from ecluse.config.tls import ALPN_POSTGRESQL, SETS_ANY_GROUP, client_tls_context, server_tls
from ecluse.config.values import BadValue, parse_tls_protocols
from ecluse.errors import ConfigError


@pytest.mark.parametrize(("text", "expected"), [
    ("secure", ("tlsv1.2", "tlsv1.3")),
    ("all", ("tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3")),
    ("legacy", ("tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3")),
    ("tlsv1.3", ("tlsv1.3",)),
    ("TLSv1.3, tlsv1.2", ("tlsv1.2", "tlsv1.3")),
    ("tlsv1:tlsv1.1", ("tlsv1.0", "tlsv1.1")),
])
def test_parse_tls_protocols(text, expected):
    assert parse_tls_protocols(text) == expected


@pytest.mark.parametrize("text", ["", "tlsv2", "sslv3", "secure,bogus", ","])
def test_parse_tls_protocols_refuses(text):
    with pytest.raises(BadValue):
        parse_tls_protocols(text)


def test_defaults_are_disable_and_secure():
    s = config_from_string("[pgbouncer]\n").settings
    assert s.client_tls_sslmode is SslMode.DISABLE
    assert s.server_tls_sslmode is SslMode.DISABLE
    assert s.client_tls_protocols == s.server_tls_protocols == ("tlsv1.2", "tlsv1.3")
    assert client_tls_context(s) is None
    assert server_tls(s) is None


def test_client_mode_needs_key_and_cert():
    with pytest.raises(ConfigError, match="client_tls_key_file: must be set"):
        config_from_string("[pgbouncer]\nclient_tls_sslmode = require\n")


def test_unreadable_file_is_named(tls_certs):
    text = ("[pgbouncer]\nclient_tls_sslmode = prefer\n"
            f"client_tls_key_file = {tls_certs.server.key}\n"
            "client_tls_cert_file = /nonexistent/server.crt\n")
    with pytest.raises(ConfigError, match=r":4: client_tls_cert_file: cannot read"):
        config_from_string(text)


def test_key_not_matching_the_certificate(tls_certs):
    text = ("[pgbouncer]\nclient_tls_sslmode = prefer\n"
            f"client_tls_key_file = {tls_certs.client_other.key}\n"
            f"client_tls_cert_file = {tls_certs.server.cert}\n")
    with pytest.raises(ConfigError, match="client_tls_cert_file: cannot load certificate"):
        config_from_string(text)


def test_verify_ca_needs_a_ca_file(tls_certs):
    text = ("[pgbouncer]\nclient_tls_sslmode = verify-ca\n"
            f"client_tls_key_file = {tls_certs.server.key}\n"
            f"client_tls_cert_file = {tls_certs.server.cert}\n")
    with pytest.raises(ConfigError, match="client_tls_ca_file: must be set"):
        config_from_string(text)


def test_client_context(tls_certs):
    text = ("[pgbouncer]\nclient_tls_sslmode = verify-full\n"
            f"client_tls_key_file = {tls_certs.server.key}\n"
            f"client_tls_cert_file = {tls_certs.server.cert}\n"
            f"client_tls_ca_file = {tls_certs.ca}\nclient_tls_protocols = tlsv1.3\n")
    ctx = client_tls_context(config_from_string(text).settings)
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3


def test_client_require_does_not_ask_for_a_certificate(tls_certs):
    text = ("[pgbouncer]\nclient_tls_sslmode = require\n"
            f"client_tls_key_file = {tls_certs.server.key}\n"
            f"client_tls_cert_file = {tls_certs.server.cert}\n"
            f"client_tls_ca_file = {tls_certs.ca}\n")
    ctx = client_tls_context(config_from_string(text).settings)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(("mode", "verify", "hostname", "required"), [
    ("allow", ssl.CERT_NONE, False, False),
    ("prefer", ssl.CERT_NONE, False, False),
    ("require", ssl.CERT_NONE, False, True),
    ("verify-ca", ssl.CERT_REQUIRED, False, True),
    ("verify-full", ssl.CERT_REQUIRED, True, True),
])
def test_server_modes(tls_certs, mode, verify, hostname, required):
    text = f"[pgbouncer]\nserver_tls_sslmode = {mode}\nserver_tls_ca_file = {tls_certs.ca}\n"
    tls = server_tls(config_from_string(text).settings)
    assert tls is not None
    assert tls.context.verify_mode == verify
    assert tls.context.check_hostname is hostname
    assert tls.required is required


def test_server_client_certificate_needs_both_files(tls_certs):
    text = ("[pgbouncer]\nserver_tls_sslmode = require\n"
            f"server_tls_cert_file = {tls_certs.client_postgres.cert}\n")
    with pytest.raises(ConfigError, match="server_tls_key_file"):
        config_from_string(text)


def test_bad_ciphers_are_named():
    with pytest.raises(ConfigError, match="server_tls_ciphers: no cipher matches"):
        config_from_string("[pgbouncer]\nserver_tls_sslmode = require\n"
                           "server_tls_ciphers = NOT-A-CIPHER\n")


def test_relative_files_are_taken_from_the_config_directory(tls_certs, tmp_path: Path):
    for name in ("server.crt", "server.key"):
        (tmp_path / name).write_bytes(Path(tls_certs.directory, name).read_bytes())
    path = tmp_path / "ecluse.ini"
    path.write_text("[pgbouncer]\nclient_tls_sslmode = prefer\n"
                    "client_tls_key_file = server.key\nclient_tls_cert_file = server.crt\n")
    s = load_config(str(path)).settings
    assert s.client_tls_key_file == str(tmp_path / "server.key")
    ctx = client_tls_context(s)
    assert ctx is not None


def test_alpn_name():
    assert ALPN_POSTGRESQL == "postgresql"


# --- client_tls_ecdhcurve and client_tls_dheparams -------------------------------

@pytest.fixture(scope="module")
def rsa_pair(tmp_path_factory) -> tuple[str, str]:
    """An RSA certificate: DHE suites (TLS 1.2) authenticate with RSA only."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    directory = tmp_path_factory.mktemp("rsa")
    (directory / "rsa.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (directory / "rsa.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(directory / "rsa.crt"), str(directory / "rsa.key")


def rsa_config(rsa_pair, extra: str = "", path: str = "<string>"):
    cert, key = rsa_pair
    return config_from_string("[pgbouncer]\nclient_tls_sslmode = require\n"
                              f"client_tls_key_file = {key}\nclient_tls_cert_file = {cert}\n"
                              + extra, path)


def handshake(server: ssl.SSLContext, *, version: ssl.TLSVersion, ciphers: str | None = None,
              group: str | None = None, seclevel: int | None = None) -> str | None:
    """Run a TLS handshake in memory with a client that offers only what is given;
    return the cipher agreed, or None when it failed."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.minimum_version = client.maximum_version = version
    if ciphers is not None or seclevel is not None:
        client.set_ciphers((ciphers or "DEFAULT") + (f":@SECLEVEL={seclevel}"
                                                     if seclevel is not None else ""))
    if group is not None:
        client.set_ecdh_curve(group)
    bios = [ssl.MemoryBIO() for _ in range(4)]
    s_end = server.wrap_bio(bios[0], bios[1], server_side=True)
    c_end = client.wrap_bio(bios[2], bios[3])
    for _ in range(6):
        for end in (c_end, s_end):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return None
        bios[0].write(bios[3].read())
        bios[2].write(bios[1].read())
    try:
        c_end.do_handshake()
    except ssl.SSLError:
        return None
    return c_end.cipher()[0]


CURVES = ("prime256v1", "secp384r1", "X25519")


def _selectable(group: str) -> bool:
    """Whether this Python's ssl can select ``group`` (config/tls.py rule 4)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ecdh_curve(group)
    except (ValueError, ssl.SSLError):
        return False
    return True


# The groups a test client can offer alone: on a Python whose ssl selects named
# elliptic curves only, X25519 and ffdhe2048 cannot be offered (nor configured).
OFFERED = tuple(g for g in CURVES if _selectable(g))


@pytest.mark.parametrize("ecdhcurve", ["auto", "AUTO", "none", *CURVES])
@pytest.mark.parametrize("dheparams", ["none", "auto", "legacy"])
def test_key_exchange_offered_to_clients(rsa_pair, ecdhcurve, dheparams):
    """Every value against clients that offer one key exchange each, checked
    against what the setting means (PgBouncer's, rule 4 of config/tls.py)."""
    assert _selectable("ffdhe2048") == SETS_ANY_GROUP
    settings = f"client_tls_ecdhcurve = {ecdhcurve}\nclient_tls_dheparams = {dheparams}\n"
    curve = ecdhcurve.lower()
    if curve not in ("auto", "none") and not _selectable(ecdhcurve):
        with pytest.raises(ConfigError, match="selects named elliptic curves only"):
            rsa_config(rsa_pair, settings)
        return
    if curve == "none" and not SETS_ANY_GROUP:
        curve = "auto"  # cannot be honoured here: OpenSSL's groups stay (and a warning says so)
    config = rsa_config(rsa_pair, settings)
    ctx = client_tls_context(config.settings)
    v12, v13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    # TLS 1.2 with ECDHE only, over each curve: auto takes any, a name only itself.
    for group in OFFERED:
        agreed = handshake(ctx, version=v12, ciphers="ECDHE-RSA-AES128-GCM-SHA256", group=group)
        assert (agreed is not None) == (curve == "auto" or curve == group.lower()), group
    # TLS 1.3 with one group each: the same (OpenSSL's own list, auto, has the
    # finite-field groups too), and none leaves only ffdhe2048.
    for group in (*OFFERED, *(("ffdhe2048",) if SETS_ANY_GROUP else ())):
        agreed = handshake(ctx, version=v13, group=group)
        expected = curve in ("auto", group.lower()) or (curve == "none" and group == "ffdhe2048")
        assert (agreed is not None) == expected, group
    # TLS 1.2 with DHE only: off without a group; 1024 bits only for legacy, and
    # only where the security level allows them (not here: 2048 bits, which a
    # client at the default level takes).
    dhe = "DHE-RSA-AES128-GCM-SHA256"
    assert (handshake(ctx, version=v12, ciphers=dhe) is not None) == (dheparams != "none")


def test_legacy_dh_is_1024_bits_where_the_security_level_allows(rsa_pair):
    config = rsa_config(rsa_pair, "client_tls_dheparams = legacy\n"
                                  "client_tls_ciphers = DEFAULT:@SECLEVEL=0\n")
    assert config.warnings == ()
    ctx = client_tls_context(config.settings)
    v12, dhe = ssl.TLSVersion.TLSv1_2, "DHE-RSA-AES128-GCM-SHA256"
    # A client at the default level refuses a 1024-bit group; one at level 0 takes it.
    assert handshake(ctx, version=v12, ciphers=dhe) is None
    assert handshake(ctx, version=v12, ciphers=dhe, seclevel=0) == dhe
    auto = client_tls_context(rsa_config(rsa_pair, "client_tls_ciphers = DEFAULT:@SECLEVEL=0\n")
                              .settings)
    assert handshake(auto, version=v12, ciphers=dhe) == dhe


def test_values_honoured_otherwise_are_warnings_at_their_line(rsa_pair):
    config = rsa_config(rsa_pair, "client_tls_dheparams = Legacy\nclient_tls_ecdhcurve = None\n",
                        "t.ini")
    assert config.settings.client_tls_dheparams == "legacy"
    assert [w.split(" = ")[0] for w in config.warnings] == [
        "t.ini:5: client_tls_dheparams", "t.ini:6: client_tls_ecdhcurve"]
    assert "refuses 1024-bit DH here, the 2048-bit group is used" in config.warnings[0]
    assert ("TLS 1.3 uses ffdhe2048" if SETS_ANY_GROUP else
            "OpenSSL's groups are kept, as with auto") in config.warnings[1]
    # Not when client TLS is off: nothing is built from them then.
    quiet = config_from_string("[pgbouncer]\nclient_tls_dheparams = legacy\n"
                               "client_tls_ecdhcurve = none\n")
    assert quiet.warnings == ()


def test_bad_curve_and_dheparams_stop_the_load_at_their_line(rsa_pair):
    with pytest.raises(ConfigError, match=r"^t.ini:5: client_tls_ecdhcurve: cannot select "
                                          r"curve 'P-999' here"):
        rsa_config(rsa_pair, "client_tls_ecdhcurve = P-999\n", "t.ini")
    with pytest.raises(ConfigError, match=r"^t.ini:5: client_tls_dheparams: expected one of "
                                          r"none, auto, legacy, got '2048'"):
        rsa_config(rsa_pair, "client_tls_dheparams = 2048\n", "t.ini")


def _rfc_modp_prime(bits: int, k: int) -> int:
    """The RFC 2409/3526 MODP primes: 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) pi) + k)."""
    guard = 64
    one = 1 << (bits - 130 + guard)

    def arctan_inverse(x: int) -> int:
        total, term, n, sign = 0, one // x, 1, 1
        while term:
            total += sign * (term // n)
            term //= x * x
            n, sign = n + 2, -sign
        return total

    pi = (16 * arctan_inverse(5) - 4 * arctan_inverse(239)) >> guard
    return 2 ** bits - 2 ** (bits - 64) - 1 + 2 ** 64 * (pi + k)


@pytest.mark.parametrize(("name", "bits", "k"), [("rfc2409-1024.pem", 1024, 129093),
                                                 ("rfc3526-2048.pem", 2048, 124476)])
def test_shipped_dh_groups_are_the_rfc_ones(name, bits, k):
    import ecluse.config

    text = (Path(ecluse.config.__file__).parent / "dhparams" / name).read_text()
    assert text.startswith("-----BEGIN DH PARAMETERS-----\n")
    der = base64.b64decode("".join(text.splitlines()[1:-1]))
    # PKCS #3 DHParameter: SEQUENCE { prime INTEGER, base INTEGER }, nothing else.
    integers, pos = [], 4 if der[1] == 0x82 else 3
    assert der[0] == 0x30
    while pos < len(der):
        assert der[pos] == 0x02
        length, pos = der[pos + 1], pos + 2
        if length & 0x80:
            size = length & 0x7F
            length, pos = int.from_bytes(der[pos:pos + size]), pos + size
        integers.append(int.from_bytes(der[pos:pos + length]))
        pos += length
    assert integers == [_rfc_modp_prime(bits, k), 2]
