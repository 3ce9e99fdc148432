"""Whether a client's SQL text may run on a read-only replica instead of the primary.

A hot standby refuses writes, row locks and sequence values, and knows
nothing of the primary's sessions, locks and WAL. This module looks at one
text (a simple-protocol Query, or the statement of a Parse) and says whether
a standby can answer it as the primary would. False costs only primary load;
True for SQL that writes or must run on the primary is a bug, so every doubt
answers False.

True only for SELECT (set operations, VALUES, TABLE and WITH included) with no
SELECT INTO, no FOR UPDATE/SHARE, no data-modifying CTE and no call of a
PRIMARY_FUNCTIONS function anywhere in it, for SHOW, and for EXPLAIN of such
a SELECT. What is out of sight stays out of sight: a user function or a view
that writes, an unlogged table (a standby cannot read one) look like any
other read.

Rules:
1. Pure and sans-IO: no sockets, no asyncio, no configuration. The only state
   is the verdict caches, bounded in entries and in text length.
2. Texts are parsed by libpg_query (pglast.parser.parse_sql_json) and the
   JSON tree is checked object by object as it is decoded, by its keys only:
   a key is a node type or a field name, never client text, so a string
   literal or a comment cannot pass for SQL. No substring tests on the text
   or on the JSON.
3. Anything not understood (parse errors, NUL, texts too long, too many
   comments, trees too deep for the JSON decoder) answers False.
4. Cost, measured on the dev box: 12-17 us for an uncached pgbench SELECT
   and 0.1 us for a cached one; pglast.parse_sql alone, which builds AST
   objects, costs 50-70 us for the same text.
5. Texts that differ only in the values of their constants share a verdict
   (literal_shape): the verdict rests on statement kinds, clauses and
   function names, never on a constant's value. So the texts of clients that
   inline their parameters (psycopg2, and Django on it; pgbench -M simple)
   are parsed once per shape, not once per value. A shape keeps apart what
   the grammar tells apart: strings, integers that fit in int4 (the
   scanner's ICONST, which some rules require: interval second(3)), larger
   integers and decimals (FCONST). A text the shape scanner could misread (a
   backslash, a dollar sign, a comment, U& escapes, control characters that
   stand for constants in a shape) has no shape and is parsed, as any
   uncached text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pglast.parser import ParseError, parse_sql_json

# Functions that write, take locks or sequence values, or act on one server's
# backends, session, WAL or replication state. Matched on the last part of the
# name, lower-cased: pg_catalog.NextVal is nextval. Older spellings (xlog) and
# contrib functions are listed too, since a name costs nothing.
PRIMARY_FUNCTIONS = frozenset({
    # Sequences: values come from the primary; currval/lastval are session state.
    "nextval", "setval", "currval", "lastval",
    # Advisory locks live in one server's lock table (PRIMARY_FUNCTION_PREFIXES
    # also covers any not named here).
    "pg_advisory_lock", "pg_advisory_lock_shared", "pg_advisory_unlock",
    "pg_advisory_unlock_shared", "pg_advisory_unlock_all", "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared",
    # Session and transaction state of one backend.
    "set_config", "setseed", "pg_notify", "pg_listening_channels", "pg_backend_pid",
    "pg_export_snapshot", "pg_stat_clear_snapshot", "pg_stat_force_next_flush",
    "txid_current", "txid_current_if_assigned", "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    # Questions about the server itself, asked to find the primary (libpq's
    # target_session_attrs asks pg_is_in_recovery() of servers before 14).
    "pg_is_in_recovery",
    # Other backends and the server process.
    "pg_terminate_backend", "pg_cancel_backend", "pg_log_backend_memory_contexts",
    "pg_reload_conf", "pg_rotate_logfile", "pg_rotate_logfile_old",
    # WAL, backups and recovery; the pg_current_wal/pg_walfile ones fail on a standby.
    "pg_logical_emit_message", "pg_switch_wal", "pg_switch_xlog", "pg_create_restore_point",
    "pg_start_backup", "pg_stop_backup", "pg_backup_start", "pg_backup_stop",
    "pg_current_wal_lsn", "pg_current_wal_insert_lsn", "pg_current_wal_flush_lsn",
    "pg_current_xlog_location", "pg_current_xlog_insert_location",
    "pg_current_xlog_flush_location", "pg_walfile_name", "pg_walfile_name_offset",
    "pg_xlogfile_name", "pg_xlogfile_name_offset", "pg_promote", "pg_wal_replay_pause",
    "pg_wal_replay_resume", "pg_xlog_replay_pause", "pg_xlog_replay_resume",
    "pg_log_standby_snapshot",
    # Replication slots and origins.
    "pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
    "pg_drop_replication_slot", "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot", "pg_replication_slot_advance",
    "pg_logical_slot_get_changes", "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_peek_changes", "pg_logical_slot_peek_binary_changes",
    "pg_sync_replication_slots", "pg_replication_origin_create", "pg_replication_origin_drop",
    "pg_replication_origin_advance", "pg_replication_origin_session_setup",
    "pg_replication_origin_session_reset", "pg_replication_origin_xact_setup",
    "pg_replication_origin_xact_reset",
    # Statistics resets (any pg_stat_reset* by prefix) and planner statistics writers.
    "pg_stat_reset", "pg_stat_reset_shared", "pg_stat_reset_single_table_counters",
    "pg_stat_reset_single_function_counters", "pg_stat_reset_slru",
    "pg_stat_reset_replication_slot", "pg_stat_reset_subscription_stats",
    "pg_stat_reset_backend_stats", "pg_stat_statements_reset",
    "pg_restore_relation_stats", "pg_clear_relation_stats", "pg_restore_attribute_stats",
    "pg_clear_attribute_stats",
    # Large objects: writers, and descriptors that belong to one session (any
    # lo_* by prefix).
    "lo_create", "lo_creat", "lo_import", "lo_export", "lo_unlink", "lo_put",
    "lo_from_bytea", "lo_open", "lo_close", "loread", "lowrite", "lo_lseek", "lo_lseek64",
    "lo_tell", "lo_tell64", "lo_truncate", "lo_truncate64",
    # dblink: remote writes and connections held by the session (any dblink* by prefix).
    "dblink", "dblink_exec", "dblink_connect", "dblink_connect_u", "dblink_disconnect",
    "dblink_open", "dblink_fetch", "dblink_close", "dblink_send_query", "dblink_get_result",
    # Catalog, index and file writers callable from a SELECT.
    "pg_import_system_collations", "pg_extension_config_dump", "brin_summarize_new_values",
    "brin_summarize_range", "brin_desummarize_range", "gin_clean_pending_list",
    "pg_truncate_visibility_map", "pg_file_write", "pg_file_rename", "pg_file_unlink",
    "pg_file_sync",
})
# Families matched by the start of the name, so that a member the list above
# misses (or a future one) still goes to the primary.
PRIMARY_FUNCTION_PREFIXES = (
    "pg_advisory_", "pg_try_advisory_", "pg_stat_reset", "lo_", "dblink",
    "pg_replication_origin_", "pg_logical_slot_", "pg_file_",
)
# SHOW of these describes the server answering, and clients ask it to find the
# primary (libpq before PostgreSQL 14 sends SHOW transaction_read_only).
PRIMARY_SETTINGS = frozenset({"transaction_read_only", "in_hot_standby"})

# Longer texts go to the primary unparsed. Parsing and decoding cost about
# 0.35 us per character of plain SQL (4 ms for a 12 KB SELECT) and up to
# 1.5 us for dense expressions (12 ms for 8 KB of "1, "), all of it on the
# event loop, so a judged text should be short enough to be cached too:
# above CACHE_MAX_LENGTH a text would be parsed again every time it is sent.
PARSE_MAX_LENGTH = 8192
# libpg_query takes quadratic time over nested unterminated comments (0.1 s
# for 5,000 "/*"); a text with more than this many comment starts is not parsed.
PARSE_MAX_COMMENTS = 64
CACHE_MAX_ENTRIES = 4096
CACHE_MAX_LENGTH = 8192

# Keys whose mere presence in a SELECT's tree makes it a writer: SELECT INTO,
# FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE, and data-modifying CTEs.
_WRITER_KEYS = frozenset({
    "intoClause", "lockingClause", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt",
})
_WATCHED_KEYS = _WRITER_KEYS | {"FuncCall"}

_verdicts: dict[str, bool] = {}
_shape_verdicts: dict[str, bool] = {}

# Rule 5. PostgreSQL's identifier characters: ASCII letters, digits, _, $ and
# every non-ASCII character (its scanner's ident_cont).
_IDENT_CHAR = "A-Za-z0-9_$\x80-\U0010ffff"
# Kept as they are: a double-quoted identifier (so a quote inside it starts
# nothing) and a bit or hex string (B'...', X'...': no doubled quotes inside,
# and the prefix counts only where no identifier goes on before it). Replaced:
# a string constant, or a decimal number standing alone (not part of an
# identifier; 1.5e3, 0x1F or 1_000 stay as they are, which only makes the
# shape more particular). Matched left to right, so each quote is seen in the
# token it belongs to; without backslashes, comments and dollar quotes, these
# are the scanner's only quoted tokens. Each look-behind comes after a
# branch's first character, so that every branch starts with a character
# class, which lets the regex engine skip ahead.
_SHAPE_TOKEN = re.compile(
    rf'("(?:[^"]|"")*"|[bBxX](?<![{_IDENT_CHAR}][bBxX])\'[^\']*\')'
    r"|'(?:[^']|'')*'"
    rf"|[0-9](?<![{_IDENT_CHAR}.][0-9])(?>[0-9]*)(?:\.(?>[0-9]+))?(?![{_IDENT_CHAR}.'\"])")
# What the scanner above could misread: backslash escapes (E'', or any string
# under standard_conforming_strings = off), dollar quotes and $n, comments,
# U&'...' and U&"..." (their escapes are decoded, and may fail, in the parse);
# and the control characters that stand for constants in a shape.
_SHAPE_UNSAFE = ("\\", "$", "--", "/*", "&", "\0", "\1", "\2", "\3")
_STRING, _INT4, _BIGGER_INT, _DECIMAL = "\0", "\1", "\2", "\3"


def _shape_token(match: re.Match[str]) -> str:
    ident = match.group(1)
    if ident is not None:
        return ident
    text = match.group()
    if text[0] == "'":
        return _STRING
    if "." in text:
        return _DECIMAL
    # Compared as text: int() refuses very long digit strings.
    digits = text.lstrip("0")
    if len(digits) < 10 or (len(digits) == 10 and digits <= "2147483647"):
        return _INT4
    return _BIGGER_INT


def literal_shape(sql: str) -> str | None:
    """``sql`` with each string and number constant replaced by a control
    character naming its kind, or None.

    Two texts of the same shape differ at most in the values of such
    constants (rule 5). None for a text the scanner could misread.
    """
    for unsafe in _SHAPE_UNSAFE:
        if unsafe in sql:
            return None
    return _SHAPE_TOKEN.sub(_shape_token, sql)


class _Refused(Exception):
    """Raised from inside the JSON decoder at the first node that needs the primary."""


def _check_node(node: dict[str, Any]) -> dict[str, Any]:
    """Refuse a decoded JSON object that is, or directly holds, a writer.

    The decoder calls this for every object, innermost first, so together the
    calls see every node of every statement. An object is either a node
    wrapper keyed by its type ({"FuncCall": {...}}) or a struct whose keys are
    field names ("intoClause" is inlined in its SelectStmt); keys are never
    client text.
    """
    # One C-level set test per object; the rest only for the rare hit.
    if not _WATCHED_KEYS.isdisjoint(node) and (
            not _WRITER_KEYS.isdisjoint(node) or _calls_primary_function(node["FuncCall"])):
        raise _Refused
    return node


# Checking while decoding costs about 2 us over a plain json.loads for a
# pgbench SELECT; a second pass over the decoded tree cost 5 us, and as much
# as the decoding itself for big trees.
_decoder = json.JSONDecoder(object_hook=_check_node)


def sql_is_read_only(sql: str) -> bool:
    """Tell whether sql may be sent to a read-only replica instead of the primary.

    :param sql: one Query message's text or one Parse message's statement.
    Returns True only if every statement in sql is a read-only SELECT, SHOW or
    EXPLAIN of one (see the module docstring); False for anything else,
    including empty text and text that does not parse. Repeated texts of up to
    CACHE_MAX_LENGTH characters are answered from a bounded cache.
    """
    cacheable = len(sql) <= CACHE_MAX_LENGTH
    if not cacheable:
        return sql_is_read_only_uncached(sql)
    verdict = _verdicts.get(sql)
    if verdict is not None:
        return verdict
    shape = literal_shape(sql)
    if shape is not None:
        verdict = _shape_verdicts.get(shape)
    if verdict is None:
        verdict = sql_is_read_only_uncached(sql)
        if shape is not None:
            remember(_shape_verdicts, shape, verdict, CACHE_MAX_ENTRIES)
    remember(_verdicts, sql, verdict, CACHE_MAX_ENTRIES)
    return verdict


def remember(cache: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """Put ``key`` in a cache of at most ``limit`` entries (routing/shardkeys.py's too).

    Clearing beats evicting one by one: O(1) amortized, and hot texts come back
    after one parse each.
    """
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value


def sql_is_read_only_uncached(sql: str) -> bool:
    """Judge sql like sql_is_read_only, without reading or filling the cache."""
    # A NUL cannot reach the server inside a query, and libpg_query would stop there.
    if (not sql or len(sql) > PARSE_MAX_LENGTH or "\0" in sql
            or sql.count("/*") > PARSE_MAX_COMMENTS):
        return False
    try:
        tree = _decoder.decode(parse_sql_json(sql))
    # ValueError: a lone surrogate cannot be encoded to UTF-8. RecursionError:
    # json's C decoder gives up on deep trees (a chain of a few hundred "+").
    except (_Refused, ParseError, ValueError, RecursionError):
        return False
    # No writer anywhere in the text: what is left is the kind of each statement.
    stmts = tree.get("stmts")
    if not stmts:
        return False  # empty text, only comments, only semicolons
    return all(_statement_is_read_only(raw.get("stmt")) for raw in stmts)


def _statement_is_read_only(stmt: Any) -> bool:
    """Judge one top-level statement node, {"NodeType": {fields}}, already free of writers."""
    if type(stmt) is not dict or len(stmt) != 1:
        return False
    ((kind, body),) = stmt.items()
    if kind == "SelectStmt":
        return True
    if kind == "VariableShowStmt":
        # Setting names are case-insensitive, quoted or not.
        return str(body.get("name", "")).lower() not in PRIMARY_SETTINGS
    if kind == "ExplainStmt":
        # EXPLAIN ANALYZE runs its statement; plain EXPLAIN of a writer is
        # harmless but rare enough to leave to the primary.
        return _statement_is_read_only(body.get("query"))
    return False


def _calls_primary_function(call: Any) -> bool:
    """Tell whether a FuncCall node's body names a PRIMARY_FUNCTIONS function."""
    try:
        name = call["funcname"][-1]["String"]["sval"].lower()
    except (TypeError, KeyError, IndexError, AttributeError):
        return True  # a shape we do not know: the primary answers
    return name in PRIMARY_FUNCTIONS or name.startswith(PRIMARY_FUNCTION_PREFIXES)
