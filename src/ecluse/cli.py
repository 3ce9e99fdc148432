"""The `ecluse` command line: PgBouncer's flags, daemonizing, dev mode.

Wiring only: parse arguments, load the config, set up logging (logsetup.py),
start a Worker.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pwd
import resource
import signal
import sys

import uvloop

from ecluse import __version__, accel, logsetup
from ecluse.config import Config, config_from_string, load_config
from ecluse.config.model import Settings
from ecluse.errors import ConfigError
from ecluse.supervisor import Supervisor
from ecluse.worker import Worker, listen_sockets

log = logging.getLogger("ecluse")

DEV_DIR = ".ecluse-dev"
DEV_PORT = 6432


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ecluse",
        description="ecluse, a PostgreSQL connection pooler (PgBouncer-compatible config).",
        add_help=False,
    )
    p.add_argument("config", nargs="?", help="path to the ini config (PgBouncer format)")
    p.add_argument("-d", "--daemon", action="store_true", help="run in the background")
    p.add_argument("-R", "--reboot", action="store_true",
                   help="online restart (not supported: use a rolling restart, SIGUSR2)")
    p.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    p.add_argument("-u", "--user", help="switch to this system user after binding")
    p.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    p.add_argument("-h", "--help", action="help", help="show this help and exit")
    p.add_argument("--dev", action="store_true",
                   help=f"start a throwaway PostgreSQL in ./{DEV_DIR} and serve it on "
                        f"127.0.0.1:{DEV_PORT}")
    return p


def daemonize() -> None:
    """Detach from the terminal with the classic double fork."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def drop_privileges(user: str) -> None:
    entry = pwd.getpwnam(user)
    os.setgid(entry.pw_gid)
    os.initgroups(user, entry.pw_gid)
    os.setuid(entry.pw_uid)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"ecluse {__version__}")
        return 0
    if args.reboot:
        print("ecluse: -R/--reboot (PgBouncer's takeover by a second process) is not "
              "supported; with workers > 1, a rolling restart (kill -USR2 on the running "
              "ecluse, or RESTART on its console) restarts it without dropping clients",
              file=sys.stderr)
        return 1
    if args.dev:
        return run_dev(args)
    if not args.config:
        print("ecluse: a config file is required (or --dev); see ecluse --help",
              file=sys.stderr)
        return 1
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"ecluse: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ecluse: cannot read config: {exc}", file=sys.stderr)
        return 1
    return serve(config, args)


def serve(config: Config, args: argparse.Namespace) -> int:
    s = config.settings
    try:
        logsetup.configure(s, verbose=args.verbose, quiet=args.quiet, daemon=args.daemon)
    except OSError as exc:
        print(f"ecluse: cannot open logfile: {exc}", file=sys.stderr)
        return 1
    for warning in config.warnings:
        log.warning("%s", warning)
    # Until the event loop installs its own handlers, SIGTERM still means a clean exit
    # (the pidfile is removed in the finally below).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    raise_nofile_limit()
    log.info("%s", accel.describe())
    several = s.workers > 1
    try:
        sockets = listen_sockets(config, reserve=several)
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    if not sockets:
        log.error("nothing to listen on: set listen_addr or unix_socket_dir")
        return 1
    user = args.user or s.user
    if user and os.getuid() == 0:
        drop_privileges(user)
    if args.daemon:
        daemonize()
    try:
        if s.pidfile:
            with open(s.pidfile, "w") as f:
                f.write(f"{os.getpid()}\n")
        if several:
            return Supervisor(config, sockets).run()
        uvloop.run(Worker(config, sockets).run())
    finally:
        if s.pidfile:
            with contextlib.suppress(OSError):
                os.unlink(s.pidfile)
    return 0


def raise_nofile_limit() -> None:
    """Raise the open-file limit to its hard limit: every client is a descriptor.

    Done before listening and forking, so that workers inherit it; PgBouncer
    leaves this to the service manager, but a default soft limit of 1024 would
    refuse clients long before max_client_conn.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        # Linux refuses an unlimited soft limit for open files: nr_open caps it.
        try:
            with open("/proc/sys/fs/nr_open") as f:
                hard = int(f.read())
        except (OSError, ValueError):
            return
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(
                resource.RLIMIT_NOFILE)[1]))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, exc)
            return
        log.info("RLIMIT_NOFILE raised from %d to %d", soft, hard)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def dev_config(pg_port: int, port: int = DEV_PORT) -> Config:
    """The config `make run` uses: every database of the throwaway cluster."""
    return config_from_string(
        f"""
[databases]
* = host=127.0.0.1 port={pg_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
pool_mode = transaction
default_pool_size = 10
max_client_conn = 1000
""",
        path="<dev>",
    )


def run_dev(args: argparse.Namespace) -> int:
    from ecluse.devcluster import PgCluster, ensure_postgres_installed

    logsetup.configure(Settings(), verbose=args.verbose, quiet=args.quiet)
    ensure_postgres_installed()
    datadir = os.path.abspath(os.path.join(DEV_DIR, "pgdata"))
    cluster = PgCluster(datadir)
    if not os.path.exists(os.path.join(datadir, "PG_VERSION")):
        log.info("creating a throwaway PostgreSQL cluster in %s", datadir)
        cluster.init()
    cluster.start()
    try:
        config = dev_config(cluster.port)
        sockets = listen_sockets(config)
        print(f"\n  ecluse is ready. Connect with:\n\n"
              f"    psql -h 127.0.0.1 -p {DEV_PORT} -U postgres postgres\n\n"
              f"  (PostgreSQL itself listens on 127.0.0.1:{cluster.port}; Ctrl-C stops both)\n",
              flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(Worker(config, sockets).run())
    finally:
        cluster.stop()
    return 0

