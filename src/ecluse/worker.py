"""One worker: an event loop with its listeners, pools, janitor and signals.

Wiring only: the behaviour lives in frontend/, pool/ and server/.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ecluse import logsetup
from ecluse.admin.http import HttpServer, start_http
from ecluse.admin.node import attach as attach_node
from ecluse.config import Config
from ecluse.config.diff import diff_configs, keep_restart_only
from ecluse.config.loader import load_config
from ecluse.config.model import Settings, peer_pool_size
from ecluse.config.tls import client_tls_context
from ecluse.errors import ConfigError, EcluseError
from ecluse.frontend.context import ClientContext
from ecluse.frontend.handover import HandoverReceiver, HandoverSender, handover_path
from ecluse.frontend.noquery import NoSimpleQuerySession
from ecluse.frontend.session import FrontendSession
from ecluse.frontend.tls import TlsListener
from ecluse.pool.janitor import Janitor
from ecluse.pool.registry import PoolRegistry
from ecluse.pool.shared import LocalCounts, SharedCounts
from ecluse.protocol.messages import BackendKeyData
from ecluse.server.cancel import pass_cancel_on
from ecluse.server.peercancels import PeerCancels
from ecluse.tcpopts import configure_listener

log = logging.getLogger("ecluse")

_DRAIN_GRACE = 0.5  # seconds a client must have been quiet before a drain closes it


def has_reuseport() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def tcp_socket(family: int, sockaddr, backlog: int | None,
               reuseport: bool = False) -> socket.socket:
    """A non-blocking TCP socket bound to ``sockaddr`` (IPv6 only for IPv6 addresses),
    listening with ``backlog`` unless it is None."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        if backlog is not None:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()  # an address in use must not leak the descriptor
        raise
    return sock


def unix_group_id(name: str) -> int:
    """The id of the group ``name`` (or a number); OSError when there is none."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise OSError(f"unix_socket_group: no group {name!r}") from None


def listen_sockets(config: Config, reserve: bool = False) -> list[socket.socket]:
    """Bind the TCP and unix listening sockets the config asks for.

    With ``reserve`` (the supervisor of several workers, where SO_REUSEPORT
    exists) TCP addresses are bound with SO_REUSEPORT and not listened on:
    each worker listens on its own twin (supervisor.py).
    """
    s = config.settings
    socks: list[socket.socket] = []
    # The unix socket first, listed last: a TCP socket accepts as soon as it listens,
    # and whoever finds it ready (a supervisor's probe, a test) may look for the
    # unix one next, which must by then have its mode and group.
    unix = None
    if s.unix_socket_dir:
        path = os.path.join(s.unix_socket_dir, f".s.PGSQL.{s.listen_port}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(path)
        os.chmod(path, s.unix_socket_mode)
        if s.unix_socket_group:
            os.chown(path, -1, unix_group_id(s.unix_socket_group))
        unix.listen(s.listen_backlog)
        unix.setblocking(False)
    try:
        socks += _tcp_sockets(s, reserve)
    except BaseException:
        if unix is not None:  # no half-started listener left behind
            unix.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    if unix is not None:
        socks.append(unix)
    return socks


def _tcp_sockets(s: Settings, reserve: bool) -> list[socket.socket]:
    """listen_sockets' TCP part: one socket per address listen_addr resolves to;
    none left open when one fails."""
    socks: list[socket.socket] = []
    try:
        for addr in (a.strip() for a in s.listen_addr.split(",") if a.strip()):
            host = None if addr == "*" else addr
            infos = socket.getaddrinfo(host, s.listen_port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            seen = set()
            for family, _type, _proto, _canon, sockaddr in infos:
                if (family, sockaddr) in seen:
                    continue
                seen.add((family, sockaddr))
                if reserve and has_reuseport():
                    socks.append(tcp_socket(family, sockaddr, None, reuseport=True))
                else:
                    socks.append(tcp_socket(family, sockaddr, s.listen_backlog,
                                            reuseport=s.so_reuseport))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class ControlSession(FrontendSession):
    """A session on the worker's control socket: another worker asking for the node
    (admin/node.py)."""

    __slots__ = ()
    control_link = True


class Worker:
    """Serve clients on the given sockets until told to stop."""

    def __init__(self, config: Config, sockets: list[socket.socket],
                 counts: LocalCounts | SharedCounts | None = None, index: int = 0,
                 workers: int = 1, rundir: str | None = None):
        self.config = config
        self.sockets = sockets
        self.registry = PoolRegistry(config, counts, params_dir=rundir)
        self.ctx = ClientContext(config, self.registry)
        self.ctx.worker_index = index
        self.workers = workers
        self.rundir = rundir  # the node's control sockets (cancel forwarding), if several
        if rundir is not None:
            self.ctx.forward_to_worker = self._forward_cancel
            attach_node(self.ctx, index, workers, rundir)  # console, metrics: whole node
        self.ctx.peer_id = config.settings.peer_id
        self.ctx.forward_to_peer = self._forward_to_peer
        self.ctx.peer_cancels = PeerCancels(self.ctx.spawn)
        self.janitor = Janitor(self.registry, lambda: self.ctx.config.settings,
                               lambda: self.ctx.clients, lambda: self.ctx.logging_in,
                               lambda: self.ctx.db_clients)
        self._servers: list[asyncio.AbstractServer | TlsListener] = []
        self._stop = asyncio.Event()
        self._control: asyncio.AbstractServer | None = None  # other workers' cancels
        # A roll-over's hand-overs (frontend/handover.py): clients this worker's
        # predecessor passes on, and the link to its successor while it drains.
        self._handover_in: HandoverReceiver | None = None
        self._handover_out: HandoverSender | None = None
        self._unmovable: set[FrontendSession] = set()  # sending it failed: closed instead
        self.draining = False
        self._http: HttpServer | None = None  # metrics_listen (admin/http.py)
        self.ctx.begin_shutdown = self.begin_shutdown
        self.janitor.on_stats = self._on_stats_period
        self.ctx.reload_config = self.reload
        self.ctx.apply_config = self.apply_config
        # disable_pqexec is restart-only: the class of client sessions is fixed here.
        self._session_class = NoSimpleQuerySession if config.settings.disable_pqexec \
            else FrontendSession
        # Called once the worker accepts clients: tells the supervisor that a
        # roll-over's new worker is up (supervisor.py).
        self.on_ready: Callable[[], None] | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.settings.metrics_listen:
            await self._start_http(self.config.settings.metrics_listen)
        settings = self.config.settings
        backlog = settings.listen_backlog
        for sock in self.sockets:
            configure_listener(sock, settings)
            if sock.family == socket.AF_UNIX:
                srv = await loop.create_unix_server(self._new_session, sock=sock,
                                                    backlog=backlog)
            elif client_tls_context(settings) is not None:
                # Peeks each connection's first byte for a direct TLS handshake.
                sock.listen(backlog)
                srv = TlsListener(sock, self._new_session, lambda: self.ctx.config.settings)
                srv.start()
            else:
                srv = await loop.create_server(self._new_session, sock=sock, backlog=backlog)
            self._servers.append(srv)
        if self.rundir is not None:
            # Other workers pass on the CancelRequests the kernel gave them for our
            # clients through this socket, as plain CancelRequests.
            path = self._control_path(self.ctx.worker_index)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by this worker's predecessor
            self._control = await loop.create_unix_server(self._new_control_session, path)
            self._handover_in = HandoverReceiver(
                handover_path(self.rundir, self.ctx.worker_index), self.ctx, self._new_session)
            self._handover_in.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        loop.add_signal_handler(signal.SIGUSR1, self.drain)
        self._warm_pools()
        self.janitor.start()
        log.info("ecluse %d listening on %s", os.getpid(),
                 ", ".join(_sock_name(s) for s in self.sockets))
        if self.on_ready is not None:
            self.on_ready()
        await self._stop.wait()
        await self.shutdown()

    async def _start_http(self, address: str) -> None:
        try:
            # Several workers: each binds it (SO_REUSEPORT) and answers for the node.
            self._http = await start_http(self.ctx, address, reuse_port=self.ctx.node is not None)
        except (OSError, ValueError) as exc:
            log.error("cannot serve metrics_listen = %s: %s", address, exc)
            raise SystemExit(1) from None
        log.info("metrics and HTTP API on http://%s", self._http.address)

    def _forward_cancel(self, worker: int, process_id: int, secret: bytes,
                        done: Callable[[], None]) -> None:
        if self.rundir is None or worker >= self.workers:
            done()  # not a key of this node: dropped, as PostgreSQL drops unknown keys
            return
        if not os.path.exists(self._control_path(worker)):
            # That worker is gone; after a roll-over its clients live on in the
            # slot's successor (frontend/handover.py rule 4).
            worker = self._successor(worker)
        log.debug("cancel request for worker %d passed on", worker)
        self.ctx.spawn(pass_cancel_on(self.rundir, worker, BackendKeyData(process_id, secret),
                                      self.ctx.config.settings.cancel_wait_timeout, done))

    def _forward_to_peer(self, peer: int, process_id: int, secret: bytes,
                         done: Callable[[], None]) -> None:
        """Pass a cancel on to the ecluse of the group that issued its key ([peers])."""
        target = self.ctx.config.peers.get(peer)
        if target is None:
            log.debug("cancel request for unknown peer %d dropped", peer)
            done()
            return
        log.debug("cancel request for peer %d passed on to %s:%d", peer, target.host,
                  target.port)
        settings = self.ctx.config.settings
        key = BackendKeyData(process_id, secret)

        def start(finished: Callable[[], None]) -> Coroutine[Any, Any, None]:
            def ended() -> None:
                finished()
                done()
            return pass_cancel_on(target.host, target.port, key, settings.cancel_wait_timeout,
                                  ended)

        assert self.ctx.peer_cancels is not None
        self.ctx.peer_cancels.submit(peer, peer_pool_size(target, settings), start)

    def _control_path(self, slot: int) -> str:
        assert self.rundir is not None
        return os.path.join(self.rundir, f".s.PGSQL.{slot}")

    def _successor(self, slot: int) -> int:
        """The slot of the same index in the other generation (supervisor.py)."""
        return (slot + self.workers // 2) % self.workers

    def _new_session(self) -> FrontendSession:
        return self._session_class(self.ctx)

    def _new_control_session(self) -> FrontendSession:
        return ControlSession(self.ctx)

    def _warm_pools(self) -> None:
        """Create pools of databases with a fixed user so min_pool_size holds at once."""
        for db in self.config.databases.values():
            if db.user and db.name != "*":
                self.registry.get_pool(db, db.user)

    # --- reload ------------------------------------------------------------
    def _on_sighup(self) -> None:
        log.info("SIGHUP received: reloading the config")
        logsetup.reopen_logfiles()
        self.reload()

    def reload(self) -> str | None:
        """Re-read the config file and auth_file; apply them if the whole is valid.

        Returns None when applied, else the reason it was refused; a refused
        config changes nothing (the running one stays, the reason is logged).
        """
        path = self.config.path
        if path is None:
            reason = "no config file to re-read (ecluse was started without one)"
            log.warning("RELOAD refused: %s", reason)
            return reason
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("RELOAD refused, the running config stays: %s", exc.message)
            return exc.message
        except OSError as exc:
            log.error("RELOAD refused, the running config stays: cannot read %s: %s",
                      path, exc)
            return f"cannot read {path}: {exc}"
        for warning in new.warnings:
            log.warning("%s", warning)
        self.apply_config(new)
        return None

    def apply_config(self, new: Config) -> None:
        """Make ``new`` the running config: settings, databases, users, auth, hba."""
        new, kept = keep_restart_only(self.config, new)
        for name in kept:
            log.warning("RELOAD: %s cannot be changed online; restart ecluse to apply it",
                        name)
        diff = diff_configs(self.config, new)
        if diff.is_empty():
            log.info("RELOAD: nothing changed")
            return
        self.config = self.ctx.config = new
        logsetup.apply(new.settings)
        if not self.draining:  # a draining worker's listeners are closed
            for sock in self.sockets:
                configure_listener(sock, new.settings)
        for line in self.registry.apply_config(new):
            log.info("RELOAD: %s", line)
        self._warm_pools()
        log.info("RELOAD done: databases added %s, removed %s, changed %s; settings %s; "
                 "users %s; auth_file entries %s",
                 sorted(diff.added) or "-", sorted(diff.removed) or "-",
                 sorted(diff.changed) or "-", sorted(diff.settings) or "-",
                 sorted(diff.users) or "-", len(diff.auth))

    def _on_stats_period(self, averages: dict[str, dict[str, int]]) -> None:
        """Publish the averages to SHOW STATS_AVERAGES; log them (log_stats), as PgBouncer."""
        self.ctx.stats_averages = averages
        if not self.ctx.config.settings.log_stats:
            return
        for db, avg in sorted(averages.items()):
            log.info("stats: %s: %d xacts/s, %d queries/s, %d client parses/s, "
                     "%d server parses/s, %d binds/s, in %d B/s, out %d B/s, "
                     "xact %d us, query %d us, wait %d us", db,
                     avg["xact_count"], avg["query_count"], avg["client_parse_count"],
                     avg["server_parse_count"], avg["bind_count"], avg["received"],
                     avg["sent"], avg["xact_time_us"], avg["query_time_us"],
                     avg["wait_time_us"])

    # --- rolling restart ---------------------------------------------------------
    def drain(self) -> None:
        """Hand over to a new generation (SIGUSR1 from the supervisor's roll-over).

        Stop accepting: the listening sockets stay open in the supervisor and
        the new workers, so no connection is lost. Transactions finish; a
        client between transactions is handed over to the successor of this
        worker's slot (frontend/handover.py), which serves it on unnoticed;
        one that cannot be (TLS, pinned, session mode...) is closed between
        transactions at drain_rate per second (so that such clients do not all
        reconnect at once), with PostgreSQL's own "terminating connection due
        to administrator command" (57P01). The worker stops once every client
        has left, or after shutdown_timeout.
        """
        if self.draining:
            return
        self.draining = True
        log.info("draining for a rolling restart: %d clients", len(self.ctx.clients))
        for srv in self._servers:
            srv.close()
        for pool in self.registry:
            # The new generation needs the node-wide slots: idle servers go now,
            # busy ones when their transaction ends.
            pool.close_all(lambda server: True)
        self.ctx.spawn(self._drain_clients())

    async def _drain_clients(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.ctx.config.settings
        deadline = loop.time() + settings.shutdown_timeout
        pause = 1.0 / settings.drain_rate
        successor = None
        if self.rundir is not None:
            successor = self._successor(self.ctx.worker_index)
            self._handover_out = HandoverSender(handover_path(self.rundir, successor))
        handed = 0
        while self.ctx.clients and loop.time() < deadline and not self._stop.is_set():
            if successor is not None:
                handed += self._hand_over_idle(successor)
            now = time.monotonic()
            victim = next((c for c in self.ctx.clients if _between_transactions(c, now)
                           and not self._may_hand_over(c)), None)
            if victim is None:
                await asyncio.sleep(0.05)
                continue
            victim.fatal(EcluseError("terminating connection due to administrator command",
                                     sqlstate="57P01"))
            await asyncio.sleep(pause)
        if self._handover_out is not None:
            self._handover_out.close()
        log.info("drained: %d clients handed over, %d left", handed, len(self.ctx.clients))
        self.request_stop()

    def _may_hand_over(self, client: FrontendSession) -> bool:
        sender = self._handover_out
        return sender is not None and not sender.broken and client not in self._unmovable \
            and client.can_hand_over()

    def _hand_over_idle(self, successor: int) -> int:
        """Hand every client that can be over to the successor now; how many went."""
        sender = self._handover_out
        assert sender is not None
        handed = 0
        for client in [c for c in self.ctx.clients if self._may_hand_over(c)]:
            sent = sender.send(client)
            if sent is None:
                break  # the successor's queue is full: the rest on the next turn
            if sent:
                client.handed_over(successor)
                handed += 1
            else:
                self._unmovable.add(client)
        return handed

    def request_stop(self) -> None:
        self._stop.set()

    def begin_shutdown(self, mode: str) -> None:
        """Start the console's SHUTDOWN: now, or after servers or clients are gone.

        WAIT_FOR_SERVERS pauses every pool and stops once no server is busy;
        WAIT_FOR_CLIENTS stops once every client, console ones included, has
        left. Both stop listening first, so new clients are refused, as
        PgBouncer. Then the ordinary shutdown path runs.
        """
        self.ctx.shutdown_mode = mode
        if not mode:
            self.request_stop()
            return
        for srv in self._servers:
            srv.close()
        if mode == "WAIT_FOR_SERVERS":
            self.registry.paused_all = True
            for pool in self.registry:
                pool.paused = True
        self.ctx.spawn(self._stop_when_gone(mode))

    async def _stop_when_gone(self, mode: str) -> None:
        while not self._stop.is_set():
            if mode == "WAIT_FOR_CLIENTS":
                done = not self.ctx.clients
            else:
                done = not any(pool.active or pool.used for pool in self.registry)
            if done:
                log.info("SHUTDOWN %s: nothing left to wait for", mode)
                self.request_stop()
                return
            await asyncio.sleep(0.05)

    async def shutdown(self) -> None:
        """Stop accepting, let transactions finish up to shutdown_timeout, close all."""
        log.info("shutting down: waiting up to %.0fs for transactions to finish",
                 self.config.settings.shutdown_timeout)
        self.ctx.shutting_down = True
        for srv in self._servers:
            srv.close()
        if self._control is not None:
            self._control.close()
            if self.draining:
                # Cancels for this slot's keys go to its successor from now on
                # (_forward_cancel); no other worker has this slot while we live.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._control_path(self.ctx.worker_index))
        if self._handover_in is not None:
            self._handover_in.close()
        for client in list(self.ctx.clients):
            server = client.server
            if server is None or server.tracker.can_release():
                client.close()
        deadline = asyncio.get_running_loop().time() + self.config.settings.shutdown_timeout
        while self.ctx.clients and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for client in list(self.ctx.clients):
            client.fatal(EcluseError("pooler is shutting down", sqlstate="57P01"))
        self.janitor.stop()
        for pool in self.registry:
            pool.closed = True
            pool.close_all()
        await asyncio.sleep(0.05)
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 1.0)
        if self._http is not None:
            await self._http.stop()
        log.info("shutdown complete")


def _between_transactions(client: FrontendSession, now: float) -> bool:
    """True when closing ``client`` now loses nothing: logged in, no request open, and
    quiet for _DRAIN_GRACE (a client that just logged in is about to send its query;
    one connecting per transaction, as pgbench -C, leaves by itself), and no longer
    receiving its last reply (a slow reader may still be handed over once it has it)."""
    if now - client.last_activity < _DRAIN_GRACE:
        return False
    transport = client.transport
    if transport is not None and transport.get_write_buffer_size():
        return False
    if client.console is not None:
        return True
    state = client.state.value
    if state == "idle":
        return True
    server = client.server
    return state == "linked" and server is not None and server.tracker.can_release() \
        and server.tracker.status == ord("I")


def _sock_name(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return str(name)
