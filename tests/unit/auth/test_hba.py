"""auth/hba.py: parsing pg_hba.conf and matching connections, first line wins."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecluse.auth.hba import ClientAddress, Name, match_hba, parse_hba
from ecluse.errors import ConfigError

V4 = ipaddress.IPv4Address
TCP = ClientAddress(local=False, tls=False, ip=V4("127.0.0.1"))
TLS = ClientAddress(local=False, tls=True, ip=V4("127.0.0.1"))
UNIX = ClientAddress(local=True, tls=False)


def method(text: str, client: ClientAddress, database: str = "db", user: str = "alice"):
    rule = match_hba(parse_hba(text), client, database, user)
    return None if rule is None else rule.method


def test_parse_fields_lists_quotes_comments_and_continuations() -> None:
    rules = parse_hba(
        '# comment\n'
        '\n'
        'local   all   all   trust   # trailing comment\n'
        'host db1,"all",db2 alice, bob 10.0.0.0/8 md5\n'
        'hostssl sameuser all 192.168.1.0 255.255.255.0 \\\n'
        '    cert clientcert=verify-full\n'
        'hostnossl all all ::1/128 scram-sha-256\n'
        'host all all all reject\n')
    assert [r.line for r in rules] == [3, 4, 5, 7, 8]
    local, host, ssl, nossl, anywhere = rules
    assert local.network is None and local.method == "trust"
    assert host.databases == (Name("db1"), Name("all"), Name("db2"))  # quoted: a name
    assert host.users == (Name("alice"), Name("bob"))
    assert host.network == ipaddress.ip_network("10.0.0.0/8")
    assert ssl.databases == (Name("sameuser", keyword=True),)
    assert ssl.network == ipaddress.ip_network("192.168.1.0/24")
    assert ssl.options == (("clientcert", "verify-full"),)
    assert nossl.network == ipaddress.ip_network("::1/128")
    assert anywhere.network is None


@pytest.mark.parametrize(("line", "message"), [
    ("host all +admins 127.0.0.1/32 md5", "group membership"),
    ("host @dbs all 127.0.0.1/32 md5", "file inclusion"),
    ("host all @users 127.0.0.1/32 md5", "file inclusion"),
    ("host all /^a 127.0.0.1/32 md5", "regular expression"),
    ("host samerole all 127.0.0.1/32 md5", "samerole"),
    ("host all all db.example.com md5", "host names are not supported"),
    ("host all all samenet md5", "samenet"),
    ("host all all 127.0.0.1/33 md5", "invalid CIDR mask"),
    ("host all all 127.0.0.1/x md5", "invalid CIDR mask"),
    ("host all all 127.0.0.1 255.0.255.0 md5", "invalid IP mask"),
    ("host all all 127.0.0.1 ffff:: md5", "do not match"),
    ("host all all 127.0.0.1", "netmask"),
    ("host all all 127.0.0.1/32", "before authentication method"),
    ("local all all", "before authentication method"),
    ("host all all 127.0.0.1/32 peer", "peer authentication is only supported on local"),
    ("host all all 127.0.0.1/32 ldap", "not supported"),
    ("host all all 127.0.0.1/32 md5 map=x", 'option "map" is only valid for'),
    ("local all all trust map=x", 'option "map" is only valid for'),
    ("local all all peer map=", "needs a map name"),
    ("local all all peer ident=x", 'option "ident" is not supported'),
    ("host all all 127.0.0.1/32 md5 junk", "name=value"),
    ("hostfoo all all 127.0.0.1/32 md5", "invalid connection type"),
    ('host "all all 127.0.0.1/32 md5', "unterminated"),
    ("host all, all 127.0.0.1/32 md5", ""),
    ("host all all, 127.0.0.1/32 md5", ""),
])
def test_bad_lines_name_file_and_line(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_hba(f"local all all trust\n{line}\n", "/etc/ecluse/hba.conf")
    assert err.value.path == "/etc/ecluse/hba.conf" and err.value.line == 2
    assert message in err.value.message
    assert err.value.message.startswith("/etc/ecluse/hba.conf:2: auth_hba_file: ")


def test_first_matching_line_wins() -> None:
    text = ("host all bob 127.0.0.1/32 reject\n"
            "host all all 10.0.0.0/8 trust\n"
            "host all all 127.0.0.1/32 md5\n"
            "host all all 0.0.0.0/0 scram-sha-256\n")
    assert method(text, TCP, user="bob") == "reject"
    assert method(text, TCP) == "md5"
    assert method(text, ClientAddress(False, False, V4("10.9.8.7"))) == "trust"
    assert method(text, ClientAddress(False, False, V4("192.0.2.1"))) == "scram-sha-256"
    assert method(text, ClientAddress(False, False, ipaddress.ip_address("::1"))) is None
    assert method(text, UNIX) is None


def test_connection_types() -> None:
    text = ("local all all trust\n"
            "hostssl all all all cert\n"
            "hostnossl all all all md5\n")
    assert method(text, UNIX) == "trust"
    assert method(text, TLS) == "cert"
    assert method(text, TCP) == "md5"
    assert method("host all all all md5\n", UNIX) is None
    assert method("hostgssenc all all all md5\n", TCP) is None
    assert method("hostnogssenc all all all md5\n", TCP) == "md5"
    assert method("host all all all md5\n", TLS) == "md5"


def test_database_and_user_keywords() -> None:
    text = ('host sameuser all all trust\n'
            'host replication all all reject\n'
            'host "sameuser" all all md5\n'
            'host all "all" all password\n'
            'host db1,db2 carol,dave all scram-sha-256\n')
    assert method(text, TCP, database="alice", user="alice") == "trust"
    assert method(text, TCP, database="sameuser", user="bob") == "md5"
    assert method(text, TCP, database="x", user="all") == "password"
    assert method(text, TCP, database="db2", user="dave") == "scram-sha-256"
    assert method(text, TCP, database="replication", user="erin") is None
    assert method(text, TCP, database="db3", user="dave") is None


addresses = st.one_of(
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
)


@given(client=addresses, network=addresses, prefix=st.integers(0, 128), mask_form=st.booleans())
def test_address_matching_agrees_with_ipaddress(client, network, prefix, mask_form) -> None:
    prefix = min(prefix, network.max_prefixlen)
    expected_net = ipaddress.ip_network(f"{network}/{prefix}", strict=False)
    field = f"{network} {expected_net.netmask}" if mask_form else f"{network}/{prefix}"
    rule = parse_hba(f"host all all {field} trust\n")[0]
    assert rule.network == expected_net
    matched = match_hba([rule], ClientAddress(False, False, client), "db", "u") is not None
    assert matched == (client.version == network.version and client in expected_net)


def test_peer_and_cert_lines_carry_their_map() -> None:
    rules = parse_hba("local all all peer map=staff\n"
                      "hostssl all all 0.0.0.0/0 cert clientcert=verify-full map=certs\n"
                      "local all all peer\n")
    assert [(r.method, r.user_map) for r in rules] == \
        [("peer", "staff"), ("cert", "certs"), ("peer", None)]
