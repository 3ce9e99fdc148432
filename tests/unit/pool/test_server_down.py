"""A pool left with no server by failed launches (pool/launch.py rule 3): which
queued clients are told at once, which keep waiting, and for how long.

Generated runs of one outage (launches failing in the four ways a launch can
fail, clients queueing, janitor passes, the clock moving) are played on a
real Pool and on a model of the documented rule; after every step the clients
told, and what they were told, must be the model's.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from ecluse.config import config_from_string
from ecluse.errors import ServerGone, ServerLoginFailed
from ecluse.pool.launch import holds_waiters
from ecluse.pool.registry import PoolRegistry
from ecluse.server.connection import ServerConnection

RETRY = 2.0  # server_login_retry

# How a launch fails: what _attempt hands _on_launch_failed.
FAILURES = {
    "refused": lambda: ConnectionRefusedError(111, "Connection refused"),
    "timeout": lambda: ServerGone("server connect timeout (server_connect_timeout)"),
    "starting": lambda: ServerLoginFailed("the database system is starting up",
                                          sqlstate="57P03"),
    "password": lambda: ServerLoginFailed('password authentication failed for user "app"',
                                          sqlstate="28P01"),
}


def config(down_wait: float) -> str:
    return f"""
[databases]
app = host=127.0.0.1 port=1 dbname=app
[pgbouncer]
auth_type = trust
pool_mode = transaction
query_wait_timeout = 0
server_login_retry = {RETRY}
server_down_wait = {down_wait}
"""


class Client:
    def __init__(self) -> None:
        self.told: list[Exception] = []

    def on_server_assigned(self, server) -> None:
        raise AssertionError("no server exists in this test")

    def on_wait_failed(self, error: Exception) -> None:
        self.told.append(error)


class Model:
    """The rule as documented: README's server_down_wait and PgBouncer's fast fail."""

    def __init__(self, down_wait: float) -> None:
        self.down_wait = down_wait
        self.down_since: float | None = None
        self.last: tuple[str, float] | None = None  # kind and time of the last failure

    def holds(self, now: float) -> bool:
        kind = self.last[0]
        if kind == "starting":
            return True  # 57P03: the server says it is coming back
        if kind == "password":
            return False  # waiting would not help
        return now - self.down_since < self.down_wait

    def told_on_failure(self, kind: str, now: float) -> bool:
        if self.down_since is None:
            self.down_since = now
        self.last = (kind, now)
        return not self.holds(now)

    def told_on_queue(self, now: float) -> bool:
        """A client queueing now is told at once (within server_login_retry of a
        failure that does not hold clients)."""
        return self.last is not None and now - self.last[1] < RETRY and not self.holds(now)

    def told_on_janitor(self, now: float) -> bool:
        return self.down_wait > 0 and self.last is not None and not self.holds(now)


def expected_sqlstate(kind: str) -> str:
    # A refused login passes the server's error on; anything else is 08006.
    return {"starting": "57P03", "password": "28P01"}.get(kind, "08006")


steps = st.lists(st.one_of(
    st.tuples(st.just("fail"), st.sampled_from(sorted(FAILURES))),
    st.tuples(st.just("queue"), st.none()),
    st.tuples(st.just("janitor"), st.none()),
    st.tuples(st.just("clock"), st.floats(0.1, 4.0)),
), min_size=1, max_size=25)


@settings(max_examples=250, deadline=None)
@given(down_wait=st.sampled_from([0.0, 1.5, 5.0]), run=steps)
def test_queued_clients_are_told_exactly_when_the_rule_says(down_wait, run):
    async def play() -> None:
        clock = SimpleNamespace(now=1000.0)
        fake_time = SimpleNamespace(monotonic=lambda: clock.now)
        cfg = config_from_string(config(down_wait))
        pool = PoolRegistry(cfg).get_pool(cfg.database("app"), "app")
        pool.paused = True  # nothing is launched or handed over: the rule alone is played
        model = Model(down_wait)
        queued: list[Client] = []  # waiting, as the model sees it
        loop = asyncio.get_running_loop()
        with mock.patch("ecluse.pool.pool.time", fake_time), \
                mock.patch("ecluse.pool.launch.time", fake_time):
            for action, arg in run:
                if action == "clock":
                    clock.now += arg
                    continue
                if action == "fail":
                    server = ServerConnection(pool, iter(()), "127.0.0.1", 1,
                                              loop.create_future())
                    pool._on_launch_failed(server, FAILURES[arg]())
                    told = model.told_on_failure(arg, clock.now)
                elif action == "queue":
                    client = Client()
                    queued.append(client)
                    pool.wait(client)
                    if model.told_on_queue(clock.now):
                        # Told at once; the clients queued before it are left as they are.
                        assert len(client.told) == 1
                        assert client.told[0].sqlstate == expected_sqlstate(model.last[0])
                        queued.remove(client)
                    else:
                        assert client.told == [], "told at once, the rule holds it"
                    assert len(pool.waiters) == len(queued)
                    continue
                else:
                    pool.maintain()
                    told = model.told_on_janitor(clock.now)
                for client in queued:
                    if told:
                        assert len(client.told) == 1, (action, arg, clock.now)
                        error = client.told[0]
                        assert error.sqlstate == expected_sqlstate(model.last[0])
                    else:
                        assert client.told == [], (action, arg, clock.now)
                if told:
                    queued.clear()
                assert len(pool.waiters) == len(queued)
    asyncio.run(play())


@settings(max_examples=200, deadline=None)
@given(down_for=st.floats(0, 100), down_wait=st.floats(0, 100),
       sqlstate=st.sampled_from(["57P03", "28P01", "28000", "3D000", "53300", "08P01"]))
def test_only_the_servers_not_now_holds_clients_among_refused_logins(down_for, down_wait,
                                                                     sqlstate):
    refused = ServerLoginFailed("refused", sqlstate=sqlstate)
    assert holds_waiters(refused, down_for, down_wait) == (sqlstate == "57P03")
    for unreachable in (ConnectionRefusedError(111, "refused"), ServerGone("gone"),
                        TimeoutError()):
        assert holds_waiters(unreachable, down_for, down_wait) == (down_for < down_wait)
