"""pg_hba.conf rules for auth_type = hba: parsing the file and matching a connection.

The format is PostgreSQL's: one rule per line, ``type database user
[address [mask]] method [options]``; ``#`` starts a comment, fields are
separated by blanks, a list inside a field by commas, and double quotes make a
keyword (``"all"``) an ordinary name. The first line that matches decides, as
in PostgreSQL; no match refuses the connection.

Supported: types local, host, hostssl, hostnossl (and hostgssenc, which never
matches since ecluse has no GSSAPI encryption, and hostnogssenc, which is host);
databases and users as names or ``all``, databases also ``sameuser`` and
``replication`` (which matches nothing: ecluse pools no replication
connections); addresses as ``all``, CIDR (``10.0.0.0/8``, ``::1/128``) or
address plus mask; methods trust, reject, md5, scram-sha-256, password, cert,
peer (local lines only); the options clientcert, and map for cert and peer (a
user name map of auth_ident_file, auth/ident.py). Anything else (``+group``, ``@file``, regular
expressions, host names, samehost/samenet, other methods or options) is a
ConfigError naming the file and line, rather than a rule silently read some
other way.

Rules:
1. Pure: parse_hba() gets text, match_hba() gets facts about a connection;
   only read_hba() reads a file. No config import, no sockets.
2. Unix-socket clients match ``local`` lines only; TCP clients match the host
   lines, hostssl only with TLS and hostnossl only without.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ecluse.errors import ConfigError

CERT = "cert"
PEER = "peer"
REJECT = "reject"
METHODS = frozenset({"trust", REJECT, "md5", "scram-sha-256", "password", CERT, PEER})
# Methods that take the user's identity from outside the protocol (a certificate,
# the kernel) and may map it to a database user name (map=).
MAPPED_METHODS = frozenset({CERT, PEER})
CONNECTION_TYPES = frozenset({"local", "host", "hostssl", "hostnossl", "hostgssenc",
                              "hostnogssenc"})
_OPTIONS = frozenset({"clientcert", "map"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Keywords of the database and user fields, stored apart from plain names so
# that a quoted "all" stays a name.
ALL = "all"
SAMEUSER = "sameuser"
REPLICATION = "replication"


@dataclass(frozen=True, slots=True)
class Name:
    """One item of a database or user list: a keyword or a literal name."""

    value: str
    keyword: bool = False


@dataclass(frozen=True, slots=True)
class HbaRule:
    """One line of pg_hba.conf. ``network`` None: any address (or a local line)."""

    conn_type: str
    databases: tuple[Name, ...]
    users: tuple[Name, ...]
    network: IPNetwork | None
    method: str
    line: int
    options: tuple[tuple[str, str], ...] = ()

    @property
    def user_map(self) -> str | None:
        """The map= option: the auth_ident_file map that names who may log in as whom."""
        for name, value in self.options:
            if name == "map":
                return value
        return None


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """What HBA matching needs to know about a client connection."""

    local: bool  # came in over the unix socket
    tls: bool
    ip: IPAddress | None = None


def read_hba(path: str) -> tuple[HbaRule, ...]:
    """Read and parse the pg_hba.conf at ``path``.

    Raises OSError if it cannot be read, ConfigError naming file and line for a bad line.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return parse_hba(text, path)


def parse_hba(text: str, path: str = "<string>") -> tuple[HbaRule, ...]:
    """Parse pg_hba.conf ``text``; ``path`` names it in errors."""
    rules: list[HbaRule] = []
    for number, line in logical_lines(text):
        try:
            fields = split_fields(line)
            if fields:
                rules.append(_parse_rule(fields, number))
        except ValueError as exc:
            raise ConfigError(f"auth_hba_file: {exc}", path=path, line=number) from None
    return tuple(rules)


def match_hba(rules: Iterable[HbaRule], client: ClientAddress, database: str,
              user: str) -> HbaRule | None:
    """Return the first rule that matches the connection, or None."""
    for rule in rules:
        if _matches_connection(rule, client) and \
                _matches_database(rule.databases, database, user) and \
                any(_name_matches(item, user) for item in rule.users):
            return rule
    return None


# --- matching ---------------------------------------------------------------

def _matches_connection(rule: HbaRule, client: ClientAddress) -> bool:
    kind = rule.conn_type
    if kind == "local":
        return client.local
    if client.local or kind == "hostgssenc":
        return False
    if (kind == "hostssl" and not client.tls) or (kind == "hostnossl" and client.tls):
        return False
    if rule.network is None:
        return True
    ip = client.ip
    return ip is not None and ip.version == rule.network.version and ip in rule.network


def _matches_database(items: Sequence[Name], database: str, user: str) -> bool:
    for item in items:
        if item.keyword:
            if item.value == ALL or (item.value == SAMEUSER and database == user):
                return True
        elif item.value == database:
            return True
    return False


def _name_matches(item: Name, name: str) -> bool:
    return (item.keyword and item.value == ALL) or (not item.keyword and item.value == name)


# --- parsing ----------------------------------------------------------------

def logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """Yield (first line number, text) with backslash-newline continuations joined."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw.rstrip("\r")
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending.append(raw[:-1])
            continue
        pending.append(raw)
        yield start, " ".join(pending)
        pending = []
    if pending:
        yield start, " ".join(pending)


Token = tuple[str, bool]  # (text, was quoted)


def split_fields(line: str) -> list[list[Token]]:
    """Split a line into fields, each a list of comma-separated tokens."""
    fields: list[list[Token]] = []
    current: list[Token] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n or line[i] == "#":
            break
        chars: list[str] = []
        quoted = in_quote = False
        while i < n and (in_quote or line[i] not in " \t,#"):
            if line[i] == '"':
                in_quote, quoted = not in_quote, True
            else:
                chars.append(line[i])
            i += 1
        if in_quote:
            raise ValueError("unterminated quoted string")
        current.append(("".join(chars), quoted))
        if i < n and line[i] == ",":
            i += 1  # the list goes on in the same field
            continue
        fields.append(current)
        current = []
    if current:
        raise ValueError("list ends with a comma")
    return fields


def _single(field: list[Token], what: str) -> str:
    if len(field) != 1:
        raise ValueError(f"multiple values in the {what} field")
    return field[0][0]


def _parse_rule(fields: list[list[Token]], number: int) -> HbaRule:
    conn_type = _single(fields[0], "connection type")
    if conn_type not in CONNECTION_TYPES:
        raise ValueError(f'invalid connection type "{conn_type}"')
    if len(fields) < 4:
        raise ValueError("end-of-line before authentication method")
    databases = tuple(_parse_name(token, "database") for token in fields[1])
    users = tuple(_parse_name(token, "user") for token in fields[2])
    rest = fields[3:]
    network = None
    if conn_type != "local":
        network, used = _parse_address(rest)
        rest = rest[used:]
    if not rest:
        raise ValueError("end-of-line before authentication method")
    method = _single(rest[0], "authentication method")
    if method not in METHODS:
        raise ValueError(f'authentication method "{method}" is not supported '
                         f"(supported: {', '.join(sorted(METHODS))})")
    if method == PEER and conn_type != "local":
        raise ValueError("peer authentication is only supported on local sockets")
    options = tuple(_parse_option(field) for field in rest[1:])
    if any(name == "map" for name, _value in options) and method not in MAPPED_METHODS:
        raise ValueError('authentication option "map" is only valid for authentication '
                         "methods cert and peer")
    return HbaRule(conn_type, databases, users, network, method, number, options)


def _parse_name(token: Token, what: str) -> Name:
    text, quoted = token
    if quoted:
        return Name(text)
    if not text:
        raise ValueError(f"empty {what} name")
    if text.startswith("+"):
        raise ValueError(f'group membership "{text}" is not supported in the {what} field')
    if text.startswith("@"):
        raise ValueError(f'file inclusion "{text}" is not supported in the {what} field')
    if text.startswith("/"):
        raise ValueError(f'regular expression "{text}" is not supported in the {what} field')
    if text == ALL:
        return Name(ALL, keyword=True)
    if what == "database":
        if text in (SAMEUSER, REPLICATION):
            return Name(text, keyword=True)
        if text in ("samerole", "samegroup"):
            raise ValueError(f'"{text}" is not supported in the database field')
    return Name(text)


def _parse_address(fields: list[list[Token]]) -> tuple[IPNetwork | None, int]:
    """Parse the address (and mask) fields; return the network and the fields used."""
    text = _single(fields[0], "address")
    if text == ALL:
        return None, 1
    if text in ("samehost", "samenet"):
        raise ValueError(f'"{text}" is not supported')
    if "/" in text:
        addr_text, _, prefix = text.partition("/")
        if not prefix.isdigit():
            raise ValueError(f'invalid CIDR mask in address "{text}"')
        address = _ip(addr_text, text)
        try:
            return ipaddress.ip_network(f"{address}/{int(prefix)}", strict=False), 1
        except ValueError:
            raise ValueError(f'invalid CIDR mask in address "{text}"') from None
    address = _ip(text, text)
    if len(fields) < 2:
        raise ValueError("end-of-line before netmask specification")
    mask_text = _single(fields[1], "netmask")
    try:
        mask = ipaddress.ip_address(mask_text)
    except ValueError:
        raise ValueError(f'invalid IP mask "{mask_text}"') from None
    if mask.version != address.version:
        raise ValueError("IP address and mask do not match")
    prefix = _prefix_of(mask)
    if prefix is None:
        raise ValueError(f'invalid IP mask "{mask_text}"')
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False), 2


def _ip(text: str, whole: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        raise ValueError(f'host names are not supported (address "{whole}"): use an IP '
                         "address with a CIDR mask") from None


def _prefix_of(mask: IPAddress) -> int | None:
    """Return the prefix length of a contiguous netmask, or None if it has holes."""
    bits = mask.max_prefixlen
    value = int(mask)
    ones = bin(value).count("1")
    expected = ((1 << ones) - 1) << (bits - ones) if ones else 0
    return ones if value == expected else None


def _parse_option(field: list[Token]) -> tuple[str, str]:
    text = _single(field, "option")
    name, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f'authentication option not in name=value format: "{text}"')
    if name not in _OPTIONS:
        raise ValueError(f'authentication option "{name}" is not supported')
    if name == "map" and not value:
        raise ValueError('authentication option "map" needs a map name')
    return name, value
