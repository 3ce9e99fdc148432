"""Build a Config from a PgBouncer-format ini file, its includes and its auth_file.

Rules:
1. Every error is a ConfigError naming the file and line it concerns; a
   problem that does not stop ecluse from running is a warning string in
   Config.warnings instead, in the same "file:line: message" form.
2. Checks that need line numbers live here, not in model.py, because the
   frozen objects no longer know where their values came from.
3. The only I/O is reading the ini files (ini.py) and the auth_file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from ecluse.auth.hba import HbaRule, read_hba
from ecluse.auth.ident import IdentMaps, read_ident
from ecluse.config.connstr import BadConnStr, parse_connstr
from ecluse.config.ini import IniDocument, IniEntry, parse_ini, read_ini
from ecluse.config.model import (
    FALLBACK_DATABASE,
    AuthType,
    Config,
    DatabaseConfig,
    PeerConfig,
    Settings,
    UserConfig,
)
from ecluse.config.schema import (
    DATABASE_OPTIONS,
    KNOWN_UNIMPLEMENTED,
    PEER_OPTIONS,
    SETTINGS,
    UNHONOURABLE,
    USER_OPTIONS,
    Parser,
)
from ecluse.config.tls import (
    TlsSettingError,
    client_tls_context,
    client_tls_warnings,
    server_tls,
)
from ecluse.config.userlist import read_userlist
from ecluse.config.values import BadValue, int_parser
from ecluse.errors import ConfigError
from ecluse.protocol.codes import REPORTED_PARAMETERS
from ecluse.routing.shardkeys import parse_key_column

T = TypeVar("T")

_KNOWN_SECTIONS = frozenset({"databases", "users", "pgbouncer", "peers"})


def load_config(path: str) -> Config:
    """Load the ini file at ``path`` (with %include) and the auth_file it names.

    Raises ConfigError naming the file and line of the first problem found.
    """
    return _build(read_ini(path), path)


def config_from_string(text: str, path: str = "<string>") -> Config:
    """Build a Config from ini ``text``, as if it had been read from ``path``.

    Relative %include and auth_file paths are taken from the directory of
    ``path`` if it is a real file, else from the current directory.
    """
    return _build(parse_ini(text, path), path)


def _build(doc: IniDocument, path: str) -> Config:
    warnings: list[str] = []
    _warn_unknown_sections(doc, warnings)
    settings, setting_entries = _build_settings(doc.section("pgbouncer"), warnings)
    databases, database_entries = _build_databases(doc.section("databases"), warnings)
    users = _build_users(doc.section("users"), warnings)
    peers = _build_peers(doc.section("peers"), warnings)
    settings, auth = _load_auth(settings, setting_entries.get("auth_file"), path)
    settings, hba = _load_hba(settings, setting_entries, path)
    settings, ident = _load_ident(settings, setting_entries, path, hba)
    _check_pool_sizes(settings, setting_entries, databases, database_entries, warnings)
    _check_read_dbs(databases, database_entries)
    _check_shards(databases, database_entries)
    _check_listeners(settings, setting_entries, warnings)
    _check_tracked(settings, setting_entries, warnings)
    settings = _check_tls(settings, setting_entries, path, warnings)
    return Config(
        settings=settings,
        databases=MappingProxyType(databases),
        users=MappingProxyType(users),
        auth=MappingProxyType(auth),
        hba=hba,
        ident=ident,
        peers=MappingProxyType(peers),
        path=path if os.path.isfile(path) else None,
        warnings=tuple(warnings),
    )


def _where(entry: IniEntry) -> str:
    return f"{entry.path}:{entry.line}: "


def _parse_value(entry: IniEntry, key: str, text: str, parser: Parser, context: str = "") -> Any:
    """Run ``parser`` on ``text``; turn BadValue into a ConfigError at ``entry``'s line."""
    try:
        return parser(text)
    except BadValue as exc:
        raise ConfigError(
            f"{context}{key}: expected {exc.expected}, got {text!r}",
            path=entry.path,
            line=entry.line,
        ) from None


def _warn_unknown_sections(doc: IniDocument, warnings: list[str]) -> None:
    for section in doc.sections:
        if section.name not in _KNOWN_SECTIONS:
            warnings.append(
                f"{section.path}:{section.line}: unknown section [{section.name}] ignored"
            )


def _build_settings(
    entries: Iterable[IniEntry], warnings: list[str]
) -> tuple[Settings, dict[str, IniEntry]]:
    """Return the Settings of [pgbouncer] and, per key, the entry that set it last."""
    values: dict[str, Any] = {}
    extra: dict[str, str] = {}
    seen: dict[str, IniEntry] = {}
    for entry in entries:
        parser = SETTINGS.get(entry.key)
        if parser is not None:
            values[entry.key] = _parse_value(entry, entry.key, entry.value, parser)
        elif entry.key in KNOWN_UNIMPLEMENTED:
            extra[entry.key] = entry.value
            if entry.key in UNHONOURABLE and entry.value:
                warnings.append(f"{_where(entry)}{entry.key} is not honoured: "
                                f"{UNHONOURABLE[entry.key]}")
        else:
            warnings.append(f"{_where(entry)}unknown setting {entry.key!r} ignored")
            continue
        seen[entry.key] = entry
    return Settings(**values, extra=MappingProxyType(extra)), seen


def _parse_options(
    entry: IniEntry,
    kind: str,
    options: Mapping[str, tuple[str, Parser]],
    warnings: list[str],
) -> dict[str, Any]:
    """Parse the connection-string value of a [databases] or [users] entry into fields."""
    context = f"{kind} {entry.key!r}: "
    try:
        pairs = parse_connstr(entry.value)
    except BadConnStr as exc:
        raise ConfigError(f"{context}{exc}", path=entry.path, line=entry.line) from None
    fields: dict[str, Any] = {}
    for key, text in pairs.items():
        spec = options.get(key)
        if spec is None:
            warnings.append(f"{_where(entry)}{context}unknown option {key!r} ignored")
            continue
        field_name, parser = spec
        fields[field_name] = _parse_value(entry, key, text, parser, context)
    return fields


def _warn_redefined(entry: IniEntry, earlier: IniEntry, kind: str, warnings: list[str]) -> None:
    warnings.append(
        f"{_where(entry)}{kind} {entry.key!r} is defined again; the definition at "
        f"{earlier.path}:{earlier.line} is replaced"
    )


def _build_databases(
    entries: Iterable[IniEntry], warnings: list[str]
) -> tuple[dict[str, DatabaseConfig], dict[str, IniEntry]]:
    """Return the [databases] entries by name and, per name, the line that defined it."""
    databases: dict[str, DatabaseConfig] = {}
    seen: dict[str, IniEntry] = {}
    for entry in entries:
        fields = _parse_options(entry, "database", DATABASE_OPTIONS, warnings)
        if entry.key in seen:
            _warn_redefined(entry, seen[entry.key], "database", warnings)
        databases[entry.key] = DatabaseConfig(name=entry.key, **fields)
        seen[entry.key] = entry
    return databases, seen


def _build_users(entries: Iterable[IniEntry], warnings: list[str]) -> dict[str, UserConfig]:
    users: dict[str, UserConfig] = {}
    seen: dict[str, IniEntry] = {}
    for entry in entries:
        fields = _parse_options(entry, "user", USER_OPTIONS, warnings)
        if entry.key in seen:
            _warn_redefined(entry, seen[entry.key], "user", warnings)
        users[entry.key] = UserConfig(name=entry.key, **fields)
        seen[entry.key] = entry
    return users


def _build_peers(entries: Iterable[IniEntry], warnings: list[str]) -> dict[int, PeerConfig]:
    """[peers]: peer_id = host=... port=..., as PgBouncer; cancels for their keys go there."""
    peers: dict[int, PeerConfig] = {}
    for entry in entries:
        peer_id = _parse_value(entry, "peer id", entry.key, int_parser(minimum=1, maximum=255))
        fields = _parse_options(entry, "peer", PEER_OPTIONS, warnings)
        if "host" not in fields:
            raise ConfigError(f"peer {entry.key}: host is required", path=entry.path,
                              line=entry.line)
        peers[peer_id] = PeerConfig(peer_id=peer_id, **fields)
    return peers


def _read_setting_file(setting: str, value: str, entry: IniEntry, config_path: str,
                       read: Callable[[str], T]) -> tuple[str, T]:
    """Read the file a setting names with ``read``; return its absolute path and what
    ``read`` made of it.

    The path is resolved against the main ini file's directory (not the current
    directory) so that a reload from elsewhere reads the same file. A file that
    cannot be read is a ConfigError at the setting's line; ``read`` raises its
    own for a bad line, naming the file.
    """
    base = os.path.dirname(config_path) if os.path.isfile(config_path) else os.getcwd()
    resolved = os.path.abspath(os.path.join(base, value))
    try:
        return resolved, read(resolved)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{setting}: cannot read {resolved!r}: {reason}", path=entry.path,
                          line=entry.line) from None


def _load_auth(
    settings: Settings, entry: IniEntry | None, config_path: str
) -> tuple[Settings, dict[str, str]]:
    """Read the auth_file, if any; return the settings with its path made absolute."""
    if settings.auth_file is None or entry is None:
        return settings, {}
    resolved, auth = _read_setting_file("auth_file", settings.auth_file, entry, config_path,
                                        read_userlist)
    return dataclasses.replace(settings, auth_file=resolved), auth


def _load_hba(
    settings: Settings, setting_entries: Mapping[str, IniEntry], config_path: str
) -> tuple[Settings, tuple[HbaRule, ...] | None]:
    """Read auth_hba_file, if set; auth_type = hba without it is an error.

    A bad line is a ConfigError naming the hba file and its line.
    """
    entry = setting_entries.get("auth_hba_file")
    if settings.auth_hba_file is None or entry is None:
        if settings.auth_type is AuthType.HBA:
            auth_entry = setting_entries["auth_type"]
            raise ConfigError("auth_type = hba needs auth_hba_file", path=auth_entry.path,
                              line=auth_entry.line)
        return settings, None
    resolved, rules = _read_setting_file("auth_hba_file", settings.auth_hba_file, entry,
                                         config_path, read_hba)
    return dataclasses.replace(settings, auth_hba_file=resolved), rules


def _load_ident(
    settings: Settings, setting_entries: Mapping[str, IniEntry], config_path: str,
    hba: tuple[HbaRule, ...] | None,
) -> tuple[Settings, IdentMaps | None]:
    """Read auth_ident_file, if set. An HBA line with map= and no auth_ident_file is
    an error naming that line: such a line could never let anyone in."""
    entry = setting_entries.get("auth_ident_file")
    if settings.auth_ident_file is None or entry is None:
        for rule in hba or ():
            if rule.user_map is not None:
                raise ConfigError(f"auth_hba_file: map={rule.user_map} needs auth_ident_file",
                                  path=settings.auth_hba_file, line=rule.line)
        return settings, None
    resolved, maps = _read_setting_file("auth_ident_file", settings.auth_ident_file, entry,
                                        config_path, read_ident)
    return dataclasses.replace(settings, auth_ident_file=resolved), maps


def _check_read_dbs(databases: Mapping[str, DatabaseConfig],
                    entries: Mapping[str, IniEntry]) -> None:
    """read_db names another listed database that routes no reads of its own."""
    for name, db in databases.items():
        target = db.read_db
        if target is None:
            continue
        entry = entries[name]
        where = {"path": entry.path, "line": entry.line}
        if name == FALLBACK_DATABASE:
            raise ConfigError("database '*': read_db would send the reads of every database "
                              "it stands for to one", **where)
        if target == name:
            raise ConfigError(f"database {name!r}: read_db names the database itself", **where)
        other = databases.get(target)
        if other is None or target == FALLBACK_DATABASE:
            raise ConfigError(f"database {name!r}: read_db {target!r} is not a database "
                              "listed in [databases]", **where)
        if other.read_db is not None:
            raise ConfigError(f"database {name!r}: read_db {target!r} has a read_db of its "
                              "own; reads are routed one step only", **where)


def _check_shards(databases: Mapping[str, DatabaseConfig],
                  entries: Mapping[str, IniEntry]) -> None:
    """shards names other listed databases, each an ordinary one; the key and the
    default shard make sense."""
    for name, db in databases.items():
        if not db.shards:
            if db.sharding_key is not None or db.default_shard:
                entry = entries[name]
                raise ConfigError(f"database {name!r}: sharding_key and default_shard need "
                                  "shards", path=entry.path, line=entry.line)
            continue
        entry = entries[name]
        where = {"path": entry.path, "line": entry.line}
        if name == FALLBACK_DATABASE:
            raise ConfigError("database '*' cannot be sharded", **where)
        if db.read_db is not None:
            raise ConfigError(f"database {name!r}: a sharded database has no read_db; give "
                              "each shard its own", **where)
        if len(set(db.shards)) != len(db.shards):
            raise ConfigError(f"database {name!r}: shards lists a database twice", **where)
        for shard in db.shards:
            other = databases.get(shard)
            if shard == name:
                raise ConfigError(f"database {name!r}: shards names the database itself",
                                  **where)
            if other is None or shard == FALLBACK_DATABASE:
                raise ConfigError(f"database {name!r}: shard {shard!r} is not a database "
                                  "listed in [databases]", **where)
            if other.shards:
                raise ConfigError(f"database {name!r}: shard {shard!r} is sharded itself",
                                  **where)
        if db.default_shard >= len(db.shards):
            raise ConfigError(f"database {name!r}: default_shard {db.default_shard} is not "
                              f"a shard (0 to {len(db.shards) - 1})", **where)
        if db.sharding_key is not None:
            try:
                parse_key_column(db.sharding_key)
            except ValueError as exc:
                raise ConfigError(f"database {name!r}: sharding_key: {exc}", **where) from None


def _check_pool_sizes(
    settings: Settings,
    setting_entries: Mapping[str, IniEntry],
    databases: Mapping[str, DatabaseConfig],
    database_entries: Mapping[str, IniEntry],
    warnings: list[str],
) -> None:
    """Warn where min_pool_size exceeds the pool size it is meant to pre-fill."""
    if settings.min_pool_size > settings.default_pool_size:
        entry = setting_entries.get("min_pool_size") or setting_entries["default_pool_size"]
        warnings.append(
            f"{_where(entry)}min_pool_size ({settings.min_pool_size}) is larger than "
            f"default_pool_size ({settings.default_pool_size})"
        )
    for name, db in databases.items():
        if db.min_pool_size is None and db.pool_size is None:
            continue  # the global check above covers it
        minimum = db.min_pool_size if db.min_pool_size is not None else settings.min_pool_size
        size = db.pool_size if db.pool_size is not None else settings.default_pool_size
        if minimum > size:
            warnings.append(
                f"{_where(database_entries[name])}database {name!r}: min_pool_size "
                f"({minimum}) is larger than its pool size ({size})"
            )


def _check_listeners(
    settings: Settings, setting_entries: Mapping[str, IniEntry], warnings: list[str]
) -> None:
    """Warn when both listeners are disabled: ecluse would accept no connection."""
    if settings.listen_addr or settings.unix_socket_dir:
        return
    entry = setting_entries.get("unix_socket_dir") or setting_entries.get("listen_addr")
    where = _where(entry) if entry is not None else ""
    warnings.append(f"{where}listen_addr and unix_socket_dir are both empty: no client can connect")


_REPORTED_LOWER = frozenset(name.lower() for name in REPORTED_PARAMETERS)


def _check_tracked(
    settings: Settings, setting_entries: Mapping[str, IniEntry], warnings: list[str]
) -> None:
    """Warn of track_extra_parameters names PostgreSQL does not report.

    PgBouncer's documentation: only reported parameters can be tracked. A
    client's value for another is accepted and not applied, unless an
    extension makes the server report it (search_path, which ecluse follows
    itself, is the exception).
    """
    entry = setting_entries.get("track_extra_parameters")
    if entry is None:
        return
    for name in settings.track_extra_parameters:
        if name.lower() not in _REPORTED_LOWER and name.lower() != "search_path":
            warnings.append(
                f"{_where(entry)}track_extra_parameters: PostgreSQL does not report {name} "
                "(ParameterStatus): a client's value for it is not applied unless the "
                "server reports it (an extension may)")


_TLS_FILES = ("client_tls_key_file", "client_tls_cert_file", "client_tls_ca_file",
              "server_tls_key_file", "server_tls_cert_file", "server_tls_ca_file")


def _check_tls(
    settings: Settings, setting_entries: Mapping[str, IniEntry], config_path: str,
    warnings: list[str],
) -> Settings:
    """Resolve the TLS file names and load them once, so a bad file stops the load.

    Relative names are taken from the main ini file's directory, as auth_file's.
    A value the ssl module honours otherwise than asked is a warning at its line.
    """
    base = os.path.dirname(config_path) if os.path.isfile(config_path) else os.getcwd()
    resolved = {name: os.path.abspath(os.path.join(base, getattr(settings, name)))
                for name in _TLS_FILES if getattr(settings, name) is not None}
    if resolved:
        settings = dataclasses.replace(settings, **resolved)
    for side, build in (("client", client_tls_context), ("server", server_tls)):
        try:
            build(settings, strict=True)
        except TlsSettingError as exc:
            entry = setting_entries.get(exc.setting) or setting_entries[f"{side}_tls_sslmode"]
            raise ConfigError(f"{exc.setting}: {exc.message}", path=entry.path,
                              line=entry.line) from None
    for setting, message in client_tls_warnings(settings):
        entry = setting_entries.get(setting)
        where = _where(entry) if entry is not None else ""
        warnings.append(f"{where}{setting} = {message}")
    return settings
