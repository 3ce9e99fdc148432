"""auth_type = hba: ecluse picks each client's method from its own pg_hba.conf.

The server side is kept simple (every pool logs in as trustuser, whom the test
cluster trusts) so that only the client side's HBA decisions are under test.
"""

from __future__ import annotations

import os
import pwd

import psycopg
import pytest

from integration.test_auth import login_sqlstate

HBA = """
# ecluse's rules, first match wins
host    all  trustuser            127.0.0.1/32            trust
host    all  md5user              127.0.0.1/32            md5
host    all  scramuser            127.0.0.1/32            scram-sha-256
host    all  passuser             127.0.0.1/32            password
host    all  rejected             127.0.0.1/32            reject
host    all  elsewhere            10.1.2.3/32             trust
host    all  elsewhere            127.0.0.1 255.255.255.255  md5
hostssl all  sslonly              127.0.0.1/32            trust
host    all  certuser             127.0.0.1/32            cert
host    postgres  dbuser          127.0.0.1/32            trust
host    ecluse_test  dbuser       ::1/128                 trust
local   all  all                                          trust
"""

USERLIST = {"md5user": "md5-pw", "scramuser": "scram-pw", "passuser": "pass-pw",
            "elsewhere": "else-pw"}


@pytest.fixture
def hba_ecluse(ecluse_factory, pg, tmp_path):
    hba = tmp_path / "ecluse_hba.conf"
    hba.write_text(HBA)
    backend = f"host={pg.host} port={pg.port} user=trustuser"
    return ecluse_factory({"auth_type": "hba", "auth_hba_file": str(hba)},
                          databases={"ecluse_test": f"{backend} dbname=ecluse_test",
                                     "postgres": f"{backend} dbname=postgres"},
                          userlist=USERLIST)


def connect(ec, user: str, password: str | None = None, dbname: str = "ecluse_test"):
    kwargs = {} if password is None else {"password": password}
    return psycopg.connect(host=ec.host, port=ec.port, user=user, dbname=dbname,
                           sslmode="disable", autocommit=True, **kwargs)


def test_trust_line_needs_no_password(hba_ecluse):
    with connect(hba_ecluse, "trustuser") as conn:
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("user", ["md5user", "scramuser", "passuser", "elsewhere"])
def test_password_lines_check_the_password(hba_ecluse, user):
    ec = hba_ecluse
    with connect(ec, user, USERLIST[user]) as conn:
        assert conn.execute("select current_user").fetchone() == ("trustuser",)
    with pytest.raises(psycopg.OperationalError,
                       match=f'password authentication failed for user "{user}"'):
        connect(ec, user, "wrong")
    assert login_sqlstate(ec, user, "wrong") == "28P01"


def test_address_that_does_not_match_falls_through(hba_ecluse):
    """elsewhere's 10.1.2.3/32 trust line does not match 127.0.0.1: the md5 line does."""
    with pytest.raises(psycopg.OperationalError):
        connect(hba_ecluse, "elsewhere")  # no password: the md5 line asked for one


def test_reject_line(hba_ecluse):
    with pytest.raises(psycopg.OperationalError) as err:
        connect(hba_ecluse, "rejected", "x")
    assert 'pg_hba.conf rejects connection for host "127.0.0.1", user "rejected"' \
        in str(err.value)
    assert login_sqlstate(hba_ecluse, "rejected", "x") == "28000"


@pytest.mark.parametrize("user", ["nobody", "sslonly"])
def test_no_matching_line(hba_ecluse, user):
    """No line for the user, or only a hostssl line for a client without TLS."""
    with pytest.raises(psycopg.OperationalError) as err:
        connect(hba_ecluse, user, "x")
    assert f'no pg_hba.conf entry for host "127.0.0.1", user "{user}", ' \
        'database "ecluse_test", no encryption' in str(err.value)
    assert login_sqlstate(hba_ecluse, user, "x") == "28000"


def test_database_column(hba_ecluse):
    with connect(hba_ecluse, "dbuser", dbname="postgres") as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        connect(hba_ecluse, "dbuser")  # its ecluse_test line is for ::1 only


def test_cert_without_tls_fails(hba_ecluse):
    with pytest.raises(psycopg.OperationalError,
                       match='certificate authentication failed for user "certuser"'):
        connect(hba_ecluse, "certuser")


def test_failures_are_counted_and_logged_without_secrets(hba_ecluse):
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError):
            connect(hba_ecluse, "md5user", "wrong-secret-42")
    log = hba_ecluse.log()
    assert log.count('password authentication failed for user "md5user"') >= 2
    assert "wrong-secret-42" not in log and "md5-pw" not in log


def test_bad_hba_file_stops_ecluse_naming_file_and_line(ecluse_factory, tmp_path):
    hba = tmp_path / "bad_hba.conf"
    hba.write_text("host all all 127.0.0.1/32 trust\nhost all +admins 127.0.0.1/32 md5\n")
    ec = ecluse_factory({"auth_type": "hba", "auth_hba_file": str(hba)}, start=False)
    with pytest.raises(RuntimeError) as err:
        ec.start()
    assert f"{hba}:2:" in str(err.value)
    assert "+admins" in str(err.value)


# --- hostssl and cert: TLS clients (certificates from fixtures/fix_tls.py) ------------

TLS_HBA = """
hostssl   all  postgres   127.0.0.1/32  cert
hostssl   all  trustuser  127.0.0.1/32  trust
hostnossl all  trustuser  127.0.0.1/32  reject
"""


def tls_hba_ecluse(ecluse_factory, pg, tls_certs, tmp_path, mode: str, rules: str = TLS_HBA,
                   extra: dict | None = None):
    hba = tmp_path / "tls_hba.conf"
    hba.write_text(rules)
    backend = f"host={pg.host} port={pg.port} user=trustuser"
    return ecluse_factory({**(extra or {}), "auth_type": "hba", "auth_hba_file": str(hba),
                           "client_tls_sslmode": mode,
                           "client_tls_key_file": tls_certs.server.key,
                           "client_tls_cert_file": tls_certs.server.cert,
                           "client_tls_ca_file": tls_certs.ca},
                          databases={"ecluse_test": f"{backend} dbname=ecluse_test"})


def test_hostssl_and_hostnossl_follow_the_client_tls(ecluse_factory, pg, tls_certs, tmp_path):
    ec = tls_hba_ecluse(ecluse_factory, pg, tls_certs, tmp_path, "allow")
    with psycopg.connect(ec.dsn(user="trustuser", sslmode="require"), autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
    with pytest.raises(psycopg.OperationalError) as err:
        connect(ec, "trustuser")
    assert 'pg_hba.conf rejects connection for host "127.0.0.1", user "trustuser", ' \
        'database "ecluse_test", no encryption' in str(err.value)


def test_cert_method_checks_the_common_name(ecluse_factory, pg, tls_certs, tmp_path):
    from integration.test_tls import private_copy

    ec = tls_hba_ecluse(ecluse_factory, pg, tls_certs, tmp_path, "verify-ca")
    good_key = private_copy(tls_certs.client_postgres.key, tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_key = private_copy(tls_certs.client_other.key, other_dir)
    base = f"host=127.0.0.1 port={ec.port} dbname=ecluse_test sslmode=require connect_timeout=10"
    with psycopg.connect(f"{base} user=postgres sslcert={tls_certs.client_postgres.cert} "
                         f"sslkey={good_key}", autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == ("trustuser",)
    with pytest.raises(psycopg.OperationalError,
                       match='certificate authentication failed for user "postgres"'):
        psycopg.connect(f"{base} user=postgres sslcert={tls_certs.client_other.cert} "
                        f"sslkey={other_key}")


def test_peer_takes_the_os_user_of_the_unix_socket(ecluse_factory, pg, tmp_path):
    """peer: the kernel's word for who is at the other end of the unix socket, as the
    user itself or through auth_ident_file's map; TCP clients never match it."""
    me = pwd.getpwuid(os.getuid()).pw_name
    sockdir = tmp_path / "sock"
    sockdir.mkdir()
    (tmp_path / "hba.conf").write_text(
        f'local all "{me}" peer\n'
        "local all mapped,anyapp peer map=staff\n"
        "local all all peer\n"
        "host all all 127.0.0.1/32 trust\n")
    (tmp_path / "ident.conf").write_text(f'staff "{me}" mapped\nstaff nobody-else anyapp\n')
    backend = f"host={pg.host} port={pg.port} user=trustuser"
    ec = ecluse_factory({"auth_type": "hba", "auth_hba_file": str(tmp_path / "hba.conf"),
                         "auth_ident_file": str(tmp_path / "ident.conf"),
                         "unix_socket_dir": str(sockdir), "admin_users": me},
                        databases={"ecluse_test": f"{backend} dbname=ecluse_test"})

    def over_socket(user: str, dbname: str = "ecluse_test"):
        return psycopg.connect(host=str(sockdir), port=ec.port, user=user, dbname=dbname,
                               autocommit=True)

    for user in (me, "mapped"):
        with over_socket(user) as conn:
            assert conn.execute("select current_user").fetchone() == ("trustuser",)
    # anyapp's map line is for another OS user; "someone" has no map at all.
    for user in ("anyapp", "someone"):
        with pytest.raises(psycopg.OperationalError,
                           match=f'Peer authentication failed for user "{user}"'):
            over_socket(user)
    # The admin console takes its method from the same lines.
    with over_socket(me, "pgbouncer") as conn:
        assert any(row[0] == "ecluse_test" for row in conn.execute("SHOW DATABASES"))
    with psycopg.connect(host=ec.host, port=ec.port, user="someone", dbname="ecluse_test",
                         sslmode="disable", autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)  # TCP: the trust line
    assert 'Peer authentication failed for user "someone"' in ec.log()


def test_cert_with_a_map_accepts_the_users_the_map_lists(ecluse_factory, pg, tls_certs,
                                                        tmp_path):
    """map=: the certificate of someone_else may log in as reporting (its map line), not
    as itself (no line), and postgres's may not log in as reporting."""
    from integration.test_tls import private_copy

    (tmp_path / "ident.conf").write_text("certs someone_else reporting\n")
    ec = tls_hba_ecluse(ecluse_factory, pg, tls_certs, tmp_path, "verify-ca",
                        rules="hostssl all all 127.0.0.1/32 cert map=certs\n",
                        extra={"auth_ident_file": str(tmp_path / "ident.conf")})
    other_key = private_copy(tls_certs.client_other.key, tmp_path)
    pg_dir = tmp_path / "pg"
    pg_dir.mkdir()
    postgres_key = private_copy(tls_certs.client_postgres.key, pg_dir)
    base = f"host=127.0.0.1 port={ec.port} dbname=ecluse_test sslmode=require connect_timeout=10"
    other = f"sslcert={tls_certs.client_other.cert} sslkey={other_key}"
    with psycopg.connect(f"{base} user=reporting {other}", autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == ("trustuser",)
    for user, cert in (("someone_else", other),
                       ("reporting", f"sslcert={tls_certs.client_postgres.cert} "
                                     f"sslkey={postgres_key}")):
        with pytest.raises(psycopg.OperationalError,
                           match=f'certificate authentication failed for user "{user}"'):
            psycopg.connect(f"{base} user={user} {cert}")
