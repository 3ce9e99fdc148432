"""Which host of a [databases] entry's host list a new server connection goes to,
and whether a logged-in server is of the kind target_session_attrs asks for.

PgBouncer's semantics (doc/config.md, [databases] host, load_balance_hosts,
target_session_attrs):
- round-robin: every new connection attempt takes the next host of the list;
- disable: attempts keep to one host until a connection to it fails, then move
  to the next;
- target_session_attrs is decided from the in_hot_standby and
  default_transaction_read_only values the server reported (PostgreSQL 14+);
  a server that did not report what the decision needs is not accepted.

Rules: pure and synchronous; no sockets, no asyncio, nothing per transaction
(a pool asks only when it launches a server connection).
"""

from __future__ import annotations

from collections.abc import Mapping

ROUND_ROBIN = "round-robin"
DISABLE = "disable"
LOAD_BALANCE_HOSTS = (ROUND_ROBIN, DISABLE)
TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby")


class HostPicker:
    """The host for each new server connection of one pool.

    One launch asks pick() for each attempt and, at most len() times, tells
    failed() about a host whose attempt failed; so one launch makes at most
    one pass over the list.
    """

    __slots__ = ("_next", "hosts", "round_robin")

    def __init__(self, hosts: tuple[str, ...], round_robin: bool = True):
        if not hosts:
            raise ValueError("a host list needs at least one host")
        self.hosts = hosts
        self.round_robin = round_robin
        self._next = 0

    def __len__(self) -> int:
        return len(self.hosts)

    def pick(self) -> str:
        """Return the host the next connection attempt goes to."""
        host = self.hosts[self._next]
        if self.round_robin:
            self._next = (self._next + 1) % len(self.hosts)
        return host

    def failed(self, host: str) -> None:
        """Note that an attempt at ``host`` failed.

        With disable, the following attempts move to the next host, unless
        another failed attempt at the same host has already moved them on
        (several launches may fail at one host at once: one move, not one
        per failure). Round-robin moves on at every pick anyway.
        """
        if not self.round_robin and self.hosts[self._next] == host:
            self._next = (self._next + 1) % len(self.hosts)


def _reported_on(params: Mapping[str, str], name: str) -> bool | None:
    value = params.get(name)
    if value is None:
        return None
    return value == "on"


def session_attrs_match(target: str, params: Mapping[str, str]) -> bool:
    """Say whether a server that reported ``params`` is acceptable for ``target``.

    ``params`` are the server's ParameterStatus values after login (and
    connect_query). Unknown values of the two parameters the decision needs
    mean no: PgBouncer rejects a server that did not report enough.
    """
    if target == "any":
        return True
    standby = _reported_on(params, "in_hot_standby")
    read_only = _reported_on(params, "default_transaction_read_only")
    if target == "primary":
        return standby is False
    if target == "standby":
        return standby is True
    if target == "read-write":
        return standby is False and read_only is False
    if target == "read-only":
        # Either one "on" is enough, even when the other was not reported.
        return standby is True or read_only is True
    raise ValueError(f"unknown target_session_attrs {target!r}")


def session_attrs_refusal(target: str, host: str, port: int,
                          params: Mapping[str, str]) -> str | None:
    """Why the server at ``host``:``port``, which reported ``params``, is refused for
    ``target`` (the two values the decision read), or None when it is accepted."""
    if session_attrs_match(target, params):
        return None
    reported = ", ".join(f"{name}={params.get(name, 'not reported')}"
                         for name in ("in_hot_standby", "default_transaction_read_only"))
    return f"server {host}:{port} does not match target_session_attrs={target} ({reported})"
