"""Which shard a SQL text names: sharding key values, routing hints and shard SETs.

Which shard a key value belongs to is routing/shardhash.py's. A text names a shard
through the values it compares the key column with (find_keys), through a
hint comment at its start (comment_hint), or by being a SET of the client's
shard (parse_shard_set). Naming no key is always safe here; naming a value
the rows are not restricted to sends a query to the wrong shard, so every
doubt names nothing.

Rules:
1. Pure and sans-IO: no sockets, no asyncio, no configuration. The only state
   is find_keys' result cache, bounded in entries and in text length.
2. Texts are parsed by libpg_query (pglast.parser.parse_sql_json) with
   routing/readonly.py's guards: NUL, texts over PARSE_MAX_LENGTH characters,
   more than PARSE_MAX_COMMENTS comment starts or a parse error give None.
3. find_keys looks inside the top-level SELECT, INSERT, UPDATE and DELETE
   statements of the text (and EXPLAIN of one), and there at every one of
   these, however nested: set operation arms, CTEs, subqueries. Other
   statements (COPY, DDL, MERGE, DECLARE, PREPARE, ...) name no key.
4. A statement's WHERE, and the ON of each inner join in its FROM, name the
   values of their conjuncts (the operands of the top-level ANDs) of the
   form key = v, v = key and key IN (v, ...) (= also as
   OPERATOR(pg_catalog.=)), where v is an integer or string constant, a $n
   parameter, a unary minus or plus of an integer, or a cast of these to
   int2, int4, int8, text or varchar (no type modifier). Integers are named
   in decimal, whatever the spelling (0x1F and 1_000 are PostgreSQL 16's);
   a cast of a string to an integer type names the integer the string reads
   as (parse_int8), and nothing when the string does not read as one; a
   string is named as its text, unquoted. A comparison under OR,
   NOT or any other expression restricts nothing and names nothing; so does
   an IN list holding anything but such values, and the ON of an outer join,
   which keeps the rows of one side whatever it says.
5. INSERT INTO t (cols) VALUES rows names each row's value in the key
   column's position when it is such a v; other rows name nothing. An INSERT
   without a column list names nothing; its SELECT follows rule 4; ON
   CONFLICT is not looked at.
6. A column reference is the key when its last name part is KeyColumn.column
   and, if qualified, its qualifier is a name the statement's own FROM,
   USING or target gives (a reference to an enclosing statement's row is a
   constant here and restricts no row). With KeyColumn.table set it must
   also resolve to that table, compared by relation name whatever the
   schema: qualified by the name the statement gives it (its own when not
   aliased, else the alias), or unqualified in a statement whose FROM,
   target and USING together hold that one table and nothing else. A CTE of
   the table's name hides the table; an alias with column names, a subquery
   or a function is never the table.
7. Keys lists values in the order they appear in the text, each once
   (first appearance); likewise params. Values of all statements of a text
   and of every arm of a set operation are put together: a statement or an
   arm naming no key adds nothing, it does not empty the result.
8. Cost, measured on the dev box (pglast 8.8, 2 CPUs): find_keys of the
   uncached pgbench SELECT "SELECT abalance FROM pgbench_accounts WHERE
   aid = 42;" costs 15 us (parse_sql_json 3 us, json.loads 6 us, the rest
   6 us; readonly.py's verdict costs 12 us there), a cached one 0.2-0.3 us,
   one with an IN (SELECT ...) subquery 43 us; pglast.parse_sql, building
   AST objects, costs 46 us for the pgbench SELECT alone; comment_hint and
   parse_shard_set 0.2 us for a text that is neither a hint nor a SET.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from pglast.parser import ParseError, parse_sql_json

from ecluse.routing.readonly import PARSE_MAX_COMMENTS, PARSE_MAX_LENGTH, remember
from ecluse.routing.shardhash import parse_int8

# What PostgreSQL's scanner (and int8 input, isspace() in the C locale) skips.
_SQL_SPACE = " \t\n\r\f\v"
CACHE_MAX_ENTRIES = 4096
CACHE_MAX_LENGTH = 8192

# ---------------------------------------------------------------------------
# The key column setting
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class KeyColumn:
    """The sharding key column, named as PostgreSQL folds identifiers."""
    column: str
    table: str | None  # None: the column of that name in any table


# An identifier as PostgreSQL's scanner reads one: quoted ("" for a quote
# inside), or unquoted starting with a letter, _ or any non-ASCII character.
_NAME_PART = re.compile(
    r'[ \t\n\r\f\v]*(?:"((?:[^"]|"")+)"|([A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*))'
    r"[ \t\n\r\f\v]*(\.|$)")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def parse_key_column(setting: str) -> KeyColumn:
    """Read a sharding key setting: column, table.column or schema.table.column.

    Unquoted parts are lower-cased (ASCII letters only, as PostgreSQL does in
    a UTF-8 database); a schema part is accepted and dropped, since tables are
    compared by relation name only. Raises ValueError saying what is wrong.
    """
    parts: list[str] = []
    pos = 0
    while True:
        match = _NAME_PART.match(setting, pos)
        if match is None:
            raise ValueError(f"sharding key column {setting!r}: expected column, table.column "
                             'or schema.table.column, identifiers quoted with " if need be')
        quoted, bare, dot = match.groups()
        part = quoted.replace('""', '"') if quoted is not None else bare.translate(_ASCII_LOWER)
        if "\0" in part:
            raise ValueError(f"sharding key column {setting!r}: NUL in a name")
        parts.append(part)
        pos = match.end()
        if not dot:
            break
    if len(parts) > 3:
        raise ValueError(f"sharding key column {setting!r}: more than schema.table.column")
    return KeyColumn(parts[-1], parts[-2] if len(parts) > 1 else None)


# ---------------------------------------------------------------------------
# find_keys
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Keys:
    """The key values a text names (rule 7): constants as text, and $n numbers."""
    values: tuple[str, ...]
    params: tuple[int, ...]


NO_KEYS = Keys((), ())
_INT_TYPES = frozenset({"int2", "int4", "int8"})
_TEXT_TYPES = frozenset({"text", "varchar"})
_STATEMENTS = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt"})
# Integer literals the scanner could not fit in an int4 arrive as Float nodes.
_INTEGER_LITERAL = re.compile(
    r"(-?)(?:0[xX]([0-9a-fA-F_]+)|0[oO]([0-7_]+)|0[bB]([01_]+)|([0-9][0-9_]*))")
_NESTING_MARKERS = ('"SubLink"', '"RangeSubselect"', '"CommonTableExpr"')
_MISSING = object()
_LOCATION = itemgetter(0)

_results: dict[tuple[str, KeyColumn], Keys | None] = {}


def find_keys(sql: str, key: KeyColumn) -> Keys | None:
    """Return the sharding key values sql names (module rules 3-7).

    None when sql cannot be parsed (rule 2): the caller then treats it as
    naming no key. Keys((), ()) when it parses but names no key. Texts of up
    to CACHE_MAX_LENGTH characters are answered from a bounded cache.
    """
    cacheable = len(sql) <= CACHE_MAX_LENGTH
    if cacheable:
        found = _results.get((sql, key), _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
    found = find_keys_uncached(sql, key)
    if cacheable:
        remember(_results, (sql, key), found, CACHE_MAX_ENTRIES)
    return found


def find_keys_uncached(sql: str, key: KeyColumn) -> Keys | None:
    """Find the keys of sql like find_keys, without reading or filling the cache."""
    if len(sql) > PARSE_MAX_LENGTH or "\0" in sql or sql.count("/*") > PARSE_MAX_COMMENTS:
        return None
    try:
        text = parse_sql_json(sql)
        tree = json.loads(text)
        # A statement nested in another is always under one of these nodes
        # (set operation arms and an INSERT's SELECT are visited directly).
        # Client text can put these words in the JSON only as a string value
        # (its own quotes are escaped), so the test errs on the side of walking.
        finder = _Finder(key, any(marker in text for marker in _NESTING_MARKERS))
        for raw in tree.get("stmts", ()):
            finder.visit_top(raw.get("stmt"))
    # ValueError: a lone surrogate cannot be encoded to UTF-8. RecursionError:
    # a tree too deep for json's decoder or for the walk.
    except (ParseError, ValueError, RecursionError):
        return None
    return finder.keys()


@dataclass(slots=True)
class _Scope:
    """The names one statement gives to FROM items (rule 6).

    names maps a visible name to the relation it stands for, None when it is
    not a plain table; sole is the relation of a statement whose FROM, target
    and USING hold exactly one plain table; ctes the CTE names it defines.
    """
    names: dict[str, str | None]
    sole: str | None
    ctes: frozenset[str]


def _sval(node: Any) -> str | None:
    """The text of a String node, or None."""
    if type(node) is dict and "String" in node:
        return node["String"].get("sval", "")
    return None


class _Finder:
    """One walk over a parsed text, collecting (location, value) pairs."""

    __slots__ = ("key", "nested", "params", "values")

    def __init__(self, key: KeyColumn, nested: bool) -> None:
        self.key = key
        self.nested = nested  # False: no statement is nested in another, do not look
        self.values: list[tuple[int, str]] = []
        self.params: list[tuple[int, int]] = []

    def keys(self) -> Keys:
        if not self.values and not self.params:
            return NO_KEYS
        return Keys(_first_each(self.values), _first_each(self.params))

    def visit_top(self, stmt: Any) -> None:
        """Look inside one top-level statement node if it is one rule 3 reads."""
        if type(stmt) is not dict:
            return
        if "ExplainStmt" in stmt:
            stmt = stmt["ExplainStmt"].get("query")
            if type(stmt) is not dict:
                return
        for kind, body in stmt.items():
            if kind in _STATEMENTS:
                self.visit_statement(kind, body, ())

    def walk(self, node: Any, chain: tuple[_Scope, ...], skip: tuple[str, ...] = ()) -> None:
        """Find the statements nested anywhere in node but in its skip fields.

        chain: the scopes of the statements node is in, innermost last.
        """
        if type(node) is dict:
            for field, value in node.items():
                if field in _STATEMENTS:
                    self.visit_statement(field, value, chain)
                elif (type(value) is dict or type(value) is list) and field not in skip:
                    self.walk(value, chain)
        elif type(node) is list:
            for item in node:
                if type(item) is dict or type(item) is list:
                    self.walk(item, chain)

    def visit_statement(self, kind: str, body: dict[str, Any], outer: tuple[_Scope, ...]) -> None:
        ctes = _cte_names(body.get("withClause"))
        if kind == "SelectStmt" and body.get("op", "SETOP_NONE") != "SETOP_NONE":
            # A set operation: its arms are inlined SelectStmt bodies with scopes of their own.
            chain = (*outer, _Scope({}, None, ctes))
            for side in ("larg", "rarg"):
                arm = body.get(side)
                if type(arm) is dict:
                    self.visit_statement("SelectStmt", arm, chain)
            if self.nested:
                self.walk(body, chain, ("larg", "rarg"))
            return
        if kind == "InsertStmt":
            self.visit_insert(body, outer, ctes)
            return
        all_ctes = ctes.union(*(scope.ctes for scope in outer))
        items: list[Any] = []
        if kind != "SelectStmt":
            # The target of UPDATE and DELETE is always a table, never a CTE.
            items.append({"target": body.get("relation")})
        items += body.get("fromClause") or body.get("usingClause") or ()
        names: dict[str, str | None] = {}
        relations: list[str | None] = []
        join_quals: list[Any] = []
        for item in items:
            _add_from_item(item, all_ctes, names, relations, join_quals)
        sole = relations[0] if len(relations) == 1 else None
        chain = (*outer, _Scope(names, sole, ctes))
        for clause in (body.get("whereClause"), *join_quals):
            if clause is not None:
                self.collect(clause, chain)
        if self.nested:
            self.walk(body, chain)

    def visit_insert(self, body: dict[str, Any], outer: tuple[_Scope, ...],
                     ctes: frozenset[str]) -> None:
        """Rule 5; the INSERT's own SELECT cannot see its target, so gets no scope of it."""
        relation = body.get("relation") or {}
        chain = (*outer, _Scope({}, None, ctes))
        select = (body.get("selectStmt") or {}).get("SelectStmt") or {}
        position = _insert_position(body.get("cols"), self.key.column)
        if position is not None and self.key.table in (None, relation.get("relname")):
            for row in select.get("valuesLists") or ():
                items = (row.get("List") or {}).get("items") or ()
                if position < len(items):
                    self.add_value(items[position])
        if select:
            self.visit_statement("SelectStmt", select, chain)
        if self.nested:
            self.walk(body, chain, ("selectStmt", "onConflictClause"))

    def collect(self, clause: Any, chain: tuple[_Scope, ...]) -> None:
        """Take the key comparisons among the top-level conjuncts of clause (rule 4)."""
        for conjunct in _conjuncts(clause):
            expr = conjunct.get("A_Expr") if type(conjunct) is dict else None
            if expr is None or _operator(expr) != "=":
                continue
            left, right = expr.get("lexpr"), expr.get("rexpr")
            if expr.get("kind") == "AEXPR_OP" and left is not None:
                if self.is_key(left, chain):
                    self.add_value(right)
                elif self.is_key(right, chain):
                    self.add_value(left)
            elif expr.get("kind") == "AEXPR_IN" and self.is_key(left, chain):
                items = (right.get("List") or {}).get("items") if type(right) is dict else None
                # One item that is not a value and the list restricts nothing known.
                if items and all(_resolve(item) is not None for item in items):
                    for item in items:
                        self.add_value(item)

    def is_key(self, node: Any, chain: tuple[_Scope, ...]) -> bool:
        """Tell whether node is a reference to the key column (rule 6)."""
        ref = node.get("ColumnRef") if type(node) is dict else None
        if ref is None:
            return False
        fields = ref.get("fields") or ()
        if not fields or _sval(fields[-1]) != self.key.column:
            return False
        table, scope = self.key.table, chain[-1]
        if len(fields) == 1:
            return table is None or scope.sole == table
        # A name from an enclosing statement is a constant to this one: its
        # comparison restricts no row of either (NOT EXISTS (... u.id = 5)).
        qualifier = _sval(fields[-2])
        return qualifier in scope.names and (table is None or scope.names[qualifier] == table)

    def add_value(self, node: Any) -> None:
        resolved = _resolve(node)
        if resolved is None:
            return
        location = _leaf_location(node)
        if resolved[0] == "param":
            self.params.append((location, resolved[1]))
        else:
            self.values.append((location, resolved[1]))


def _first_each(found: list[tuple[int, Any]]) -> tuple[Any, ...]:
    """The values of (location, value) pairs in text order, each value once."""
    if len(found) < 2:
        return (found[0][1],) if found else ()
    found.sort(key=_LOCATION)
    return tuple(dict.fromkeys(value for _, value in found))


def _cte_names(with_clause: Any) -> frozenset[str]:
    if type(with_clause) is not dict:
        return frozenset()
    return frozenset(cte["CommonTableExpr"].get("ctename", "")
                     for cte in with_clause.get("ctes") or () if "CommonTableExpr" in cte)


def _add_from_item(item: Any, ctes: frozenset[str], names: dict[str, str | None],
                   relations: list[str | None], join_quals: list[Any]) -> None:
    """Record the names a FROM item makes visible, and the ON of its inner joins.

    relations gets one entry per FROM item leaf: the table's name for a plain
    table, None for anything else. {"target": RangeVar} is an UPDATE or
    DELETE target, which a CTE never hides.
    """
    if type(item) is not dict:
        return
    target = "target" in item
    if "RangeTableSample" in item:
        item = item["RangeTableSample"].get("relation") or {}
    if target or "RangeVar" in item:
        var = (item["target"] if target else item["RangeVar"]) or {}
        alias = var.get("alias") or {}
        relname = var.get("relname", "")
        relation: str | None = relname
        if alias.get("colnames") or (not target and "schemaname" not in var and relname in ctes):
            relation = None  # columns renamed, or a CTE of that name
        names[alias.get("aliasname", relname)] = relation
        relations.append(relation)
    elif "JoinExpr" in item:
        join = item["JoinExpr"]
        inner_names = names if "alias" not in join else {}
        for side in ("larg", "rarg"):
            _add_from_item(join.get(side), ctes, inner_names, relations, join_quals)
        if "alias" in join:
            names[join["alias"].get("aliasname", "")] = None
        # An outer join keeps the rows of its preserved side whatever ON says.
        if join.get("jointype", "JOIN_INNER") == "JOIN_INNER" and join.get("quals") is not None:
            join_quals.append(join["quals"])
    else:
        # A subquery, a function, XMLTABLE...: named by its alias, never the table.
        body = next(iter(item.values()), None)
        alias = body.get("alias") if type(body) is dict else None
        if type(alias) is dict:
            names[alias.get("aliasname", "")] = None
        relations.append(None)


def _insert_position(cols: Any, column: str) -> int | None:
    """The position of column in an INSERT column list, None if it is not there."""
    for position, col in enumerate(cols or ()):
        target = col.get("ResTarget") or {}
        # An element of an array or a field of a composite is not the column.
        if target.get("name") == column and not target.get("indirection"):
            return position
    return None


def _conjuncts(clause: Any) -> list[Any]:
    """The operands of the ANDs at the top of clause; clause itself if it is no AND."""
    if type(clause) is dict and "BoolExpr" in clause:
        expr = clause["BoolExpr"]
        if expr.get("boolop") == "AND_EXPR":
            return [part for arg in expr.get("args") or () for part in _conjuncts(arg)]
    return [clause]


def _operator(expr: dict[str, Any]) -> str | None:
    """The name of an A_Expr's operator: "=" for = and OPERATOR(pg_catalog.=)."""
    name = expr.get("name") or ()
    if len(name) == 2 and _sval(name[0]) == "pg_catalog":
        name = name[1:]
    return _sval(name[0]) if len(name) == 1 else None


def _resolve(node: Any) -> tuple[str, Any] | None:
    """Read a value of rule 4: ("int", decimal), ("text", text), ("param", n), or None."""
    if type(node) is not dict or len(node) != 1:
        return None
    ((kind, body),) = node.items()
    if kind == "A_Const":
        # libpg_query's JSON leaves zero and empty values out: {"ival": {}} is 0.
        if "ival" in body:
            return "int", str(body["ival"].get("ival", 0))
        if "sval" in body:
            return "text", body["sval"].get("sval", "")
        if "fval" in body:
            number = _integer_literal(body["fval"].get("fval", ""))
            return None if number is None else ("int", str(number))
        return None  # NULL, booleans, bit strings
    if kind == "ParamRef":
        number = body.get("number", 0)
        return ("param", number) if number >= 1 else None
    if kind == "TypeCast":
        return _cast(_resolve(body.get("arg")), body.get("typeName") or {})
    if kind == "A_Expr" and body.get("kind") == "AEXPR_OP" and "lexpr" not in body:
        operand = _resolve(body.get("rexpr"))
        sign = _operator(body)
        if operand is not None and operand[0] == "int" and sign in ("-", "+"):
            return "int", str(-int(operand[1]) if sign == "-" else int(operand[1]))
    return None


def _leaf_location(node: dict[str, Any]) -> int:
    """Where the constant or parameter of a value _resolve read starts in the text.

    A cast's own location can be -1 (bigint '42'), so the leaf's is taken: it
    lies within the value's text, which keeps values in text order.
    """
    while True:
        ((kind, body),) = node.items()
        if kind == "TypeCast":
            node = body["arg"]
        elif kind == "A_Expr":
            node = body["rexpr"]
        else:
            return body.get("location", 0)


def _cast(value: tuple[str, Any] | None, type_name: dict[str, Any]) -> tuple[str, Any] | None:
    """Apply a cast to a resolved value, if it is one rule 4 follows."""
    names = [_sval(part) for part in type_name.get("names") or ()]
    if (value is None or not names or len(names) > 2 or names[0:-1] not in ([], ["pg_catalog"])
            or type_name.get("typmods") or type_name.get("arrayBounds")
            or type_name.get("setof") or type_name.get("pct_type")):
        return None
    kind, text = value
    if names[-1] in _INT_TYPES:
        if kind == "text":
            try:
                return "int", str(parse_int8(text))
            except ValueError:
                return None
        return value
    if names[-1] in _TEXT_TYPES:
        return value if kind == "param" else ("text", text)
    return None


def _integer_literal(text: str) -> int | None:
    """The value of an integer literal PostgreSQL's scanner made a Float; None for a fraction."""
    match = _INTEGER_LITERAL.fullmatch(text)
    if match is None:
        return None
    sign, hexa, octal, binary, decimal = match.groups()
    for digits, base in ((hexa, 16), (octal, 8), (binary, 2), (decimal, 10)):
        if digits is not None:
            digits = digits.replace("_", "")
            # 0x_ or 1__0 never leave the scanner; an empty one here is no literal.
            if not digits or len(digits) > 4000:
                return None
            number = int(digits, base)
            return -number if sign else number
    return None


# ---------------------------------------------------------------------------
# Routing hints and shard SETs
# ---------------------------------------------------------------------------

_HINT = re.compile(
    r"[ \t\n\r\f\v]*(?:/\*(?P<block>.*?)\*/|--(?P<line>[^\n\r]*))", re.DOTALL)
_HINT_BODY = re.compile(
    r"[ \t\n\r\f\v]*(?P<name>shard|sharding_key)[ \t\n\r\f\v]*:(?P<value>.*)",
    re.DOTALL | re.IGNORECASE | re.ASCII)


def comment_hint(sql: str) -> tuple[str, str] | None:
    """Return the routing hint in the comment that starts sql, if any.

    :param sql: a Query text or a Parse statement.
    A hint is /* shard: 2 */, /* sharding_key: abc */ or the same after --
    up to the line end, after nothing but whitespace; the name is matched
    without regard to ASCII case and returned in lower case, the value is the
    rest of the comment, trimmed of whitespace and otherwise as written.
    Returns None for no hint, an empty value, or a block comment holding
    another /* (PostgreSQL's comments nest, so it would not end where it
    seems to).
    """
    match = _HINT.match(sql)
    if match is None:
        return None
    body = match.group("block")
    if body is None:
        body = match.group("line")
    elif "/*" in body:
        return None
    hint = _HINT_BODY.fullmatch(body)
    if hint is None:
        return None
    value = hint.group("value").strip(_SQL_SPACE)
    return (hint.group("name").lower(), value) if value else None


# Whitespace and comments between tokens. A block comment holding /* is not
# matched: PostgreSQL nests them, and a regular expression cannot. Atomic (no
# token starts like a gap), so a text that fails to match is not tried again
# with its gaps split in every other way: that would take exponential time.
# Atomic groups, not possessive quantifiers: CPython before 3.11.5 (Debian's
# 3.11.2) fails some matches of x*+ (frontend/sqlscan.py rule 4).
_GAP = r"(?>(?:[ \t\n\r\f\v]|--(?>[^\n\r]*)|/\*(?>(?:(?!/\*|\*/).)*)\*/)*)"
# A keyword must not run on into an identifier: SETSHARD is not SET SHARD.
_END = r"(?![A-Za-z0-9_$\x80-\U0010ffff])"
# re.ASCII: Unicode case folding would take the long s for s and the Kelvin
# sign for k, and PostgreSQL folds ASCII letters only.
_PGCAT_SET = re.compile(
    rf"{_GAP}SET{_END}{_GAP}(?:(?P<shard>SHARD){_END}|SHARDING{_END}{_GAP}KEY{_END})"
    rf"{_GAP}(?:TO{_END}|=){_GAP}(?:'(?P<quoted>(?:[^']|'')*)'|(?P<number>[+-]?[0-9]+){_END})"
    rf"{_GAP}(?:;{_GAP})?",
    re.DOTALL | re.IGNORECASE | re.ASCII)
_SET_START = re.compile(rf"{_GAP}SET{_END}", re.DOTALL | re.IGNORECASE | re.ASCII)
_ECLUSE_SETTINGS = {"ecluse.shard": "shard", "ecluse.sharding_key": "sharding_key"}


def parse_shard_set(sql: str) -> tuple[str, str] | None:
    """Return what sql sets, if it is exactly one statement choosing the client's shard.

    :param sql: a Query text.
    PgCat's SET SHARD TO '2' and SET SHARDING KEY TO 'abc' (TO or =; the
    value quoted, or an unquoted integer), which PostgreSQL's grammar does not
    have, are read by a regular expression; SET [SESSION | LOCAL]
    ecluse.shard / ecluse.sharding_key TO value by pglast. Whitespace and
    comments may surround the tokens, and one ';' may end the text. Returns
    ("shard", value) or ("sharding_key", value), the value as text; None for
    anything else: an empty value, RESET, SET ... TO DEFAULT, a list of
    values, other settings, several statements.
    """
    if len(sql) > PARSE_MAX_LENGTH or "\0" in sql or _SET_START.match(sql) is None:
        return None
    match = _PGCAT_SET.fullmatch(sql)
    if match is not None:
        value = match.group("number")
        if value is None:
            value = match.group("quoted").replace("''", "'")
        name = "shard" if match.group("shard") else "sharding_key"
        return (name, value) if value else None
    if sql.count("/*") > PARSE_MAX_COMMENTS:
        return None
    try:
        stmts = json.loads(parse_sql_json(sql)).get("stmts") or ()
    except (ParseError, ValueError, RecursionError):
        return None
    if len(stmts) != 1:
        return None
    stmt = (stmts[0].get("stmt") or {}).get("VariableSetStmt") or {}
    # Setting names compare without regard to ASCII case, quoted or not.
    name = _ECLUSE_SETTINGS.get(stmt.get("name", "").translate(_ASCII_LOWER))
    args = stmt.get("args") or ()
    if name is None or stmt.get("kind") != "VAR_SET_VALUE" or len(args) != 1:
        return None
    const = args[0].get("A_Const") or {}
    # As PostgreSQL keeps a placeholder setting: integers in decimal, other
    # numbers as written, identifiers lower-cased (pglast did that).
    if "ival" in const:
        value = str(const["ival"].get("ival", 0))
    elif "fval" in const:
        value = const["fval"].get("fval", "")
    elif "sval" in const:
        value = const["sval"].get("sval", "")
    else:
        return None
    return (name, value) if value else None
