"""Merge the SHOW results of several workers into the node's one result, without I/O.

Each worker of a node has its own pools, clients and counters (worker.py);
admin/node.py fetches the other workers' answers to the same SHOW and hands
them here with the local one. Every answer has the same RowDescription (the
same code built it), so rows are merged column by column by name.

Rules (one per command, MERGES below; a column not named in a rule is taken
from the first worker that has the row):
- POOLS, key (database, user): counts summed; maxwait/maxwait_us: the oldest
  waiter of any worker (the largest pair).
- STATS, STATS_TOTALS, STATS_AVERAGES, key database: totals and rates
  summed; average times weighted by their counts (a worker serving more
  transactions weighs more), since a plain sum of averages means nothing.
- TOTALS, name/value rows: the same rules by row name.
- DATABASES and USERS, key name: current_connections counts servers in the
  node-wide shared table (pool/shared.py), so every worker already reports
  the node's figure: taken once (the largest, as workers read it at slightly
  different instants); current_client_connections summed; paused/disabled:
  1 if any worker says so.
- LISTS, key list: summed, except databases, users, peers, peer_pools and
  dns_names (the same
  config in every worker, each looking up the same server names: the largest
  is taken; the users of pools only one worker has may be missed, an
  undercount).
- POOL_WAITS, key (database, user): counts summed; percentiles: the largest
  of the workers' (an upper bound of the node's percentile: each worker's
  quantile is a bucket bound, and the node's quantile lies between the
  smallest and the largest of them); NULL (past the last bucket) wins.
- PREPARED_STATEMENTS, key (database, user, name): servers and pool_servers
  summed (each worker has its own servers).
- PEER_POOLS, key database (the peer): counts summed (each worker passes its
  own cancels on).
- CLIENTS, SERVERS, SOCKETS, ACTIVE_SOCKETS: rows concatenated; their ids
  are unique node-wide (worker i numbers i+1, i+1+n, ...: admin/node.py).
Every other SHOW (CONFIG, VERSION, HELP, STATE, FDS, MEM, DNS_*) is the
answering worker's own: the same config runs everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ecluse.protocol import backend as be

Row = list[bytes | None]

__all__ = ["MERGES", "Result", "merge_results", "parse_result"]


@dataclass(slots=True)
class Result:
    """One SHOW answer split up: its RowDescription, rows, and what follows them."""

    description: bytes = b""  # the whole RowDescription message
    names: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    tail: list[bytes] = field(default_factory=list)  # CommandComplete, notices: whole messages
    error: str | None = None  # the ErrorResponse's message, if the worker refused


def parse_result(data: bytes) -> Result:
    """Split backend messages (no ReadyForQuery expected) into a Result."""
    out = Result()
    pos = 0
    view = memoryview(data)
    while pos + 5 <= len(data):
        kind = data[pos:pos + 1]
        length = int.from_bytes(view[pos + 1:pos + 5], "big")
        whole = data[pos:pos + 1 + length]
        body = whole[5:]
        pos += 1 + length
        if kind == b"T":
            out.description = whole
            out.names = [f.name for f in be.decode_row_description(body)]
        elif kind == b"D":
            out.rows.append(list(be.decode_data_row(body)))
        elif kind == b"E":
            out.error = be.decode_error_fields(body).fields.get("M", "error")
        elif kind != b"Z":
            out.tail.append(whole)
    return out


def _int(value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _sum(values: Sequence[bytes | None]) -> bytes | None:
    ints = [_int(v) for v in values]
    if any(i is None for i in ints):
        return values[0]
    return str(sum(ints)).encode()  # type: ignore[arg-type]


def _max(values: Sequence[bytes | None]) -> bytes | None:
    ints = [_int(v) for v in values]
    if any(i is None for i in ints):
        return values[0]
    return str(max(ints)).encode()  # type: ignore[type-var]


def _max_null_wins(values: Sequence[bytes | None]) -> bytes | None:
    """The largest, NULL (a quantile past the last bucket bound) being largest."""
    if any(v is None for v in values):
        return None
    return _max(values)


@dataclass(frozen=True, slots=True)
class Keyed:
    """Rows with the same key columns become one; columns merged by rule."""

    key: tuple[str, ...]
    sums: frozenset[str] = frozenset()
    maxes: frozenset[str] = frozenset()
    null_maxes: frozenset[str] = frozenset()
    sum_all: bool = False  # every column not in the key, maxes or weights is summed
    # column -> the column counting what it averages (weighted mean)
    weights: tuple[tuple[str, str], ...] = ()
    pairs_max: tuple[tuple[str, str], ...] = ()  # (seconds, µs) columns: the largest pair

    def merge(self, names: list[str], groups: list[list[Row]]) -> list[Row]:
        index = {n: i for i, n in enumerate(names)}
        key_idx = [index[k] for k in self.key]
        merged: dict[tuple, list[Row]] = {}
        for rows in groups:
            for row in rows:
                merged.setdefault(tuple(row[i] for i in key_idx), []).append(row)
        return [self._one(names, index, rows) for rows in merged.values()]

    def _one(self, names: list[str], index: dict[str, int], rows: list[Row]) -> Row:
        out = list(rows[0])
        if len(rows) == 1:
            return out
        weighted = dict(self.weights)
        paired = {c for pair in self.pairs_max for c in pair}
        for i, name in enumerate(names):
            column = [r[i] for r in rows]
            if name in self.key or name in paired:
                continue
            if name in weighted:
                out[i] = _weighted(column, [r[index[weighted[name]]] for r in rows])
            elif name in self.null_maxes:
                out[i] = _max_null_wins(column)
            elif name in self.maxes:
                out[i] = _max(column)
            elif name in self.sums or self.sum_all:
                out[i] = _sum(column)
        for seconds, micros in self.pairs_max:
            s, u = index[seconds], index[micros]
            top = max(rows, key=lambda r: (_int(r[s]) or 0, _int(r[u]) or 0))
            out[s], out[u] = top[s], top[u]
        return out


def _weighted(values: Sequence[bytes | None], weights: Sequence[bytes | None]) -> bytes | None:
    """The mean of per-worker averages weighted by what each averaged over.

    Weights are counts per second (whole numbers); when none has any, the
    plain mean of the non-zero averages, as SHOW TOTALS does across databases.
    """
    vals = [_int(v) for v in values]
    ws = [_int(w) or 0 for w in weights]
    if any(v is None for v in vals):
        return values[0]
    if sum(ws) > 0:
        return str(sum(v * w for v, w in zip(vals, ws, strict=True)) // sum(ws)).encode()  # type: ignore[operator]
    nonzero = [v for v in vals if v]
    return str(sum(nonzero) // len(nonzero) if nonzero else 0).encode()  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Concat:
    """Rows of every worker, one after another."""

    def merge(self, names: list[str], groups: list[list[Row]]) -> list[Row]:
        return [row for rows in groups for row in rows]


@dataclass(frozen=True, slots=True)
class Totals:
    """SHOW TOTALS' name/value rows: totals and rates summed, average times weighted."""

    def merge(self, names: list[str], groups: list[list[Row]]) -> list[Row]:
        per = [{bytes(r[0] or b""): r[1] for r in rows} for rows in groups]
        out: list[Row] = []
        for row in groups[0] if groups else []:
            name = bytes(row[0] or b"")
            values = [p.get(name, b"0") for p in per]
            weight = _TOTALS_WEIGHTS.get(name)
            if weight is not None:
                out.append([row[0], _weighted(values, [p.get(weight, b"0") for p in per])])
            else:
                out.append([row[0], _sum(values)])
        return out


_TOTALS_WEIGHTS = {b"avg_xact_time": b"avg_xact_count", b"avg_query_time": b"avg_query_count",
                   b"avg_wait_time": b"avg_server_assignment_count"}

_STATS_WEIGHTS = (("avg_xact_time", "avg_xact_count"), ("avg_query_time", "avg_query_count"),
                  ("avg_wait_time", "avg_server_assignment_count"))
_AVERAGES_WEIGHTS = (("xact_time", "xact_count"), ("query_time", "query_count"),
                     ("wait_time", "server_assignment_count"))

@dataclass(frozen=True, slots=True)
class Lists:
    """SHOW LISTS' list/items rows: summed, but for the lists every worker shares."""

    def merge(self, names: list[str], groups: list[list[Row]]) -> list[Row]:
        out = [list(r) for r in groups[0]] if groups else []
        for i, row in enumerate(out):
            values = [g[i][1] for g in groups if i < len(g)]
            row[1] = _max(values) if bytes(row[0] or b"") in _LISTS_SHARED else _sum(values)
        return out


Merge = Keyed | Concat | Totals | Lists

MERGES: dict[str, Merge] = {
    "SHOW POOLS": Keyed(("database", "user"), sum_all=True,
                        pairs_max=(("maxwait", "maxwait_us"),)),
    "SHOW STATS": Keyed(("database",), sum_all=True, weights=_STATS_WEIGHTS),
    "SHOW STATS_TOTALS": Keyed(("database",), sum_all=True),
    "SHOW STATS_AVERAGES": Keyed(("database",), sum_all=True, weights=_AVERAGES_WEIGHTS),
    "SHOW TOTALS": Totals(),
    "SHOW DATABASES": Keyed(("name",), sums=frozenset({"current_client_connections"}),
                            maxes=frozenset({"current_connections", "paused", "disabled"})),
    "SHOW USERS": Keyed(("name",), sums=frozenset({"current_client_connections"}),
                        maxes=frozenset({"current_connections"})),
    "SHOW LISTS": Lists(),
    "SHOW POOL_WAITS": Keyed(("database", "user"),
                             sums=frozenset({"wait_count", "query_count"}),
                             null_maxes=frozenset({"wait_p50_us", "wait_p90_us", "wait_p99_us",
                                                   "query_p50_us", "query_p99_us"})),
    "SHOW PREPARED_STATEMENTS": Keyed(("database", "user", "name"),
                                      sums=frozenset({"servers", "pool_servers"})),
    "SHOW PEER_POOLS": Keyed(("database",), sum_all=True),
    "SHOW CLIENTS": Concat(),
    "SHOW SERVERS": Concat(),
    "SHOW SOCKETS": Concat(),
    "SHOW ACTIVE_SOCKETS": Concat(),
}

# SHOW LISTS rows that are the same config in every worker: not summed.
_LISTS_SHARED = frozenset({b"databases", b"users", b"dns_names", b"peers", b"peer_pools"})


def merge_results(command: str, results: list[Result],
                  extra_tail: Callable[[], list[bytes]] | None = None) -> bytes:
    """Encode the node's result from the workers' (the local one first)."""
    first = results[0]
    rule = MERGES[command]
    groups = [r.rows for r in results if r.error is None and r.names == first.names]
    rows = rule.merge(first.names, groups)
    out = [first.description]
    out += [be.encode_data_row(row) for row in rows]
    notices = extra_tail() if extra_tail is not None else []
    # Notices go before CommandComplete, where a server would put them.
    out += notices + first.tail
    return b"".join(out)


