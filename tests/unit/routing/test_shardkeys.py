"""routing/shardkeys.py: sharding key values, hints and shard SETs found in SQL text.

Statements come from a grammar over a table users (the key table) and orders,
both with columns id, x and name, that records each key value it writes where
it writes it, so find_keys must return exactly those values in text order:
in WHERE and inner-join ON conjuncts of SELECT, UPDATE and DELETE (with
aliases, qualified or not, among noise conjuncts that name no key) and in the
key position of INSERT rows, nested in subqueries, CTEs, set operations and
EXPLAIN. The same key comparisons put under OR, NOT, a LEFT JOIN's ON or
in a subquery (where users.id is the enclosing row's) must name nothing.
shard_of is tests/unit/routing/test_shardhash.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecluse.routing import shardkeys
from ecluse.routing.readonly import PARSE_MAX_COMMENTS, PARSE_MAX_LENGTH
from ecluse.routing.shardkeys import (
    CACHE_MAX_ENTRIES,
    CACHE_MAX_LENGTH,
    KeyColumn,
    Keys,
    comment_hint,
    find_keys,
    find_keys_uncached,
    parse_key_column,
    parse_shard_set,
)

KEY = KeyColumn("id", "users")
ANY_KEY = KeyColumn("id", None)
NO_KEYS = Keys((), ())
INT8_MIN, INT8_MAX = -(1 << 63), (1 << 63) - 1
SQL_SPACE = " \t\n\r\f\v"
# Any character a PostgreSQL text may hold.
TEXT_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")

# ---------------------------------------------------------------------------
# parse_key_column
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(("setting", "expected"), [
    ("id", KeyColumn("id", None)),
    ("ID", KeyColumn("id", None)),
    ("users.id", KeyColumn("id", "users")),
    (' Users . "Id" ', KeyColumn("Id", "users")),
    ('"Users"."Id"', KeyColumn("Id", "Users")),
    ('"a""b"."c.d"', KeyColumn("c.d", 'a"b')),
    ("public.users.id", KeyColumn("id", "users")),
    ("ÉTÉ.Zürich", KeyColumn("zürich", "ÉtÉ")),  # only ASCII letters fold
    ("_k$1", KeyColumn("_k$1", None)),
])
def test_key_column_settings(setting: str, expected: KeyColumn) -> None:
    assert parse_key_column(setting) == expected


@pytest.mark.parametrize("setting", [
    "", " ", ".", "users.", ".id", "a..b", '""', '"open', "1id", "$id", "a b", "a.b.c.d",
    "id;", "users.id -- x", '"a\0b"', "a-b",
])
def test_bad_key_column_settings(setting: str) -> None:
    with pytest.raises(ValueError, match="sharding key column"):
        parse_key_column(setting)


# ---------------------------------------------------------------------------
# The statement grammar
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Part:
    """A piece of SQL and the key values find_keys should report for it, in text order."""
    sql: str
    values: tuple[str, ...] = ()
    params: tuple[int, ...] = ()

    def __add__(self, other: Part) -> Part:
        return Part(self.sql + other.sql, self.values + other.values, self.params + other.params)


def joined(parts: list[Part], sep: str) -> Part:
    out = Part("")
    for i, part in enumerate(parts):
        out = out + (Part(sep) if i else Part("")) + part
    return out


def expected_keys(part: Part) -> Keys:
    return Keys(tuple(dict.fromkeys(part.values)), tuple(dict.fromkeys(part.params)))


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@st.composite
def string_literals(draw: st.DrawFn) -> tuple[str, str]:
    """(SQL spelling, text) of a string constant in one of three quotings."""
    text = draw(st.text(TEXT_CHARS, max_size=10))
    style = draw(st.sampled_from(["plain", "escape", "dollar"]))
    if style == "escape":
        return "E" + quote(text.replace("\\", "\\\\")), text
    if style == "dollar" and "$" not in text:
        return f"$q${text}$q$", text
    return quote(text), text


@st.composite
def integer_literals(draw: st.DrawFn) -> tuple[str, int]:
    """(SQL spelling, value) of an integer constant, maybe negated, maybe beyond int8."""
    n = draw(st.one_of(st.integers(-20, 20), st.integers(INT8_MIN, INT8_MAX),
                       st.integers(-10**22, 10**22)))
    digits = draw(st.sampled_from([str(abs(n)), f"0x{abs(n):X}", f"{abs(n):_}", f"0o{abs(n):o}"]))
    if n >= 0:
        return draw(st.sampled_from([digits, f"+{digits}", f"+ ({digits})"])), n
    return draw(st.sampled_from([f"-{digits}", f"- {digits}", f"-({digits})"])), n


@st.composite
def int8_spellings(draw: st.DrawFn, n: int) -> str:
    """n as a string int8 input reads: spaces, sign, leading zeros."""
    space = st.text(st.sampled_from(SQL_SPACE), max_size=2)
    sign = "-" if n < 0 else draw(st.sampled_from(["", "+"]))
    return f"{draw(space)}{sign}{'0' * draw(st.integers(0, 2))}{abs(n)}{draw(space)}"


@st.composite
def values(draw: st.DrawFn) -> Part:
    """A value rule 4 reads: a constant, a parameter or a cast of one."""
    kind = draw(st.sampled_from(["int", "str", "param", "int_cast", "str_int_cast",
                                 "text_cast", "param_cast"]))
    if kind == "int":
        sql, n = draw(integer_literals())
        return Part(sql, (str(n),))
    if kind == "str":
        sql, text = draw(string_literals())
        return Part(sql, (text,))
    number = draw(st.integers(1, 12))
    if kind == "param":
        return Part(f"${number}", params=(number,))
    if kind == "param_cast":
        cast = draw(st.sampled_from(["${}::bigint", "CAST(${} AS text)", "${}::pg_catalog.int8",
                                     "${}::varchar::int4"]))
        return Part(cast.format(number), params=(number,))
    if kind == "int_cast":
        sql = draw(integer_literals().filter(lambda lit: INT8_MIN <= lit[1] <= INT8_MAX))
        cast = draw(st.sampled_from(["({})::int8", "CAST({} AS bigint)", "({})::integer",
                                     "(({})::smallint)::int8"]))
        return Part(cast.format(sql[0]), (str(sql[1]),))
    if kind == "str_int_cast":
        n = draw(st.integers(INT8_MIN, INT8_MAX))
        spelled = quote(draw(int8_spellings(n)))
        cast = draw(st.sampled_from(["{}::bigint", "bigint {}", "CAST({} AS int8)",
                                     "{}::pg_catalog.int8", "{}::int8::text"]))
        return Part(cast.format(spelled), (str(n),))
    if draw(st.booleans()):
        sql, text = draw(string_literals())
    else:
        sql, number = draw(integer_literals())
        sql, text = f"({sql})", str(number)
    cast = draw(st.sampled_from(["{}::text", "CAST({} AS varchar)", "{}::character varying",
                                 "{}::pg_catalog.text"]))
    return Part(cast.format(sql), (text,))


# Expressions that are not values of rule 4: comparing the key with one names nothing.
NOT_VALUES = [
    "x", "f(1)", "1 + 2", "'5'::numeric", "5::bigint::numeric", "'abc'::varchar(2)",
    "'5' COLLATE \"C\"", "NULL", "true", "1.5", "2e3", "ARRAY[1]", "(SELECT 5)", "'5'::int8[]",
    "'0x10'::bigint", "'1 2'::int8", "-'5'", "- $1", "'5'::myschema.int8", "B'101'",
    "current_setting('x')", "$0",
]


@st.composite
def not_values(draw: st.DrawFn) -> str:
    return draw(st.sampled_from(NOT_VALUES))


@dataclass(frozen=True)
class Scope:
    """How the statement being generated names users, and what else is in its FROM."""
    qualifier: str  # "users" or its alias
    aliased: bool
    multi: bool  # another table (orders o) in the FROM, target or USING
    key: KeyColumn


@st.composite
def key_refs(draw: st.DrawFn, scope: Scope) -> str:
    """A reference to users.id as this statement may spell it."""
    q = scope.qualifier
    spellings = [f"{q}.id", f"{q.upper()}.ID", f'"{q}"."id"', f"{q}.\"id\""]
    if not scope.aliased:
        spellings.append("public.users.id")
    if not scope.multi:
        spellings += ["id", "ID", '"id"']
    return draw(st.sampled_from(spellings))


@st.composite
def key_conditions(draw: st.DrawFn, scope: Scope) -> Part:
    """key = v, v = key or key IN (v, ...)."""
    ref = draw(key_refs(scope))
    form = draw(st.sampled_from(["eq", "eq_reversed", "in", "operator"]))
    if form == "in":
        items = draw(st.lists(values(), min_size=1, max_size=4))
        return Part(f"{ref} IN (") + joined(items, ", ") + Part(")")
    value = draw(values())
    if form == "eq_reversed":
        return value + Part(f" = {ref}")
    op = " OPERATOR(pg_catalog.=) " if form == "operator" else " = "
    return Part(ref + op) + value


@st.composite
def hidden_conditions(draw: st.DrawFn, scope: Scope) -> Part:
    """A key condition that restricts nothing: under OR, NOT or another expression."""
    cond = draw(key_conditions(scope)).sql
    ref = draw(key_refs(scope))
    value = draw(values()).sql
    # In a subquery, users.id is the enclosing row's: a constant there.
    outer = f"{scope.qualifier}.id = {value}"
    return Part(draw(st.sampled_from([
        f"NOT EXISTS (SELECT 1 FROM orders AS o9 WHERE {outer})",
        f"x = (SELECT max(x) FROM orders AS o9 WHERE o9.x = 1 AND {outer})",
        f"({cond} OR x = 1)", f"(name IS NULL OR {cond})", f"NOT ({cond})", f"NOT {cond}",
        f"({cond}) IS TRUE", f"CASE WHEN {cond} THEN true ELSE false END",
        f"coalesce({cond}, false)", f"{ref} <> {value}", f"{ref} NOT IN ({value})",
        f"({cond} OR {cond})", f"NOT (x = 2 AND {cond})",
    ])))


@st.composite
def noise_conditions(draw: st.DrawFn, scope: Scope) -> Part:
    """A conjunct that names no key, some of them close to one."""
    value = draw(values()).sql
    ref = draw(key_refs(scope))
    options = [
        f"x = {value}", f"{value} = x", f"name = {quote('id = 5')}", f"x IN ({value}, 2)",
        f"{ref} > {value}", f"{ref} = x", f"{ref} = {draw(not_values())}",
        f"{ref}::text = {value}", f"{ref} IS NULL", f"{ref} = ANY('{{1,2}}')",
        f"{ref} IN ({value}, {draw(not_values())})", f"{ref} BETWEEN 1 AND 2",
        f"{ref} + 0 = {value}", "true",
    ]
    if scope.multi and scope.key.table is not None:
        # Another table's id, and an unqualified id that cannot be told apart.
        options += [f"o.id = {value}", f"{value} = o.id", f"id = {value}"]
    return Part(draw(st.sampled_from(options)))


@st.composite
def and_trees(draw: st.DrawFn, parts: list[Part]) -> Part:
    """parts joined by AND, in order, with parentheses grouping them at random."""
    if len(parts) == 1:
        return parts[0]
    cut = draw(st.integers(1, len(parts) - 1))
    both = draw(and_trees(parts[:cut])) + Part(" AND ") + draw(and_trees(parts[cut:]))
    return Part("(") + both + Part(")") if draw(st.booleans()) else both


@st.composite
def conditions(draw: st.DrawFn, scope: Scope, hide: str) -> list[Part]:
    """Key conditions (hidden always, never or sometimes) mixed with noise, shuffled."""
    keys = draw(st.lists(key_conditions(scope), min_size=1, max_size=3))
    if hide == "always":
        keys = [draw(hidden_conditions(scope)) for _ in keys]
    elif hide == "sometimes":
        keys = [draw(hidden_conditions(scope)) if draw(st.booleans()) else key for key in keys]
    noise = draw(st.lists(noise_conditions(scope), max_size=3))
    return draw(st.permutations(keys + noise))


@st.composite
def restricting_statements(draw: st.DrawFn, key: KeyColumn, hide: str) -> tuple[Part, bool]:
    """A SELECT, UPDATE or DELETE of users restricted by key conditions; True if a SELECT."""
    kind = draw(st.sampled_from(["select", "update", "delete"]))
    alias = draw(st.sampled_from([None, "u", "usr", "t1"]))
    other = draw(st.sampled_from([None, "join", "left_join", "comma", "cross"]
                                 if kind == "select" else [None, "other"]))
    scope = Scope(alias or "users", alias is not None, other is not None, key)
    table = draw(st.sampled_from(["users", "public.users", "ONLY users", "Users"]))
    target = f"{table} AS {alias}" if alias else table
    conds = draw(conditions(scope, hide))
    on = Part("")
    if other == "join":
        cut = draw(st.integers(0, len(conds)))
        on, conds = draw(and_trees([Part(f"o.user_id = {scope.qualifier}.id"), *conds[:cut]])), \
            conds[cut:]
    elif other == "left_join" and draw(st.booleans()):
        # A LEFT JOIN keeps every users row whatever its ON says.
        on = Part(" AND ".join(part.sql for part in draw(conditions(scope, "never"))))
    where = draw(and_trees(conds)) if conds else Part("true")
    if kind == "select":
        joins = {None: "", "comma": ", orders o", "cross": " CROSS JOIN orders o",
                 "join": " JOIN orders AS o ON ", "left_join": " LEFT JOIN orders o ON "}
        # A key comparison in the target list restricts nothing.
        head = Part(f"SELECT {scope.qualifier}.x, {scope.qualifier}.id = 5 AS flag "
                    f"FROM {target}{joins[other]}")
        if other == "left_join" and not on.sql:
            on = Part("o.user_id = 1")
        tail = draw(st.sampled_from(["", " ORDER BY 1", " LIMIT 5", " FOR UPDATE"]))
        return head + on + Part(" WHERE ") + where + Part(tail), True
    if kind == "update":
        sets = draw(st.sampled_from(["x = 1", "id = 77, name = 'id = 3'", "x = x + 1"]))
        head = f"UPDATE {target} SET {sets}{' FROM orders o' if other else ''} WHERE "
    else:
        head = f"DELETE FROM {target}{' USING orders o' if other else ''} WHERE "
    tail = draw(st.sampled_from(["", " RETURNING id", " RETURNING *"]))
    return Part(head) + where + Part(tail), False


@st.composite
def inserts(draw: st.DrawFn, key: KeyColumn) -> Part:
    """INSERT ... VALUES: the key position of each row names its value, if it is one."""
    target = draw(st.sampled_from(["users", "public.users", "users AS u", "orders", "Users"]))
    names_key_table = key.table is None or not target.startswith("orders")
    cols = draw(st.permutations(["id", "x", "name"]))[:draw(st.integers(1, 3))]
    listed = draw(st.booleans()) or len(cols) < 3
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        row = []
        for col in cols:
            if draw(st.booleans()):
                value = draw(values())
                # A value in another column, or where the key's position is unknown, is none.
                row.append(value if col == "id" and listed and names_key_table
                           else Part(value.sql))
            else:
                row.append(Part(draw(st.sampled_from([*NOT_VALUES, "DEFAULT"]))))
        rows.append(Part("(") + joined(row, ", ") + Part(")"))
    spelled = [draw(st.sampled_from([c, c.upper(), f'"{c}"'])) for c in cols]
    column_list = f" ({', '.join(spelled)})" if listed else ""
    tail = draw(st.sampled_from([
        "", " RETURNING id", " ON CONFLICT DO NOTHING",
        " ON CONFLICT (id) DO UPDATE SET x = 1 WHERE users.id = 99 AND excluded.id = 98",
    ]))
    return Part(f"INSERT INTO {target}{column_list} VALUES ") + joined(rows, ", ") + Part(tail)


@st.composite
def placed(draw: st.DrawFn, statement: Part, is_select: bool) -> Part:
    """statement at the top, or nested where rule 3 still looks at it."""
    places = ["top", "explain", "cte", "after", "before"]
    if is_select:
        places += ["subquery", "union", "in", "exists", "lateral"]
    place = draw(st.sampled_from(places))
    s = statement
    wrappers = {
        "top": ("", ""), "explain": ("EXPLAIN ", ""), "after": ("SELECT 1; ", ""),
        "before": ("", "; DELETE FROM orders WHERE x = 1"),
        "cte": ("WITH w AS (", ") SELECT * FROM w WHERE x = 3"),
        "subquery": ("SELECT * FROM (", ") AS sub WHERE sub.x = 4"),
        "union": ("SELECT x FROM orders WHERE x = 5 UNION ALL (SELECT x FROM (", ") AS s2)"),
        "in": ("SELECT * FROM orders WHERE x = 6 AND x IN (SELECT 1 FROM (", ") AS s3)"),
        "exists": ("SELECT 1 FROM orders AS o2 WHERE NOT EXISTS (", ") AND x = 7"),
        "lateral": ("SELECT * FROM orders AS o3, LATERAL (", ") AS s4 WHERE o3.x = 8"),
    }
    before, after = wrappers[place]
    return Part(before) + s + Part(after)


@st.composite
def statements(draw: st.DrawFn, key: KeyColumn, hide: str = "never") -> Part:
    if draw(st.integers(0, 3)) == 0:
        return draw(placed(draw(inserts(key)), False))
    statement, is_select = draw(restricting_statements(key, hide))
    return draw(placed(statement, is_select))


# ---------------------------------------------------------------------------
# find_keys: properties
# ---------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(statements(KEY))
def test_generated_key_values_are_found(part: Part) -> None:
    assert find_keys_uncached(part.sql, KEY) == expected_keys(part), part.sql


@settings(max_examples=300, deadline=None)
@given(statements(ANY_KEY))
def test_generated_key_values_are_found_for_a_column_of_any_table(part: Part) -> None:
    assert find_keys_uncached(part.sql, ANY_KEY) == expected_keys(part), part.sql


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([KEY, ANY_KEY]).flatmap(
    lambda key: st.tuples(st.just(key), restricting_statements(key, "always"))))
def test_key_comparisons_under_or_or_not_name_nothing(case: tuple) -> None:
    key, (part, _) = case
    assert part.values == part.params == ()
    assert find_keys_uncached(part.sql, key) == NO_KEYS, part.sql


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([KEY, ANY_KEY]).flatmap(
    lambda key: st.tuples(st.just(key), restricting_statements(key, "sometimes"))))
def test_only_the_key_comparisons_not_under_or_or_not_are_found(case: tuple) -> None:
    key, (part, _) = case
    assert find_keys_uncached(part.sql, key) == expected_keys(part), part.sql


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([KEY, ANY_KEY]).flatmap(statements))
def test_skipping_the_search_for_nested_statements_loses_nothing(part: Part) -> None:
    # find_keys looks for nested statements only when the JSON holds a node
    # that can contain one; looking every time must find the same.
    for key in (KEY, ANY_KEY):
        found = find_keys_uncached(part.sql, key)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(shardkeys, "_NESTING_MARKERS", ('"',))
            assert find_keys_uncached(part.sql, key) == found, part.sql


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=80), st.text(TEXT_CHARS, max_size=80),
    statements(KEY).map(lambda part: part.sql),
    st.tuples(statements(KEY), st.integers(0, 200), st.text(max_size=3)).map(
        lambda t: t[0].sql[:t[1]] + t[2] + t[0].sql[t[1]:]),
))
def test_find_keys_never_raises(sql: str) -> None:
    for key in (KEY, ANY_KEY, KeyColumn("Id", "u")):
        found = find_keys_uncached(sql, key)
        assert found is None or isinstance(found, Keys)
        assert find_keys(sql, key) == found
        assert find_keys(sql, key) == found  # from the cache now
    assert comment_hint(sql) is None or len(comment_hint(sql)) == 2
    assert parse_shard_set(sql) is None or len(parse_shard_set(sql)) == 2


# ---------------------------------------------------------------------------
# find_keys: examples of each rule
# ---------------------------------------------------------------------------

K = Keys


@pytest.mark.parametrize(("sql", "key", "expected"), [
    # Rule 4: the forms of a value, and the order and uniqueness of rule 7.
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
     KeyColumn("aid", "pgbench_accounts"), K(("42",), ())),
    ("SELECT * FROM users WHERE id = $2 AND 7 = id AND id IN ('a', $1, -3, $2) AND id = 7",
     KEY, K(("7", "a", "-3"), (2, 1))),
    ("SELECT * FROM users WHERE id = 0 AND id = -0 AND id = '' AND id = 00", KEY,
     K(("0", ""), ())),
    ("SELECT * FROM users WHERE id = 9223372036854775808 AND id = -9223372036854775808",
     KEY, K(("9223372036854775808", "-9223372036854775808"), ())),
    ("SELECT * FROM users WHERE id = 0x1F AND id = 0x1FFFFFFFFF AND id = 1_000", KEY,
     K(("31", "137438953471", "1000"), ())),
    ("SELECT * FROM users WHERE id = '042'::int8::text AND id = ' 7 '", KEY, K(("42", " 7 "), ())),
    ("SELECT * FROM users WHERE id = 5::text AND id = -(5)::int8 AND id = - '5'::bigint", KEY,
     K(("5", "-5"), ())),
    ("SELECT * FROM users WHERE id = -5::text", KEY, NO_KEYS),  # -(5::text): no value
    ("SELECT * FROM users WHERE id = 1.0 OR id = 2", KEY, NO_KEYS),
    ("SELECT * FROM users WHERE id IN (1, 2, x)", KEY, NO_KEYS),
    ("SELECT * FROM users WHERE (id = 1 AND x = 2) AND (name = 'a' AND id = 3)", KEY,
     K(("1", "3"), ())),
    ("SELECT * FROM users WHERE id = 1 AND (id = 2 OR id = 3) AND NOT id = 4", KEY,
     K(("1",), ())),
    ("SELECT * FROM users WHERE id = x AND x = 5", KEY, NO_KEYS),
    # Rule 4: ON of inner joins, not of outer ones.
    ("SELECT * FROM users u JOIN orders o ON u.id = 1 LEFT JOIN t ON u.id = 2 "
     "RIGHT JOIN t2 ON u.id = 3 FULL JOIN t3 ON u.id = 4 WHERE u.id = 5", KEY, K(("1", "5"), ())),
    ("SELECT * FROM orders o LEFT JOIN (users u JOIN t ON u.id = 6) ON true", KEY, K(("6",), ())),
    # Rule 3: nested statements, and statements that are not looked at.
    ("WITH a AS (SELECT * FROM users WHERE id = 1), b AS (DELETE FROM users WHERE id = 2) "
     "SELECT * FROM a UNION SELECT * FROM users WHERE id = 3 "
     "AND x IN (SELECT x FROM users WHERE id = $4)", KEY, K(("1", "2", "3"), (4,))),
    ("EXPLAIN (ANALYZE, VERBOSE) UPDATE users SET x = 1 WHERE id = 9", KEY, K(("9",), ())),
    ("SELECT 1; UPDATE users SET x = 2 WHERE id = 3; SELECT * FROM users WHERE id = 4", KEY,
     K(("3", "4"), ())),
    ("COPY (SELECT * FROM users WHERE id = 1) TO STDOUT", KEY, NO_KEYS),
    ("CREATE VIEW v AS SELECT * FROM users WHERE id = 1", KEY, NO_KEYS),
    ("CREATE TABLE t2 AS SELECT * FROM users WHERE id = 1", KEY, NO_KEYS),
    ("DECLARE c CURSOR FOR SELECT * FROM users WHERE id = 1", KEY, NO_KEYS),
    ("PREPARE p AS SELECT * FROM users WHERE id = $1", KEY, NO_KEYS),
    ("MERGE INTO users u USING orders o ON u.id = 1 WHEN MATCHED THEN DELETE", KEY, NO_KEYS),
    ("SELECT f(1) FROM users", KEY, NO_KEYS),
    ("", KEY, NO_KEYS),
    (" ; -- nothing", KEY, NO_KEYS),
    # Rule 5: INSERT.
    ("INSERT INTO users (x, id) VALUES (1, 2), (3, $1), (4, f()), (5, DEFAULT), (6, '7')", KEY,
     K(("2", "7"), (1,))),
    ("INSERT INTO users VALUES (1, 2)", KEY, NO_KEYS),
    ("INSERT INTO users (id) SELECT id FROM users WHERE id = 8", KEY, K(("8",), ())),
    ("INSERT INTO users (id) SELECT 5", KEY, NO_KEYS),
    ("INSERT INTO users (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 2 WHERE users.id = 3",
     KEY, K(("1",), ())),
    ("INSERT INTO orders (id) VALUES (1)", KEY, NO_KEYS),
    ("INSERT INTO orders (id) VALUES (1)", ANY_KEY, K(("1",), ())),
    ("INSERT INTO users (id[1]) VALUES (1)", KEY, NO_KEYS),
    ("WITH w AS (INSERT INTO users (id) VALUES (4) RETURNING id) SELECT * FROM w", KEY,
     K(("4",), ())),
    # Rule 6: which references are the key column.
    ("SELECT * FROM orders AS users WHERE users.id = 1", KEY, NO_KEYS),
    ("SELECT * FROM users AS u WHERE users.id = 1", KEY, NO_KEYS),
    ("WITH users AS (SELECT 1 AS id) SELECT * FROM users WHERE id = 1 AND users.id = 2", KEY,
     NO_KEYS),
    ("WITH users AS (SELECT 1 AS id) SELECT * FROM public.users WHERE id = 1", KEY, K(("1",), ())),
    ("WITH users AS (SELECT 1) UPDATE users SET x = 1 WHERE id = 2", KEY, K(("2",), ())),
    ("SELECT * FROM users AS u(a, id) WHERE id = 1 AND u.id = 2", KEY, NO_KEYS),
    ("SELECT * FROM (SELECT * FROM users) AS users WHERE users.id = 1", KEY, NO_KEYS),
    ("SELECT * FROM (users JOIN orders USING (x)) AS j WHERE j.id = 1", KEY, NO_KEYS),
    ("SELECT * FROM users, orders WHERE id = 1", KEY, NO_KEYS),
    ("SELECT * FROM users, orders WHERE id = 1", ANY_KEY, K(("1",), ())),
    ("SELECT * FROM orders WHERE id = 1", KEY, NO_KEYS),
    # An enclosing statement's column is a constant in a subquery.
    ("SELECT * FROM users WHERE EXISTS (SELECT 1 FROM orders o WHERE users.id = 2 AND id = 3)",
     KEY, NO_KEYS),
    ("SELECT * FROM users u WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE u.id = 2)", ANY_KEY,
     NO_KEYS),
    ("SELECT * FROM users u WHERE x IN (SELECT x FROM orders o WHERE o.id = 2 AND id = 3)",
     ANY_KEY, K(("2", "3"), ())),
    ("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders u WHERE u.id = 2)", KEY, NO_KEYS),
    ("SELECT * FROM users TABLESAMPLE system (10) WHERE id = 4", KEY, K(("4",), ())),
    ("SELECT * FROM other.users u WHERE u.id = 5 AND mydb.other.users.id = 6", KEY,
     K(("5",), ())),
    ("DELETE FROM users u USING orders o WHERE u.id = 1 AND o.id = 2 AND id = 3", KEY,
     K(("1",), ())),
    ('SELECT * FROM "Users" WHERE "ID" = 1 AND id = 2', KeyColumn("ID", "Users"), K(("1",), ())),
    ("SELECT * FROM users WHERE users.* = 1", KEY, NO_KEYS),
])
def test_find_keys_examples(sql: str, key: KeyColumn, expected: Keys) -> None:
    assert find_keys_uncached(sql, key) == expected


@pytest.mark.parametrize("sql", [
    "SELECT * FROM users WHERE id = 1 AND",  # syntax error
    "SELECT * FROM users WHERE id = 1\0",
    "SELECT * FROM users WHERE id = 1" + " " * PARSE_MAX_LENGTH,
    "SELECT * FROM users WHERE id = 1" + " /**/" * (PARSE_MAX_COMMENTS + 1),
    "SELECT * FROM users WHERE id = '\ud800'",
    "SELECT * FROM users WHERE id = " + "1 + " * 1500 + "1",  # too deep
])
def test_unparsable_texts_give_none(sql: str) -> None:
    assert find_keys_uncached(sql, KEY) is None
    assert find_keys(sql, KEY) is None


def test_guards_let_the_longest_texts_through() -> None:
    sql = "SELECT * FROM users WHERE id = 1" + " /**/" * PARSE_MAX_COMMENTS
    assert find_keys(sql.ljust(PARSE_MAX_LENGTH), KEY) == K(("1",), ())


def test_cache_answers_repeats_without_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 987654;"
    key = KeyColumn("aid", None)
    assert find_keys(sql, key) == K(("987654",), ())

    def fail(*_: object) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(shardkeys, "find_keys_uncached", fail)
    assert find_keys(sql[:-1] + ";", KeyColumn("aid", None)) == K(("987654",), ())
    with pytest.raises(AssertionError):
        find_keys(sql, KeyColumn("aid", "other"))  # another key column is another entry


def test_cache_stays_bounded() -> None:
    peak = 0
    for i in range(2 * CACHE_MAX_ENTRIES + 17):
        assert find_keys(f"SELECT * FROM users WHERE id = {i}", KEY) == K((str(i),), ())
        peak = max(peak, len(shardkeys._results))
    assert peak == CACHE_MAX_ENTRIES
    long = "SELECT * FROM users WHERE id = 1" + " " * CACHE_MAX_LENGTH
    before = dict(shardkeys._results)
    assert find_keys(long, KEY) is None
    assert shardkeys._results == before


# ---------------------------------------------------------------------------
# comment_hint
# ---------------------------------------------------------------------------

def spaces(newlines: bool = True) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(SQL_SPACE if newlines else " \t\f\v"), max_size=3)


def ascii_cases(word: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda ups: "".join(c.upper() if up else c for c, up in zip(word, ups, strict=True)))


# Hint values: anything but the characters that end a line or start or end a comment.
HINT_VALUES = st.text(st.characters(blacklist_categories=("Cs",),
                                    blacklist_characters="\0\n\r*/"), min_size=1, max_size=12
                      ).map(lambda v: v.strip(SQL_SPACE)).filter(bool)


@st.composite
def hints(draw: st.DrawFn) -> tuple[str, tuple[str, str]]:
    name = draw(st.sampled_from(["shard", "sharding_key"]))
    value = draw(HINT_VALUES)
    spelled = draw(ascii_cases(name))
    block = draw(st.booleans())
    pad = spaces(newlines=block)
    body = f"{draw(pad)}{spelled}{draw(pad)}:{draw(pad)}{value}{draw(pad)}"
    rest = draw(st.sampled_from(["", "SELECT 1", "\nSELECT * FROM users WHERE id = 1",
                                 " /* shard: 99 */ SELECT 2"]))
    if block:
        sql = f"{draw(spaces())}/*{body}*/{rest}"
    else:
        end = draw(st.sampled_from(["\n", "\r", "\r\n"]))
        sql = f"{draw(spaces())}--{body}{end}{rest}"
        if not rest and draw(st.booleans()):
            sql = sql.rstrip("\r\n")
    return sql, (name, value)


@given(hints())
def test_generated_hints_are_read(case: tuple[str, tuple[str, str]]) -> None:
    sql, expected = case
    assert comment_hint(sql) == expected


@given(hints(), st.sampled_from(["/* x */ ", "-- x\n", "SELECT 1 ", "SELECT '", "x",
                                 "/* ", "SELECT $$"]))
def test_hints_not_at_the_start_are_not_hints(case: tuple[str, tuple[str, str]],
                                              before: str) -> None:
    sql, _ = case
    assert comment_hint(before + sql.lstrip(SQL_SPACE)) is None


@pytest.mark.parametrize("sql", [
    "/* shards: 2 */", "/* shard_key: 2 */", "/* sharding: 2 */", "/* sharding key: 2 */",
    "/* shard 2 */", "/* shard = 2 */", "/* shard: */", "/* shard:   \n */", "-- shard:\nx",
    "/* shard: 2", "/* shard: 2 /* x */ */", "/* \u017fhard: 2 */", "/* sharding_\u212aey: 2 */",
    "\u00a0/* shard: 2 */", "SELECT '/* shard: 2 */'", "/**/ /* shard: 2 */", "", "   ",
    "/* x: shard: 2 */", "- - shard: 2",
])
def test_comment_hint_near_misses(sql: str) -> None:
    assert comment_hint(sql) is None


@pytest.mark.parametrize(("sql", "expected"), [
    ("/* shard: 2 */ SELECT 1", ("shard", "2")),
    ("/*shard:2*/", ("shard", "2")),
    ("\n\t/* SHARDING_KEY : 'a b' */", ("sharding_key", "'a b'")),
    ("-- shard: 3 -- x\nSELECT 1", ("shard", "3 -- x")),
    ("/* sharding_key: a*b */", ("sharding_key", "a*b")),
    ("/* sharding_key: a**/", ("sharding_key", "a*")),
    ("/* shard: 2 */ /* shard: 3 */", ("shard", "2")),
])
def test_comment_hint_examples(sql: str, expected: tuple[str, str]) -> None:
    assert comment_hint(sql) == expected


# ---------------------------------------------------------------------------
# parse_shard_set
# ---------------------------------------------------------------------------

COMMENT_TEXT = st.text(st.characters(blacklist_categories=("Cs",),
                                     blacklist_characters="\0\n\r*/"), max_size=6)


@st.composite
def gaps(draw: st.DrawFn, required: bool) -> str:
    """Whitespace and comments between two tokens; at least one piece if required."""
    pieces = draw(st.lists(st.one_of(
        st.text(st.sampled_from(SQL_SPACE), min_size=1, max_size=2),
        COMMENT_TEXT.map(lambda c: f"/*{c}*/"),
        COMMENT_TEXT.map(lambda c: f"--{c}\n"),
    ), min_size=1 if required else 0, max_size=3))
    return "".join(pieces)


@st.composite
def shard_sets(draw: st.DrawFn) -> tuple[str, tuple[str, str]]:
    """SET SHARD / SET SHARDING KEY (PgCat) or SET ecluse.shard / ecluse.sharding_key."""
    name = draw(st.sampled_from(["shard", "sharding_key"]))
    pgcat = draw(st.booleans())
    gap = gaps(required=True)
    maybe = gaps(required=False)
    sql = draw(maybe) + draw(ascii_cases("set")) + draw(gap)
    if pgcat:
        sql += draw(ascii_cases("shard"))
        if name == "sharding_key":
            sql += draw(ascii_cases("ing")) + draw(gap) + draw(ascii_cases("key"))
    else:
        sql += draw(st.sampled_from(["", "SESSION", "local"]))
        sql += draw(gap) + draw(st.sampled_from([
            f"ecluse.{name}", f'"ecluse"."{name}"', f"ECLUSE.{name.upper()}", f'"ecluse".{name}']))
    kind = draw(st.sampled_from(["quoted", "integer"] + ([] if pgcat else ["word"])))
    if kind == "quoted":
        value = draw(st.text(TEXT_CHARS, min_size=1, max_size=10))
        spelled = quote(value)
    elif kind == "integer":
        number = draw(st.integers(-10**6, 10**6))
        value = spelled = str(number)
    else:
        spelled = "k" + draw(st.text(st.sampled_from("abcXYZ_019"), max_size=5))
        value = spelled.lower()  # PostgreSQL folds the unquoted word
    if draw(st.booleans()):
        sql += draw(maybe) + "=" + draw(maybe)
    else:
        sql += draw(gap) + draw(ascii_cases("to")) + (draw(maybe) if kind == "quoted"
                                                      else draw(gap))
    sql += spelled + draw(maybe) + draw(st.sampled_from(["", ";"])) + draw(maybe)
    return sql, (name, value)


@settings(max_examples=300, deadline=None)
@given(shard_sets())
def test_generated_shard_sets_are_read(case: tuple[str, tuple[str, str]]) -> None:
    sql, expected = case
    assert parse_shard_set(sql) == expected, sql


@settings(max_examples=200, deadline=None)
@given(shard_sets(), st.sampled_from([
    "{}\n; SELECT 1", "SELECT 1; {}", "{}\n;{}", "BEGIN; {}", "{}\nSELECT 1", "{}\n, 2",
    "EXPLAIN {}", "/* {} */",
]))
def test_shard_sets_with_more_around_them_are_not_read(
        case: tuple[str, tuple[str, str]], template: str) -> None:
    # A generated SET ends with a newline if it ends with a line comment, so
    # what the template puts after it is not commented out.
    sql, _ = case
    for text in (template.format(sql, sql), "SELECT " + quote(sql),
                 "-- " + sql.replace("\n", " ").replace("\r", " ")):
        assert parse_shard_set(text) is None, text


@pytest.mark.parametrize("sql", [
    "RESET ecluse.shard", "RESET SHARD", "RESET ALL", "SET ecluse.shard TO DEFAULT",
    "SET ecluse.shard = DEFAULT", "SET ecluse.shard TO 1, 2", "SET ecluse.shard FROM CURRENT",
    "SET shards TO 1", "SET sharding TO 1", "SET SHARDING KEYS TO 1", "SET SHARDINGKEY TO 1",
    "SET ecluse.shards TO 1", "SET ecluse.shard_key TO 1", "SET ecluse.sharding.key TO 1",
    "SET search_path TO x", "SET SESSION SHARD TO 1", "SET LOCAL SHARDING KEY TO 1",
    "SHOW SHARD", "SHOW ecluse.shard", "SET SHARD TO ''", "SET ecluse.shard TO ''",
    "SET SHARD TO 1 2", "SET SHARD TO '1' x", "SET SHARD TO abc", "SET SHARD TO2",
    "SETSHARD TO 1", "SET SHARD TO 1;;", "SET SHARD TO 1; SELECT 1", "\u017fET SHARD TO 1",
    "SET SHARDING \u212aEY TO 1", "SET ecluse.sharding_\u212aey TO 1", "SET SHARD TO 1.5",
    "SET SHARD TO '1", "SET SHARD TO 1\0", "SELECT 'SET SHARD TO 1'",
    "/* /* */ SET SHARD TO 2; -- */",  # all of it one nested comment
    "SET /* /* */ */ SHARD TO 2",  # nested comments are beyond the regular expression
    "set time zone 'UTC'", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "", "SET",
])
def test_shard_set_near_misses(sql: str) -> None:
    assert parse_shard_set(sql) is None


@pytest.mark.parametrize(("sql", "expected"), [
    ("SET SHARD TO '2'", ("shard", "2")),
    ("SET SHARD = 2", ("shard", "2")),
    ("SET SHARDING KEY TO 'abc'", ("sharding_key", "abc")),
    ("set sharding key='it''s' ; ", ("sharding_key", "it's")),
    ("SET SHARDING KEY TO -5", ("sharding_key", "-5")),
    ("SET SHARD TO 007", ("shard", "007")),
    ("  SET/**/SHARD--x\nTO'1'", ("shard", "1")),
    ("SET ecluse.shard TO '2'", ("shard", "2")),
    ("SET LOCAL ecluse.sharding_key = 'abc'", ("sharding_key", "abc")),
    ("SET SESSION ecluse.shard TO 007", ("shard", "7")),
    ("SET ecluse.sharding_key TO 1.50", ("sharding_key", "1.50")),
    ("SET ecluse.sharding_key TO ABC", ("sharding_key", "abc")),
    ("SET ecluse.sharding_key TO true", ("sharding_key", "true")),
    ("SET \"ECLUSE\".\"SHARD\" TO E'\\x41'", ("shard", "A")),
    ("SET /* /* nested */ */ ecluse.shard TO 3", ("shard", "3")),
])
def test_shard_set_examples(sql: str, expected: tuple[str, str]) -> None:
    assert parse_shard_set(sql) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_hint_and_set_never_raise(sql: str) -> None:
    for text in (sql, "SET " + sql, "SET SHARD TO " + sql, "/*" + sql, "--" + sql):
        assert comment_hint(text) is None or len(comment_hint(text)) == 2
        assert parse_shard_set(text) is None or len(parse_shard_set(text)) == 2
