"""Sharding: which shard's pool serves a client's next request.

A [databases] entry with ``shards = app_0,app_1,...`` spreads its data over
the databases those entries name, shard 0, 1, ... in that order; each is an
ordinary entry with its own host, pool and limits. A client of the sharded
entry logs in through the pool of its default shard. FrontendSession asks a
ShardRouter what to do with each request (the messages up to and including a
Sync, or one Query): answer it itself (answer_idle), which pool serves it
(choose), how many of the requests buffered meanwhile go with it (sendable),
and whether what arrives while a server is linked must wait (holds).

Rules:
1. A request names a shard by a comment hint at the start of a Query or
   Parse text (``/* shard: 2 */`` or ``/* sharding_key: 42 */``), else by the
   values its SQL compares the sharding_key column with
   (routing/shardkeys.find_keys), literal or, through a Bind, parameter
   values; a Bind of a named statement is judged by the text it was prepared
   with. The value's shard is the one PostgreSQL's PARTITION BY HASH with as
   many partitions would pick (sharding_function).
2. A request that names no shard goes to the client's shard. That starts as
   default_shard and changes with ``SET SHARD TO 'n'`` or
   ``SET SHARDING KEY TO 'value'`` (PgCat's syntax; ``SET ecluse.shard`` and
   ``SET ecluse.sharding_key`` too), sent as a simple query between
   transactions and answered by ecluse.
3. A request naming two shards or more, or a shard that does not exist, is
   refused with an error and nothing of it is sent: a request is never split.
4. A transaction runs on one shard. A BEGIN sent alone as a simple query is
   answered by ecluse and kept until the next request names the shard; it
   is then run on that shard's server before the request (ROLLBACK or COMMIT
   before that is answered by ecluse too). Inside a transaction, requests that
   name no shard go to the transaction's server, and a request naming
   another shard ends the client's connection with an error (its transaction
   is rolled back): refusing it alone would leave the client and the server
   disagreeing on the transaction's state.
5. While a server is linked (a request outstanding), requests that name no
   shard join it; one that names another shard waits until that server is
   released, then is routed afresh: a write is never sent to the wrong shard
   to keep a pipeline going. A request that arrives in several chunks is
   routed by its first. If a later chunk names another shard while the
   server was only asked to prepare and describe (asyncpg sends Parse,
   Describe and Flush, then the Bind once it has the answer), ecluse ends that
   request on it unseen (a Sync whose reply it keeps) and sends the rest to
   the other shard, preparing the unnamed statement there again; named ones
   are prepared on any server that lacks them. If the server already acted on
   the first chunk, the client's connection ends with an error.
6. Decisions read the current config: after a RELOAD that changes shards,
   the next request goes where the new list says; a RELOAD that ends the
   sharding leaves the client on the shard it is on.
7. A shard whose entry has a read_db is read/write split as
   routing/readwrite.py says, within the shard: once the shard is chosen,
   a read-only request goes to that shard's read pool (a ReadRouter per
   shard, primary_after_write included), and while a read server is linked
   what is not read-only waits for its release.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pglast
from pglast import ast
from pglast.enums import TransactionStmtKind
from pglast.parser import ParseError

from ecluse.errors import RemoteProtocolError
from ecluse.protocol import codes
from ecluse.protocol.frontend import decode_bind
from ecluse.protocol.reader import Reader
from ecluse.routing.readwrite import ReadRouter, request_is_read_only
from ecluse.routing.shardhash import shard_of
from ecluse.routing.shardkeys import (
    KeyColumn,
    Keys,
    comment_hint,
    find_keys,
    parse_key_column,
    parse_shard_set,
)

if TYPE_CHECKING:
    from ecluse.config.model import Config, DatabaseConfig
    from ecluse.frontend.prepared import ClientStatement
    from ecluse.pool.pool import Pool
    from ecluse.pool.registry import PoolRegistry
    from ecluse.protocol.messages import Bind

_Q = codes.FE_QUERY
_P = codes.FE_PARSE
_B = codes.FE_BIND
_S = codes.FE_SYNC
# Messages after which the server answers with ReadyForQuery: a request ends there.
_REQUEST_ENDS = frozenset({codes.FE_QUERY, codes.FE_SYNC, codes.FE_FUNCTION_CALL})

# Messages that change nothing a request on another server would miss.
_NO_EFFECT = frozenset({codes.FE_PARSE, codes.FE_DESCRIBE, codes.FE_FLUSH, codes.FE_CLOSE})

# What holds() says of pieces arriving while a server is linked.
FORWARD = 0
HOLD = 1
MOVE = 2

FEATURE_NOT_SUPPORTED = "0A000"
INVALID_PARAMETER_VALUE = "22023"


class ShardError(Exception):
    """A request ecluse refuses (rule 3), or one that ends the client (rule 4)."""

    def __init__(self, message: str, sqlstate: str = FEATURE_NOT_SUPPORTED):
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """The sharding of one database entry, as the current config has it."""

    names: tuple[str, ...]  # the shards' [databases] entries, in shard order
    key: KeyColumn | None
    function: str

    @classmethod
    def of(cls, db: DatabaseConfig) -> ShardSpec:
        key = parse_key_column(db.sharding_key) if db.sharding_key is not None else None
        return cls(db.shards, key, db.sharding_function)

    def shard_of_value(self, value: str) -> int | None:
        """The shard of a key value, or None when it is no value of the key's type
        (the server then says what is wrong with it)."""
        try:
            return shard_of(value, len(self.names), self.function)
        except ValueError:
            return None

    def shard_of_hint(self, hint: tuple[str, str]) -> int:
        kind, value = hint
        if kind == "sharding_key":
            shard = self.shard_of_value(value)
            if shard is None:
                raise ShardError(f"sharding key {value!r} is not a valid {self._type} value",
                                 INVALID_PARAMETER_VALUE)
            return shard
        try:
            shard = int(value.strip().strip("'\""))
        except ValueError:
            shard = -1
        if not 0 <= shard < len(self.names):
            raise ShardError(f"shard {value!r} does not exist: shards are numbered 0 to "
                             f"{len(self.names) - 1}", INVALID_PARAMETER_VALUE)
        return shard

    @property
    def _type(self) -> str:
        return "bigint" if self.function == "pg_bigint_hash" else "text"


_SPECS: dict[tuple[int, str], tuple[Config, ShardSpec | None]] = {}


def spec_for(config: Config, database: str) -> ShardSpec | None:
    """The sharding of ``database`` in ``config``, None when it is not sharded;
    kept per config object (a RELOAD makes a new one)."""
    key = (id(config), database)
    cached = _SPECS.get(key)
    if cached is not None and cached[0] is config:  # not a new config at an old address
        return cached[1]
    db = config.databases.get(database)
    spec = ShardSpec.of(db) if db is not None and db.shards else None
    if len(_SPECS) > 256:
        _SPECS.clear()
    _SPECS[key] = (config, spec)
    return spec


def request_spans(pieces: Sequence) -> list[tuple[int, int]]:
    """Split framer pieces into requests: (first, last + 1) index pairs. The last
    span may be a request not yet ended (more of it to come)."""
    spans = []
    first = 0
    for i, (msg_type, _raw, _start, end) in enumerate(pieces):
        if end and msg_type in _REQUEST_ENDS:
            spans.append((first, i + 1))
            first = i + 1
    if first < len(pieces):
        spans.append((first, len(pieces)))
    return spans


def whole_pieces(data: bytes) -> list[tuple[int, bytes, bool, bool]]:
    """``data``, known to hold whole messages only, as framer pieces."""
    pieces = []
    at = 0
    while at < len(data):
        end = at + 1 + int.from_bytes(data[at + 1:at + 5])
        pieces.append((data[at], data[at:end], True, True))
        at = end
    return pieces


def _param_values(bind: Bind, params: tuple[int, ...], binary_int: bool) -> list[str]:
    """The values of parameters ``params`` ($n, 1-based) of ``bind`` as text; NULLs,
    and binary values of a bigint key that are no integer, name nothing."""
    formats = bind.param_formats
    values = []
    for n in params:
        if n > len(bind.params) or (data := bind.params[n - 1]) is None:
            continue
        binary = (formats[0] if len(formats) == 1 else
                  formats[n - 1] if len(formats) >= n else 0) == 1
        if not binary or not binary_int:
            values.append(data.decode("utf-8", "replace"))  # text's binary form is its bytes
        elif len(data) in (2, 4, 8):
            values.append(str(int.from_bytes(data, "big", signed=True)))
    return values


def request_shards(pieces: Sequence, statements: Mapping[bytes, ClientStatement],
                   spec: ShardSpec, unnamed: Keys | None = None) -> tuple[set[int], Keys | None]:
    """The shards one request names (rule 1), and the keys of the unnamed statement
    after it (``unnamed``: before it); a ShardError for a bad hint."""
    shards: set[int] = set()
    binary_int = spec.function == "pg_bigint_hash"
    for msg_type, raw, start, end in pieces:
        if not (start and end) or msg_type not in (_Q, _P, _B):
            continue  # no SQL, or a message too large to hold whole: names nothing
        try:
            if msg_type == _Q:
                sql = Reader(raw[5:], "Query message").cstring()
                keys = _keys_of(sql, spec, shards)
                if keys is not None:
                    _add_values(keys.values, spec, shards)
            elif msg_type == _P:
                body = Reader(raw[5:], "Parse message")
                name = body.cstring()
                keys = _keys_of(body.cstring(), spec, shards)
                if keys is not None:
                    _add_values(keys.values, spec, shards)
                if not name:
                    unnamed = keys
            else:
                bind = decode_bind(raw[5:])
                if bind.statement:
                    stmt = statements.get(bind.statement.encode())
                    if stmt is None:
                        continue
                    keys = _keys_of(Reader(stmt.parse_tail, "statement").cstring(), spec,
                                    set())  # its hint counted at its Parse
                else:
                    keys = unnamed
                if keys is not None and keys.params:
                    _add_values(_param_values(bind, keys.params, binary_int), spec, shards)
        except RemoteProtocolError:
            continue  # malformed: the server answers it, wherever it goes
    return shards, unnamed


def _keys_of(sql: str, spec: ShardSpec, shards: set[int]) -> Keys | None:
    """The key values of ``sql``; a comment hint adds its shard to ``shards``
    instead, and then the text's own keys are not looked at."""
    hint = comment_hint(sql)
    if hint is not None:
        shards.add(spec.shard_of_hint(hint))
        return None
    choice = parse_shard_set(sql)
    if choice is not None:
        shards.add(spec.shard_of_hint(choice))
        return None
    key = spec.key
    if key is None:
        return None
    if '"' not in key.column:
        # A text that never spells the column's name names no key: no parse. Only
        # a Unicode-escaped identifier (U&"...") spells a name without its letters.
        lowered = sql.lower()
        if key.column.lower() not in lowered and "u&" not in lowered:
            return None
    return find_keys(sql, key)


def _add_values(values: Sequence[str], spec: ShardSpec, shards: set[int]) -> None:
    for value in values:
        shard = spec.shard_of_value(value)
        if shard is not None:
            shards.add(shard)


_TRANSACTION_START = re.compile(r"\s*(?:begin|start|commit|end|rollback|abort)\b",
                                re.ASCII | re.IGNORECASE)
_BEGIN_KINDS = (TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START)
_END_KINDS = (TransactionStmtKind.TRANS_STMT_COMMIT, TransactionStmtKind.TRANS_STMT_ROLLBACK)


def transaction_statement(sql: str) -> ast.TransactionStmt | None:
    """The statement, when ``sql`` is one BEGIN, START TRANSACTION, COMMIT or
    ROLLBACK and nothing else."""
    if _TRANSACTION_START.match(sql) is None or len(sql) > 1024 or "\0" in sql:
        return None
    try:
        stmts = pglast.parse_sql(sql)
    except (ParseError, ValueError):
        return None
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.TransactionStmt):
        return None
    stmt = stmts[0].stmt
    if stmt.kind not in _BEGIN_KINDS and stmt.kind not in _END_KINDS:
        return None
    return stmt


@dataclass(frozen=True, slots=True)
class IdleAnswer:
    """What ecluse answers for a simple query of an idle client: the
    CommandComplete tag, and the transaction status its ReadyForQuery shows."""

    tag: str
    status: bytes


class ShardRouter:
    """The sharding of one client of a sharded database."""

    __slots__ = ("begin", "database", "home", "open_effects", "open_parse", "open_request",
                 "readers", "registry", "replay", "shard", "unnamed")

    def __init__(self, home: Pool, registry: PoolRegistry, database: str, shard: int):
        self.home = home  # the pool of the client's shard (rule 2)
        self.registry = registry
        self.database = database  # the sharded entry the client logged in to
        self.shard = shard
        self.begin: bytes | None = None  # a deferred BEGIN's Query message (rule 4)
        # The keys of the unnamed statement last parsed, for a Bind in a later chunk.
        self.unnamed: Keys | None = None
        # The linked server has the start of a request and not yet its end
        # (open_request); a Bind, Execute or anything else that acts was sent in it
        # (open_effects); the unnamed statement's Parse sent in it (open_parse).
        self.open_request = False
        self.open_effects = False
        self.open_parse: bytes | None = None
        # That Parse, to run again unseen on the next server (rule 5).
        self.replay: bytes | None = None
        self.readers: dict[int, ReadRouter] | None = None  # per shard with read_db (rule 7)

    def spec(self) -> ShardSpec | None:
        return spec_for(self.registry.config, self.database)

    def pool_for(self, spec: ShardSpec, shard: int, user: str) -> Pool:
        db = self.registry.config.databases[spec.names[shard]]
        return self.registry.get_pool(db, user)

    # --- between transactions ------------------------------------------------
    def answer_idle(self, sql: str, user: str) -> IdleAnswer | None:
        """Answer a simple query of an idle client that needs no server: a shard
        choice (rule 2), a lone BEGIN, or the COMMIT or ROLLBACK of a BEGIN still
        deferred (rule 4). ShardError for a choice of no shard."""
        spec = self.spec()
        if spec is None:
            return None
        deferred = self.begin is not None
        choice = parse_shard_set(sql)
        if choice is not None:
            self._take_shard(spec, choice, user)
            return IdleAnswer("SET", b"T" if deferred else b"I")
        stmt = transaction_statement(sql)
        if stmt is None:
            return None
        if stmt.kind in _BEGIN_KINDS:
            if deferred:
                return None  # the server warns of a BEGIN within a transaction
            self.begin = sql.encode()
            return IdleAnswer("BEGIN" if stmt.kind == TransactionStmtKind.TRANS_STMT_BEGIN
                              else "START TRANSACTION", b"T")
        if not deferred:
            return None  # the server warns that no transaction is in progress
        if stmt.chain:
            return IdleAnswer("COMMIT" if stmt.kind == TransactionStmtKind.TRANS_STMT_COMMIT
                              else "ROLLBACK", b"T")
        self.begin = None
        return IdleAnswer("COMMIT" if stmt.kind == TransactionStmtKind.TRANS_STMT_COMMIT
                          else "ROLLBACK", b"I")

    def choose_while_linked(self, sql: str, user: str) -> bool:
        """Take a shard choice sent while a server is linked (rules 4 and 5 let it
        reach the server only when it names that server's shard); False when
        ``sql`` is no shard choice."""
        spec = self.spec()
        choice = parse_shard_set(sql) if spec is not None else None
        if choice is None:
            return False
        self._take_shard(spec, choice, user)
        return True

    def _take_shard(self, spec: ShardSpec, choice: tuple[str, str], user: str) -> None:
        """Make the shard ``choice`` names the client's (rule 2)."""
        self.move_to(spec, spec.shard_of_hint(choice), user)

    def move_to(self, spec: ShardSpec, shard: int, user: str) -> None:
        """Make ``shard`` the client's (rule 2; also a client handed over with it)."""
        self.shard = shard
        self.home = self.pool_for(spec, shard, user)

    def answers_idle(self, sql: str) -> bool:
        """Whether answer_idle may answer ``sql`` (without acting on it)."""
        return _TRANSACTION_START.match(sql) is not None or parse_shard_set(sql) is not None

    def take_begin(self) -> str | None:
        """The deferred BEGIN, to run before the request it waited for."""
        begin, self.begin = self.begin, None
        return begin.decode() if begin is not None else None

    def choose(self, pieces: Sequence, statements: Mapping[bytes, ClientStatement],
               user: str) -> Pool:
        """The pool for the first request in ``pieces`` of an idle client; ShardError
        if it is refused (rule 3)."""
        spec = self.spec()
        if spec is None:
            return self.home
        first, last = request_spans(pieces)[0]
        shards, self.unnamed = request_shards(pieces[first:last], statements, spec,
                                              self.unnamed)
        if len(shards) > 1:
            raise ShardError(_spread(shards))
        shard = shards.pop() if shards else self.shard
        if shard >= len(spec.names):
            return self.home
        primary = self.pool_for(spec, shard, user)
        reader = self.reader(spec, shard, primary)
        if reader is None or self.begin is not None:
            return primary  # a transaction runs on the primary from its BEGIN
        return reader.choose(pieces[first:last], statements, user)

    def reader(self, spec: ShardSpec, shard: int, primary: Pool) -> ReadRouter | None:
        """The read/write split of ``shard``, when its entry has a read_db (rule 7)."""
        if self.registry.config.databases[spec.names[shard]].read_db is None:
            return None
        readers = self.readers
        if readers is None:
            readers = self.readers = {}
        reader = readers.get(shard)
        if reader is None:
            reader = readers[shard] = ReadRouter(primary, self.registry)
        reader.home = primary  # the current pool, after a RELOAD too
        return reader

    def linked_shard(self, spec: ShardSpec, pool: Pool) -> tuple[int | None, bool]:
        """The shard of ``pool`` and whether it is that shard's read pool."""
        name = pool.settings.database
        try:
            return spec.names.index(name), False
        except ValueError:
            pass
        databases = self.registry.config.databases
        for shard, shard_name in enumerate(spec.names):
            db = databases.get(shard_name)
            if db is not None and db.read_db == name:
                return shard, True
        return None, False

    def fallback(self, pool: Pool, user: str) -> Pool | None:
        """Where a client whose wait on ``pool`` failed goes: a shard's read pool
        falls back to the shard's primary (readwrite.py rule 3); a primary has no
        stand-in."""
        spec = self.spec()
        if spec is None:
            return None
        shard, replica = self.linked_shard(spec, pool)
        return self.pool_for(spec, shard, user) if replica else None

    def sendable(self, pieces: Sequence, statements: Mapping[bytes, ClientStatement],
                 pool: Pool) -> int:
        """How many of ``pieces``, buffered for the server of ``pool`` just linked,
        go to it now: the first request, which chose it, and those after it that
        name its shard or none (rule 5)."""
        spec = self.spec()
        spans = request_spans(pieces)
        count = len(pieces)
        if spec is not None and len(spans) > 1:
            linked, replica = self.linked_shard(spec, pool)
            count = spans[0][1]
            unnamed = self.unnamed
            for first, last in spans[1:]:
                request = pieces[first:last]
                try:
                    shards, unnamed = request_shards(request, statements, spec, unnamed)
                except ShardError:
                    break  # refused once it is first in line (choose)
                if (shards and shards != {linked}) or (replica and not request_is_read_only(
                        request, statements)):
                    break
                count = last
        self.note_sent(pieces[:count])
        return count

    # --- while a server is linked ---------------------------------------------
    def holds(self, pieces: Sequence, statements: Mapping[bytes, ClientStatement],
              in_transaction: bool, pool: Pool) -> int:
        """Whether ``pieces``, arriving while a server of ``pool`` is linked, go to it
        (FORWARD), wait for its release (HOLD), or wait and the request the server
        has the start of is ended unseen first (MOVE: the server was only asked
        to prepare and describe, and the Bind names another shard; rule 5).
        ShardError when they cannot wait: a request naming another shard inside a
        transaction (rule 4), or the rest of a request whose start acted on the
        server naming another shard (rule 3)."""
        spec = self.spec()
        if spec is None or not pieces:
            return FORWARD
        linked, replica = self.linked_shard(spec, pool)
        # The rest of a request the server has the start of.
        continued = self.open_request or not pieces[0][2]
        for first, last in request_spans(pieces):
            request = pieces[first:last]
            try:
                shards, self.unnamed = request_shards(request, statements, spec, self.unnamed)
            except ShardError:
                if continued or in_transaction:
                    raise
                return HOLD  # a shard that does not exist: refused once first in line
            if replica and not continued and not in_transaction and \
                    not request_is_read_only(request, statements):
                return HOLD  # a write after reads on a replica (readwrite.py rule 2)
            if shards and shards != {linked}:
                if in_transaction:
                    other = ", ".join(str(s) for s in sorted(shards - {linked}))
                    raise ShardError(f"this transaction runs on shard {linked}; a request "
                                     f"naming shard {other} cannot join it")
                if not continued:
                    return HOLD
                if self.open_effects or not pieces[0][2] or len(shards) > 1:
                    raise ShardError(_spread(shards | {linked}))
                return MOVE
            continued = False
        self.note_sent(pieces)
        return FORWARD

    def note_sent(self, pieces: Sequence) -> None:
        """Follow the open request through ``pieces``, sent to the linked server."""
        for msg_type, raw, start, end in pieces:
            if end and msg_type in _REQUEST_ENDS:
                self.open_request = self.open_effects = False
                self.open_parse = None
                continue
            self.open_request = True
            if msg_type == _P:
                if start and end and len(raw) > 5 and raw[5] == 0:  # the unnamed statement
                    self.open_parse = bytes(raw)
            elif msg_type not in _NO_EFFECT:
                self.open_effects = True

    def moved(self) -> None:
        """The open request was ended unseen (MOVE): its unnamed statement, if it
        prepared one, is prepared again on the next server."""
        self.replay = self.open_parse
        self.open_request = self.open_effects = False
        self.open_parse = None

    def take_replay(self) -> bytes | None:
        replay, self.replay = self.replay, None
        return replay


def _spread(shards: set[int]) -> str:
    names = ", ".join(str(s) for s in sorted(shards))
    return (f"a request may use one shard, this one names shards {names}: "
            "send it as separate requests")
