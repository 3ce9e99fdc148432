"""Run-time parameters ecluse keeps in step between clients and servers.

A client's view of client_encoding, DateStyle, TimeZone, ... must survive being
moved between server connections, so ecluse remembers what each client wants
and what each server currently has, and sends SET before forwarding when they
differ.
"""

from __future__ import annotations

from collections.abc import Mapping

# Canonical spelling as PostgreSQL reports them in ParameterStatus.
TRACKED_PARAMETERS = (
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "application_name",
    "search_path",
)
_CANONICAL = {name.lower(): name for name in TRACKED_PARAMETERS}


def canonical_name(name: str) -> str | None:
    """Return the tracked spelling of a parameter name, or None if not tracked."""
    return _CANONICAL.get(name.lower())


def quote_literal(value: str) -> str:
    """Quote a value as an escape-string literal, safe whatever
    standard_conforming_strings is."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def build_sync_query(wanted: Mapping[str, str], current: Mapping[str, str]) -> str | None:
    """Return the SET statements that make a server match a client, or None.

    Only tracked parameters the client has a value for are compared, except
    search_path: PostgreSQL 15 does not report it, so ``current`` holds it only
    when ecluse set it, and a client that wants the default gets a RESET.
    """
    # Asked at every link: nearly always every parameter the client has is the
    # server's too, which this tests in C.
    if wanted.items() <= current.items() and \
            ("search_path" in wanted or "search_path" not in current):
        return None
    return sync_statements(wanted, current)


def sync_statements(wanted: Mapping[str, str], current: Mapping[str, str]) -> str | None:
    """build_sync_query, parameter by parameter."""
    stmts = []
    for name in TRACKED_PARAMETERS:
        want = wanted.get(name)
        if want is None:
            if name == "search_path" and name in current:
                stmts.append("RESET search_path")
            continue
        if current.get(name) == want:
            continue
        if name == "search_path":
            # A list: SET would take the whole text as one schema name.
            stmts.append("SELECT pg_catalog.set_config('search_path', "
                         f"{quote_literal(want)}, false)")
        else:
            stmts.append(f"SET {name} TO {quote_literal(want)}")
    if not stmts:
        return None
    return ";".join(stmts)
