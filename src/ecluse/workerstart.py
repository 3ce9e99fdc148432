"""How a worker process of a multi-worker node starts, forked or exec'd.

The supervisor (supervisor.py) forks the first generation of workers: they
run the code and the config the supervisor loaded (run_worker). A roll-over
(SIGUSR2, the console's RESTART) starts the next generation by exec instead:
``python -m ecluse.workerstart INDEX`` imports the ecluse installed now and
reads the config file as it is now, so a roll-over is how a new ecluse
version, or a setting a reload cannot change, reaches a running node.

Its spec, in the environment variable ECLUSE_WORKER_SPEC (so that ps shows a
short command line), is a JSON object: the config path, the worker's index,
slot and worker count, the node's control directory, the inherited
descriptors (listening sockets, the shared server counts and their lock, the
ready pipe), the settings the node keeps from its start (they shaped the
sockets and the process: config/diff.py's NODE_SETTINGS), and the -v/-q/-d
flags.

Either way the worker reports on the ready pipe: ``R`` once it accepts
clients, or ``E`` and the reason when it cannot start (a config that does not
load, a shared table it cannot read, new code that does not import: ecluse
is imported only once the pipe is known, so even that reaches the
supervisor's log). The supervisor drains the old generation only once every
new worker said ``R``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ecluse.config import Config
    from ecluse.pool.shared import SharedCounts

# Only the standard library at import time (see the docstring): ecluse itself is
# imported inside the functions.
log = logging.getLogger("ecluse")

# A worker that stopped for the console's SHUTDOWN exits with this: the node stops
# and nothing is restarted (admin/node.py passes SHUTDOWN on to every worker).
EXIT_NODE_SHUTDOWN = 3

SPEC_VARIABLE = "ECLUSE_WORKER_SPEC"
READY = b"R"
FAILED = b"E"


def node_settings(config: Config) -> dict[str, Any]:
    """The values of config/diff.py's NODE_SETTINGS a node started with (JSON scalars)."""
    from ecluse.config.diff import NODE_SETTINGS

    return {name: getattr(config.settings, name) for name in sorted(NODE_SETTINGS)}


def with_node_settings(config: Config, node: dict[str, Any]) -> tuple[Config, list[str]]:
    """``config`` with the node's NODE_SETTINGS, and the names whose file value differs."""
    differ = sorted(name for name, value in node.items()
                    if getattr(config.settings, name) != value)
    settings = dataclasses.replace(config.settings, **node)
    return dataclasses.replace(config, settings=settings), differ


def run_worker(config: Config, sockets: list[socket.socket], counts: SharedCounts,
               slot: int, workers: int, rundir: str, ready_fd: int) -> int:
    """Run one worker of the node until it stops; its exit code for the supervisor."""
    import uvloop

    from ecluse.worker import Worker

    counts.set_worker(slot)
    worker = Worker(config, sockets, counts=counts, index=slot, workers=workers,
                    rundir=rundir)

    def ready() -> None:
        _report(ready_fd, READY)

    worker.on_ready = ready
    uvloop.run(worker.run())
    return EXIT_NODE_SHUTDOWN if worker.ctx.shutdown_mode is not None else 0


def _report(fd: int, message: bytes) -> None:
    """Tell the supervisor how the start went, once; the pipe is closed after."""
    try:
        os.write(fd, message)
        os.close(fd)
    except OSError:
        pass  # already reported, or the supervisor is gone: nothing to tell


def main() -> int:
    """The exec'd worker: python -m ecluse.workerstart INDEX, its spec in the environment."""
    spec = json.loads(os.environ.pop(SPEC_VARIABLE))
    ready_fd = spec["ready_fd"]
    try:
        from ecluse import logsetup
        from ecluse.config import load_config
        from ecluse.errors import ConfigError
        from ecluse.pool.shared import SharedCounts
        importlib.import_module("ecluse.worker")  # what run_worker needs, imported here
    except BaseException as exc:  # new code that does not import: say why, once
        _report(ready_fd, FAILED + f"{type(exc).__name__}: {exc}".encode())
        return 1
    try:
        config = load_config(spec["config"])
        config, differ = with_node_settings(config, spec["node_settings"])
        flags = spec["log_flags"]
        logsetup.configure(config.settings, verbose=flags["verbose"], quiet=flags["quiet"],
                           daemon=flags["daemon"])
        counts = SharedCounts.attach(*spec["counts_fds"])
    except ConfigError as exc:
        _report(ready_fd, FAILED + exc.message.encode())
        return 1
    except (OSError, ValueError) as exc:
        _report(ready_fd, FAILED + str(exc).encode())
        return 1
    if spec["index"] == 0:  # said once for the generation, not once per worker
        for warning in config.warnings:
            log.warning("%s", warning)
        for name in differ:
            log.warning("roll-over: %s is kept at its value from the node's start; "
                        "changing it takes a full restart", name)
    for fd in (*spec["listen_fds"], *spec["counts_fds"], ready_fd):
        os.set_inheritable(fd, False)
    sockets = [socket.socket(fileno=fd) for fd in spec["listen_fds"]]
    return run_worker(config, sockets, counts, spec["slot"], spec["workers"], spec["rundir"],
                      ready_fd)


if __name__ == "__main__":
    code = 1
    try:
        code = main()
    except BaseException:
        log.exception("worker failed")
    finally:
        logging.shutdown()
    os._exit(code)
