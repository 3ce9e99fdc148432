"""User name maps (auth_ident_file, pg_ident.conf's format) for the cert and peer methods.

An HBA line with ``map=NAME`` lets the identity a client proved outside the
protocol (its certificate's common name, its operating-system user on the unix
socket) log in as the database users its map lists, instead of only the user of
the same name. One map line per ``map-name system-username database-username``,
``#`` comments and double quotes as in pg_hba.conf.

Supported, as in PgBouncer: plain names, and ``all`` as the database user (any
user). Regular expressions (``/...``), group membership (``+group``) and the
include directives are a ConfigError naming the file and line, rather than a
line read some other way.

Rules:
1. Pure: parse_ident() gets text and map_allows() facts; only read_ident()
   reads a file.
2. Names compare exactly (no case folding), as PostgreSQL does.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ecluse.auth.hba import Token, logical_lines, split_fields
from ecluse.errors import ConfigError

ALL = "all"

# Map name -> (system user, database user) pairs in file order; a database user of
# None stands for ``all``.
IdentMaps = Mapping[str, tuple[tuple[str, str | None], ...]]


def read_ident(path: str) -> IdentMaps:
    """Read and parse the ident map file at ``path``.

    Raises OSError if it cannot be read, ConfigError naming file and line for a bad line.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return parse_ident(text, path)


def parse_ident(text: str, path: str = "<string>") -> IdentMaps:
    """Parse ident map ``text``; ``path`` names it in errors."""
    maps: dict[str, list[tuple[str, str | None]]] = {}
    for number, line in logical_lines(text):
        try:
            fields = split_fields(line)
            if fields:
                name, system_user, db_user = _parse_line(fields)
                maps.setdefault(name, []).append((system_user, db_user))
        except ValueError as exc:
            raise ConfigError(f"auth_ident_file: {exc}", path=path, line=number) from None
    return MappingProxyType({name: tuple(pairs) for name, pairs in maps.items()})


def map_allows(maps: IdentMaps, map_name: str, system_user: str, db_user: str) -> bool:
    """True when map ``map_name`` lets ``system_user`` log in as ``db_user``."""
    return any(system == system_user and (target is None or target == db_user)
               for system, target in maps.get(map_name, ()))


def _parse_line(fields: list[list[Token]]) -> tuple[str, str, str | None]:
    first = _single(fields[0], "map name")
    if first[0] in ("include", "include_if_exists", "include_dir") and not first[1]:
        raise ValueError(f'"{first[0]}" is not supported')
    if len(fields) != 3:
        raise ValueError("a map line is map-name system-username database-username "
                         f"(found {len(fields)} fields)")
    name = _plain(first, "map name")
    system_user = _plain(_single(fields[1], "system user name"), "system user name")
    db_token = _single(fields[2], "database user name")
    if db_token == (ALL, False):
        return name, system_user, None
    return name, system_user, _plain(db_token, "database user name")


def _single(field: list[Token], what: str) -> Token:
    if len(field) != 1:
        raise ValueError(f"multiple values in the {what} field")
    return field[0]


def _plain(token: Token, what: str) -> str:
    text, quoted = token
    if not text:
        raise ValueError(f"empty {what}")
    if not quoted:
        if text.startswith("/"):
            raise ValueError(f'regular expression "{text}" is not supported in the {what}')
        if text.startswith("+"):
            raise ValueError(f'group membership "{text}" is not supported in the {what}')
    return text
