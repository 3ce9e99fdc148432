"""Which authentication a client gets: its method, where its secret comes from, its cert.

The session (frontend/session.py) asks this module three things at startup:
the method for this connection (auth_type, or the first matching line of
auth_hba_file), whether the secret must be looked up with auth_query (and
where), and, for ``cert`` and ``peer``, whether the identity the client proved
outside the protocol (its certificate's common name, its operating-system user
on the unix socket) may log in as the user it asks for: the same name, or one
the HBA line's map= allows (auth_ident_file, auth/ident.py).
After a successful exchange it hands over what a server login may reuse
(the looked-up secret, the SCRAM keys recovered from the client's proof).

Rules:
1. Every refusal is an AuthFailed with PostgreSQL's wording; none carries
   a secret.
2. No sockets opened here; the auth_query connection is server/query.py's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import pwd
import socket
import struct

from ecluse.auth.auth_query import AuthQueryTarget
from ecluse.auth.hba import CERT, PEER, REJECT, ClientAddress, HbaRule, match_hba
from ecluse.auth.ident import map_allows
from ecluse.auth.methods import MD5, PLAIN, SCRAM, TRUST, AuthOutcome
from ecluse.auth.secrets import scram_secret_of
from ecluse.config import AuthType, Config, DatabaseConfig
from ecluse.config.model import host_list
from ecluse.config.tls import server_tls
from ecluse.errors import AuthFailed, ClientRefused
from ecluse.pool.pool import Pool
from ecluse.server.connection import Row
from ecluse.server.query import run_query_once

# Methods that need the user's stored secret; the others never look it up.
NEEDS_SECRET = frozenset({PLAIN, MD5, SCRAM})
# AuthType's values looked up in C: Enum's .value is a Python-level property, and
# every login asks.
_AUTH_TYPE_NAMES = {t: t.value for t in AuthType}
_HBA_METHODS = {"trust": TRUST, "md5": MD5, "scram-sha-256": SCRAM, "password": PLAIN,
                "cert": CERT, "peer": PEER, "reject": REJECT}
# Methods whose outcome check_identity decides, with no exchange of messages.
IDENTITY_METHODS = frozenset({CERT, PEER})
_UCRED = struct.Struct("3i")  # Linux's struct ucred: pid, uid, gid


def client_address(transport: asyncio.BaseTransport) -> ClientAddress:
    """Describe the client's connection for HBA matching: unix or TCP, TLS or not, its IP."""
    tls = transport.get_extra_info("ssl_object") is not None
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        try:
            ip = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        except ValueError:
            ip = None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a v4 client on a dual-stack socket is a v4 client
        return ClientAddress(local=False, tls=tls, ip=ip)
    return ClientAddress(local=True, tls=tls, ip=None)


def choose_method(config: Config, rules: tuple[HbaRule, ...] | None,
                  transport: asyncio.BaseTransport, database: str, user: str) -> str:
    """Return the method for this connection: auth_type, or the first matching HBA line.

    Raises AuthFailed (28000) when no HBA line matches or the line says reject,
    with PostgreSQL's messages.
    """
    auth_type = config.settings.auth_type
    if auth_type is not AuthType.HBA:
        return _AUTH_TYPE_NAMES[auth_type]  # the address is not looked at: parsing it costs a login
    address = client_address(transport)
    rule = match_hba(rules or (), address, database, user)
    where = _describe_address(address, user, database)
    if rule is None:
        raise AuthFailed(f"no pg_hba.conf entry for {where}", sqlstate="28000")
    method = _HBA_METHODS[rule.method]
    if method == REJECT:
        raise AuthFailed(f"pg_hba.conf rejects connection for {where}", sqlstate="28000")
    return method


def _describe_address(address: ClientAddress, user: str, database: str) -> str:
    host = "[local]" if address.local else str(address.ip)
    encryption = "SSL encryption" if address.tls else "no encryption"
    return f'host "{host}", user "{user}", database "{database}", {encryption}'


def check_identity(config: Config, method: str, transport: asyncio.BaseTransport,
                   database: str, user: str) -> AuthOutcome:
    """Accept a ``cert`` or ``peer`` client whose proven identity may log in as ``user``.

    cert: the TLS certificate's common name; peer: the operating-system user
    at the other end of the unix socket. Without a map= on the HBA line the
    identity must be ``user`` itself. Raises AuthFailed (28000) otherwise, in
    PostgreSQL's words; the client is not told which identity was seen.
    """
    if method == CERT:
        failed = f'certificate authentication failed for user "{user}"'
        identity = _certificate_name(transport)
        if identity is None:
            raise AuthFailed(failed, sqlstate="28000")
    else:
        failed = f'Peer authentication failed for user "{user}"'
        identity = peer_user(transport)
        if identity is None:
            raise AuthFailed(failed, sqlstate="28000")
    user_map = _user_map(config, transport, database, user)
    if user_map is None:
        if identity != user:
            raise AuthFailed(failed, sqlstate="28000", detail=_MISMATCH[method])
    elif config.ident is None or not map_allows(config.ident, user_map, identity, user):
        raise AuthFailed(failed, sqlstate="28000",
                         detail=f'no match in user name map "{user_map}"')
    return AuthOutcome(method)


_MISMATCH = {CERT: "the certificate's common name is not the user name",
             PEER: "the operating-system user is not the user name"}


def _certificate_name(transport: asyncio.BaseTransport) -> str | None:
    """The verified client certificate's one common name, or None."""
    ssl_object = transport.get_extra_info("ssl_object")
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return None
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn
             if key == "commonName"]
    return names[0] if len(names) == 1 else None


def peer_user(transport: asyncio.BaseTransport) -> str | None:
    """The name of the operating-system user at the other end of a unix socket
    (SO_PEERCRED, as PostgreSQL's getpeereid), or None when it cannot be known."""
    sock = transport.get_extra_info("socket")
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX or \
            not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        _pid, uid, _gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        return pwd.getpwuid(uid).pw_name
    except (OSError, KeyError, struct.error):  # no such user, or the socket is gone
        return None


def _user_map(config: Config, transport: asyncio.BaseTransport, database: str,
              user: str) -> str | None:
    """The map= of the HBA line that chose this client's method, if any."""
    if config.settings.auth_type is not AuthType.HBA:
        return None
    rule = match_hba(config.hba or (), client_address(transport), database, user)
    return rule.user_map if rule is not None else None


def auth_query_target(config: Config, db: DatabaseConfig) -> AuthQueryTarget | None:
    """Return where to run auth_query for clients of ``db``, or None if auth_user is unset.

    The database's auth_user, auth_query and auth_dbname override the global
    ones. auth_dbname names a [databases] entry, as in PgBouncer; without it
    the client's own entry is used. auth_user's password is the database's
    password= when the entry logs in as auth_user, else its auth_file secret.
    Raises ClientRefused if auth_dbname names no [databases] entry.
    """
    s = config.settings
    auth_user = db.auth_user or s.auth_user
    if not auth_user:
        return None
    auth_dbname = db.auth_dbname or s.auth_dbname
    target_db = db if auth_dbname is None else config.database(auth_dbname)
    if target_db is None:
        raise ClientRefused(f'auth_dbname "{auth_dbname}" is not in [databases]',
                            sqlstate="08006")
    password = target_db.password if target_db.user == auth_user else None
    if password is None:
        password = config.auth.get(auth_user)
    return AuthQueryTarget(
        # auth_query runs on its own connection to the first host of a host list.
        host=host_list(target_db.host)[0], port=target_db.port, dbname=target_db.server_dbname(),
        auth_user=auth_user, password=password, query=db.auth_query or s.auth_query,
        connect_timeout=s.server_connect_timeout, tls=server_tls(s))


async def run_auth_query(target: AuthQueryTarget, user: str) -> list[Row]:
    """Run auth_query for ``user`` on a connection of its own (the Runner of AuthQueryCache)."""
    # search_path is pinned in the startup packet rather than by a SET: startup
    # parameters override ALTER ROLE/DATABASE defaults, cost no round trip, and
    # the connection is ours alone, so a schema auth_user can write to (or an
    # unqualified name in a custom auth_query) cannot shadow pg_catalog.pg_shadow
    # or its "=" operator. pg_temp comes last so a temp table cannot either.
    params = {"user": target.auth_user, "database": target.dbname,
              "search_path": "pg_catalog, pg_temp", "application_name": "ecluse auth_query"}
    return await run_query_once(target.host, target.port, params, target.password,
                                target.query, [user], target.connect_timeout, tls=target.tls)


def share_login_secret(pool: Pool, user: str, outcome: AuthOutcome, secret: str | None,
                       looked_up: bool) -> None:
    """After a client authenticated, give its pool what server logins may reuse.

    Only for a pool that logs in as the client's own user with no plaintext
    password configured: then the auth_query secret (an md5 hash works for md5
    server logins as is) and, after SCRAM against a stored verifier, the
    ClientKey recovered from the proof with the verifier's ServerKey (SCRAM
    pass-through: no plaintext password anywhere).
    """
    if outcome.scram_client_key is None and not looked_up:
        return  # nothing to share: every trust, md5 or plaintext-secret login
    configured = pool.settings.password
    if pool.settings.user != user or (configured is not None
                                      and scram_secret_of(configured) is None):
        return
    keys = None
    if outcome.scram_client_key is not None and secret is not None:
        verifier = scram_secret_of(secret)
        if verifier is not None:
            keys = (outcome.scram_client_key, verifier.server_key)
    pool.set_login_secret(secret if looked_up and configured is None else None, keys)
