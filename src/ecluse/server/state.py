"""What a client left on its server session: one probe query and what to do with its answer.

After a transaction whose SQL may have left session state (frontend/sqlscan.py),
the session runs the probe on the server, the ground truth. Its answer splits
in two: settings, which can be replayed on the client's next server
(build_settings_sync), and pins, state that cannot move (advisory locks, temp
objects, SQL prepared statements, WITH HOLD cursors, LISTEN), which keep the
client on this server while they exist.

Rules:
1. Sans-IO: SQL text out, DataRow values in.
2. The probe must be safe whatever the session did: every name and operator
   is schema-qualified, since the client may have put its own schemas (and
   their functions and operators) first in search_path.
3. The probe's answer is independent of client_encoding: one hex column of
   UTF-8 JSON, so no character can fail conversion and break the probe.

PostgreSQL facts the design rests on (checked on 15):
- pg_settings hides custom settings ("myapp.tenant", placeholders), role and
  session_authorization (GUC_NO_SHOW_ALL). The probe asks for role and
  session_authorization directly; custom settings only by name
  (build_probe_sql), and reports them only when not empty, since RESET leaves
  an empty placeholder behind rather than removing it.
- Settings that ecluse itself SETs (client_encoding, TimeZone, ... in
  server/params.py) have source 'session' too and are reported like the
  client's own.
- RESET ALL leaves role and session_authorization alone; DISCARD ALL resets
  them too and drops every pin.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ecluse.server.params import quote_literal

_EQ = "OPERATOR(pg_catalog.=)"
_NE = "OPERATOR(pg_catalog.<>)"
_NAMEDATALEN = 64

# Session-level settings, as current_setting() spells them (with units), so
# that set_config() takes them back. role and session_authorization are hidden
# from pg_settings; session_authorization counts as set when the session user
# is no longer the user who logged in (pg_stat_activity keeps the latter).
_SETTINGS_ROWS = f"""\
SELECT s.name, pg_catalog.current_setting(s.name) AS value
  FROM pg_catalog.pg_settings s WHERE s.source {_EQ} 'session'
UNION ALL
SELECT 'role', pg_catalog.current_setting('role')
 WHERE pg_catalog.current_setting('role') {_NE} 'none'
UNION ALL
SELECT 'session_authorization', pg_catalog.current_setting('session_authorization')
  FROM pg_catalog.pg_stat_activity a
 WHERE a.pid {_EQ} pg_catalog.pg_backend_pid() AND a.usename {_NE} SESSION_USER"""

_CUSTOM_ROWS = f"""
UNION ALL
SELECT c.name, c.value FROM (
  SELECT v.name, pg_catalog.current_setting(v.name, true) AS value FROM (VALUES {{names}}) v(name)
) c
 WHERE c.value {_NE} '' AND NOT EXISTS (
  SELECT 1 FROM pg_catalog.pg_settings s WHERE pg_catalog.lower(s.name) {_EQ} c.name)"""

# Every object created in the temp schema, and only those (not the indexes,
# row types or array types that come with them), depends on the schema itself;
# pg_depend's reference index finds them without scanning the catalogs.
_TEMP_OBJECTS = f"""\
SELECT i.type AS kind, COALESCE(i.name, i.identity) AS name
  FROM pg_catalog.pg_depend d,
       LATERAL pg_catalog.pg_identify_object(d.classid, d.objid, d.objsubid) i
 WHERE d.refclassid {_EQ} 'pg_catalog.pg_namespace'::pg_catalog.regclass
   AND d.refobjid {_EQ} pg_catalog.pg_my_temp_schema()
   AND d.deptype {_EQ} 'n'"""

# At the end of a transaction the only advisory locks left are session-level:
# pg_locks cannot tell the two apart, so the probe must run outside a
# transaction block.
_PROBE_TEMPLATE = f"""\
SELECT pg_catalog.encode(pg_catalog.convert_to(pg_catalog.json_build_object(
 'settings', (SELECT pg_catalog.json_object_agg(x.name, x.value) FROM (
{_SETTINGS_ROWS}{{custom}}) x),
 'search_path', pg_catalog.current_setting('search_path'),
 'advisory_locks', (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(
     l.classid::pg_catalog.int8, l.objid::pg_catalog.int8, l.objsubid, l.mode)
     ORDER BY l.classid, l.objid, l.objsubid)
   FROM pg_catalog.pg_locks l
  WHERE l.locktype {_EQ} 'advisory' AND l.pid {_EQ} pg_catalog.pg_backend_pid()),
 'temp_objects', (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(o.kind, o.name)
     ORDER BY o.kind, o.name) FROM (
{_TEMP_OBJECTS}) o),
 'prepared_statements', (SELECT pg_catalog.json_agg(p.name ORDER BY p.name)
   FROM pg_catalog.pg_prepared_statements p WHERE p.from_sql),
 'holdable_cursors', (SELECT pg_catalog.json_agg(c.name ORDER BY c.name)
   FROM pg_catalog.pg_cursors c WHERE c.is_holdable),
 'listening_channels', (SELECT pg_catalog.json_agg(ch ORDER BY ch)
   FROM pg_catalog.pg_listening_channels() ch)
)::pg_catalog.text, 'UTF8'), 'hex')"""


def build_probe_sql(custom_names: Iterable[str] = ()) -> str:
    """Return the probe query, also asking for the given custom setting names.

    The names are those find_custom_settings (frontend/sqlscan.py) found in the
    client's SQL plus those the server is known to hold; they are lower-cased
    and quoted here, so any text is safe. The query is one simple-protocol
    SELECT returning one row of one column, for parse_probe.
    """
    names = sorted({name.lower() for name in custom_names})
    custom = ""
    if names:
        values = ", ".join(f"({quote_literal(name)})" for name in names)
        custom = _CUSTOM_ROWS.format(names=values)
    return _PROBE_TEMPLATE.format(custom=custom)


PROBE_SQL: str = build_probe_sql()


@dataclass(slots=True)
class SessionState:
    """What the probe found on one server session.

    ``settings`` maps setting names to values that set_config() accepts;
    ``pins`` are short human reasons why the client cannot leave this server
    (empty: it can).
    """

    settings: dict[str, str] = field(default_factory=dict)
    search_path: str = ""
    pins: list[str] = field(default_factory=list)


def _strings(doc: dict[str, Any], key: str) -> list[str]:
    value = doc.get(key)
    if value is None:  # json_agg over no rows
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"malformed state probe: {key} is not a list of strings")
    return value


def _pairs(doc: dict[str, Any], key: str, width: int) -> list[list[Any]]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(
            isinstance(v, list) and len(v) == width for v in value):
        raise ValueError(f"malformed state probe: {key} is not a list of {width}-tuples")
    return value


def _signed32(n: int) -> int:
    return n - (1 << 32) if n >= 1 << 31 else n


def _describe_lock(classid: Any, objid: Any, objsubid: Any, mode: Any) -> str:
    """Name an advisory lock as the client took it: one bigint key, or two int keys."""
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 32
               for n in (classid, objid, objsubid)) or not isinstance(mode, str):
        raise ValueError("malformed state probe: bad advisory lock row")
    if objsubid == 1:
        key = classid << 32 | objid
        label = str(key - (1 << 64) if key >= 1 << 63 else key)
    elif objsubid == 2:
        label = f"({_signed32(classid)}, {_signed32(objid)})"
    else:
        label = f"{classid}/{objid}/{objsubid}"
    prefix = "shared " if mode == "ShareLock" else ""
    return f"{prefix}advisory lock {label}"


def _decode_document(row: Sequence[bytes | None]) -> dict[str, Any]:
    if len(row) != 1 or not isinstance(row[0], bytes | bytearray):
        raise ValueError("malformed state probe: expected one non-null column")
    try:
        doc = json.loads(bytes.fromhex(row[0].decode("ascii")).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"malformed state probe: {err}") from None
    if not isinstance(doc, dict):
        raise ValueError("malformed state probe: not a JSON object")
    return doc


def parse_probe(row: Sequence[bytes | None]) -> SessionState:
    """Turn the probe's DataRow values into a SessionState.

    ``row`` is what decode_data_row returns for the probe's single row.
    Raises ValueError when the row is not the probe's answer.
    """
    doc = _decode_document(row)
    settings = doc.get("settings")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict) or not all(
            isinstance(v, str) for v in settings.values()):
        raise ValueError("malformed state probe: settings is not an object of strings")
    search_path = doc.get("search_path")
    if not isinstance(search_path, str):
        raise ValueError("malformed state probe: search_path is not a string")
    pins = [_describe_lock(*lock) for lock in _pairs(doc, "advisory_locks", 4)]
    for kind, name in _pairs(doc, "temp_objects", 2):
        if not isinstance(kind, str) or not isinstance(name, str):
            raise ValueError("malformed state probe: bad temporary object row")
        pins.append(f"temporary {kind} {name}")
    pins += [f"prepared statement {name}" for name in _strings(doc, "prepared_statements")]
    pins += [f"WITH HOLD cursor {name}" for name in _strings(doc, "holdable_cursors")]
    pins += [f"LISTEN on channel {name}" for name in _strings(doc, "listening_channels")]
    return SessionState(settings=settings, search_path=search_path, pins=pins)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _reset_statement(name: str) -> str:
    """Return the statement that puts one setting back to its default."""
    parts = name.split(".")
    # The parser truncates identifiers to 63 bytes, and custom setting names
    # are dotted identifiers, so each part is quoted on its own. A part it
    # would truncate (or an empty one) can only be emptied, which the probe
    # reports as unset.
    if all(0 < len(p.encode()) < _NAMEDATALEN for p in parts):
        return "RESET " + ".".join(_quote_ident(p) for p in parts)
    return f"SELECT pg_catalog.set_config({quote_literal(name)}, '', false)"


def _sync_order(name: str) -> tuple[int, str]:
    # Setting session_authorization resets role, and both change what the
    # session may set, so the first goes first and the second last.
    lowered = name.lower()
    if lowered == "session_authorization":
        return (0, lowered)
    if lowered == "role":
        return (2, lowered)
    return (1, lowered)


def build_settings_sync(wanted: Mapping[str, str], current: Mapping[str, str]) -> str | None:
    """Return the SQL that gives a server session exactly the ``wanted`` settings.

    ``current`` is what the server has (its last probe, or what was last synced
    to it). Each changed or new setting is set with set_config(..., false) and
    each setting no longer wanted is RESET; the statements are joined with ';'
    for one simple Query. Returns None when nothing differs.
    """
    stmts = []
    for name in sorted(set(wanted) | set(current), key=_sync_order):
        if name in wanted:
            value = wanted[name]
            if current.get(name) != value:
                stmts.append(f"SELECT pg_catalog.set_config("
                             f"{quote_literal(name)}, {quote_literal(value)}, false)")
        else:
            stmts.append(_reset_statement(name))
    return ";".join(stmts) if stmts else None
