"""TLS contexts built from the client_tls_* and server_tls_* settings (stdlib ``ssl``).

The client side context is what ecluse presents to its clients (server_side);
the server side one is what it uses as a TLS client of PostgreSQL.

Rules:
1. Contexts are cached by the settings' values and by the identity of the
   files they name (inode, mtime, size), so every session of a worker shares
   one, and a certificate renewed on disk is used from the next connection
   on, without a restart.
2. A setting that cannot be honoured raises TlsSettingError naming it; the
   loader (strict=True) turns it into a ConfigError at that setting's line,
   so a bad key or certificate stops ecluse at start or is refused at
   reload. At run time a file broken on disk never fails a connection that
   the last good context can serve: that context stays in use, and the
   failure is logged.
3. Meanings are PgBouncer's: on the client side verify-ca and verify-full
   both require a client certificate signed by client_tls_ca_file, and
   disable/allow/prefer/require never look at one; on the server side only
   verify-ca/verify-full check the server's certificate, and only
   verify-full its host name.
4. Key exchange towards clients, as far as ``ssl`` can set it:
   client_tls_ecdhcurve auto keeps OpenSSL's groups, a curve name is the only
   group (TLS 1.2 and 1.3), none leaves no elliptic curve (TLS 1.3 then uses
   ffdhe2048, TLS 1.2 only DHE suites); client_tls_dheparams loads a DH group
   for TLS 1.2's DHE suites (``ssl`` has no automatic DH, so without one they
   are off): auto the 2048-bit one (RFC 3526; what OpenSSL's automatic choice
   gives a 2048-bit RSA key, a stronger key would get a larger one), legacy
   the 1024-bit one (RFC 2409), or the 2048-bit one when OpenSSL's security
   level refuses 1024 bits, as OpenSSL's own choice would; none none.
   client_tls_warnings says what is not exactly what was asked. CPython's
   set_ecdh_curve takes only the named elliptic curves in some 3.11 releases
   (Debian 12's 3.11.2; not X25519, nor ffdhe2048): there a name it refuses is
   a load error, and none keeps OpenSSL's groups, with a warning.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import os
import ssl
import warnings
from dataclasses import dataclass

from ecluse.config.model import Settings, SslMode

log = logging.getLogger("ecluse.tls")

# ALPN name of the PostgreSQL protocol (PostgreSQL 17; required for direct TLS).
ALPN_POSTGRESQL = "postgresql"

_VERSIONS = {
    "tlsv1.0": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
# libtls cipher keywords PgBouncer accepts; the first group keeps OpenSSL's
# defaults, which are already the secure choice.
_DEFAULT_CIPHERS = frozenset({"default", "secure", "normal", "fast"})
_ALL_CIPHERS = frozenset({"all", "legacy", "compat", "insecure"})
_VERIFYING = frozenset({SslMode.VERIFY_CA, SslMode.VERIFY_FULL})
# client_tls_dheparams: the DH groups (PEM files in dhparams/, beside this module).
_DH_2048 = "rfc3526-2048.pem"
_DH_1024 = "rfc2409-1024.pem"
# client_tls_ecdhcurve = none: the one group left, a finite-field one (TLS 1.3
# needs some key exchange; OpenSSL 3 offers it to TLS 1.3 only).
_NO_EC_GROUP = "ffdhe2048"


def _sets_any_group() -> bool:
    """True when this Python's ssl can select any TLS group, not only a named
    elliptic curve (set_ecdh_curve on SSL_CTX_set1_groups rather than EC_KEY)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ecdh_curve(_NO_EC_GROUP)
    except (ValueError, ssl.SSLError):
        return False
    return True


SETS_ANY_GROUP = _sets_any_group()


class TlsSettingError(ValueError):
    """A TLS setting cannot be honoured; ``setting`` names the key to blame."""

    def __init__(self, setting: str, message: str):
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


@dataclass(frozen=True, slots=True)
class ServerTls:
    """How to open TLS towards a PostgreSQL server."""

    mode: SslMode
    context: ssl.SSLContext

    @property
    def required(self) -> bool:
        """True when a server answering 'N' to SSLRequest must be refused."""
        return self.mode in (SslMode.REQUIRE, SslMode.VERIFY_CA, SslMode.VERIFY_FULL)

    def server_hostname(self, host: str) -> str | None:
        """Return the name to check the certificate against (verify-full only)."""
        return host if self.mode is SslMode.VERIFY_FULL else None


def client_tls_context(settings: Settings, strict: bool = False) -> ssl.SSLContext | None:
    """Return the context for TLS with clients, or None when client_tls_sslmode is disable.

    Raises TlsSettingError when a file does not load or a value is refused,
    unless ``strict`` is False and a context was built before from these
    settings (rule 2).
    """
    if settings.client_tls_sslmode is SslMode.DISABLE:
        return None
    args = (settings.client_tls_sslmode, settings.client_tls_key_file,
            settings.client_tls_cert_file, settings.client_tls_ca_file,
            settings.client_tls_protocols, settings.client_tls_ciphers,
            settings.client_tls_ecdhcurve, settings.client_tls_dheparams)
    return _build(_client_context, args, args[1:4], strict)


def client_tls_warnings(settings: Settings) -> list[tuple[str, str]]:
    """Return (setting, message) for each client TLS setting honoured otherwise than
    asked (rule 4), for the loader to warn of at its line."""
    if settings.client_tls_sslmode is SslMode.DISABLE:
        return []
    out = []
    if settings.client_tls_dheparams == "legacy" and \
            not _allows_1024_bit_dh(settings.client_tls_ciphers):
        out.append(("client_tls_dheparams", "legacy: OpenSSL's security level refuses 1024-bit "
                    "DH here, the 2048-bit group is used (as OpenSSL's automatic choice "
                    "would); a lower level in client_tls_ciphers (@SECLEVEL=1) allows it"))
    if settings.client_tls_ecdhcurve.lower() == "none":
        if SETS_ANY_GROUP:
            out.append(("client_tls_ecdhcurve", "none: no elliptic-curve key exchange, so "
                        f"TLS 1.3 uses {_NO_EC_GROUP} and TLS 1.2 needs DHE "
                        "(client_tls_dheparams) with an RSA certificate; clients that "
                        "support neither cannot connect"))
        else:
            out.append(("client_tls_ecdhcurve", "none: this Python's ssl selects named "
                        "elliptic curves only, so it cannot leave them out: OpenSSL's groups "
                        "are kept, as with auto"))
    return out


def server_tls(settings: Settings, strict: bool = False) -> ServerTls | None:
    """Return how to do TLS with servers, or None when server_tls_sslmode is disable.

    Raises TlsSettingError as client_tls_context does.
    """
    if settings.server_tls_sslmode is SslMode.DISABLE:
        return None
    args = (settings.server_tls_sslmode, settings.server_tls_key_file,
            settings.server_tls_cert_file, settings.server_tls_ca_file,
            settings.server_tls_protocols, settings.server_tls_ciphers)
    return _build(_server_tls, args, args[1:4], strict)


_last_good: dict[tuple, object] = {}


def _build(builder, args: tuple, files: tuple[str | None, ...], strict: bool):
    try:
        built = builder(*args, _file_stamp(files))
    except TlsSettingError as exc:
        previous = _last_good.get(args)
        if strict or previous is None:
            raise
        log.error("TLS files changed on disk and no longer load (%s); "
                  "the previous certificates stay in use", exc)
        return previous
    _last_good[args] = built
    return built


def _file_stamp(paths: tuple[str | None, ...]) -> tuple:
    """Identify the files' current versions, so a renewed certificate is re-read."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path) if path is not None else None
        except OSError:
            st = None
        out.append(None if st is None else (st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _client_context(mode: SslMode, key_file: str | None, cert_file: str | None,
                    ca_file: str | None, protocols: tuple[str, ...],
                    ciphers: str, ecdhcurve: str, dheparams: str,
                    _stamp: tuple = ()) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _set_protocols(ctx, protocols, "client_tls_protocols")
    _set_ciphers(ctx, ciphers, "client_tls_ciphers")
    _set_ecdh_curve(ctx, ecdhcurve)
    _set_dh_params(ctx, dheparams)
    if key_file is None:
        raise TlsSettingError("client_tls_key_file",
                              f"must be set when client_tls_sslmode is {mode.value}")
    if cert_file is None:
        raise TlsSettingError("client_tls_cert_file",
                              f"must be set when client_tls_sslmode is {mode.value}")
    _load_chain(ctx, cert_file, key_file, "client_tls")
    if mode in _VERIFYING:
        if ca_file is None:
            raise TlsSettingError("client_tls_ca_file",
                                  f"must be set when client_tls_sslmode is {mode.value}")
        _load_ca(ctx, ca_file, "client_tls_ca_file")
        ctx.verify_mode = ssl.CERT_REQUIRED
    # Offered on every handshake; a direct TLS connection must select it.
    ctx.set_alpn_protocols([ALPN_POSTGRESQL])
    return ctx


@functools.lru_cache(maxsize=8)
def _server_tls(mode: SslMode, key_file: str | None, cert_file: str | None,
                ca_file: str | None, protocols: tuple[str, ...], ciphers: str,
                _stamp: tuple = ()) -> ServerTls:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _set_protocols(ctx, protocols, "server_tls_protocols")
    _set_ciphers(ctx, ciphers, "server_tls_ciphers")
    if mode in _VERIFYING:
        ctx.check_hostname = mode is SslMode.VERIFY_FULL
        ctx.verify_mode = ssl.CERT_REQUIRED
        if ca_file is not None:
            _load_ca(ctx, ca_file, "server_tls_ca_file")
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        # PgBouncer's require/prefer/allow: encryption without authentication.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if (key_file is None) != (cert_file is None):
        missing = "server_tls_key_file" if key_file is None else "server_tls_cert_file"
        raise TlsSettingError(missing, "a client certificate needs both the key and the "
                              "certificate file")
    if key_file is not None and cert_file is not None:
        _load_chain(ctx, cert_file, key_file, "server_tls")
    ctx.set_alpn_protocols([ALPN_POSTGRESQL])
    return ServerTls(mode, ctx)


def _set_protocols(ctx: ssl.SSLContext, protocols: tuple[str, ...], setting: str) -> None:
    """Allow the versions from the oldest to the newest named (a gap cannot be expressed)."""
    versions = [_VERSIONS[name] for name in protocols]
    with warnings.catch_warnings():
        # TLS 1.0/1.1 are deprecated in ssl; "legacy" asks for them on purpose.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            ctx.minimum_version = min(versions)
            ctx.maximum_version = max(versions)
        except (ValueError, ssl.SSLError) as exc:
            raise TlsSettingError(setting, f"not supported here: {exc}") from None


def _set_ciphers(ctx: ssl.SSLContext, ciphers: str, setting: str) -> None:
    keyword = ciphers.strip().lower()
    if keyword in _DEFAULT_CIPHERS:
        return
    try:
        ctx.set_ciphers("ALL:!aNULL:!eNULL" if keyword in _ALL_CIPHERS else ciphers)
    except ssl.SSLError:
        raise TlsSettingError(setting, f"no cipher matches {ciphers!r}") from None


def _set_ecdh_curve(ctx: ssl.SSLContext, curve: str) -> None:
    """client_tls_ecdhcurve (rule 4); PgBouncer takes auto and none in any case."""
    if curve.lower() == "auto" or (curve.lower() == "none" and not SETS_ANY_GROUP):
        return  # none where it cannot be honoured: client_tls_warnings says so
    name = _NO_EC_GROUP if curve.lower() == "none" else curve
    try:
        ctx.set_ecdh_curve(name)
    except (ValueError, ssl.SSLError) as exc:
        hint = "" if SETS_ANY_GROUP else \
            "; this Python's ssl selects named elliptic curves only (prime256v1, secp384r1...)"
        raise TlsSettingError("client_tls_ecdhcurve",
                              f"cannot select curve {name!r} here ({exc}){hint}") from None


def _set_dh_params(ctx: ssl.SSLContext, dheparams: str) -> None:
    """client_tls_dheparams (rule 4); after the ciphers, which may set the security
    level that decides whether 1024 bits are allowed."""
    if dheparams == "none":
        return
    if dheparams == "legacy":
        try:
            _load_dh(ctx, _DH_1024)
            return
        except ssl.SSLError:
            pass  # below the security level: client_tls_warnings says so
    _load_dh(ctx, _DH_2048)


def _load_dh(ctx: ssl.SSLContext, name: str) -> None:
    with importlib.resources.as_file(
            importlib.resources.files(__package__) / "dhparams" / name) as path:
        ctx.load_dh_params(str(path))


def _allows_1024_bit_dh(ciphers: str) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _set_ciphers(ctx, ciphers, "client_tls_ciphers")
    try:
        _load_dh(ctx, _DH_1024)
    except ssl.SSLError:
        return False
    return True


def _load_chain(ctx: ssl.SSLContext, cert_file: str, key_file: str, prefix: str) -> None:
    for setting, path in ((f"{prefix}_cert_file", cert_file), (f"{prefix}_key_file", key_file)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TlsSettingError(setting, f"cannot read {path!r}: {exc.strerror}") from None
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except OSError as exc:  # ssl.SSLError is an OSError too
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise TlsSettingError(f"{prefix}_cert_file",
                              f"cannot load certificate {cert_file!r} with key {key_file!r}: "
                              f"{reason}") from None


def _load_ca(ctx: ssl.SSLContext, ca_file: str, setting: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise TlsSettingError(setting, f"cannot load {ca_file!r}: {reason}") from None
