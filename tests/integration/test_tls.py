"""TLS on both sides: real clients (psql, psycopg 3, asyncpg) to ecluse, ecluse to PostgreSQL.

The certificates come from fixtures/fix_tls.py. The server side runs against a
second, small PostgreSQL cluster started here with ssl=on (the session's
cluster has no TLS), listening on 127.0.0.1 and 127.0.0.2 so that one
address is not in its certificate. Raw sockets check the protocol faults:
data pipelined behind SSLRequest, cleartext after 'S', direct TLS with and
without ALPN, and a fake server that sends bytes after its 'S'
(CVE-2021-23222).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import ssl
import struct
import subprocess
import threading

import asyncpg
import psycopg
import pytest
from wire import read_until_closed, startup_packet

from ecluse.devcluster import PgCluster, find_free_port

SSL_REQUEST = struct.pack("!II", 8, 80877103)
READY_IDLE = b"Z\x00\x00\x00\x05I"


def private_copy(path: str, directory) -> str:
    """Copy a key to a 0600 file of ours: libpq refuses keys others can read."""
    dst = os.path.join(directory, os.path.basename(path))
    shutil.copy(path, dst)
    os.chmod(dst, 0o600)
    return dst


@pytest.fixture
def tls_ecluse(ecluse_factory, tls_certs):
    """Start ecluse with client TLS on; settings override the defaults."""
    def start(mode: str = "prefer", pair=None, **settings):
        pair = pair or tls_certs.server
        base = {"client_tls_sslmode": mode, "client_tls_key_file": pair.key,
                "client_tls_cert_file": pair.cert, "client_tls_ca_file": tls_certs.ca}
        base.update(settings)
        return ecluse_factory(settings=base)
    return start


def dsn(ecluse, host: str = "127.0.0.1", **extra: str) -> str:
    parts = [f"host={host}", f"port={ecluse.port}", "user=postgres", "dbname=ecluse_test",
             "connect_timeout=10"]
    parts += [f"{k}={v}" for k, v in extra.items()]
    return " ".join(parts)


def run_psql(conninfo: str, sql: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(["psql", "-X", "-At", "-d", conninfo, "-c", sql],
                          capture_output=True, text=True, timeout=30, env=env)


# --- clients to ecluse ----------------------------------------------------------


@pytest.mark.parametrize("sslmode", ["disable", "prefer", "require", "verify-ca", "verify-full"])
def test_psql_sslmodes(tls_ecluse, tls_certs, sslmode):
    ecluse = tls_ecluse("prefer")
    result = run_psql(dsn(ecluse, "localhost", sslmode=sslmode, sslrootcert=tls_certs.ca),
                      "\\conninfo")
    assert result.returncode == 0, result.stderr
    assert ("SSL connection" in result.stdout) == (sslmode != "disable")


def test_psql_verify_full_refuses_wrong_host_name(tls_ecluse, tls_certs):
    ecluse = tls_ecluse("prefer", pair=tls_certs.wrong_host)
    ok = run_psql(dsn(ecluse, sslmode="verify-ca", sslrootcert=tls_certs.ca), "select 1")
    assert ok.returncode == 0, ok.stderr
    bad = run_psql(dsn(ecluse, sslmode="verify-full", sslrootcert=tls_certs.ca), "select 1")
    assert bad.returncode != 0
    assert "does not match host name" in bad.stderr or "match" in bad.stderr


@pytest.mark.parametrize("sslmode", ["disable", "prefer", "require", "verify-full"])
def test_psycopg_sslmodes(tls_ecluse, tls_certs, sslmode):
    ecluse = tls_ecluse("allow")
    with psycopg.connect(dsn(ecluse, "localhost", sslmode=sslmode,
                             sslrootcert=tls_certs.ca)) as conn:
        assert conn.pgconn.ssl_in_use == (sslmode != "disable")
        assert conn.execute("select 42").fetchone() == (42,)


def test_psycopg_verify_full_refuses_wrong_host_name(tls_ecluse, tls_certs):
    ecluse = tls_ecluse("require", pair=tls_certs.wrong_host)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn(ecluse, sslmode="verify-full", sslrootcert=tls_certs.ca))


def test_require_refuses_a_client_without_tls(tls_ecluse, tls_certs):
    ecluse = tls_ecluse("require")
    with pytest.raises(psycopg.OperationalError, match="SSL required") as info:
        psycopg.connect(dsn(ecluse, sslmode="disable"))
    assert "28000" in str(info.value) or info.value.sqlstate in (None, "28000")
    with psycopg.connect(dsn(ecluse, sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use


def test_verify_ca_requires_a_client_certificate(tls_ecluse, tls_certs, tmp_path):
    ecluse = tls_ecluse("verify-ca")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn(ecluse, sslmode="require"))
    key = private_copy(tls_certs.client_postgres.key, tmp_path)
    with psycopg.connect(dsn(ecluse, sslmode="verify-full", sslrootcert=tls_certs.ca,
                             sslcert=tls_certs.client_postgres.cert, sslkey=key)) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)


def test_psycopg_direct_tls(tls_ecluse, tls_certs):
    ecluse = tls_ecluse("require")
    with psycopg.connect(dsn(ecluse, "localhost", sslmode="verify-full",
                             sslrootcert=tls_certs.ca, sslnegotiation="direct")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 7").fetchone() == (7,)


@pytest.mark.parametrize(("sslmode", "direct"), [
    ("disable", False), ("prefer", False), ("require", False), ("verify-ca", False),
    ("verify-full", False), ("verify-full", True),
])
def test_asyncpg_tls(tls_ecluse, tls_certs, sslmode, direct):
    ecluse = tls_ecluse("prefer")

    async def main():
        # From sslmode, asyncpg builds its own context, with ALPN "postgresql".
        url = (f"postgresql://postgres@localhost:{ecluse.port}/ecluse_test"
               f"?sslmode={sslmode}&sslrootcert={tls_certs.ca}")
        conn = await asyncpg.connect(url, direct_tls=direct, statement_cache_size=0)
        try:
            encrypted = conn._transport.get_extra_info("ssl_object") is not None
            return encrypted, await conn.fetchval("select 5")
        finally:
            await conn.close()

    assert asyncio.run(main()) == (sslmode != "disable", 5)


def test_asyncpg_without_tls_is_refused_under_require(tls_ecluse):
    ecluse = tls_ecluse("require")

    async def main():
        await asyncpg.connect(host="127.0.0.1", port=ecluse.port, user="postgres",
                              database="ecluse_test", ssl=False)

    with pytest.raises(asyncpg.PostgresError, match="SSL required"):
        asyncio.run(main())


def test_client_tls_ecdhcurve_is_the_only_group_and_reload_changes_it(tls_ecluse, tls_certs):
    """PgBouncer's client_tls_ecdhcurve with a curve name: the one key exchange
    group offered (asyncpg with a context offering one group each); psql with
    libpq's defaults still connects; RELOAD applies a new value to new
    connections, and SET refuses a curve OpenSSL does not have."""
    ecluse = tls_ecluse("require", client_tls_ecdhcurve="secp384r1", admin_users="postgres")

    def select_with_group(group: str):
        async def main():
            ctx = ssl.create_default_context(cafile=tls_certs.ca)
            ctx.set_ecdh_curve(group)
            conn = await asyncpg.connect(host="localhost", port=ecluse.port, user="postgres",
                                         database="ecluse_test", ssl=ctx,
                                         statement_cache_size=0)
            try:
                return await conn.fetchval("select 5")
            finally:
                await conn.close()
        try:
            return asyncio.run(main())
        except (ssl.SSLError, ConnectionError, OSError):
            return None

    assert select_with_group("secp384r1") == 5
    assert select_with_group("prime256v1") is None
    result = run_psql(dsn(ecluse, sslmode="require"), "select 6")
    assert result.stdout.strip() == "6", result.stderr
    text = ecluse.config_path.read_text()
    ecluse.config_path.write_text(text.replace("client_tls_ecdhcurve = secp384r1",
                                               "client_tls_ecdhcurve = prime256v1"))
    with psycopg.connect(dsn(ecluse, dbname="pgbouncer", sslmode="require"),
                         autocommit=True) as console:
        console.execute("RELOAD", prepare=False)
        assert select_with_group("prime256v1") == 5
        assert select_with_group("secp384r1") is None
        with pytest.raises(psycopg.Error,
                           match=r"client_tls_ecdhcurve.*cannot select curve 'bogus'"):
            console.execute("SET client_tls_ecdhcurve = bogus", prepare=False)
        assert select_with_group("prime256v1") == 5


# --- raw sockets: the protocol faults --------------------------------------------


def test_data_pipelined_after_ssl_request_is_refused(tls_ecluse):
    """CVE-2021-23214 / PgBouncer CVE-2021-3935: nothing behind SSLRequest is read."""
    ecluse = tls_ecluse("prefer")
    with socket.create_connection((ecluse.host, ecluse.port)) as s:
        s.sendall(SSL_REQUEST + startup_packet())
        reply = read_until_closed(s)
    assert not reply.startswith(b"S")
    assert READY_IDLE not in reply and b"R\x00\x00\x00\x08" not in reply


def test_cleartext_after_ssl_answer_is_not_read(tls_ecluse):
    """A StartupMessage sent after 'S' instead of a handshake fails the handshake."""
    ecluse = tls_ecluse("prefer")
    with socket.create_connection((ecluse.host, ecluse.port)) as s:
        s.sendall(SSL_REQUEST)
        s.settimeout(5)
        assert s.recv(1) == b"S"
        s.sendall(startup_packet())
        reply = read_until_closed(s)
    assert READY_IDLE not in reply and b"R\x00\x00\x00\x08" not in reply


def test_gssenc_request_is_answered_no_with_tls(tls_ecluse):
    ecluse = tls_ecluse("prefer")
    with socket.create_connection((ecluse.host, ecluse.port)) as s:
        s.sendall(struct.pack("!II", 8, 80877104))
        s.settimeout(5)
        assert s.recv(1) == b"N"
        s.sendall(startup_packet())
        assert READY_IDLE in read_until_closed(s, until=READY_IDLE)


def test_ssl_request_is_answered_no_without_tls(ecluse):
    with socket.create_connection((ecluse.host, ecluse.port)) as s:
        s.sendall(SSL_REQUEST)
        s.settimeout(5)
        assert s.recv(1) == b"N"


@pytest.mark.parametrize("alpn", [["postgresql"], None, ["http/1.1"]])
def test_direct_tls_needs_alpn_postgresql(tls_ecluse, tls_certs, alpn):
    ecluse = tls_ecluse("require")
    ctx = ssl.create_default_context(cafile=tls_certs.ca)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection((ecluse.host, ecluse.port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(startup_packet())
        reply = read_until_closed(s, until=READY_IDLE)
    if alpn == ["postgresql"]:
        assert READY_IDLE in reply
    else:
        assert reply == b""


# --- ecluse to servers ------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_pg(tls_certs, tmp_path_factory):
    """A PostgreSQL cluster with ssl=on, on 127.0.0.1 and 127.0.0.2 (not in its certificate)."""
    # The host list is passed to postgres -h, i.e. listen_addresses.
    cluster = PgCluster(str(tmp_path_factory.mktemp("tlspg") / "data"), port=find_free_port(),
                        host="127.0.0.1,127.0.0.2")
    cluster.init(settings={"ssl": "on",
                           "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"})
    for name, src in (("server.crt", tls_certs.server.cert),
                      ("server.key", tls_certs.server.key)):
        dst = os.path.join(cluster.datadir, name)
        shutil.copy(src, dst)
        os.chmod(dst, 0o600)  # PostgreSQL refuses a key others can read
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(dst, entry.pw_uid, entry.pw_gid)
    cluster.start()
    try:
        cluster.psql("CREATE DATABASE ecluse_test;")
        yield cluster
    finally:
        cluster.stop()


def server_tls_ecluse(ecluse_factory, host: str, port: int, **settings):
    return ecluse_factory(settings=settings, databases={
        "ecluse_test": f"host={host} port={port} dbname=ecluse_test"})


SSL_IN_USE = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"


@pytest.mark.parametrize("mode", ["prefer", "require", "verify-ca", "verify-full"])
def test_server_tls_modes(ecluse_factory, tls_pg, tls_certs, mode):
    ecluse = server_tls_ecluse(ecluse_factory, "127.0.0.1", tls_pg.port,
                               server_tls_sslmode=mode, server_tls_ca_file=tls_certs.ca)
    with psycopg.connect(ecluse.dsn()) as conn:
        assert conn.execute(SSL_IN_USE).fetchone() == (True,)


def test_server_tls_disable_is_cleartext(ecluse_factory, tls_pg):
    ecluse = server_tls_ecluse(ecluse_factory, "127.0.0.1", tls_pg.port)
    with psycopg.connect(ecluse.dsn()) as conn:
        assert conn.execute(SSL_IN_USE).fetchone() == (False,)


def test_server_verify_full_checks_the_host_name(ecluse_factory, tls_pg, tls_certs):
    ca = server_tls_ecluse(ecluse_factory, "127.0.0.2", tls_pg.port,
                           server_tls_sslmode="verify-ca", server_tls_ca_file=tls_certs.ca)
    with psycopg.connect(ca.dsn()) as conn:
        assert conn.execute(SSL_IN_USE).fetchone() == (True,)
    full = server_tls_ecluse(ecluse_factory, "127.0.0.2", tls_pg.port,
                             server_tls_sslmode="verify-full", server_tls_ca_file=tls_certs.ca)
    with pytest.raises(psycopg.OperationalError, match="TLS handshake with server failed"):
        psycopg.connect(full.dsn())


def test_server_verify_ca_refuses_an_unknown_ca(ecluse_factory, tls_pg, tls_certs):
    ecluse = server_tls_ecluse(ecluse_factory, "127.0.0.1", tls_pg.port,
                               server_tls_sslmode="verify-ca",
                               server_tls_ca_file=tls_certs.other_ca)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(ecluse.dsn())


def test_server_require_against_a_server_without_tls(ecluse_factory, pg):
    ecluse = server_tls_ecluse(ecluse_factory, pg.host, pg.port, server_tls_sslmode="require")
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        psycopg.connect(ecluse.dsn())


def test_server_prefer_against_a_server_without_tls(ecluse_factory, pg):
    ecluse = server_tls_ecluse(ecluse_factory, pg.host, pg.port, server_tls_sslmode="prefer")
    with psycopg.connect(ecluse.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


class FakeSslServer:
    """Answers SSLRequest with 'S' and junk in one write (a protocol-fault stand-in)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed_by_peer = threading.Event()
        self.asked = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(20)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(20)
            if conn.recv(8) == SSL_REQUEST:
                self.asked.set()
            # What a man in the middle would inject: an AuthenticationOk, cleartext.
            conn.sendall(b"S" + b"R\x00\x00\x00\x08\x00\x00\x00\x00" + READY_IDLE)
            try:
                while conn.recv(4096):
                    pass
            except OSError:
                pass
            self.closed_by_peer.set()

    def close(self) -> None:
        self.sock.close()


def test_server_bytes_after_ssl_answer_close_the_connection(ecluse_factory):
    """CVE-2021-23222: what a server sends after 'S' before the handshake is never read."""
    fake = FakeSslServer()
    try:
        ecluse = server_tls_ecluse(ecluse_factory, "127.0.0.1", fake.port,
                                   server_tls_sslmode="require")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(ecluse.dsn())
        assert fake.asked.is_set()
        assert fake.closed_by_peer.wait(10)
    finally:
        fake.close()
