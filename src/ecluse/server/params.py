"""Run-time parameters ecluse keeps in step between clients and servers.

A client's view of client_encoding, DateStyle, TimeZone, ... must survive being
moved between server connections, so ecluse remembers what each client wants
and what each server currently has, and sends SET before forwarding when they
differ.

Which parameters: PgBouncer's five, search_path (which ecluse follows itself,
PostgreSQL 15 does not report it) and the names of track_extra_parameters
(tracked_parameters). Any other is kept in step only if the server reports
it with ParameterStatus, as PgBouncer's documentation says: the session
drops a client's value for one its server does not report (at the welcome),
as PgBouncer never applies one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from ecluse.protocol.codes import REPORTED_PARAMETERS

# PgBouncer's fixed set, and search_path; spelled as PostgreSQL reports them.
ALWAYS_TRACKED = (
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
    "search_path",
)
# A name of track_extra_parameters is taken in the server's spelling whatever its
# case: a client's parameters must have the keys ParameterStatus gives the
# server's (build_sync_query compares the two).
_REPORTED_SPELLING = {name.lower(): name for name in REPORTED_PARAMETERS}


@dataclass(frozen=True, slots=True)
class TrackedParameters:
    """The parameters kept in step for clients, under one track_extra_parameters."""

    names: frozenset[str]  # as PostgreSQL spells them (ParameterStatus names)
    by_lower: Mapping[str, str]  # lower-case name -> that spelling

    def canonical_name(self, name: str) -> str | None:
        """Return the tracked spelling of ``name``, or None if it is not tracked."""
        return self.by_lower.get(name.lower())


@functools.lru_cache(maxsize=8)
def tracked_parameters(extra: tuple[str, ...] = ("IntervalStyle",)) -> TrackedParameters:
    """Return ALWAYS_TRACKED and the ``extra`` names (track_extra_parameters).

    Made once per value of the setting, not per client. A name PostgreSQL
    reports takes its spelling; any other (an extension's) keeps the one given.
    """
    by_lower = {name.lower(): name for name in ALWAYS_TRACKED}
    for name in extra:
        by_lower.setdefault(name.lower(), _REPORTED_SPELLING.get(name.lower(), name))
    return TrackedParameters(frozenset(by_lower.values()), by_lower)


def quote_literal(value: str) -> str:
    """Quote a value as an escape-string literal, safe whatever
    standard_conforming_strings is."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def build_sync_query(wanted: Mapping[str, str], current: Mapping[str, str]) -> str | None:
    """Return the SET statements that make a server match a client, or None.

    ``wanted`` is the client's parameters (tracked ones only), ``current`` the
    server's. Each wanted value the server does not have is set, search_path
    too; since PostgreSQL 15 does not report it, ``current`` holds it only when
    ecluse set it, and a client that wants the default gets a RESET.
    """
    # Asked at every link: nearly always every parameter the client has is the
    # server's too, which this tests in C.
    if wanted.items() <= current.items() and \
            ("search_path" in wanted or "search_path" not in current):
        return None
    return sync_statements(wanted, current)


def sync_statements(wanted: Mapping[str, str], current: Mapping[str, str]) -> str | None:
    """build_sync_query, parameter by parameter, in the client's order."""
    stmts = []
    for name, want in wanted.items():
        if current.get(name) == want:
            continue
        if name == "search_path":
            # A list: SET would take the whole text as one schema name.
            stmts.append("SELECT pg_catalog.set_config('search_path', "
                         f"{quote_literal(want)}, false)")
        else:
            stmts.append(f"SET {name} TO {quote_literal(want)}")
    if "search_path" in current and "search_path" not in wanted:
        stmts.append("RESET search_path")
    if not stmts:
        return None
    return ";".join(stmts)
