"""The parent process of a multi-worker ecluse: bind, fork workers, watch, forward signals.

With ``workers`` > 1 the supervisor:
1. binds the listening addresses and holds them for the life of the node. For
   each TCP address it opens one SO_REUSEPORT listening socket per worker
   index (the kernel spreads new connections over them); a worker accepts on
   the socket of its index, inherited across fork. Unix sockets (and TCP
   where SO_REUSEPORT is missing) are one listening socket all workers share.
   Because the supervisor keeps every socket open, a connection queued on the
   socket of a worker that died or is being replaced is not lost: the next
   worker of that index accepts it;
2. maps the node-wide server counts (pool/shared.py) and makes a private
   directory for the workers' control sockets (cancel forwarding);
3. forks the workers, each running its own uvloop loop and pools
   (worker.py), and restarts one that dies, after zeroing its counts;
4. forwards SIGHUP (reload), SIGTERM and SIGINT (shutdown) to every worker;
5. on SIGUSR2, rolls the workers over without dropping a transaction: a new
   generation starts on the same sockets, by exec, so it runs the ecluse
   installed now with the config file as it is now (workerstart.py); once
   every new worker accepts clients, each old worker is told to drain
   (SIGUSR1: stop accepting, let transactions finish, close idle clients at
   drain_rate per second, exit when none is left). A new worker that cannot
   start (a config that does not load, code that does not import) abandons
   the roll-over: the new workers that did start drain, the old generation
   keeps serving, and the log says why. Generations alternate between two
   sets of worker slots, so an old worker's cancel keys and server counts stay
   its own while it drains.

It runs no event loop: it waits for signals with sigwaitinfo, so that forking
never happens from inside a running loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from ecluse import logsetup
from ecluse.config import Config
from ecluse.pool.shared import SharedCounts
from ecluse.tcpopts import is_tcp
from ecluse.worker import has_reuseport, tcp_socket
from ecluse.workerstart import (
    EXIT_NODE_SHUTDOWN,
    FAILED,
    READY,
    SPEC_VARIABLE,
    node_settings,
    run_worker,
)

log = logging.getLogger("ecluse.supervisor")

_SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
_READY_TIMEOUT = 30.0  # seconds a roll-over's new workers get to accept clients
_RESTART_WINDOW = 10.0  # seconds: a worker dying this soon after start counts as a crash loop
_MAX_QUICK_DEATHS = 5


@dataclass
class WorkerProcess:
    index: int  # which listening sockets it accepts on (0 .. workers-1)
    slot: int  # its column in the counts, its cancel keys and control socket
    generation: int
    pid: int
    started: float
    ready_fd: int  # the pipe it reports its start on (workerstart.py); -1 once read


def worker_sockets(reserved: list[socket.socket], workers: int,
                   backlog: int) -> list[list[socket.socket]]:
    """Per worker index, the listening sockets it accepts on.

    A TCP address gets one SO_REUSEPORT listening twin per index; any other
    socket (unix, or no SO_REUSEPORT) is listened on once and shared.
    """
    per_index: list[list[socket.socket]] = [[] for _ in range(workers)]
    for sock in reserved:
        if is_tcp(sock) and has_reuseport():
            for sockets in per_index:
                sockets.append(tcp_socket(sock.family, sock.getsockname(), backlog,
                                          reuseport=True))
            sock.close()  # the twins hold the address now
        else:
            with contextlib.suppress(OSError):
                sock.listen(backlog)
            for sockets in per_index:
                sockets.append(sock)
    return per_index


class Supervisor:
    """Start ``workers`` worker processes on shared addresses and keep them running."""

    def __init__(self, config: Config, reserved: list[socket.socket]):
        self.config = config
        self.workers = config.settings.workers
        self.sockets = worker_sockets(reserved, self.workers, config.settings.listen_backlog)
        # Two slots per worker index: two generations live during a roll-over.
        self.counts = SharedCounts(2 * self.workers, node_workers=self.workers)
        self.rundir = tempfile.mkdtemp(prefix="ecluse-")
        # A roll-over execs its workers anew from the config file; a node started
        # from a config that is no file (tests, --dev) forks them again instead.
        path = config.path
        self.config_file = os.path.abspath(path) if path and os.path.isfile(path) else None
        self.children: dict[int, WorkerProcess] = {}
        self.generation = 0
        self._quick_deaths = 0
        self._stopping = False

    def run(self) -> int:
        """Fork the workers and supervise them until a shutdown signal; return the exit code."""
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for index in range(self.workers):
                self._spawn(index, self.generation)
            log.info("ecluse supervisor %d: %d workers", os.getpid(), self.workers)
            return self._supervise()
        finally:
            shutil.rmtree(self.rundir, ignore_errors=True)

    def _slot(self, index: int, generation: int) -> int:
        return index + self.workers * (generation % 2)

    def _spawn(self, index: int, generation: int) -> WorkerProcess:
        slot = self._slot(index, generation)
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(ready_r)
                for sig in _SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                # The mask survives exec: unblock before either way of starting.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                if generation > 0 and self.config_file is not None:
                    self._exec_worker(index, slot, ready_w)  # returns only on failure
                else:
                    code = run_worker(self.config, self.sockets[index], self.counts, slot,
                                      2 * self.workers, self.rundir, ready_w)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(ready_w)
        child = WorkerProcess(index, slot, generation, pid, time.monotonic(), ready_r)
        self.children[pid] = child
        return child

    def _exec_worker(self, index: int, slot: int, ready_fd: int) -> None:
        """Replace this forked child by ``python -m ecluse.workerstart`` (new code)."""
        listen_fds = [sock.fileno() for sock in self.sockets[index]]
        counts_fds = list(self.counts.fds)
        for fd in (*listen_fds, *counts_fds, ready_fd):
            os.set_inheritable(fd, True)
        spec = {"config": self.config_file, "index": index, "slot": slot,
                "workers": 2 * self.workers, "rundir": self.rundir,
                "listen_fds": listen_fds, "counts_fds": counts_fds, "ready_fd": ready_fd,
                "node_settings": node_settings(self.config), "log_flags": logsetup.flags()}
        # The spec goes in the environment, so that ps shows a short command line.
        env = dict(os.environ, **{SPEC_VARIABLE: json.dumps(spec)})
        # The interpreter's own flags (-O, -X ...) as the node was started with, as
        # multiprocessing's spawn passes them on.
        flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
        os.execve(sys.executable,
                  [sys.executable, *flags, "-m", "ecluse.workerstart", str(index)], env)

    def _await_ready(self, children: list[WorkerProcess]) -> str | None:
        """Wait until every child reported its start; None, or why one did not start."""
        waiting = {child.ready_fd: child for child in children}
        deadline = time.monotonic() + _READY_TIMEOUT
        failure = None
        while waiting and failure is None:
            left = deadline - time.monotonic()
            if left <= 0:
                failure = f"worker {next(iter(waiting.values())).index} did not accept " \
                          f"clients within {_READY_TIMEOUT:.0f}s"
                break
            readable, _, _ = select.select(list(waiting), [], [], left)
            for fd in readable:
                child = waiting.pop(fd)
                report = os.read(fd, 4096)
                self._close_ready(child)
                if report[:1] == FAILED:
                    failure = f"worker {child.index} could not start: " \
                              f"{report[1:].decode(errors='replace')}"
                elif report[:1] != READY:
                    failure = f"worker {child.index} exited before accepting clients " \
                              f"(its log says why)"
        for child in waiting.values():
            self._close_ready(child)
        return failure

    @staticmethod
    def _close_ready(child: WorkerProcess) -> None:
        if child.ready_fd >= 0:
            os.close(child.ready_fd)
            child.ready_fd = -1

    def _supervise(self) -> int:
        while self.children:
            info = signal.sigwaitinfo(_SIGNALS)
            if info.si_signo == signal.SIGCHLD:
                self._reap()
            elif info.si_signo == signal.SIGHUP:
                log.info("SIGHUP: reloading every worker")
                self._signal_all(signal.SIGHUP)
            elif info.si_signo == signal.SIGUSR2:
                self._roll_over()
            else:
                if not self._stopping:
                    log.info("%s: stopping the workers", signal.Signals(info.si_signo).name)
                self._stopping = True
                self._signal_all(info.si_signo)
        return 0

    def _roll_over(self) -> None:
        """Start a new generation of workers, then drain the old one (SIGUSR2)."""
        if self._stopping:
            return
        if any(c.generation != self.generation for c in self.children.values()):
            log.warning("SIGUSR2 ignored: the previous roll-over is still draining")
            return
        old = [c for c in self.children.values() if c.generation == self.generation]
        self.generation += 1
        how = "from the installed ecluse and the config file" if self.config_file \
            else "forked (no config file to read again)"
        log.info("SIGUSR2: starting worker generation %d %s, draining generation %d",
                 self.generation, how, self.generation - 1)
        new = [self._spawn(index, self.generation) for index in range(self.workers)]
        failure = self._await_ready(new)
        if failure is not None:
            # The old generation keeps serving; new workers that did start may
            # have taken clients already, so they drain rather than die.
            log.error("roll-over to generation %d abandoned, generation %d keeps serving: %s",
                      self.generation, self.generation - 1, failure)
            self.generation -= 1
            for child in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGUSR1)
            return
        # The new workers accept on the same sockets already; the old ones stop
        # accepting as soon as they are told to drain.
        for child in old:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGUSR1)

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
            self._close_ready(child)
            self.counts.clear_worker(child.slot)
            if self._stopping:
                continue
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_NODE_SHUTDOWN:
                log.info("worker %d stopped for the console's SHUTDOWN: stopping ecluse",
                         child.index)
                self._stopping = True
                continue
            if child.generation < self.generation:
                log.info("worker %d of generation %d drained and exited", child.index,
                         child.generation)
                continue
            if child.generation > self.generation:
                log.info("worker %d of abandoned generation %d exited", child.index,
                         child.generation)
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
            self._spawn(child.index, child.generation)
