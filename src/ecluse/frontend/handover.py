"""Idle clients carried from a draining worker to its successor in a roll-over.

A rolling restart (supervisor.py) drains the old generation of workers. A
client between transactions holds nothing a new worker could not rebuild: its
socket, its login and what it set up since. So instead of closing it (57P01),
the old worker passes the socket itself (SCM_RIGHTS) and that state to the
new worker of the same index, which goes on serving it: the client never
notices the restart, whatever driver it uses.

Rules:
1. Only a client a successor can rebuild whole is handed over (HandedOver.
   can_hand_over): logged in to a pool in transaction or statement mode,
   idle between transactions, no TLS (the cipher state lives in this
   process's OpenSSL), no server, not pinned, not listening through the hub,
   nothing buffered or half-received, nothing of its last reply still
   waiting to be written to it. Any other client drains as before.
2. The state is what such a session keeps between transactions: database,
   user, tracked parameters, cancel key, the settings it SET (replayed on
   each server), what the state probe knows, its prepared statements, its
   shard and how long its reads stay on the primary; and its pool's login
   secret from auth_query or SCRAM pass-through, which a new pool lacks.
   Its unnamed statement is not carried: in transaction mode it does not
   outlive the transaction.
3. Wire: one SOCK_SEQPACKET message per client, on the successor's socket
   .s.handover.<slot> in the node's private directory: a JSON object (with
   VERSION) and the client's socket as ancillary data. The sender closes its
   descriptor once the message is sent; the connection lives on in the
   receiver's. The receiver refuses what it cannot rebuild (another VERSION,
   a database, user or pool mode that is gone, a client limit now exceeded)
   by closing the client as the drain would have (57P01).
4. The client keeps its cancel key, which names the old worker's slot. The
   successor answers cancels for the keys it adopted; the old worker passes
   on cancels for the keys it handed over while it lives, and once it is
   gone its control socket is too, so cancels for its slot go to the slot's
   successor (worker.py).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ecluse.errors import EcluseError
from ecluse.frontend.prepared import ClientStatement
from ecluse.frontend.states import ClientState
from ecluse.protocol.backend import encode_error_response
from ecluse.routing.readwrite import ReadRouter
from ecluse.routing.shards import ShardRouter

if TYPE_CHECKING:
    from ecluse.frontend.context import ClientContext
    from ecluse.frontend.session import FrontendSession

log = logging.getLogger("ecluse.client")

VERSION = 1
_REFUSED = encode_error_response("terminating connection due to administrator command",
                                 "57P01", "FATAL")
_MAX_MESSAGE = 1 << 20  # a client's state: its prepared statements are most of it
_IDLE = ClientState.IDLE


def handover_path(rundir: str, slot: int) -> str:
    return os.path.join(rundir, f".s.handover.{slot}")


def _text(data: bytes) -> str:
    return data.decode("latin-1")  # every byte value round-trips through JSON


def _bytes(text: str) -> bytes:
    return text.encode("latin-1")


class HandedOver:
    """FrontendSession's side of a hand-over: what it carries, and adopting it."""

    __slots__ = ()

    def can_hand_over(self: FrontendSession) -> bool:
        """Rule 1: whether a successor could rebuild this session whole."""
        pool, rewriter, router = self.pool, self._rewriter, self._router
        if (self.state is not _IDLE or self.console is not None or self.tls
                or self.server is not None or pool is None or rewriter is None
                or self.pinned or self._listening or self._hub_waits or self._pending
                or self._probing or self._suspect or self._suspended or self._reading_paused
                or self._write_paused or self._notify_backlog or self._console_backlog
                or self.transport is None or not self._framer.at_boundary
                or rewriter.replies is not None):
            return False
        if self.transport.get_write_buffer_size():
            # Bytes not yet sent to the client (the end of its last reply) would be
            # lost with this process's descriptor.
            return False
        if isinstance(router, ShardRouter):
            return router.begin is None and not router.open_request
        return True

    def handover_state(self: FrontendSession) -> dict[str, Any]:
        """Rule 2: everything a successor needs, as JSON values."""
        now = time.monotonic()
        pool, rewriter, router = self.pool, self._rewriter, self._router
        assert pool is not None and rewriter is not None
        state: dict[str, Any] = {
            "version": VERSION,
            "database": self.database,
            "user": self.user,
            "params": dict(self.params),
            "cancel_key": self.cancel_key,
            "age": now - self.connected_at,
            "session_settings": dict(self.session_settings),
            "custom_names": sorted(self._custom_names) if self._custom_names else None,
            "custom_unknown": self._custom_unknown,
            "always_probe": self._always_probe,
            "statements": [[_text(name), stmt.server_name, _text(stmt.parse_tail)]
                           for name, stmt in rewriter.statements.items() if not stmt.undone],
            "auth_secret": pool.auth_secret,
            "scram_keys": [_text(key) for key in pool.scram_keys] if pool.scram_keys else None,
        }
        if isinstance(router, ReadRouter):
            state["primary_for"] = max(0.0, router.primary_until - now)
        elif isinstance(router, ShardRouter):
            state["shard"] = router.shard
            if router.readers:
                state["shard_primary_for"] = {
                    str(shard): max(0.0, reader.primary_until - now)
                    for shard, reader in router.readers.items()}
        return state

    def adopt(self: FrontendSession, state: dict[str, Any]) -> None:
        """Become the session ``state`` describes (rule 3): raises EcluseError with
        the reason when this worker cannot serve it; nothing is sent to the client."""
        if state.get("version") != VERSION:
            raise EcluseError(f"hand-over state version {state.get('version')!r}")
        ctx = self.ctx
        config = ctx.config
        self.database, self.user = state["database"], state["user"]
        db = config.database(self.database)
        if db is None or self.database in ctx.registry.disabled_dbs:
            raise EcluseError(f'database "{self.database}" is gone')
        limit = ctx.admit(self.database, self.user, config.max_db_client_connections_for(db),
                          config.max_user_client_connections_for(self.user))
        if limit is not None:
            raise EcluseError(f"no room under {limit}")
        self._admitted = True
        home = config.databases[db.shards[db.default_shard]] if db.shards else db
        pool = self.pool = ctx.registry.get_pool(home, self.user)
        if pool.settings.mode == "session":
            raise EcluseError("the pool is in session mode now")
        keys = state["scram_keys"]
        pool.set_login_secret(state["auth_secret"],
                              (_bytes(keys[0]), _bytes(keys[1])) if keys else None)
        for step in (ClientState.AUTH, ClientState.WELCOME, _IDLE):
            self._set_state(step)
        self._login = None
        self._set_up_session()
        params = state["params"]
        if pool.default_params is not None:
            _block, params = pool.welcome(params)  # shared with its pool's like clients
        self.params = params
        self.cancel_key = state["cancel_key"]
        self.connected_at -= state["age"]
        self.session_settings = state["session_settings"]
        names = state["custom_names"]
        self._custom_names = set(names) if names else None
        self._custom_unknown = state["custom_unknown"]
        self._always_probe = state["always_probe"]
        rewriter = self._rewriter
        assert rewriter is not None
        if state["statements"]:
            rewriter.statements = {
                _bytes(name): ClientStatement(server_name, _bytes(tail))
                for name, server_name, tail in state["statements"]}
        now = time.monotonic()
        router = self._router
        if isinstance(router, ReadRouter):
            router.primary_until = now + state.get("primary_for", 0.0)
        elif isinstance(router, ShardRouter) and "shard" in state:
            spec = router.spec()
            shard = state["shard"]
            if spec is None or not 0 <= shard < len(spec.names):
                raise EcluseError("its shard is gone")
            router.move_to(spec, shard, self.user)
            for key, left in state.get("shard_primary_for", {}).items():
                number = int(key)
                if 0 <= number < len(spec.names):
                    reader = router.reader(spec, number,
                                           router.pool_for(spec, number, self.user))
                    if reader is not None:
                        reader.primary_until = now + left
        ctx.adopted_keys[self.cancel_key] = self

    def handed_over(self: FrontendSession, successor: int) -> None:
        """The successor has this client: let go of it without a word (rule 3), and
        pass cancels for its key on to the successor's slot (rule 4)."""
        self.ctx.moved_keys[self.cancel_key] = successor
        transport = self.transport
        self._cleanup()
        if transport is not None:
            transport.abort()  # closes this process's descriptor only

    def refuse_handover(self: FrontendSession, sock: socket.socket) -> None:
        """Close a client handed over that this worker cannot serve, as the drain
        would have: FATAL 57P01."""
        self._cleanup()
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(_REFUSED)
        sock.close()


class HandoverSender:
    """A draining worker's link to its successor: hands idle clients over (rule 3)."""

    def __init__(self, path: str):
        self.path = path
        self._sock: socket.socket | None = None
        self.broken = False  # the successor could not be reached: stop trying

    def send(self, client: FrontendSession) -> bool | None:
        """Pass ``client`` on. True once the successor has it (the caller then lets
        go of the session without a word to the client); None when the
        successor's queue is full (try again soon); False when it cannot be sent
        (the caller closes the client as before)."""
        transport = client.transport
        raw = transport.get_extra_info("socket") if transport is not None else None
        if raw is None:
            return False
        payload = json.dumps(client.handover_state()).encode()
        if len(payload) > _MAX_MESSAGE:
            return False
        try:
            sock = self._connected()
            sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      array.array("i", [raw.fileno()]))])
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:  # this client's state alone is too big
                return False
            log.warning("hand-over to %s failed: %s", self.path, exc)
            self.close()
            self.broken = True
            return False
        return True

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            sock.setblocking(False)
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class HandoverReceiver:
    """A worker's socket where its predecessor hands clients over (rule 3)."""

    def __init__(self, path: str, ctx: ClientContext,
                 new_session: Callable[[], FrontendSession]):
        self.path = path
        self.ctx = ctx
        self._new_session = new_session
        self._listener: socket.socket | None = None
        self._links: list[socket.socket] = []

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by this slot's previous worker
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self.path)
        listener.listen(8)
        listener.setblocking(False)
        self._listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in (self._listener, *self._links):
            if sock is not None:
                loop.remove_reader(sock.fileno())
                sock.close()
        self._listener, self._links = None, []
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            link, _ = self._listener.accept()
        except BlockingIOError:
            return
        link.setblocking(False)
        self._links.append(link)
        asyncio.get_running_loop().add_reader(link.fileno(), self._receive, link)

    def _receive(self, link: socket.socket) -> None:
        while True:
            try:
                payload, ancdata, _flags, _addr = link.recvmsg(
                    _MAX_MESSAGE, socket.CMSG_SPACE(array.array("i").itemsize))
            except BlockingIOError:
                return
            except OSError:
                payload, ancdata = b"", []
            fds = array.array("i")
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
            if not payload and not fds:  # the predecessor is done
                asyncio.get_running_loop().remove_reader(link.fileno())
                self._links.remove(link)
                link.close()
                return
            for extra in fds[1:]:
                os.close(extra)
            if fds:
                self._adopt(payload, fds[0])

    def _adopt(self, payload: bytes, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        session = self._new_session()
        try:
            state = json.loads(payload)
            if not isinstance(state, dict):
                raise EcluseError("hand-over state is not an object")
            session.adopt(state)
        except (EcluseError, ValueError, KeyError, TypeError, AttributeError,
                IndexError) as exc:
            reason = exc.message if isinstance(exc, EcluseError) else repr(exc)
            log.warning("client handed over refused: %s", reason)
            session.refuse_handover(sock)
            return
        self.ctx.spawn(self._connect(session, sock))

    @staticmethod
    async def _connect(session: FrontendSession, sock: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: session, sock)
        except OSError as exc:  # the client left meanwhile
            log.debug("client handed over is gone: %s", exc)
            session._cleanup()
            sock.close()
