"""Server host names: looked up through ecluse's DNS cache (server/dns.py), shown by
SHOW DNS_HOSTS and SHOW LISTS, a name that does not resolve failing only its pool."""

from __future__ import annotations

import asyncio
import socket

import psycopg
import pytest

from ecluse.server.connection import open_socket


def test_server_named_by_host_name(ecluse_factory, pg):
    assert pg.host == "127.0.0.1"  # "localhost" must reach it
    ec = ecluse_factory({"admin_users": "admin", "dns_max_ttl": 300, "dns_nxdomain_ttl": 120,
                         "server_login_retry": 0.2},
                        databases={"named": f"host=localhost port={pg.port} dbname=ecluse_test",
                                   "nowhere": f"host=nowhere.invalid port={pg.port} "
                                              "dbname=ecluse_test"})
    with psycopg.connect(ec.dsn(dbname="named"), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(ec.dsn(dbname="nowhere"), autocommit=True, connect_timeout=20)
    with psycopg.connect(ec.dsn(user="admin", dbname="pgbouncer"), autocommit=True) as console:
        hosts = {row[0]: row[1:] for row in console.execute("SHOW DNS_HOSTS")}
        lists = dict(console.execute("SHOW LISTS").fetchall())
    ttl, addrs = hosts["localhost"]
    assert 250 < ttl <= 300  # dns_max_ttl, not the default 15
    assert "127.0.0.1" in addrs.split(",")
    assert hosts["nowhere.invalid"][1] == ""  # the failure is kept, with no address
    assert lists["dns_names"] == 2
    assert "could not resolve host 'nowhere.invalid'" in ec.log()
    # The other pool is unharmed.
    with psycopg.connect(ec.dsn(dbname="named"), autocommit=True) as conn:
        assert conn.execute("select 2").fetchone() == (2,)


def test_a_refused_address_falls_back_on_the_next():
    """open_socket with several addresses: the first refuses, the second accepts."""
    class Accepting(asyncio.Protocol):
        pass

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Accepting, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        # Nothing listens on 127.0.0.2 at that port: refused at once (Linux routes
        # all of 127/8 to loopback).
        refused = socket.socket()
        with pytest.raises(OSError):
            refused.connect(("127.0.0.2", port))
        refused.close()
        made = []

        class Client(asyncio.Protocol):
            def connection_made(self, transport):
                made.append(transport.get_extra_info("peername")[0])
                transport.close()

        await open_socket(Client(), "db.example", port, None, ("127.0.0.2", "127.0.0.1"))
        with pytest.raises(OSError):
            await open_socket(Client(), "db.example", port, None, ("127.0.0.2",))
        server.close()
        return made

    assert asyncio.run(main()) == ["127.0.0.1"]
