"""TLS settings: parsing, validation at load, and the contexts config/tls.py builds."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from ecluse.config.loader import config_from_string, load_config
from ecluse.config.model import SslMode
from ecluse.config.tls import ALPN_POSTGRESQL, client_tls_context, server_tls
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
