"""The whole node in the admin console, metrics and HTTP API of a multi-worker ecluse.

Each worker has its own pools, clients and counters; a console client,
a scrape or an API call reaches one of them. That worker answers for the
node: it asks every other worker over its control socket
(``<rundir>/.s.PGSQL.<index>``, worker.py) and merges (admin/merge.py), or
passes an admin command on to all of them.

The link is the PostgreSQL protocol itself: the asking worker logs in to the
other's control socket as INTERNAL_USER on the console database and sends
the same command as a simple Query. The control directory is the
supervisor's mkdtemp (mode 0700, ecluse's own): whoever can connect there
is ecluse, so such sessions log in without a password (consolelink.py), get
admin rights, and answer for their own worker only ("local"), which is also
what keeps a command from being passed on twice. A client on the public
ports cannot claim INTERNAL_USER: it is trusted on the control socket only.

Rules:
1. Never hang the console: a worker that does not answer a SHOW within
   ASK_TIMEOUT is left out, with a NOTICE saying so. Commands that wait by
   nature (PAUSE, WAIT_CLOSE, SHUTDOWN WAIT_FOR_*) wait for every worker that
   is connected; a link that breaks ends the wait for that worker.
2. The asking worker runs its own part first: an error there (bad argument,
   already paused) is the answer, and nothing is passed on.
3. Client and server ids are unique node-wide: worker i of n numbers its
   clients and servers i+1, i+1+n, i+1+2n... so KILL_CLIENT knows the owner
   of an id from the id alone.
4. Metrics: every worker binds metrics_listen with SO_REUSEPORT (admin/http.py)
   and answers a scrape for the node: it fetches the others' samples
   (NODE_METRICS, a command of link sessions only) and sums them
   (metrics.NodeCollector). Since each worker's counters only grow, the sum
   of fresh answers never goes backwards, whichever worker is scraped. A
   worker slower than ASK_TIMEOUT is counted with the last figures this
   worker got from it (a gap, not a drop; only a worker that was never
   answered is missing, and a different worker answering the next scrape
   may hold older figures for the slow one: the one case a node counter can
   dip, and only while a worker is unresponsive).
5. Worker slots: the supervisor gives 2 x workers slots (two generations
   during a rolling restart); a slot without a live worker (no socket file,
   or nobody listening on it) is skipped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import struct
from typing import TYPE_CHECKING, Any

from ecluse.admin import merge
from ecluse.admin.commands import AdminError, Command, Reply, check_shutdown
from ecluse.protocol import backend as be
from ecluse.protocol.frontend import encode_query, encode_terminate
from ecluse.protocol.startup import encode_startup_message

if TYPE_CHECKING:
    from ecluse.frontend.context import ClientContext

log = logging.getLogger("ecluse.admin")

INTERNAL_USER = "ecluse-node"  # trusted on the control socket only
ASK_TIMEOUT = 3.0  # seconds for another worker to answer a SHOW (or a scrape)
CONNECT_TIMEOUT = 3.0
NODE_METRICS = "SHOW NODE_METRICS"

# Admin commands every worker runs (rule 2: the asking worker's first).
BROADCAST = frozenset({"PAUSE", "RESUME", "DISABLE", "ENABLE", "RECONNECT", "KILL",
                       "WAIT_CLOSE", "SUSPEND", "RELOAD", "SET"})
# Commands whose answer can take as long as the pools need (rule 1).
_WAITING = frozenset({"PAUSE", "WAIT_CLOSE", "SHUTDOWN"})
_HEADER = struct.Struct("!cI")


class LinkError(Exception):
    """Another worker could not be asked (gone, refused, too slow)."""


class NoWorker(LinkError):
    """No worker holds that slot now (the other generation's, between roll-overs)."""


class Node:
    """This worker's view of the node: where the others are, how to ask them."""

    def __init__(self, ctx: ClientContext, index: int, workers: int, rundir: str):
        self.ctx = ctx
        self.index = index
        self.workers = workers
        self.rundir = rundir
        # SUSPEND came from another worker's console: that worker ends it (RESUME
        # when its console leaves), not the departure of our link session.
        self.suspended_by_peer = False
        self.metrics_cache: dict[int, list[dict[str, Any]]] = {}  # rule 4

    def others(self) -> list[int]:
        return [j for j in range(self.workers) if j != self.index]

    # --- the link --------------------------------------------------------------

    async def ask(self, worker: int, query: str, timeout: float | None) -> bytes:
        """Run ``query`` on ``worker``'s console; return its reply without ReadyForQuery."""
        path = os.path.join(self.rundir, f".s.PGSQL.{worker}")
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoWorker(f"no worker {worker}") from None
        except (OSError, TimeoutError) as exc:
            raise LinkError(f"cannot reach worker {worker}: {exc}") from None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                writer.write(encode_startup_message({"user": INTERNAL_USER,
                                                     "database": "ecluse"}))
                login = await _read_until_ready(reader)
            if b"E" in (kind for kind, _ in _split(login)):
                raise LinkError(f"worker {worker} refused the link: "
                                f"{merge.parse_result(login).error}")
            writer.write(encode_query(query))
            async with asyncio.timeout(timeout):
                reply = await _read_until_ready(reader)
            writer.write(encode_terminate())
            return reply
        except TimeoutError:
            raise LinkError(f"worker {worker} did not answer in time") from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise LinkError(f"worker {worker} went away: {exc}") from None
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def ask_others(self, query: str, timeout: float | None
                         ) -> dict[int, bytes | LinkError]:
        """Ask every other worker at once; each answer or why there is none."""
        others = self.others()
        answers = await asyncio.gather(*(self.ask(j, query, timeout)
                                         for j in others),
                                       return_exceptions=True)
        out: dict[int, bytes | LinkError] = {}
        for j, answer in zip(others, answers, strict=True):
            if isinstance(answer, NoWorker):
                continue
            if isinstance(answer, BaseException) and not isinstance(answer, LinkError):
                answer = LinkError(f"worker {j}: {answer!r}")
            out[j] = answer  # type: ignore[assignment]
        return out

    # --- the console -----------------------------------------------------------

    def run(self, command: Command, arg: str, query: str) -> Reply:
        """Run a console command for the whole node (AdminConsole.run's node branch)."""
        name = command.name
        if name in merge.MERGES:
            local = command.handler(self.ctx, arg)
            assert isinstance(local, bytes)  # SHOW builders answer at once
            return self._merged(name, local, query)
        if name == "KILL_CLIENT":
            return self._kill_client(command, arg, query)
        if name == "SHUTDOWN":
            check_shutdown(self.ctx, arg)
            return self._shutdown(command, arg, query)
        if name in BROADCAST:
            return self._broadcast(name, command.handler(self.ctx, arg), query)
        return command.handler(self.ctx, arg)

    async def show(self, name: str, local: bytes) -> bytes:
        """A SHOW result (RowDescription, rows, CommandComplete) for the whole node."""
        return await self._merged(name, local, name)

    async def _merged(self, name: str, local: bytes, query: str) -> bytes:
        answers = await self.ask_others(query, ASK_TIMEOUT)
        results = [merge.parse_result(local)]
        notices: list[bytes] = []
        for j, answer in answers.items():
            if isinstance(answer, LinkError):
                log.warning("%s: %s; left out", name, answer)
                notices.append(be.encode_notice_response(
                    f"{answer}; its rows are left out"))
                continue
            result = merge.parse_result(answer)
            if result.error is not None:
                notices.append(be.encode_notice_response(
                    f"worker {j}: {result.error}; its rows are left out"))
            results.append(result)
        return merge.merge_results(name, results, lambda: notices)

    async def _broadcast(self, name: str, local: Reply, query: str) -> bytes:
        """Run on every worker; the local answer, with a NOTICE per worker that failed."""
        timeout = None if name in _WAITING else ASK_TIMEOUT * 10
        own = _awaited(local)
        theirs = self.ask_others(query, timeout)
        mine, answers = await asyncio.gather(own, theirs)
        if name == "SUSPEND" or name == "RESUME":
            self.suspended_by_peer = False
        return _with_notices(mine, answers)

    async def _kill_client(self, command: Command, arg: str, query: str) -> bytes:
        if not arg.isdigit():
            raise AdminError("invalid client pointer supplied")
        owner = (int(arg) - 1) % self.workers  # rule 3
        if owner == self.index:
            return await _awaited(command.handler(self.ctx, arg))
        try:
            answer = await self.ask(owner, query, ASK_TIMEOUT)
        except LinkError as exc:
            raise AdminError(f"client not found ({exc})") from None
        result = merge.parse_result(answer)
        if result.error is not None:
            raise AdminError(result.error)
        return answer

    async def _shutdown(self, command: Command, arg: str, query: str) -> bytes:
        """Stop the node, and have the supervisor restart no worker.

        Plain SHUTDOWN is the supervisor's own SIGTERM: it stops every worker
        gracefully and restarts none. A WAIT_FOR_ mode is passed on to every
        worker, each of which stops when its own wait is over; the supervisor
        restarts none of them (the exit code says SHUTDOWN, supervisor.py).
        """
        if not arg:
            with contextlib.suppress(ProcessLookupError):
                os.kill(os.getppid(), signal.SIGTERM)
            return await _awaited(command.handler(self.ctx, arg))
        answers = await self.ask_others(query, ASK_TIMEOUT)
        mine = await _awaited(command.handler(self.ctx, arg))
        return _with_notices(mine, answers)

    def on_local(self, command: Command) -> None:
        """A command from another worker's console is about to run here."""
        if command.name == "SUSPEND":
            self.suspended_by_peer = True
        elif command.name == "RESUME":
            self.suspended_by_peer = False

    def resume_others(self) -> None:
        """Our console left while the node was suspended: end it everywhere."""
        self.ctx.spawn(self.ask_others("RESUME", ASK_TIMEOUT))

    # --- metrics (rule 4) --------------------------------------------------------

    async def remote_metrics(self) -> list[list[dict[str, Any]]]:
        """The other workers' metric families, from their answer or the last one."""
        answers = await self.ask_others(NODE_METRICS, ASK_TIMEOUT)
        out = []
        for j, answer in answers.items():
            if not isinstance(answer, LinkError):
                result = merge.parse_result(answer)
                if result.error is None and result.rows and result.rows[0][0] is not None:
                    self.metrics_cache[j] = json.loads(bytes(result.rows[0][0]))
                else:
                    log.warning("metrics: worker %d: %s", j, result.error)
            else:
                log.warning("metrics: %s; its last figures are used", answer)
            if j in self.metrics_cache:
                out.append(self.metrics_cache[j])
        return out

    def local_query(self, query: str) -> bytes | None:
        """Answer the link-only commands; None for any other query."""
        if query.strip(" \t\r\n;").upper() != NODE_METRICS:
            return None
        from ecluse.admin.metrics import families_json  # metrics imports prometheus

        payload = families_json(self.ctx)
        return (be.encode_row_description([_text_field("families")])
                + be.encode_data_row([payload.encode()])
                + be.encode_command_complete("SHOW"))


def attach(ctx: ClientContext, index: int, workers: int, rundir: str) -> Node:
    """Make ``ctx``'s worker answer for the node (worker.py's hook)."""
    from ecluse.server import connection

    node = Node(ctx, index, workers, rundir)
    ctx.node = node
    ctx.client_ids = itertools.count(index + 1, workers)  # rule 3
    connection.number_servers(index + 1, workers)
    return node


def _text_field(name: str) -> Any:
    from ecluse.protocol.messages import RowDescriptionField

    return RowDescriptionField(name, type_oid=25, type_size=-1)


async def _awaited(reply: Reply) -> bytes:
    if isinstance(reply, bytes):
        return reply
    return await reply


def _with_notices(mine: bytes, answers: dict[int, bytes | LinkError]) -> bytes:
    notices = []
    for j, answer in answers.items():
        if isinstance(answer, LinkError):
            notices.append(be.encode_notice_response(str(answer)))
            continue
        error = merge.parse_result(answer).error
        if error is not None:
            notices.append(be.encode_notice_response(f"worker {j}: {error}"))
    return b"".join(notices) + mine


def _split(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 0
    while pos + 5 <= len(data):
        kind, length = _HEADER.unpack_from(data, pos)
        out.append((kind, data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    return out


async def _read_until_ready(reader: asyncio.StreamReader) -> bytes:
    """Read whole messages up to ReadyForQuery; return those before it."""
    out = []
    while True:
        header = await reader.readexactly(5)
        kind, length = _HEADER.unpack(header)
        body = await reader.readexactly(length - 4)
        if kind == b"Z":
            return b"".join(out)
        out.append(header + body)

