"""Compare two Configs: what a reload changes.

Reload builds a new Config and asks this module what differs, so that only the
pools of changed databases are drained and only changed settings are applied.
Pure functions over frozen objects; no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from ecluse.config.model import Config, Settings, SslMode

_SETTING_FIELDS = tuple(f.name for f in dataclasses.fields(Settings) if f.name != "extra")


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """The differences between an old and a new Config.

    ``settings`` names changed [pgbouncer] settings, including the raw keys of
    Settings.extra. ``users`` names [users] entries added, removed or changed;
    ``auth`` names users whose auth_file secret was added, removed or changed.
    """

    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    changed: frozenset[str] = frozenset()
    settings: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    auth: frozenset[str] = frozenset()

    def is_empty(self) -> bool:
        """Say whether the two configs are equivalent."""
        return not (
            self.added or self.removed or self.changed or self.settings or self.users or self.auth
        )


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """Return what changes when ``new`` replaces ``old``."""
    old_dbs, new_dbs = old.databases, new.databases
    settings = {
        name
        for name in _SETTING_FIELDS
        if getattr(old.settings, name) != getattr(new.settings, name)
    }
    settings |= _changed_keys(old.settings.extra, new.settings.extra)
    if old.hba != new.hba:
        settings.add("auth_hba_file")  # same file name, other rules: a change all the same
    if old.ident != new.ident:
        settings.add("auth_ident_file")
    return ConfigDiff(
        added=frozenset(new_dbs.keys() - old_dbs.keys()),
        removed=frozenset(old_dbs.keys() - new_dbs.keys()),
        changed=frozenset(
            name for name in old_dbs.keys() & new_dbs.keys() if old_dbs[name] != new_dbs[name]
        ),
        settings=frozenset(settings),
        users=frozenset(_changed_keys(old.users, new.users)),
        auth=frozenset(_changed_keys(old.auth, new.auth)),
    )


# Settings a running worker cannot take from a reload: they shape the listening
# sockets, the process or the worker count, or (track_extra_parameters,
# disable_pqexec: PgBouncer does not reload them either) what every session
# assumes from its login on. A reload keeps their running value and says so; a restart applies them.
# SHOW CONFIG marks them changeable = no.
# NODE_SETTINGS are the ones a multi-worker node keeps for its whole life, a
# roll-over's new workers included (workerstart.py): they shaped the listening
# sockets the supervisor holds, the process, or (peer_id) the cancel keys its
# clients hold. The others a roll-over takes from the file.
NODE_SETTINGS: frozenset[str] = frozenset({
    "listen_addr", "listen_port", "unix_socket_dir", "unix_socket_mode", "workers", "user",
    "pidfile", "peer_id", "listen_backlog", "so_reuseport", "tcp_socket_buffer",
    "unix_socket_group"})
RESTART_ONLY: frozenset[str] = NODE_SETTINGS | {
    "metrics_listen", "track_extra_parameters", "disable_pqexec"}

# Settings whose value is a secret: SHOW CONFIG and the logs print a mask instead.
SECRET_SETTINGS: frozenset[str] = frozenset({"api_token"})


# Settings naming files the loader resolves and reads (auth_file, TLS files,
# HBA): SET refuses them; edit the file and RELOAD, so they are checked whole.
FILE_SETTINGS: frozenset[str] = frozenset({
    "auth_file", "auth_hba_file", "auth_ident_file", "client_tls_key_file", "client_tls_cert_file",
    "client_tls_ca_file", "server_tls_key_file", "server_tls_cert_file",
    "server_tls_ca_file", "logfile"})


def settable(key: str) -> bool:
    """True for settings the console's SET may change (SHOW CONFIG's changeable)."""
    return key in _SETTING_FIELDS and key not in RESTART_ONLY and key not in FILE_SETTINGS


def _tls_listener_changes(old: Settings, new: Settings) -> bool:
    """True when client TLS is switched on or off: the listener type differs.

    Other client_tls_sslmode changes (prefer to require...) apply online.
    """
    return (old.client_tls_sslmode is SslMode.DISABLE) != \
        (new.client_tls_sslmode is SslMode.DISABLE)


def keep_restart_only(old: Config, new: Config) -> tuple[Config, list[str]]:
    """Return ``new`` with the RESTART_ONLY settings of ``old``, and the names kept."""
    kept = sorted(name for name in RESTART_ONLY
                  if getattr(old.settings, name) != getattr(new.settings, name))
    if _tls_listener_changes(old.settings, new.settings):
        kept.append("client_tls_sslmode")
    if not kept:
        return new, []
    settings = dataclasses.replace(new.settings,
                                   **{name: getattr(old.settings, name) for name in kept})
    return dataclasses.replace(new, settings=settings), kept


def _changed_keys(old: Mapping[str, object], new: Mapping[str, object]) -> set[str]:
    """Return the keys added, removed or given another value between two mappings."""
    return {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}
