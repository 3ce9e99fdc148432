"""Cheap looks at client SQL text for session state, without parsing it.

In transaction pooling a client's server goes back to the pool after each
transaction, so SQL that leaves state on that server (SET, temp tables,
session advisory locks, LISTEN, ...) must be noticed. This module only says
"may have": the session then asks the server itself (server/state.py) at the
end of the transaction. False positives cost one probe; a false negative for
a listed form is a bug.

Also here: the custom setting names a text may touch (the server cannot list
them, see find_custom_settings), and the few commands the session answers
itself (LISTEN, UNLISTEN, DEALLOCATE) parsed exactly with pglast.

Rules:
1. Pure functions, no I/O, no state.
2. may_leave_session_state runs on every Query and Parse text: no pglast there,
   about 0.5 us for a pgbench statement.
3. Every scan is linear in the text, whatever a client sends.
4. Repeats that must not backtrack are atomic groups, ``(?>x*)``, never the
   possessive ``x*+`` that means the same: CPython before 3.11.5 matches
   possessive repeats of groups wrongly (gh-100061, gh-106052), and Debian
   12's python3 is 3.11.2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import pglast
from pglast import ast
from pglast.parser import ParseError


def _block_comment(depth: int) -> str:
    # PostgreSQL block comments nest; a regex cannot count, so nesting is
    # spelled out to a fixed depth. Atomic repeats keep it linear.
    pattern = r"/\*(?>(?:[^*/]|\*(?!/)|/(?!\*))*)\*/"
    for _ in range(depth):
        pattern = rf"/\*(?>(?:[^*/]|\*(?!/)|/(?!\*)|{pattern})*)\*/"
    return pattern


COMMENT_NESTING = 4  # deeper nested comments before a keyword are not seen through
# A line comment ends at \n or \r (the scan.l "non_newline" class).
_FILLER = rf"(?:\s|{_block_comment(COMMENT_NESTING - 1)}|--(?>[^\n\r]*))"
_GAP0 = rf"(?>{_FILLER}*)"  # whitespace and comments, possibly none
_COMMENT_START = r"(?:/\*|--)"

# Linear time matters: a client can send megabytes of SQL. Only the gap after
# a ';' may hold comments, and the caller resumes after that gap, so no
# character is scanned twice. Every other gap is whitespace only (which cannot
# hold another anchor word), and a comment where such a gap could be counts
# as a hit: a false positive on odd SQL rather than a rescan.

# Statements whose first word alone means "may change session state". Besides
# the brief's list: DO (its body can SET or create temp tables out of sight),
# CREATE (a view over a temp table is silently temporary), and CLOSE/DROP,
# which may release a pin (a WITH HOLD cursor, a temp table) so that a pinned
# session knows when probing again is worthwhile.
_LEADING_WORDS = (
    "set", "reset", "prepare", "declare", "listen", "unlisten", "load", "discard",
    "deallocate", "do", "create", "close", "drop",
)
# SET LOCAL, SET TRANSACTION and SET CONSTRAINTS die with the transaction.
# "SET local.x = 1" is a session-level SET of the custom setting local.x, hence
# the check for a following dot.
_SET = (r"set\b(?!(?>\s+)(?:local|transaction|constraints)\b"
        rf"(?!(?>\s*)(?:\.|{_COMMENT_START})))")
_OTHER_WORDS = "|".join(w for w in _LEADING_WORDS if w != "set")
_WORD = rf"(?:{_SET}|(?:{_OTHER_WORDS})\b)"
# Matched against ";" + lowered text, so the text start is a statement start
# too. Without a comment the search fails through in C; with one it stops at
# the comment so that the caller can resume after the whole gap.
_STATEMENT_START = re.compile(
    rf";(?>\s*)(?:(?P<word>{_WORD})|(?={_COMMENT_START}){_GAP0}(?P<word2>{_WORD})?)", re.ASCII)
# pg_advisory_lock[_shared], pg_try_advisory_lock[_shared] and the unlock
# functions; pg_advisory_xact_lock and pg_try_advisory_xact_lock do not match.
_ADVISORY = re.compile(r"pg_(?:try_)?advisory_(?:un)?lock", re.ASCII)
_CREATE_OR_INTO_TEMP = re.compile(
    r"\b(?:create(?>\s+)(?:or(?>\s+)replace(?>\s+))?|into(?>\s+))"
    r"(?:(?:global|local)(?>\s+))?temp(?:orary)?\b"
    rf"|\b(?:create|into|global|local)(?>\s*){_COMMENT_START}", re.ASCII)


def may_leave_session_state(sql: str) -> bool:
    """Tell whether running sql may leave (or release) state on the server session.

    True for a statement starting with SET (not SET LOCAL/TRANSACTION/
    CONSTRAINTS), RESET, PREPARE, DECLARE, LISTEN, UNLISTEN, LOAD, DISCARD,
    DEALLOCATE, DO, CREATE, CLOSE or DROP, and for CREATE ... TEMP, INTO TEMP,
    pg_temp, set_config or a session advisory lock function anywhere in the
    text (string literals and comments included: false positives are cheap).
    Server-side code (functions, procedures) that changes state is not seen.
    Runs in time linear in the text.
    """
    # Lowering first lets every check below be a case-sensitive substring test
    # or a regex with a literal prefix, which CPython scans for in C: about
    # 0.5 us for a pgbench statement, against 7 us for one IGNORECASE search.
    low = ";" + sql.lower()
    # Statement starts, one search each (in line: this runs at every transaction).
    pos = 0
    while (m := _STATEMENT_START.search(low, pos)) is not None:
        if m.lastgroup is not None:
            return True
        pos = m.end()
    return (
        "set_config" in low
        or "pg_temp" in low
        or ("advisory_" in low and _ADVISORY.search(low) is not None)
        or ("temp" in low and _CREATE_OR_INTO_TEMP.search(low) is not None)
    )


# Quoted parts are bounded: PostgreSQL truncates names to 63 bytes anyway.
_IDENT_PART = (r'(?:[a-z_\u0080-\U0010ffff](?>[a-z0-9_$\u0080-\U0010ffff]*)'
               r'|"(?>(?:[^"]|""){1,256})")')
# Both branches succeed as soon as their first word matches and end by
# consuming the gap that follows, so finditer never rescans a comment.
# "SET LOCAL.x" and "SET LOCAL .x" name the setting local.x.
_SETTING_REF = re.compile(
    rf"\bset_config{_GAP0}"
    rf"(?P<call>\({_GAP0}(?P<literal>e?'(?P<value>(?>(?:[^']|''){{0,256}}))')?)?"
    rf"|\b(?:re)?set\b{_GAP0}(?:(?:session|local)\b(?!{_GAP0}\.){_GAP0})?"
    rf"(?P<name>{_IDENT_PART}(?>(?:{_GAP0}\.{_GAP0}{_IDENT_PART})*))?{_GAP0}",
    re.ASCII)
_NAME_PART = re.compile(_IDENT_PART, re.ASCII)


def _join_name(dotted: str) -> str:
    parts = []
    for m in _NAME_PART.finditer(dotted):
        part = m.group()
        parts.append(part[1:-1].replace('""', '"') if part.startswith('"') else part)
    return ".".join(parts)


def find_custom_settings(sql: str) -> frozenset[str] | None:
    """Return the custom (dotted) setting names that SET, RESET or set_config in sql name.

    PostgreSQL hides custom settings such as ``myapp.tenant`` from pg_settings,
    so the state probe can only report the ones it is asked about by name; this
    finds those names, lower-cased (setting names are case-insensitive).
    Returns None when a set_config call's name is not a plain literal (a
    parameter, a column, an expression): the names cannot be known, and the
    caller should treat the session as pinned. Built-in settings need no name:
    pg_settings shows them. Runs in linear time.
    """
    low = sql.lower()
    if "set" not in low:
        return frozenset()
    names: set[str] = set()
    for m in _SETTING_REF.finditer(low):
        if m.group("name") is not None:
            name = _join_name(m.group("name"))
        elif m.group("call") is None:
            continue  # a bare SET word, or "set_config" not called (a comment, a string)
        elif m.group("literal") is None or "\\" in m.group("value"):
            return None
        else:
            name = m.group("value").replace("''", "'")
        if "." in name:
            names.add(name)
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class Intercept:
    """A text made only of LISTEN, only of UNLISTEN or only of DEALLOCATE statements.

    ``names`` are the targets in statement order as PostgreSQL stores them
    (unquoted names lower-cased, long names truncated to 63 bytes), without the
    ``UNLISTEN *`` / ``DEALLOCATE ALL`` statements, which set ``all``. ``tags``
    has the CommandComplete tag of every statement, in order; for DEALLOCATE
    it also tells where the ALL statements stand ("DEALLOCATE ALL").
    """

    kind: Literal["listen", "unlisten", "deallocate"]
    names: tuple[str, ...]
    all: bool
    tags: tuple[str, ...]


INTERCEPT_MAX_LENGTH = 8192
INTERCEPT_MAX_COMMENTS = 64
_INTERCEPT_START = re.compile(rf"{_GAP0}(?:listen|unlisten|deallocate)\b",
                              re.ASCII | re.IGNORECASE)
_KINDS: dict[type, Literal["listen", "unlisten", "deallocate"]] = {
    ast.ListenStmt: "listen", ast.UnlistenStmt: "unlisten", ast.DeallocateStmt: "deallocate",
}


def _target(stmt: ast.Node) -> str | None:
    """Return a statement's name, or None for UNLISTEN * / DEALLOCATE ALL."""
    if isinstance(stmt, ast.DeallocateStmt):
        return None if stmt.isall or stmt.name is None else stmt.name
    return stmt.conditionname  # None for UNLISTEN *


def parse_intercept(sql: str) -> Intercept | None:
    """Parse a text the session may answer itself, or return None.

    Returns an Intercept only when the whole text is one or more statements of
    a single kind among LISTEN, UNLISTEN and DEALLOCATE; None for anything
    else, mixtures, syntax errors and empty text, and for texts too long or
    with too many comments to parse quickly (the server then answers them).
    """
    # A NUL cannot reach the server inside a query, and pglast would stop there.
    if _INTERCEPT_START.match(sql) is None or "\0" in sql:
        return None
    # libpg_query takes quadratic time over nested unterminated comments (2 s
    # for 20,000 "/*"); such texts go to the server instead.
    if len(sql) > INTERCEPT_MAX_LENGTH or sql.count("/*") > INTERCEPT_MAX_COMMENTS:
        return None
    try:
        stmts = pglast.parse_sql(sql)
    except (ParseError, ValueError):
        return None
    if not stmts:
        return None
    kind = _KINDS.get(type(stmts[0].stmt))
    if kind is None:
        return None
    names: list[str] = []
    tags: list[str] = []
    everything = False
    tag = kind.upper()
    for raw in stmts:
        stmt = raw.stmt
        if _KINDS.get(type(stmt)) != kind:
            return None
        name = _target(stmt)
        if name is None:
            everything = True
            tags.append("DEALLOCATE ALL" if kind == "deallocate" else tag)
        else:
            names.append(name)
            tags.append(tag)
    return Intercept(kind, tuple(names), everything, tuple(tags))
