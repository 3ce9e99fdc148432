"""auth_query: finding the secret of a user who is not in auth_file, and caching it briefly.

PgBouncer's semantics: when a client's user has no entry in auth_file and an
auth_user is configured (globally or on the database), ecluse logs into the
server as auth_user and runs auth_query with the client's user name as its
only parameter. The first row gives (user name, secret); the secret is an md5
hash or a SCRAM verifier as pg_authid stores it. No row, or a NULL secret,
means the user is unknown, which the caller must fail exactly like a wrong
password (auth/methods.py rule 2).

Rules:
1. The user name is always a bound parameter of the extended protocol, never
   spliced into the SQL text: ``x' OR '1'='1`` is just a name no role has.
2. Results are cached for a few seconds (negative ones too), in a bounded
   dict, so a burst of logins costs one server round trip per user; a
   changed password is seen after at most ``ttl`` seconds.
3. Lookups for the same key share one query; at most ``max_concurrent``
   queries run at once, so a flood of made-up names cannot open a server
   connection each.
4. Secrets are never logged or put in an error message.
5. No sockets here: the caller passes ``run``, the coroutine that connects
   and queries (server/query.py does it); this module owns the policy only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ecluse.errors import AuthLookupFailed, EcluseError

DEFAULT_TTL = 5.0  # seconds a looked-up secret (or its absence) is trusted
DEFAULT_MAX_ENTRIES = 1000
DEFAULT_MAX_CONCURRENT = 8

Row = Sequence[bytes | None]


@dataclass(frozen=True, slots=True)
class AuthQueryTarget:
    """Where auth_query runs: the server, the database and the auth_user to log in as.

    ``password`` is auth_user's secret from the configuration (None: the
    server must not ask). Frozen and hashable, so it keys the cache: a
    reload that changes any of it starts from an empty slot.
    """

    host: str
    port: int
    dbname: str
    auth_user: str
    password: str | None = field(repr=False)  # never in a log line, even by accident
    query: str
    connect_timeout: float
    # How to do TLS with the server (config/tls.py's ServerTls), None for none; not
    # part of the cache key.
    tls: Any = field(default=None, compare=False)


Runner = Callable[[AuthQueryTarget, str], Awaitable[list[Row]]]


def secret_from_rows(rows: Sequence[Row]) -> str | None:
    """Return the secret of auth_query's result, or None for an unknown user.

    PgBouncer reads the second column of the only row. More than one row is
    a broken query (which secret would be right?), so it raises
    AuthLookupFailed rather than guess.
    """
    if not rows:
        return None
    if len(rows) > 1:
        raise AuthLookupFailed("auth_query returned more than one row")
    row = rows[0]
    if len(row) < 2:
        raise AuthLookupFailed("auth_query must return two columns (user name, secret)")
    secret = row[1]
    if secret is None or not secret:
        return None  # a role without a password cannot log in with one
    try:
        return bytes(secret).decode("utf-8")
    except UnicodeDecodeError:
        raise AuthLookupFailed("auth_query returned a secret that is not UTF-8") from None


class AuthQueryCache:
    """Looked-up secrets by (target, user), each kept for ``ttl`` seconds."""

    def __init__(self, ttl: float = DEFAULT_TTL, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT,
                 clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[tuple[AuthQueryTarget, str], tuple[float, str | None]] = {}
        self._inflight: dict[tuple[AuthQueryTarget, str], asyncio.Future[str | None]] = {}
        self._max_concurrent = max_concurrent
        self._slots: asyncio.Semaphore | None = None  # made on first use, inside the loop
        self.queries = 0  # auth_query round trips made (for tests and stats)

    def __len__(self) -> int:
        return len(self._entries)

    def cached(self, target: AuthQueryTarget, user: str) -> tuple[bool, str | None]:
        """Return (hit?, secret) without querying; an expired entry is dropped."""
        key = (target, user)
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        expires, secret = entry
        if self._clock() >= expires:
            del self._entries[key]
            return False, None
        return True, secret

    async def lookup(self, target: AuthQueryTarget, user: str, run: Runner) -> str | None:
        """Return user's secret (None: no such user), from the cache or by running the query.

        Raises AuthLookupFailed when the query could not run (auth_user cannot
        log in, the server is down, the query fails or returns nonsense);
        failures are not cached.
        """
        hit, secret = self.cached(target, user)
        if hit:
            return secret
        key = (target, user)
        shared = self._inflight.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            secret = await self._query(target, user, run)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, AuthLookupFailed) else
                                 AuthLookupFailed("auth_query was interrupted"))
            future.exception()  # retrieved: waiters may all have gone
            raise
        else:
            future.set_result(secret)
            self._store(key, secret)
            return secret
        finally:
            del self._inflight[key]

    async def _query(self, target: AuthQueryTarget, user: str, run: Runner) -> str | None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_concurrent)
        async with self._slots:
            self.queries += 1
            try:
                rows = await run(target, user)
            except AuthLookupFailed:
                raise
            except EcluseError as exc:
                raise AuthLookupFailed(exc.message, sqlstate=exc.sqlstate) from None
            except TimeoutError:  # before OSError, of which it is a subclass
                raise AuthLookupFailed("server connect timeout (server_connect_timeout)") \
                    from None
            except OSError as exc:
                raise AuthLookupFailed(f"cannot connect to the server: "
                                       f"{exc.strerror or exc}") from None
        return secret_from_rows(rows)

    def _store(self, key: tuple[AuthQueryTarget, str], secret: str | None) -> None:
        entries = self._entries
        entries.pop(key, None)
        if len(entries) >= self.max_entries:
            # Drop expired entries first, then the oldest ones (dicts keep insertion order).
            now = self._clock()
            for old in [k for k, (expires, _s) in entries.items() if expires <= now]:
                del entries[old]
            while len(entries) >= self.max_entries:
                del entries[next(iter(entries))]
        entries[key] = (self._clock() + self.ttl, secret)

    def clear(self) -> None:
        """Forget every cached secret (on reload)."""
        self._entries.clear()
