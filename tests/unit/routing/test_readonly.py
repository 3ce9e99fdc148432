"""routing/readonly.py: which SQL texts a read-only replica may answer.

Readers come from a small SELECT grammar over two tables a and b, both
(c1 int, c2 text), so that every generated query also yields (c1 int, c2 text)
and can stand anywhere another one can; tests/integration/test_readonly_oracle.py
runs the same grammar against PostgreSQL. Writers are readers with one writer
put in: a PRIMARY_FUNCTIONS call, a row lock, SELECT INTO, a data-modifying
CTE, a second statement, EXPLAIN ANALYZE of a write, a transaction start, a
utility statement.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ecluse.routing import readonly
from ecluse.routing.readonly import (
    CACHE_MAX_ENTRIES,
    CACHE_MAX_LENGTH,
    PARSE_MAX_COMMENTS,
    PARSE_MAX_LENGTH,
    PRIMARY_FUNCTIONS,
    literal_shape,
    sql_is_read_only,
    sql_is_read_only_uncached,
)

# Where the grammar leaves room for a writer: EXPR_MARK stands for an int
# expression, TABLE_MARK precedes a table name in a FROM list. Neither
# character appears anywhere else in generated SQL.
EXPR_MARK = "\u00a7"
TABLE_MARK = "\u00a4"
_TABLE_SITE = re.compile(f"{TABLE_MARK}([ab])")

# Words that would be writers if they were SQL rather than text.
TRAP_WORDS = [
    "insert", "INSERT INTO a VALUES (1, 'x')", "for update", "FOR SHARE", "nextval(",
    "nextval('s')", "select * into t from a", "; delete from a", "with w as (update a",
    "pg_advisory_lock(1)", "begin", "it's", "*/", "/*", "-- not a comment", "$1", "\\",
]
HARMLESS_TEXT = ["x", "abc", "", "Zürich", "100%", "a_b"]


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def literal_texts() -> st.SearchStrategy[str]:
    """A string constant, sometimes holding a trap word, in one of three quotings."""
    word = st.sampled_from(TRAP_WORDS + HARMLESS_TEXT)
    return st.one_of(
        word.map(quote_literal),
        # Dollar quoting: no escaping at all inside.
        word.filter(lambda w: "$" not in w).map(lambda w: f"$q${w}$q$"),
        word.map(lambda w: "E" + quote_literal(w.replace("\\", "\\\\"))),
    )


def gaps() -> st.SearchStrategy[str]:
    """Whitespace, or a comment holding a trap word."""
    word = st.sampled_from([w for w in TRAP_WORDS if "*/" not in w and "/*" not in w])
    return st.one_of(
        st.just(" "),
        word.map(lambda w: f" /* {w} */ "),
        word.map(lambda w: f" -- {w}\n"),
    )


@st.composite
def text_exprs(draw: st.DrawFn, alias: str, depth: int) -> str:
    kind = draw(st.sampled_from(["column", "literal", "lower", "upper", "coalesce", "concat"]
                                if depth > 0 else ["column", "literal"]))
    if kind == "column":
        return f"{alias}.c2"
    if kind == "literal":
        return draw(literal_texts())
    inner = draw(text_exprs(alias, depth - 1))
    if kind == "coalesce":
        return f"coalesce({inner}, 'none')"
    if kind == "concat":
        return f"({inner} || {draw(literal_texts())})"
    return f"{kind}({inner})"


@st.composite
def int_exprs(draw: st.DrawFn, alias: str, depth: int) -> str:
    leaves = [f"{alias}.c1", "number", EXPR_MARK, "extract(day from now())::int",
              "length(current_user)"]
    kind = draw(st.sampled_from(
        leaves + (["abs", "coalesce", "plus", "length", "scalar"] if depth > 0 else [])))
    if kind == "number":
        return str(draw(st.integers(-5, 5)))
    if kind in leaves:
        return kind
    if kind == "length":
        return f"length({draw(text_exprs(alias, depth - 1))})"
    if kind == "scalar":
        # A correlated scalar subquery.
        sub = f"s{depth}"
        return f"(SELECT count(*)::int FROM b AS {sub} WHERE {sub}.c1 = {alias}.c1)"
    inner = draw(int_exprs(alias, depth - 1))
    if kind == "abs":
        return f"abs({inner})"
    if kind == "coalesce":
        return f"coalesce({inner}, 0)"
    return f"({inner} + {draw(int_exprs(alias, depth - 1))})"


@st.composite
def conditions(draw: st.DrawFn, alias: str, depth: int) -> str:
    kind = draw(st.sampled_from(
        ["compare", "like", "between", "not_null"]
        + (["and", "or", "not", "in", "exists"] if depth > 0 else [])))
    if kind == "compare":
        op = draw(st.sampled_from(["=", "<>", "<", ">=", "IS DISTINCT FROM"]))
        return f"{draw(int_exprs(alias, depth))} {op} {draw(int_exprs(alias, depth))}"
    if kind == "like":
        return f"{draw(text_exprs(alias, depth))} LIKE {draw(literal_texts())}"
    if kind == "between":
        return f"{alias}.c1 BETWEEN 1 AND 3"
    if kind == "not_null":
        return f"{alias}.c2 IS NOT NULL"
    if kind in ("and", "or"):
        one = draw(conditions(alias, depth - 1))
        return f"({one} {kind.upper()} {draw(conditions(alias, depth - 1))})"
    if kind == "not":
        return f"NOT ({draw(conditions(alias, depth - 1))})"
    sub = f"s{depth}"
    query = draw(queries(depth - 1))
    if kind == "in":
        left = draw(int_exprs(alias, depth - 1))
        return f"{left} IN (SELECT {sub}.c1 FROM ({query}) AS {sub}(c1, c2))"
    return f"EXISTS (SELECT 1 FROM ({query}) AS {sub}(c1, c2) WHERE {sub}.c1 = {alias}.c1)"


@st.composite
def from_items(draw: st.DrawFn, alias: str, depth: int, ctes: tuple[str, ...]) -> str:
    """A FROM list in which alias names a relation of (c1 int, c2 text)."""
    table = f"{TABLE_MARK}{draw(st.sampled_from('ab'))}"
    kind = draw(st.sampled_from(
        ["table", *ctes] + (["subquery", "join", "lateral", "function"] if depth > 0 else [])))
    if kind == "table":
        return f"{table} AS {alias}"
    if kind in ctes:
        return f"{kind} AS {alias}"
    if kind == "subquery":
        return f"({draw(queries(depth - 1))}) AS {alias}(c1, c2)"
    partner = f"j{depth}"
    if kind == "join":
        join = draw(st.sampled_from(["JOIN", "LEFT JOIN", "FULL JOIN"]))
        return f"{table} AS {alias} {join} b AS {partner} ON {partner}.c1 = {alias}.c1"
    if kind == "lateral":
        return (f"{table} AS {alias} CROSS JOIN LATERAL (SELECT * FROM "
                f"({draw(queries(depth - 1))}) AS l{depth}(c1, c2) "
                f"WHERE l{depth}.c1 <> {alias}.c1) AS {partner}")
    # A function in FROM may use the items before it (an implicit LATERAL).
    return (f"{table} AS {alias}, generate_series(1, {draw(int_exprs(alias, 0))}) "
            f"AS {partner}(n)")


@st.composite
def selects(draw: st.DrawFn, depth: int, ctes: tuple[str, ...] = ()) -> str:
    alias = f"t{depth}"
    source = draw(from_items(alias, depth, ctes))
    gap = draw(gaps())
    if draw(st.booleans()):
        target = (f"{draw(int_exprs(alias, depth))} AS c1,{gap}"
                  f"{draw(text_exprs(alias, depth))} AS c2")
    else:
        target = f"count(*)::int AS c1, max({alias}.c2) AS c2"
    sql = f"SELECT {target} FROM {source}"
    if draw(st.booleans()):
        sql += f" WHERE{gap}{draw(conditions(alias, depth))}"
    if draw(st.booleans()):
        sql += f" ORDER BY 1 LIMIT {draw(st.integers(0, 3))}"
    return sql


@st.composite
def queries(draw: st.DrawFn, depth: int) -> str:
    """A read-only query yielding (c1 int, c2 text), with EXPR_MARK and TABLE_MARK in it."""
    kind = draw(st.sampled_from(
        ["select", "select", "values", "table"]
        + (["setop", "with", "recursive"] if depth > 0 else [])))
    if kind == "select":
        return draw(selects(depth))
    if kind == "values":
        second = draw(int_exprs("t0", 0).filter(_no_alias))
        return f"VALUES (1, {draw(literal_texts())}), ({second}, 'y')"
    if kind == "table":
        return f"TABLE {draw(st.sampled_from('ab'))}"
    if kind == "setop":
        one, two = draw(queries(depth - 1)), draw(queries(depth - 1))
        op = draw(st.sampled_from(["UNION", "UNION ALL", "INTERSECT", "EXCEPT ALL"]))
        return f"({one}) {op} ({two})"
    cte = f"w{depth}"
    if kind == "with":
        head = f"WITH {cte}(c1, c2) AS ({draw(queries(depth - 1))}) "
    else:
        head = (f"WITH RECURSIVE {cte}(c1, c2) AS (SELECT 1, 'x' UNION ALL "
                f"SELECT c1 + 1, c2 FROM {cte} WHERE c1 < 3) ")
    return head + draw(selects(depth, (cte,)))


def _no_alias(expr: str) -> bool:
    return "t0." not in expr


def fill(sql: str) -> str:
    """Turn a marked query into plain read-only SQL."""
    return _TABLE_SITE.sub(r"\1", sql.replace(EXPR_MARK, "abs(0)"))


@st.composite
def marked_readers(draw: st.DrawFn) -> str:
    sql = draw(queries(draw(st.integers(0, 2))))
    text = fill(sql)
    # Keep to texts the module parses at all, so that a False means "writer".
    if len(text) > PARSE_MAX_LENGTH or text.count("/*") > PARSE_MAX_COMMENTS:
        sql = draw(queries(0))
    return sql


def readers() -> st.SearchStrategy[str]:
    return marked_readers().map(fill)


def _spell(name: str, style: str) -> str:
    if style == "upper":
        return name.upper()
    if style == "quoted":
        return f'"{name}"'
    if style == "quoted_upper":
        # A different function to PostgreSQL, but nobody's harmless one.
        return f'"{name.upper()}"'
    return name


@st.composite
def primary_calls(draw: st.DrawFn) -> str:
    """A call of a PRIMARY_FUNCTIONS function, spelled in any of the ways SQL allows."""
    name = draw(st.sampled_from(sorted(PRIMARY_FUNCTIONS)))
    name = _spell(name, draw(st.sampled_from(["plain", "upper", "quoted", "quoted_upper"])))
    schema = draw(st.sampled_from(["", "pg_catalog.", "PG_CATALOG.", "public."]))
    args = draw(st.sampled_from(["", "'s'", "1", "1, 2", "'s', 1, false"]))
    return f"{schema}{name}({args})"


def _relation(sql: str) -> str:
    return f"({sql}) AS q(c1, c2)"


@st.composite
def writers(draw: st.DrawFn) -> str:
    """A reader turned into a statement that must run on the primary."""
    marked = draw(marked_readers())
    reader = fill(marked)
    kind = draw(st.sampled_from([
        "call", "lock", "lock_inner", "into", "dml_cte", "append", "prepend", "explain",
        "begin", "utility",
    ]))
    if kind == "call":
        call = draw(primary_calls())
        inner = draw(st.sampled_from([call, f"length(({call})::text)",
                                      f"(SELECT {call})", f"coalesce(NULL, {call})"]))
        if EXPR_MARK in marked:
            return fill(marked.replace(EXPR_MARK, inner, 1))
        return f"SELECT q.c1, q.c2 FROM {_relation(reader)} WHERE q.c1 <> {inner}"
    if kind in ("lock", "lock_inner"):
        strength = draw(st.sampled_from(["UPDATE", "NO KEY UPDATE", "SHARE", "KEY SHARE"]))
        wait = draw(st.sampled_from(["", " NOWAIT", " SKIP LOCKED", " OF q"]))
        if kind == "lock_inner" and _TABLE_SITE.search(marked):
            locked = (f"(SELECT c1, c2 FROM \\1 FOR {strength}"
                      f"{wait.replace(' OF q', '')})")
            return fill(_TABLE_SITE.sub(locked, marked, count=1))
        return f"SELECT q.c1, q.c2 FROM {_relation(reader)} FOR {strength}{wait}"
    if kind == "into":
        table = draw(st.sampled_from(["newtab", "TEMP newtab", "UNLOGGED newtab"]))
        return f"SELECT q.c1, q.c2 INTO {table} FROM {_relation(reader)}"
    if kind == "dml_cte":
        dml = draw(st.sampled_from([
            "INSERT INTO a VALUES (1, 'x') RETURNING c1, c2",
            "UPDATE a SET c2 = 'y' WHERE c1 = 1 RETURNING c1, c2",
            "DELETE FROM b WHERE c1 < 0 RETURNING c1, c2",
            "MERGE INTO a USING b ON a.c1 = b.c1 WHEN MATCHED THEN DELETE "
            "RETURNING a.c1, a.c2",
        ]))
        tail = draw(st.sampled_from([
            f"SELECT w.c1, w.c2 FROM w UNION ALL ({reader})", f"({reader})",
            f"SELECT q.c1, q.c2 FROM {_relation(reader)} WHERE q.c1 IN (SELECT c1 FROM w)",
        ]))
        return f"WITH w AS ({dml}) {tail}"
    if kind in ("append", "prepend"):
        write = draw(st.sampled_from([
            "INSERT INTO a VALUES (1, 'x')", "UPDATE a SET c1 = c1 + 1", "DELETE FROM b",
            "TRUNCATE a", "SELECT nextval('s')", "SELECT * FROM a FOR UPDATE",
            "SET work_mem = '8MB'", "CREATE TABLE z (i int)",
        ]))
        return f"{reader}; {write}" if kind == "append" else f"{write}; {reader}"
    if kind == "explain":
        options = draw(st.sampled_from(["ANALYZE", "(ANALYZE)", "(ANALYZE, BUFFERS)",
                                        "(ANALYZE true, FORMAT JSON)", ""]))
        statement = draw(st.sampled_from([
            f"INSERT INTO a SELECT q.c1, q.c2 FROM {_relation(reader)}",
            f"DELETE FROM a WHERE c1 IN (SELECT q.c1 FROM {_relation(reader)})",
            f"UPDATE b SET c2 = 'z' WHERE c1 IN (SELECT q.c1 FROM {_relation(reader)})",
            f"CREATE TABLE z AS {reader}",
            f"SELECT q.c1, q.c2 FROM {_relation(reader)} FOR UPDATE",
        ]))
        return f"EXPLAIN {options} {statement}"
    if kind == "begin":
        start = draw(st.sampled_from(["BEGIN", "BEGIN READ ONLY", "START TRANSACTION"]))
        return f"{start}; {reader}"
    utility = draw(st.sampled_from([
        "DECLARE c CURSOR FOR {}", "CREATE TABLE z AS {}", "CREATE TEMP VIEW v AS {}",
        "COPY ({}) TO STDOUT", "PREPARE p AS {}", "CREATE MATERIALIZED VIEW m AS {}",
        "DO $$BEGIN END$$; {}", "LISTEN ch; {}", "CALL p(); {}",
    ]))
    return utility.format(reader)


@settings(max_examples=300, deadline=None)
@given(readers())
def test_generated_readers_are_read_only(sql: str) -> None:
    assert sql_is_read_only_uncached(sql), sql
    assert sql_is_read_only(sql), sql


@settings(max_examples=500, deadline=None)
@given(writers())
def test_generated_writers_go_to_the_primary(sql: str) -> None:
    assert not sql_is_read_only_uncached(sql), sql
    assert not sql_is_read_only(sql), sql


READ_ONLY = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    "select 1",
    "SHOW work_mem",
    "show all",
    "EXPLAIN SELECT * FROM a",
    "EXPLAIN ANALYZE SELECT * FROM a",
    "EXPLAIN (ANALYZE, FORMAT JSON) VALUES (1)",
    "TABLE a",
    "VALUES (1, 'x')",
    "SELECT 1; SELECT 2",
    "SELECT 1;;; SHOW x;",
    'SELECT "nextval" FROM a',
    "SELECT nextval FROM a",
    "SELECT t.nextval, t.setval FROM a AS t",
    "SELECT 'nextval(''s'')' AS x",
    "SELECT 1 -- FOR UPDATE\n",
    "/* INSERT INTO a */ SELECT 1",
    "SELECT pg_sleep(0)",
    "SELECT lower(c2), count(*) FROM a GROUP BY 1",
    "SELECT * FROM a WHERE c1 IN (SELECT c1 FROM b) ORDER BY 1 LIMIT 5",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "SELECT txid_current_snapshot()",
    "SELECT lo_get IS NULL FROM (SELECT NULL AS lo_get) AS t",
    "SELECT * FROM a WHERE c2 = $$for update$$",
    "select array[1, 2]::int[], row(1, 'a'), '{}'::jsonb ->> 'k'",
]

PRIMARY = [
    "",
    "   ",
    "-- only a comment",
    "/* only a comment */",
    ";",
    "SELECT 1\0",
    "\0SELECT 1",
    "garbage",
    "SELECT FROM WHERE",
    "SELECT '\ud800'",
    "EXPLAIN ANALYZE DELETE FROM a",
    "EXPLAIN DELETE FROM a",
    "EXPLAIN ANALYZE INSERT INTO a VALUES (1)",
    "EXPLAIN ANALYZE CREATE TABLE z AS SELECT 1",
    "EXPLAIN EXECUTE p",
    "SELECT nextval('s')",
    "SELECT pg_catalog.nextval('s')",
    "SELECT NEXTVAL('s')",
    'SELECT "nextval"(\'s\')',
    'SELECT "NextVal"(\'s\')',
    "SELECT Pg_Catalog.SetVal('s', 1)",
    "SELECT currval('s'), lastval()",
    "SELECT pg_advisory_xact_lock(1)",
    "SELECT pg_try_advisory_lock_shared(1, 2)",
    "SELECT pg_advisory_lock_made_up(1)",
    "SELECT pg_stat_reset_made_up()",
    "SELECT set_config('a.b', 'c', false)",
    "SELECT pg_notify('ch', 'x')",
    "SELECT * FROM generate_series(1, nextval('s'))",
    "SELECT * FROM ROWS FROM (lo_creat(-1))",
    "SELECT (SELECT (SELECT setval('s', 1)))",
    "SELECT 1 UNION ALL SELECT txid_current()::int",
    "SELECT count(*) FILTER (WHERE pg_try_advisory_lock(1)) FROM a",
    "SELECT sum(c1) OVER (ORDER BY nextval('s')) FROM a",
    "SELECT * FROM a FOR UPDATE",
    "SELECT * FROM a FOR NO KEY UPDATE",
    "SELECT * FROM a FOR SHARE SKIP LOCKED",
    "SELECT * FROM a FOR KEY SHARE OF a NOWAIT",
    "SELECT * FROM a, LATERAL (SELECT * FROM b FOR UPDATE) AS x",
    "SELECT * FROM a WHERE EXISTS (SELECT 1 FROM b FOR SHARE)",
    "SELECT * INTO z FROM a",
    "SELECT * INTO TEMP z FROM a",
    "WITH x AS (DELETE FROM a RETURNING *) SELECT * FROM x",
    "WITH x AS (SELECT 1), y AS (UPDATE a SET c1 = 1 RETURNING *) SELECT * FROM x",
    "WITH x AS (INSERT INTO a VALUES (1) RETURNING *) SELECT 1",
    "SELECT 1; INSERT INTO a VALUES (1)",
    "INSERT INTO a VALUES (1); SELECT 1",
    "BEGIN",
    "BEGIN; SELECT 1; COMMIT",
    "START TRANSACTION READ ONLY",
    "SET work_mem = '8MB'",
    "COPY a TO STDOUT",
    "DO $$BEGIN END$$",
    "CALL p()",
    "PREPARE p AS SELECT 1",
    "EXECUTE p",
    "DECLARE c CURSOR FOR SELECT 1",
    "LISTEN ch",
    "VACUUM a",
    "ANALYZE a",
    "CHECKPOINT",
    "CREATE TABLE z (i int)",
    "CREATE TABLE z AS SELECT 1",
    "DROP TABLE a",
    "LOCK TABLE a",
    "UPDATE a SET c1 = 1",
    "SHOW transaction_read_only",
    'SHOW "Transaction_Read_Only"',
    "SHOW in_hot_standby",
    "SELECT pg_is_in_recovery()",
    "SELECT " + "+".join(["c1"] * 1000) + " FROM a",  # too deep for the JSON decoder
    "SELECT 1 " + "/**/" * (PARSE_MAX_COMMENTS + 1),
    "SELECT " + "1, " * PARSE_MAX_LENGTH + "1",
]


@pytest.mark.parametrize("sql", READ_ONLY)
def test_read_only_examples(sql: str) -> None:
    assert sql_is_read_only_uncached(sql)
    assert sql_is_read_only(sql)
    assert sql_is_read_only(sql)  # from the cache this time


@pytest.mark.parametrize("sql", PRIMARY)
def test_primary_examples(sql: str) -> None:
    assert not sql_is_read_only_uncached(sql)
    assert not sql_is_read_only(sql)
    assert not sql_is_read_only(sql)


@pytest.mark.parametrize("name", sorted(PRIMARY_FUNCTIONS))
def test_every_primary_function_is_refused_wherever_it_is_called(name: str) -> None:
    assert not sql_is_read_only_uncached(f"SELECT {name}()")
    assert not sql_is_read_only_uncached(f"SELECT * FROM a WHERE c1 IN (SELECT {name}(1))")
    assert not sql_is_read_only_uncached(f"SELECT 1 UNION SELECT pg_catalog.{name.upper()}()")
    # The same name as a column, a table or a string is no call.
    assert sql_is_read_only_uncached(f'SELECT "{name}", \'{name}()\' FROM "{name}"')


def test_brief_functions_are_all_listed() -> None:
    required = {
        "nextval", "setval", "currval", "lastval", "set_config", "pg_notify", "txid_current",
        "txid_current_if_assigned", "pg_current_xact_id", "pg_current_xact_id_if_assigned",
        "pg_logical_emit_message", "pg_terminate_backend", "pg_cancel_backend",
        "pg_reload_conf", "pg_rotate_logfile", "pg_switch_wal", "pg_create_restore_point",
        "pg_start_backup", "pg_stop_backup", "pg_backup_start", "pg_backup_stop", "lo_create",
        "lo_creat", "lo_import", "lo_export", "lo_unlink", "lo_put", "lo_from_bytea",
        "lo_open", "lowrite", "lo_truncate", "lo_truncate64", "dblink_exec", "pg_stat_reset",
        "pg_advisory_lock", "pg_try_advisory_xact_lock_shared", "pg_advisory_unlock_all",
    }
    assert required <= PRIMARY_FUNCTIONS
    assert "pg_sleep" not in PRIMARY_FUNCTIONS


# Any text at all: generated SQL of both kinds, SQL-ish noise and arbitrary strings.
any_texts = st.one_of(
    readers(), writers(), st.text(max_size=60),
    st.lists(st.sampled_from(["SELECT", "1", ",", "(", ")", "FROM", "a", ";", "FOR", "UPDATE",
                              "nextval", "'x'", "--", "/*", "*/", "\n", "INTO", "WITH"]),
             max_size=12).map(" ".join),
)


@settings(max_examples=300, deadline=None)
@given(any_texts)
def test_cache_never_changes_a_verdict(sql: str) -> None:
    fresh = sql_is_read_only_uncached(sql)
    assert sql_is_read_only(sql) == fresh
    assert sql_is_read_only(sql) == fresh
    # A different str object with the same text hits the same entry.
    assert sql_is_read_only("".join(list(sql))) == fresh


def test_cache_answers_repeats_without_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 987654;"
    assert sql_is_read_only(sql)

    def fail(_: str) -> bool:
        raise AssertionError("parsed again")

    monkeypatch.setattr(readonly, "sql_is_read_only_uncached", fail)
    assert sql_is_read_only(sql)
    assert sql_is_read_only(sql[:-1] + ";")  # an equal text, another object


def test_cache_stays_bounded() -> None:
    peak = 0
    for i in range(3 * CACHE_MAX_ENTRIES + 17):
        sql = f"SELECT {i}" if i % 2 else f"SELECT * FROM a FOR UPDATE OF a -- {i}"
        assert sql_is_read_only(sql) == (i % 2 == 1)
        peak = max(peak, len(readonly._verdicts))
    assert peak == CACHE_MAX_ENTRIES
    # Long texts are judged but never kept.
    long = "SELECT 1 AS x" + " " * CACHE_MAX_LENGTH
    before = dict(readonly._verdicts)
    assert sql_is_read_only(long) == sql_is_read_only_uncached(long)
    assert long not in readonly._verdicts
    assert readonly._verdicts == before


# -- one verdict per shape (rule 5) ----------------------------------------------

_KINDS = "\0\1\2\3"  # string, int4, larger integer, decimal: literal_shape's marks
_SHAPE_SAFE_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\\$&\0\1\2\3"),
    max_size=6).filter(lambda t: "--" not in t and "/*" not in t)


def any_constant() -> st.SearchStrategy[str]:
    """A string or number constant of any kind, boundaries of int4 included."""
    return st.one_of(
        _SHAPE_SAFE_TEXT.map(quote_literal),
        st.integers(0, 2**31 - 1).map(str),
        st.sampled_from(["2147483647", "2147483648", "0002147483647", "00", "9" * 40]),
        st.integers(2**31, 10**25).map(str),
        st.tuples(st.integers(0, 10**6), st.integers(0, 999)).map(lambda t: f"{t[0]}.{t[1]}"),
    )


def constant_like(kind: str) -> st.SearchStrategy[str]:
    """A constant literal_shape itself classes as ``kind``: a shape that merged two
    kinds would let both in, and the verdicts would tell them apart."""
    return any_constant().filter(lambda c: literal_shape(f"SELECT {c}") == f"SELECT {kind}")


@st.composite
def constant_sites(draw: st.DrawFn) -> str:
    """SQL with constants of any kind in places where the grammar cares about a kind:
    ICONST only (interval precision), numbers only (FETCH FIRST +n), anything."""
    template = draw(st.sampled_from([
        "SELECT INTERVAL {s} SECOND({c})",
        "SELECT c1 FROM a FETCH FIRST +{c} ROWS ONLY",
        "SELECT c1 FROM a ORDER BY c1 LIMIT {c} OFFSET {c}",
        "SELECT {c}::numeric({c}, {c})",
        "SELECT {c}, \"q'1\" FROM a WHERE c1 = {c} OR c2 = {c}",
        "SELECT {c}\n{c}",
        "SELECT {c} {c}",
        "SELECT B{s}, X{s}, E{s}, N{s}",
        "SELECT {c}; INSERT INTO a VALUES ({c}, {c})",
        "SELECT nextval({c})",
        "SELECT c1 FROM a FOR UPDATE OF a LIMIT {c}",
        "SELECT * FROM a WHERE c2 IN ({c}, {c}) UNION ALL SELECT {c}, {c}",
        "SELECT 1.{c}, {c}.1, t{c}, {c}e3, {c}x",
    ]))
    while "{c}" in template or "{s}" in template:
        slot = "{c}" if "{c}" in template else "{s}"
        constant = draw(any_constant() if slot == "{c}" else _SHAPE_SAFE_TEXT.map(quote_literal))
        template = template.replace(slot, constant, 1)
    return template


def assert_shape_shares_verdict(sql: str, data: st.DataObject) -> None:
    """The second text is made from the first's shape with other constants, each of
    the kind the shape names; both are judged from scratch."""
    shape = literal_shape(sql)
    assume(shape is not None)
    other = "".join(data.draw(constant_like(ch)) if ch in _KINDS else ch for ch in shape)
    assert literal_shape(other) == shape
    assert sql_is_read_only_uncached(other) == sql_is_read_only_uncached(sql), (sql, other)


@settings(max_examples=600, deadline=None)
@given(constant_sites(), st.data())
def test_constants_where_the_grammar_wants_a_kind_share_a_verdict_by_shape(
        sql: str, data: st.DataObject) -> None:
    assert_shape_shares_verdict(sql, data)


@settings(max_examples=300, deadline=None)
@given(st.one_of(readers(), writers()), st.data())
def test_generated_readers_and_writers_share_a_verdict_by_shape(
        sql: str, data: st.DataObject) -> None:
    assert_shape_shares_verdict(sql, data)


@pytest.mark.parametrize(("sql", "shaped"), [
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 42;", True),
    ("SELECT 'it''s', \"a'b\", 1.5, 2147483648", True),
    ("SELECT $1", False),
    ("SELECT E'\\n'", False),
    ("SELECT 1 -- comment", False),
    ("SELECT 1 /* comment */", False),
    ("SELECT $$x$$", False),
    ("SELECT U&'d!0061t' UESCAPE '!'", False),
])
def test_texts_the_shape_scanner_could_misread_have_no_shape(sql: str, shaped: bool) -> None:
    assert (literal_shape(sql) is not None) is shaped


def test_a_shape_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    judge = readonly.sql_is_read_only_uncached

    def counting(sql: str) -> bool:
        parsed.append(sql)
        return judge(sql)

    monkeypatch.setattr(readonly, "sql_is_read_only_uncached", counting)
    monkeypatch.setattr(readonly, "_verdicts", {})
    monkeypatch.setattr(readonly, "_shape_verdicts", {})
    for aid in range(1, 200):
        assert sql_is_read_only(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};")
    assert len(parsed) == 1
    # Another kind of constant is another shape; so is a text without a shape.
    assert sql_is_read_only("SELECT abalance FROM pgbench_accounts WHERE aid = 99999999999;")
    assert not sql_is_read_only("SELECT abalance FROM pgbench_accounts WHERE aid = 1 FOR UPDATE")
    assert not sql_is_read_only("SELECT abalance FROM pgbench_accounts WHERE aid = 2 FOR UPDATE")
    assert sql_is_read_only("SELECT abalance FROM pgbench_accounts WHERE aid = $1")
    assert len(parsed) == 4
