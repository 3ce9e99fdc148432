"""The janitor's client timeouts (check_client_timeouts): each closes exactly the
clients past it, with its own message and SQLSTATE, and leaves the others alone.

transaction_timeout counts from the transaction's first request (the session's
xact_started, 0 outside a transaction), whether a query runs or the
transaction sits idle; it closes the server too, as PgBouncer does.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecluse.config import Settings, UserConfig
from ecluse.errors import EcluseError
from ecluse.pool.janitor import check_client_timeouts
from ecluse.protocol import codes
from ecluse.protocol.tracker import RequestTracker

NOW = 1000.0


class State:
    def __init__(self, value: str) -> None:
        self.value = value


class Server:
    def __init__(self, running: bool, status: int) -> None:
        self.tracker = RequestTracker()
        self.tracker.status = status
        if running:
            self.tracker.on_client_message(codes.FE_QUERY)
        self.close_when_released = False


class Client:
    def __init__(self, server: Server | None, *, xact_age: float | None = None,
                 quiet_for: float = 0.0, request_age: float | None = None) -> None:
        self.state = State("linked" if server is not None else "idle")
        self.server = server
        self.last_activity = NOW - quiet_for
        self.request_started = NOW - request_age if request_age is not None else 0.0
        self.xact_started = NOW - xact_age if xact_age is not None else 0.0
        self.user = "app"
        self.errors: list[EcluseError] = []

    def fatal(self, error: Exception) -> None:
        assert isinstance(error, EcluseError)
        self.errors.append(error)


def settings(**values: float) -> Settings:
    return dataclasses.replace(Settings(), **values)


def in_transaction(xact_age: float, running: bool, quiet_for: float = 0.0) -> Client:
    status = codes.STATUS_IDLE if running else ord("T")
    return Client(Server(running, status), xact_age=xact_age, quiet_for=quiet_for,
                  request_age=xact_age if running else None)


@pytest.mark.parametrize("running", [True, False])
def test_a_transaction_past_transaction_timeout_closes_its_client_and_server(running):
    late, early = in_transaction(11, running), in_transaction(9, running)
    check_client_timeouts([late, early], settings(transaction_timeout=10), NOW)
    assert [(e.message, e.sqlstate) for e in late.errors] == [("transaction timeout", "25P04")]
    assert late.server.close_when_released
    assert not early.errors and not early.server.close_when_released


def test_transaction_timeout_leaves_clients_outside_a_transaction_alone():
    # A session-mode client between transactions keeps its server, quiet for long.
    between = Client(Server(False, codes.STATUS_IDLE), quiet_for=500)
    waiting = Client(None, quiet_for=500)  # queued: no transaction runs yet
    check_client_timeouts([between, waiting], settings(transaction_timeout=10), NOW)
    assert not between.errors and not waiting.errors


def test_transaction_timeout_zero_is_off():
    old = in_transaction(10_000, running=True)
    check_client_timeouts([old], settings(transaction_timeout=0), NOW)
    assert not old.errors and not old.server.close_when_released


@given(xact_age=st.floats(0, 100), quiet_for=st.floats(0, 100), running=st.booleans(),
       idle_xact_t=st.sampled_from([0.0, 5.0, 30.0]),
       xact_t=st.sampled_from([0.0, 5.0, 30.0]), query_t=st.sampled_from([0.0, 5.0, 30.0]))
def test_one_error_at_most_and_the_first_due_in_pgbouncers_order(
        xact_age, quiet_for, running, idle_xact_t, xact_t, query_t):
    """query_timeout, then idle_transaction_timeout, then transaction_timeout."""
    quiet_for = min(quiet_for, xact_age)  # the last activity is within the transaction
    client = in_transaction(xact_age, running, quiet_for)
    check_client_timeouts([client], settings(idle_transaction_timeout=idle_xact_t,
                                             transaction_timeout=xact_t,
                                             query_timeout=query_t), NOW)
    expected = None
    if running and query_t and xact_age > query_t:
        expected = "query_timeout"
    elif not running and idle_xact_t and quiet_for > idle_xact_t:
        expected = "idle transaction timeout"
    elif xact_t and xact_age > xact_t:
        expected = "transaction timeout"
    assert [e.message for e in client.errors] == ([expected] if expected else [])


_TIMEOUT = st.one_of(st.none(), st.sampled_from([0.0, 5.0, 50.0]))


@given(glob=st.tuples(*[st.sampled_from([0.0, 5.0, 50.0])] * 4),
       user=st.tuples(*[_TIMEOUT] * 4), age=st.sampled_from([1.0, 10.0, 100.0]),
       kind=st.sampled_from(["idle", "idle_xact", "query", "xact"]))
def test_a_users_entry_overrides_each_timeout_for_its_clients_only(glob, user, age, kind):
    """[users] query_timeout etc.: a client of that user is judged by the entry's value
    where it is set (0 turns the timeout off for it), by [pgbouncer]'s otherwise; a
    client of another user always by [pgbouncer]'s."""
    names = ("client_idle_timeout", "idle_transaction_timeout", "query_timeout",
             "transaction_timeout")
    conf = settings(**dict(zip(names, glob, strict=True)))
    users = {"app": UserConfig(name="app", **dict(zip(names, user, strict=True)))}

    def client(name: str) -> Client:
        if kind == "idle":
            c = Client(None, quiet_for=age)
        elif kind == "idle_xact":
            c = in_transaction(age, running=False, quiet_for=age)
        elif kind == "query":
            c = Client(Server(True, codes.STATUS_IDLE), request_age=age)
        else:
            c = in_transaction(age, running=True)
        c.user = name
        return c

    mine, other = client("app"), client("someone")
    check_client_timeouts([mine, other], conf, NOW, users)
    effective = tuple(g if u is None else u for g, u in zip(glob, user, strict=True))
    assert [e.message for e in mine.errors] == expected(kind, effective, age)
    assert [e.message for e in other.errors] == expected(kind, glob, age)


def expected(kind: str, timeouts: tuple, age: float) -> list[str]:
    """The documented precedence: idle clients only client_idle_timeout; a linked one
    query_timeout (request running), then idle_transaction_timeout (transaction idle),
    then transaction_timeout."""
    idle_t, idle_xact_t, query_t, xact_t = timeouts

    def past(t: float) -> bool:
        return 0 < t < age

    if kind == "idle":
        return ["client_idle_timeout"] if past(idle_t) else []
    if kind == "query":  # a request running outside a transaction
        return ["query_timeout"] if past(query_t) else []
    if kind == "xact" and past(query_t):  # its request runs as long as the transaction
        return ["query_timeout"]
    if kind == "idle_xact" and past(idle_xact_t):
        return ["idle transaction timeout"]
    return ["transaction timeout"] if past(xact_t) else []
