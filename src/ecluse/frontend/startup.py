"""Turning a client's StartupMessage into the parameters ecluse acts on.

Pure functions: which database and user, which tracked settings (from the
startup packet and from ``options=-c name=value``), and which parameters are
refused. No I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ecluse.errors import ClientRefused
from ecluse.server.params import TrackedParameters, tracked_parameters

# Parameters a pooler consumes itself and never forwards.
_ROUTING = frozenset({"user", "database", "options"})


@dataclass(slots=True)
class ClientStartup:
    """What a client asked for at startup."""

    user: str
    database: str
    params: dict[str, str] = field(default_factory=dict)  # tracked, canonical names
    # The `_pq_.` protocol options asked for, which ecluse does not implement: the
    # session lists them in its NegotiateProtocolVersion.
    protocol_options: tuple[str, ...] = ()


def split_options(options: str) -> list[str]:
    """Split libpq's ``options`` the way PostgreSQL does: spaces separate
    arguments and a backslash escapes the next character."""
    args: list[str] = []
    cur: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if cur:
                args.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        args.append("".join(cur))
    return args


def parse_options(options: str) -> list[tuple[str, str]]:
    """Return the (name, value) pairs of ``-c name=value`` / ``--name=value``."""
    args = split_options(options)
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-c" and i + 1 < len(args):
            setting = args[i + 1]
            i += 2
        elif (arg.startswith("-c") and len(arg) > 2) or arg.startswith("--"):
            setting = arg[2:]
            i += 1
        else:
            raise ClientRefused(f"unsupported startup option: {arg}", sqlstate="08P01")
        name, sep, value = setting.partition("=")
        if not sep or not name:
            raise ClientRefused(f"invalid startup option: {setting}", sqlstate="08P01")
        pairs.append((name.replace("-", "_"), value))
    return pairs


@functools.lru_cache(maxsize=8)
def _lowered(names: tuple[str, ...]) -> frozenset[str]:
    """ignore_startup_parameters as looked up: made once per setting, not per login."""
    return frozenset(name.lower() for name in names)


def resolve_startup(params: Mapping[str, str], ignore: Iterable[str],
                    tracked: TrackedParameters | None = None) -> ClientStartup:
    """Validate a client's startup parameters.

    Tracked settings (``tracked``, by default those of the default
    track_extra_parameters) are kept; parameters listed in ``ignore``
    (ignore_startup_parameters) are dropped; anything else is refused with a
    clear error, as PgBouncer does.
    """
    canonical_name = (tracked or tracked_parameters()).canonical_name
    ignored = _lowered(tuple(ignore))
    user = params["user"]
    database = params.get("database") or user
    tracked: dict[str, str] = {}
    protocol_options: tuple[str, ...] = ()
    for name, value in params.items():
        if name in _ROUTING:
            continue
        canon = canonical_name(name)
        if canon is not None:
            tracked[canon] = value
        elif name.startswith("_pq_."):
            protocol_options += (name,)
        elif name.lower() not in ignored:
            raise ClientRefused(f"unsupported startup parameter: {name}", sqlstate="08P01")
    options = params.get("options")
    if options and "options" not in ignored:
        for name, value in parse_options(options):
            canon = canonical_name(name)
            if canon is not None:
                tracked[canon] = value
            elif name.lower() not in ignored:
                raise ClientRefused(f"unsupported startup parameter in options: {name}",
                                    sqlstate="08P01")
    return ClientStartup(user, database, tracked, protocol_options)
