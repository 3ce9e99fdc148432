"""PoolRegistry: all pools of a worker, keyed by (database, user).

It creates pools on demand from the configuration, enforces the limits that
span pools (max_db_connections and max_user_connections) and applies a
reloaded configuration to the pools it holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping

from ecluse.config import Config, DatabaseConfig
from ecluse.config.model import FALLBACK_DATABASE
from ecluse.config.tls import server_tls
from ecluse.pool.pool import Pool
from ecluse.pool.settings import PoolSettings
from ecluse.pool.shared import Key, LocalCounts, SharedCounts
from ecluse.server.dns import DnsCache
from ecluse.tcpopts import TcpOptions

log = logging.getLogger("ecluse.pool")


class PoolRegistry:
    """Pools by (database name, server user)."""

    def __init__(self, config: Config, counts: LocalCounts | SharedCounts | None = None,
                 params_dir: str | None = None):
        self.config = config
        # Several workers: where pools leave the server parameters a welcome needs,
        # so a new worker (a roll-over, a restart) can welcome clients before it has
        # a server of its own: when the node-wide pool is full, it may have none
        # until a client of another worker lets one go.
        self.params_dir = params_dir
        self.pools: dict[tuple[str, str], Pool] = {}
        # Servers per pool, database and user: this worker's, or the node's when
        # several workers share the limits (pool/shared.py).
        self.counts = counts if counts is not None else LocalCounts()
        self.shared = isinstance(self.counts, SharedCounts)
        # PAUSE (admin/commands.py): databases paused, or all; pools created
        # meanwhile start paused too.
        self.paused_dbs: set[str] = set()
        self.paused_all = False
        # SUSPEND: paused_all too, and clients are not read from.
        self.suspended = False
        # DISABLE: databases that refuse new client logins.
        self.disabled_dbs: set[str] = set()
        # Pools a reload replaced (pool mode changed) or whose database it removed:
        # their clients keep them until they leave; no new client gets them.
        self.retired: list[Pool] = []
        # Server host names this worker looked up (dns_max_ttl, dns_nxdomain_ttl).
        self.dns = DnsCache()
        self.dns.on_change = self._on_dns_change
        # autodb_idle_timeout: since when each database made from the "*" entry has
        # been unused (drop_idle_autodbs).
        self._autodb_unused: dict[str, float] = {}

    async def server_addresses(self, host: str) -> tuple[str, ...]:
        """The addresses to try in order for server ``host``: none for an IP address
        or a unix-socket directory (connect to it as it is), else its cached ones,
        starting with the next in turn (server/dns.py). Raises OSError when the
        name does not resolve."""
        s = self.config.settings
        return await self.dns.addresses(host, s.dns_max_ttl, s.dns_nxdomain_ttl)

    def refresh_dns(self) -> None:
        """The janitor's pass over the DNS cache: the host names of the pools' lists."""
        s = self.config.settings
        in_use = {host for pool in self for host in pool.hosts.hosts}
        self.dns.refresh(in_use, s.dns_max_ttl, s.dns_nxdomain_ttl)

    def _on_dns_change(self, host: str, addrs: tuple[str, ...]) -> None:
        """``host`` now resolves to ``addrs``: its servers connected elsewhere are
        closed now if idle, else once released (PgBouncer's behaviour)."""
        log.info("DNS: %s now resolves to %s; servers connected elsewhere will be closed",
                 host, ", ".join(addrs))

        def moved(server) -> bool:
            if server.host != host or server.transport is None:
                return False
            peer = server.transport.get_extra_info("peername")
            return isinstance(peer, tuple) and bool(peer) and peer[0] not in addrs

        for pool in self:
            if host in pool.hosts.hosts:
                pool.close_all(moved)

    def __iter__(self) -> Iterator[Pool]:
        return iter([*self.pools.values(), *self.retired])

    def get_pool(self, db: DatabaseConfig, client_user: str) -> Pool:
        """Return the pool for a client of ``db``; create it on first use."""
        server_user = db.user or client_user
        key = (db.name, server_user)
        pool = self.pools.get(key)
        if pool is None:
            pool = Pool(self, self._pool_settings(db, client_user, server_user))
            pool.client_user = client_user
            pool.paused = self.paused_all or db.name in self.paused_dbs
            self.pools[key] = pool
        return pool

    def _pool_settings(self, db: DatabaseConfig, client_user: str,
                       server_user: str) -> PoolSettings:
        cfg = self.config
        s = cfg.settings
        password = db.password
        if password is None:
            password = cfg.auth.get(server_user)
        server_params: dict[str, str] = {}
        for key, value in (("client_encoding", db.client_encoding),
                           ("datestyle", db.datestyle), ("timezone", db.timezone),
                           ("application_name", db.application_name)):
            if value:
                server_params[key] = value
        return PoolSettings(
            database=db.name,
            user=server_user,
            host=db.host,
            port=db.port,
            server_dbname=db.server_dbname(),
            password=password,
            mode=cfg.pool_mode_for(db, client_user).value,
            pool_size=cfg.pool_size_for(db, client_user),
            min_pool_size=cfg.min_pool_size_for(db),
            reserve_pool=cfg.reserve_pool_for(db, client_user),
            reserve_pool_timeout=s.reserve_pool_timeout,
            server_params=server_params,
            connect_query=db.connect_query,
            server_reset_query=s.server_reset_query,
            server_reset_query_always=s.server_reset_query_always,
            server_check_query=s.server_check_query,
            server_check_delay=s.server_check_delay,
            server_lifetime=cfg.server_lifetime_for(db),
            server_idle_timeout=s.server_idle_timeout,
            server_connect_timeout=s.server_connect_timeout,
            server_login_retry=s.server_login_retry,
            server_down_wait=s.server_down_wait,
            query_wait_timeout=cfg.query_wait_timeout_for(db, client_user),
            max_prepared_statements=s.max_prepared_statements,
            server_tls=server_tls(s),
            tcp=TcpOptions.from_settings(s),
            load_balance_hosts=db.load_balance_hosts,
            target_session_attrs=db.target_session_attrs,
        )

    # --- welcome parameters shared between workers ---------------------------
    def _params_path(self, settings: PoolSettings) -> str | None:
        if self.params_dir is None:
            return None
        identity = repr((settings.host, settings.port, settings.server_dbname, settings.user,
                         sorted(settings.server_params.items())))
        digest = hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()
        return os.path.join(self.params_dir, f"params-{digest}.json")

    def shared_params(self, settings: PoolSettings) -> dict[str, str] | None:
        """The parameters another worker's pool of the same server learnt, if any."""
        path = self._params_path(settings)
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                params = json.load(f)
        except (OSError, ValueError):
            return None
        return params if isinstance(params, dict) else None

    def share_params(self, pool: Pool) -> None:
        path = self._params_path(pool.settings)
        if path is None or pool.default_params is None:
            return
        tmp = f"{path}.{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(pool.default_params, f)
            os.replace(tmp, path)  # readers see a whole file or none
        except OSError as exc:
            log.warning("cannot share server parameters in %s: %s", path, exc)

    # --- reload -------------------------------------------------------------
    def apply_config(self, config: Config) -> list[str]:
        """Take a new configuration; return what it did to the pools, for the log.

        Every pool recomputes its settings. Same pool mode: the pool takes the
        new settings in place (pool/pool.py reconfigure: sizes at once, servers
        of a changed host or login reconnected between transactions). Pool mode
        changed or database gone: the pool is retired, its clients keep it
        until they leave, new clients get a new pool or "no such database".
        """
        self.config = config
        done: list[str] = []
        for key, pool in list(self.pools.items()):
            db = config.database(pool.settings.database)
            if db is None:
                self._retire(key, pool)
                done.append(f"{pool.name}: database removed, draining")
                continue
            new = self._pool_settings(db, pool.client_user, pool.settings.user)
            if new == pool.settings:
                continue
            if new.mode != pool.settings.mode:
                self._retire(key, pool)
                done.append(f"{pool.name}: pool_mode {pool.settings.mode} -> {new.mode}, "
                            "new clients get a new pool")
                continue
            done.append(f"{pool.name}: {pool.reconfigure(new)}")
        return done

    def _retire(self, key: tuple[str, str], pool: Pool) -> None:
        del self.pools[key]
        self.retired.append(pool)
        pool.retire()

    def drop_retired(self, in_use: set[int]) -> None:
        """Close retired pools no client holds any more (``in_use``: their id())."""
        for pool in list(self.retired):
            if id(pool) not in in_use and not pool.waiters:
                self.retired.remove(pool)
                pool.closed = True
                pool.close_all()

    def drop_idle_autodbs(self, clients_per_db: Mapping[str, int], timeout: float,
                          now: float) -> list[str]:
        """autodb_idle_timeout: remove the pools of each database made from the "*"
        entry that has been unused for longer than ``timeout`` seconds; return the
        databases removed.

        Unused, as in PgBouncer: no client of the database (``clients_per_db``
        counts them) and no server in any of its pools; a paused one is kept. Its
        statistics go with it, as in PgBouncer; a client that comes back later
        gets new pools.
        """
        unused = self._autodb_unused
        databases = self.config.databases
        if timeout <= 0 or FALLBACK_DATABASE not in databases:
            unused.clear()
            return []
        used: dict[str, bool] = {}
        for (name, _user), pool in self.pools.items():
            if name in databases:
                continue  # listed in the config: never removed for being idle
            used[name] = used.get(name, False) or bool(
                clients_per_db.get(name, 0) or pool.total() or pool.waiters or pool.paused
                or name in self.paused_dbs)
        dropped = []
        for name, in_use in used.items():
            if in_use:
                unused.pop(name, None)
            elif now - unused.setdefault(name, now) > timeout:
                dropped.append(name)
        for name in list(unused):
            if name not in used or name in dropped:
                del unused[name]
        for key in [key for key in self.pools if key[0] in dropped]:
            self.pools.pop(key).discard()
        for name in dropped:
            log.info("autodb_idle_timeout: database %s unused for over %.0fs, its pools "
                     "removed", name, timeout)
        return dropped

    # --- cross-pool limits ---------------------------------------------------
    def _limits(self, pool: Pool, pool_limit: int) -> list[tuple[Key, int]]:
        cached = pool.cross_limits
        if cached is None or cached[0] is not self.config:
            cfg = self.config
            name, user = pool.settings.database, pool.settings.user
            db = cfg.database(name)  # a copy for a "*" database: worth caching
            cached = pool.cross_limits = (cfg, [
                (("db", name), cfg.max_db_connections_for(db) if db is not None else 0),
                (("user", user), cfg.max_user_connections_for(user))])
        if pool_limit:
            return [*cached[1], (pool.key, pool_limit)]
        return cached[1]

    def may_launch(self, pool: Pool, pool_limit: int = 0) -> bool:
        """Whether one more server fits every limit (node-wide with several workers)."""
        return all(not limit or self.counts.total(key) < limit
                   for key, limit in self._limits(pool, pool_limit))

    def reserve_launch(self, pool: Pool, pool_limit: int = 0) -> bool:
        """Count one more server if it fits every limit; in one step across workers.

        ``pool_limit`` 0 leaves the server out of the pool's count (the LISTEN
        hub's connection is not in pool_size).
        """
        return self.counts.try_add(self._limits(pool, pool_limit))

    def on_server_closed(self, pool: Pool, in_pool: bool = True) -> None:
        name, user = pool.settings.database, pool.settings.user
        keys: list[Key] = [("db", name), ("user", user)]
        if in_pool:
            keys.append(("pool", name, user))
        self.counts.remove(keys)
        # Capacity freed: another pool of the same database or user may launch.
        for other in self:
            if other is not pool and other.waiters and (
                    other.settings.database == pool.settings.database
                    or other.settings.user == pool.settings.user):
                other.maintain()

    def make_room(self, pool: Pool) -> None:
        """Close one idle server of a sibling pool so a starving pool can launch."""
        for other in self:
            if other is pool or not other.idle:
                continue
            if other.settings.database == pool.settings.database or \
                    other.settings.user == pool.settings.user:
                other.close_all(lambda srv, victim=other.idle[0]: srv is victim)
                return

    def db_server_count(self, database: str) -> int:
        return self.counts.total(("db", database))

    def user_server_count(self, user: str) -> int:
        return self.counts.total(("user", user))
