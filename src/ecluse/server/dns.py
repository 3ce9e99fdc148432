"""Server host names, looked up once per dns_max_ttl and handed out in turn (PgBouncer's
DNS cache).

Each worker keeps one cache (PoolRegistry.dns) for the server connections it
opens. A name is looked up (loop.getaddrinfo: the system resolver, off the event
loop) when a connect first needs it and again once its entry has expired:
dns_max_ttl seconds after an answer, dns_nxdomain_ttl after a failure, which is
kept too, so that a name that does not resolve costs one query per
dns_nxdomain_ttl and not one per connect attempt. Connects that need a name
being looked up wait for that one lookup. A name with several addresses hands
them out in turn, so new server connections spread over them as PgBouncer's do;
each connect starts with the next address and falls back on the others (as
libpq does), so one dead address does not fail every other connect.

The janitor also looks the names in use up again once they expire (refresh),
connects or not, and when a name's addresses change, ``on_change`` is told: the
pools then retire the servers connected to an address the name no longer has
(closed when released, as PgBouncer does), so a DNS-based failover reaches
established connections too.

Rules:
1. IP addresses and unix-socket directories never reach the cache.
2. The answer's own TTL is not known to getaddrinfo: dns_max_ttl is the
   lifetime (PgBouncer ignores the TTL too).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Entry:
    addrs: tuple[str, ...] = ()
    error: OSError | None = None
    expires: float = 0.0
    turn: int = 0  # the next address to hand out, modulo len(addrs)
    lookup: asyncio.Future | None = None  # the lookup under way, if any


class DnsCache:
    """Host name -> addresses, for the connects of one worker."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        # Told (host, new addresses) when a name that resolved resolves otherwise.
        self.on_change: Callable[[str, tuple[str, ...]], None] | None = None

    async def addresses(self, host: str, max_ttl: float,
                        nxdomain_ttl: float) -> tuple[str, ...]:
        """``host``'s addresses, starting with the next in turn (the others follow,
        for a connect to fall back on), or () for an IP address or a directory.
        Raises OSError (the lookup's, possibly cached) when the name does not resolve."""
        if is_address(host):
            return ()
        entry = self._entries.get(host)
        if entry is None:
            entry = self._entries[host] = _Entry()
        if entry.lookup is None and self._clock() >= entry.expires:
            entry.lookup = asyncio.ensure_future(self._lookup(host, entry, max_ttl,
                                                              nxdomain_ttl))
        if entry.lookup is not None:
            # Shielded: a connect that times out meanwhile leaves the lookup to the others.
            await asyncio.shield(entry.lookup)
        if entry.error is not None:
            # A new exception each time: the cached one would gather every traceback.
            raise OSError(f"could not resolve host {host!r}: {entry.error}")
        addrs = entry.addrs
        first = entry.turn % len(addrs)
        entry.turn += 1
        return addrs[first:] + addrs[:first]

    async def _lookup(self, host: str, entry: _Entry, max_ttl: float,
                      nxdomain_ttl: float) -> None:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM)
            addrs = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
            if not addrs:
                raise OSError(f"no address for host {host!r}")
        except (OSError, UnicodeError) as exc:  # gaierror, or a name IDNA cannot encode
            entry.addrs, entry.expires = (), self._clock() + nxdomain_ttl
            entry.error = exc if isinstance(exc, OSError) else OSError(str(exc))
        else:
            before = entry.addrs
            entry.addrs, entry.error, entry.expires = addrs, None, self._clock() + max_ttl
            if before and set(before) != set(addrs) and self.on_change is not None:
                self.on_change(host, addrs)
        finally:
            entry.lookup = None

    def refresh(self, in_use: set[str], max_ttl: float, nxdomain_ttl: float) -> None:
        """Forget the names no longer ``in_use``, and look up again those of them that
        resolved and have expired (the janitor's pass: a change is noticed within
        dns_max_ttl even when no new server connection is made)."""
        for host in [h for h in self._entries if h not in in_use]:
            if self._entries[host].lookup is None:
                del self._entries[host]
        now = self._clock()
        for host, entry in self._entries.items():
            if entry.addrs and entry.lookup is None and now >= entry.expires:
                entry.lookup = asyncio.ensure_future(self._lookup(host, entry, max_ttl,
                                                                  nxdomain_ttl))

    def rows(self) -> list[tuple[str, int, str]]:
        """SHOW DNS_HOSTS: (hostname, seconds until the next lookup, addresses)."""
        now = self._clock()
        return [(host, max(0, round(entry.expires - now)), ",".join(entry.addrs))
                for host, entry in sorted(self._entries.items())]

    def __len__(self) -> int:
        return len(self._entries)

    def pending(self) -> int:
        """Lookups under way."""
        return sum(entry.lookup is not None for entry in self._entries.values())


def is_address(host: str) -> bool:
    """True for an IP address (no lookup needed) or a unix-socket directory."""
    if host.startswith("/"):
        return True
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True
