"""The parent process of a multi-worker ecluse: bind, fork workers, watch, forward signals.

With ``workers`` > 1 the supervisor:
1. binds the listening addresses once, so a port already in use fails at
   start, and keeps them bound for the life of the node. TCP addresses are
   bound with SO_REUSEPORT and not listened on here: each worker binds its
   own SO_REUSEPORT socket to the same address and the kernel spreads new
   connections over the workers' sockets (a bound, non-listening socket gets
   none). Where SO_REUSEPORT is missing, and for unix sockets, the workers
   share the supervisor's listening socket instead;
2. maps the node-wide server counts (pool/shared.py) and makes a private
   directory for the workers' control sockets (cancel forwarding);
3. forks the workers, each running its own uvloop loop and pools
   (worker.py), and restarts one that dies, after zeroing its counts;
4. forwards SIGHUP (reload), SIGTERM and SIGINT (shutdown) to every worker.

It runs no event loop: it waits for signals with sigwaitinfo, so that forking
never happens from inside a running loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass

import uvloop

from ecluse.config import Config
from ecluse.pool.shared import SharedCounts
from ecluse.worker import Worker, has_reuseport, reuseport_socket

log = logging.getLogger("ecluse.supervisor")

_SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
_RESTART_WINDOW = 10.0  # seconds: a worker dying this soon after start counts as a crash loop
_MAX_QUICK_DEATHS = 5


@dataclass
class WorkerProcess:
    index: int
    pid: int
    started: float


def worker_sockets(reserved: list[socket.socket]) -> list[socket.socket]:
    """In a worker: its own SO_REUSEPORT twin of each reserved TCP address, and
    the shared listening socket of every other (unix, or no SO_REUSEPORT)."""
    out = []
    for sock in reserved:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and has_reuseport():
            out.append(reuseport_socket(sock.family, sock.getsockname(), listen=True))
        else:
            out.append(sock)
    return out


class Supervisor:
    """Start ``workers`` worker processes on shared addresses and keep them running."""

    def __init__(self, config: Config, reserved: list[socket.socket]):
        self.config = config
        self.workers = config.settings.workers
        self.reserved = reserved
        self.counts = SharedCounts(self.workers)
        self.rundir = tempfile.mkdtemp(prefix="ecluse-")
        self.children: dict[int, WorkerProcess] = {}
        self._quick_deaths = 0
        self._stopping = False

    def run(self) -> int:
        """Fork the workers and supervise them until a shutdown signal; return the exit code."""
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for index in range(self.workers):
                self._spawn(index)
            log.info("ecluse supervisor %d: %d workers", os.getpid(), self.workers)
            return self._supervise()
        finally:
            shutil.rmtree(self.rundir, ignore_errors=True)

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                code = self._worker_main(index)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = WorkerProcess(index, pid, time.monotonic())

    def _worker_main(self, index: int) -> int:
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        self.counts.set_worker(index)
        sockets = worker_sockets(self.reserved)
        worker = Worker(self.config, sockets, counts=self.counts, index=index,
                        workers=self.workers, rundir=self.rundir)
        uvloop.run(worker.run())
        return 0

    def _supervise(self) -> int:
        while self.children:
            info = signal.sigwaitinfo(_SIGNALS)
            if info.si_signo == signal.SIGCHLD:
                self._reap()
            elif info.si_signo == signal.SIGHUP:
                log.info("SIGHUP: reloading every worker")
                self._signal_all(signal.SIGHUP)
            else:
                if not self._stopping:
                    log.info("%s: stopping the workers", signal.Signals(info.si_signo).name)
                self._stopping = True
                self._signal_all(info.si_signo)
        return 0

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self.counts.clear_worker(child.index)
            if self._stopping:
                continue
            how = (f"signal {signal.Signals(os.WTERMSIG(status)).name}"
                   if os.WIFSIGNALED(status) else f"exit code {os.WEXITSTATUS(status)}")
            if time.monotonic() - child.started < _RESTART_WINDOW:
                self._quick_deaths += 1
            if self._quick_deaths > _MAX_QUICK_DEATHS:
                log.error("worker %d died (%s); too many quick deaths, stopping ecluse",
                          child.index, how)
                self._stopping = True
                self._signal_all(signal.SIGTERM)
                continue
            log.warning("worker %d (pid %d) died (%s); starting a new one", child.index, pid, how)
            self._spawn(child.index)
