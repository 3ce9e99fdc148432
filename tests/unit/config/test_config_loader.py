"""Tests for load_config / config_from_string: sections, values, errors and warnings."""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

import pytest

from ecluse.config import (
    AuthType,
    DatabaseConfig,
    PoolMode,
    Settings,
    UserConfig,
    config_from_string,
    load_config,
)
from ecluse.config.diff import diff_configs
from ecluse.config.model import DEFAULT_AUTH_QUERY, host_list
from ecluse.config.schema import KNOWN_UNIMPLEMENTED, SETTINGS, UNHONOURABLE
from ecluse.errors import ConfigError

SCRAM = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"

REALISTIC_INI = """\
;; A pgbouncer.ini in the shape the PgBouncer docs suggest.
[databases]
appdb = host=10.0.0.5 port=5433 dbname=app_prod user=app password='s3cr''et' pool_size=40
reports = host=/var/run/postgresql dbname=reports pool_mode=session reserve_pool=3
legacy = host=db.internal max_db_connections=10 min_pool_size=2 connect_query='SET x = 1'
tz = client_encoding=UTF8 datestyle=ISO timezone=UTC application_name=tzapp
authdb = auth_user=pgb auth_dbname=postgres reserve_pool_size=4
* = host=127.0.0.1

[users]
bob = pool_mode=statement max_user_connections=7 pool_size=3

[pgbouncer]
logfile = /var/log/pgbouncer/pgbouncer.log
pidfile = /var/run/pgbouncer/pgbouncer.pid
listen_addr = *
listen_port = 6433
unix_socket_dir = /var/run/pgbouncer
unix_socket_mode = 0700
auth_type = scram-sha-256
auth_file = userlist.txt
admin_users = postgres, admin
stats_users = stats,  monitor,
pool_mode = transaction
server_reset_query = DISCARD ALL
server_reset_query_always = 1
ignore_startup_parameters = extra_float_digits, search_path
server_check_query = select 2
server_check_delay = 10
max_client_conn = 1000
default_pool_size = 25
min_pool_size = 5
reserve_pool_size = 2
reserve_pool_timeout = 3
max_db_connections = 50
max_user_connections = 60
server_lifetime = 1h
server_idle_timeout = 5min
server_connect_timeout = 5
server_login_retry = 500ms
query_timeout = 0
query_wait_timeout = 60
client_idle_timeout = 0
client_login_timeout = 30
idle_transaction_timeout = 120
log_connections = 0
log_disconnections = off
log_pooler_errors = yes
stats_period = 30
verbose = 2
max_packet_size = 1048576
application_name_add_host = true
server_round_robin = 1
tcp_keepalive = 0
tcp_keepidle = 30
listen_backlog = 512
tcp_defer_accept = 0
shutdown_timeout = 10
workers = 4
max_prepared_statements = 100
; known PgBouncer settings ecluse does not implement yet
dns_max_ttl = 15
pkt_buf = 4096
auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename=$1
"""


@pytest.fixture
def realistic(tmp_path: Path) -> Path:
    (tmp_path / "userlist.txt").write_text(f'"app" "{SCRAM}"\n"admin" "plain"\n')
    path = tmp_path / "pgbouncer.ini"
    path.write_text(REALISTIC_INI)
    return path


def test_realistic_settings(realistic: Path) -> None:
    config = load_config(str(realistic))
    s = config.settings
    assert config.path == str(realistic)
    assert config.warnings == ()
    assert (s.listen_addr, s.listen_port) == ("*", 6433)
    assert (s.unix_socket_dir, s.unix_socket_mode) == ("/var/run/pgbouncer", 0o700)
    assert s.auth_type is AuthType.SCRAM_SHA_256
    assert s.auth_file == str(realistic.parent / "userlist.txt")
    assert s.admin_users == ("postgres", "admin")
    assert s.stats_users == ("stats", "monitor")
    assert s.pool_mode is PoolMode.TRANSACTION
    assert s.ignore_startup_parameters == ("extra_float_digits", "search_path")
    assert (s.server_reset_query, s.server_reset_query_always) == ("DISCARD ALL", True)
    assert (s.server_check_query, s.server_check_delay) == ("select 2", 10.0)
    assert (s.max_client_conn, s.default_pool_size, s.min_pool_size) == (1000, 25, 5)
    assert (s.reserve_pool_size, s.reserve_pool_timeout) == (2, 3.0)
    assert (s.max_db_connections, s.max_user_connections) == (50, 60)
    assert (s.server_lifetime, s.server_idle_timeout) == (3600.0, 300.0)
    assert (s.server_connect_timeout, s.server_login_retry) == (5.0, 0.5)
    assert (s.query_wait_timeout, s.client_login_timeout, s.idle_transaction_timeout) == (
        60.0,
        30.0,
        120.0,
    )
    assert (s.log_connections, s.log_disconnections, s.log_pooler_errors) == (False, False, True)
    assert (s.verbose, s.max_packet_size, s.stats_period) == (2, 1048576, 30.0)
    assert (s.application_name_add_host, s.server_round_robin, s.tcp_keepalive) == (
        True,
        True,
        False,
    )
    assert (s.shutdown_timeout, s.workers, s.max_prepared_statements) == (10.0, 4, 100)
    assert s.logfile == "/var/log/pgbouncer/pgbouncer.log"
    assert s.pidfile == "/var/run/pgbouncer/pgbouncer.pid"
    assert (s.tcp_keepidle, s.listen_backlog, s.tcp_defer_accept) == (30, 512, False)
    assert dict(s.extra) == {"pkt_buf": "4096"}
    assert s.dns_max_ttl == 15.0
    assert s.auth_query == "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"


def test_realistic_databases_users_and_auth(realistic: Path) -> None:
    config = load_config(str(realistic))
    assert list(config.databases) == ["appdb", "reports", "legacy", "tz", "authdb", "*"]
    assert config.databases["appdb"] == DatabaseConfig(
        name="appdb",
        host="10.0.0.5",
        port=5433,
        dbname="app_prod",
        user="app",
        password="s3cr'et",
        pool_size=40,
    )
    reports = config.databases["reports"]
    assert reports.is_unix_socket() and reports.host == "/var/run/postgresql"
    assert (reports.pool_mode, reports.reserve_pool) == (PoolMode.SESSION, 3)
    legacy = config.databases["legacy"]
    assert (legacy.max_db_connections, legacy.min_pool_size) == (10, 2)
    assert legacy.connect_query == "SET x = 1"
    assert legacy.server_dbname() == "legacy"
    tz = config.databases["tz"]
    assert (tz.client_encoding, tz.datestyle, tz.timezone) == ("UTF8", "ISO", "UTC")
    assert tz.application_name == "tzapp"
    assert tz.host is None and tz.is_unix_socket()
    authdb = config.databases["authdb"]
    assert (authdb.auth_user, authdb.auth_dbname, authdb.reserve_pool) == ("pgb", "postgres", 4)
    assert config.users == {
        "bob": UserConfig(
            name="bob", pool_mode=PoolMode.STATEMENT, max_user_connections=7, pool_size=3
        )
    }
    assert config.auth == {"app": SCRAM, "admin": "plain"}


def test_config_is_immutable(realistic: Path) -> None:
    config = load_config(str(realistic))
    with pytest.raises(TypeError):
        config.databases["new"] = DatabaseConfig(name="new")  # type: ignore[index]
    with pytest.raises(TypeError):
        config.auth["x"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.settings.extra["x"] = "y"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.settings.listen_port = 1  # type: ignore[misc]


def test_empty_config_uses_pgbouncer_defaults() -> None:
    config = config_from_string("")
    assert config.settings == Settings()
    assert config.settings.auth_type is AuthType.MD5
    assert (config.settings.listen_addr, config.settings.listen_port) == ("", 6432)
    assert config.settings.unix_socket_dir == "/tmp"
    assert dict(config.databases) == {} and dict(config.auth) == {}
    assert config.path is None and config.warnings == ()


def test_every_settings_field_has_a_parser() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)} - {"extra"}
    assert set(SETTINGS) == fields
    assert not (set(SETTINGS) & KNOWN_UNIMPLEMENTED)


# PgBouncer settings that ecluse once only accepted: PgBouncer's default and unit
# (seconds, fractions allowed), and a value set in the file reaches Settings.
PGBOUNCER_SETTINGS = {
    "transaction_timeout": (0.0, "2.5", 2.5),
    "query_wait_notify": (5.0, "2.5", 2.5),
    "server_fast_close": (False, "1", True),
    "autodb_idle_timeout": (3600.0, "2.5", 2.5),
    "cancel_wait_timeout": (10.0, "2.5", 2.5),
}


@pytest.mark.parametrize("key", sorted(PGBOUNCER_SETTINGS))
def test_once_unimplemented_pgbouncer_settings_default_and_parse(key: str) -> None:
    default, text, value = PGBOUNCER_SETTINGS[key]
    assert getattr(Settings(), key) == default
    config = config_from_string(f"[pgbouncer]\n{key} = {text}\n")
    assert getattr(config.settings, key) == value
    assert key not in config.settings.extra and not config.warnings


def test_keys_are_case_insensitive_in_pgbouncer_and_ecluse_sections() -> None:
    config = config_from_string("[Ecluse]\nDEFAULT_POOL_SIZE = 3\nPool_Mode = Statement\n")
    assert config.settings.default_pool_size == 3
    assert config.settings.pool_mode is PoolMode.STATEMENT


def test_empty_values_unset_optional_paths() -> None:
    config = config_from_string("[pgbouncer]\nlogfile =\npidfile =\nauth_file =\n")
    s = config.settings
    assert (s.logfile, s.pidfile, s.auth_file) == (None, None, None)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "default_pool_size = abc",
            "default_pool_size: expected a non-negative integer, got 'abc'",
        ),
        ("max_client_conn = -5", "max_client_conn: expected a non-negative integer, got '-5'"),
        ("listen_port = 0", "listen_port: expected an integer from 1 to 65535, got '0'"),
        ("listen_port = 65536", "listen_port: expected an integer from 1 to 65535"),
        ("workers = 0", "workers: expected an integer from 1 to 256, got '0'"),
        ("server_lifetime = soon", "server_lifetime: expected a duration in seconds"),
        ("log_connections = maybe", "log_connections: expected a boolean"),
        ("pool_mode = sessions", "pool_mode: expected one of session, transaction, statement"),
        (
            "auth_type = ldap",
            "auth_type: expected one of trust, plain, md5, scram-sha-256, any, cert, hba",
        ),
        ("unix_socket_mode = 999", "unix_socket_mode: expected an octal file mode"),
        ("track_extra_parameters = IntervalStyle, options",
         "track_extra_parameters: expected a comma-separated list of run-time parameter names"),
        ("track_extra_parameters = work mem", "track_extra_parameters: expected a comma-sep"),
    ],
)
def test_bad_setting_values_name_file_line_key_and_expectation(line: str, message: str) -> None:
    text = f"[pgbouncer]\n; padding\n{line}\n"
    with pytest.raises(ConfigError) as info:
        config_from_string(text, "ecluse.ini")
    assert str(info.value).startswith(f"ecluse.ini:3: {message}")
    assert (info.value.path, info.value.line) == ("ecluse.ini", 3)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("port=abc", "database 'd': port: expected an integer from 1 to 65535, got 'abc'"),
        ("pool_size=-1", "database 'd': pool_size: expected a non-negative integer"),
        ("pool_mode=bogus", "database 'd': pool_mode: expected one of session"),
        ("host='unterminated", "database 'd': unterminated quoted value at character 6"),
        ("host", "database 'd': missing '=' after 'host'"),
    ],
)
def test_bad_database_lines(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_string(f"[databases]\nok = port=1\nd = {value}\n", "p.ini")
    assert str(info.value).startswith(f"p.ini:3: {message}")


def test_bad_user_line() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_string("[users]\n\nbob = max_user_connections=lots\n", "p.ini")
    assert str(info.value) == (
        "p.ini:3: user 'bob': max_user_connections: expected a non-negative integer, got 'lots'"
    )


def test_unknown_keys_are_warnings_with_file_and_line() -> None:
    text = """\
[databases]
d = host=x frobnicate=1
[users]
u = colour=blue
[pgbouncer]
no_such_setting = 1
[pooling]
1 = host=x
"""
    config = config_from_string(text, "w.ini")
    assert config.warnings == (
        "w.ini:7: unknown section [pooling] ignored",
        "w.ini:6: unknown setting 'no_such_setting' ignored",
        "w.ini:2: database 'd': unknown option 'frobnicate' ignored",
        "w.ini:4: user 'u': unknown option 'colour' ignored",
    )
    assert config.databases["d"].host == "x"
    assert "no_such_setting" not in config.settings.extra


def test_track_extra_parameters_default_and_names_postgresql_does_not_report() -> None:
    assert config_from_string("").settings.track_extra_parameters == ("IntervalStyle",)
    config = config_from_string("[pgbouncer]\n\ntrack_extra_parameters = "
                                "intervalstyle,search_path, work_mem,citus.x\n", "t.ini")
    assert config.settings.track_extra_parameters == (
        "intervalstyle", "search_path", "work_mem", "citus.x")
    # Only reported parameters can be tracked (PgBouncer's documentation): said
    # for each other name, at the setting's line; search_path ecluse follows itself.
    assert config.warnings == tuple(
        f"t.ini:3: track_extra_parameters: PostgreSQL does not report {name} (ParameterStatus):"
        " a client's value for it is not applied unless the server reports it (an extension"
        " may)" for name in ("work_mem", "citus.x"))
    assert config_from_string("[pgbouncer]\ntrack_extra_parameters =\n").settings \
        .track_extra_parameters == ()


def test_tls13_cipher_settings_warn_why_they_are_not_honoured() -> None:
    assert set(UNHONOURABLE) <= KNOWN_UNIMPLEMENTED
    # The reason: when ssl gains a way to set TLS 1.3 suites, implement them.
    assert not any("suites" in name for name in dir(ssl.SSLContext))
    config = config_from_string("[pgbouncer]\nclient_tls13_ciphers = TLS_AES_128_GCM_SHA256\n"
                                "server_tls13_ciphers =\npkt_buf = 4096\n", "c.ini")
    assert config.warnings == (
        "c.ini:2: client_tls13_ciphers is not honoured: Python's ssl module cannot set TLS 1.3 "
        "cipher suites (OpenSSL has SSL_CTX_set_ciphersuites, ssl has no binding for it): "
        "OpenSSL's default TLS 1.3 suites are used; *_tls_ciphers applies to TLS 1.2 and "
        "older only",)
    assert config.settings.extra["client_tls13_ciphers"] == "TLS_AES_128_GCM_SHA256"


def test_redefined_database_warns_and_last_wins() -> None:
    config = config_from_string("[databases]\nd = port=1\nd = port=2\n", "r.ini")
    assert config.databases["d"].port == 2
    assert config.warnings == (
        "r.ini:3: database 'd' is defined again; the definition at r.ini:2 is replaced",
    )


def test_repeated_setting_last_wins_without_warning() -> None:
    config = config_from_string("[pgbouncer]\nworkers = 2\nworkers = 3\n")
    assert config.settings.workers == 3
    assert config.warnings == ()


def test_min_pool_size_above_pool_size_is_only_a_warning() -> None:
    text = """\
[databases]
d = pool_size=2 min_pool_size=5
e = pool_size=9
[pgbouncer]
default_pool_size = 4
min_pool_size = 6
"""
    config = config_from_string(text, "m.ini")
    assert config.warnings == (
        "m.ini:6: min_pool_size (6) is larger than default_pool_size (4)",
        "m.ini:2: database 'd': min_pool_size (5) is larger than its pool size (2)",
    )


def test_no_listener_is_a_warning() -> None:
    config = config_from_string("[pgbouncer]\nunix_socket_dir =\n", "l.ini")
    assert config.warnings == (
        "l.ini:2: listen_addr and unix_socket_dir are both empty: no client can connect",
    )


def test_include_and_auth_file_relative_to_the_main_ini(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "users.txt").write_text('"u" "md5' + "a" * 32 + '"\n')
    (tmp_path / "conf.d" / "dbs.ini").write_text("[databases]\nd = port=7000\n")
    (tmp_path / "main.ini").write_text(
        "%include conf.d/dbs.ini\n[pgbouncer]\nauth_file = users.txt\n"
    )
    config = load_config(str(tmp_path / "main.ini"))
    assert config.databases["d"].port == 7000
    assert config.auth == {"u": "md5" + "a" * 32}
    assert config.settings.auth_file == str(tmp_path / "users.txt")


def test_missing_auth_file_names_the_setting_line(tmp_path: Path) -> None:
    (tmp_path / "main.ini").write_text("[pgbouncer]\n\nauth_file = missing.txt\n")
    with pytest.raises(ConfigError, match="auth_file: cannot read") as info:
        load_config(str(tmp_path / "main.ini"))
    assert (info.value.path, info.value.line) == (str(tmp_path / "main.ini"), 3)
    assert "missing.txt" in str(info.value)


def test_bad_auth_file_line_names_the_auth_file(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text('"ok" "x"\nnot quoted\n')
    (tmp_path / "main.ini").write_text("[pgbouncer]\nauth_file = users.txt\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "main.ini"))
    assert (info.value.path, info.value.line) == (str(tmp_path / "users.txt"), 2)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "nope.ini"))


def test_auth_query_settings_global_and_per_database() -> None:
    config = config_from_string(
        "[databases]\n"
        "app = host=db auth_user=pgb auth_dbname=authdb auth_query='SELECT a, b FROM f($1)'\n"
        "other = host=db\n"
        "[pgbouncer]\n"
        "auth_user = admin\n"
        "auth_dbname = postgres\n")
    s = config.settings
    assert (s.auth_user, s.auth_dbname) == ("admin", "postgres")
    assert s.auth_query == DEFAULT_AUTH_QUERY and "valuntil" in s.auth_query
    app = config.databases["app"]
    assert (app.auth_user, app.auth_dbname, app.auth_query) == ("pgb", "authdb",
                                                                "SELECT a, b FROM f($1)")
    assert config.databases["other"].auth_query is None


def test_auth_hba_file_is_loaded_relative_to_the_ini(tmp_path: Path) -> None:
    (tmp_path / "hba.conf").write_text("host all all 10.0.0.0/8 md5\n")
    ini = tmp_path / "ecluse.ini"
    ini.write_text("[pgbouncer]\nauth_type = hba\nauth_hba_file = hba.conf\n")
    config = load_config(str(ini))
    assert config.settings.auth_hba_file == str(tmp_path / "hba.conf")
    assert config.hba is not None and [r.method for r in config.hba] == ["md5"]


def test_bad_or_missing_hba_file(tmp_path: Path) -> None:
    ini = tmp_path / "ecluse.ini"
    ini.write_text("[pgbouncer]\nauth_type = hba\n")
    with pytest.raises(ConfigError, match="auth_type = hba needs auth_hba_file"):
        load_config(str(ini))
    ini.write_text("[pgbouncer]\nauth_type = hba\nauth_hba_file = missing.conf\n")
    with pytest.raises(ConfigError, match="auth_hba_file: cannot read") as err:
        load_config(str(ini))
    assert err.value.line == 3
    (tmp_path / "hba.conf").write_text("local all all trust\nhost all all 10.0.0.0/8 ident\n")
    ini.write_text("[pgbouncer]\nauth_type = hba\nauth_hba_file = hba.conf\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(ini))
    assert (err.value.path, err.value.line) == (str(tmp_path / "hba.conf"), 2)
    assert 'authentication method "ident" is not supported' in err.value.message


def test_auth_ident_file_gives_the_hba_maps(tmp_path: Path) -> None:
    (tmp_path / "hba.conf").write_text("local all all trust\nlocal all all peer map=staff\n")
    (tmp_path / "ident.conf").write_text("staff alice app\n")
    ini = tmp_path / "ecluse.ini"
    ini.write_text("[pgbouncer]\nauth_type = hba\nauth_hba_file = hba.conf\n"
                   "auth_ident_file = ident.conf\n")
    config = load_config(str(ini))
    assert config.settings.auth_ident_file == str(tmp_path / "ident.conf")
    assert config.ident is not None and dict(config.ident) == {"staff": (("alice", "app"),)}
    assert config.warnings == ()  # a setting ecluse honours, not one it only accepts
    # RELOAD sees the file's content change, under the same name.
    (tmp_path / "ident.conf").write_text("staff bob app\n")
    assert "auth_ident_file" in diff_configs(config, load_config(str(ini))).settings


def test_a_map_without_auth_ident_file_names_its_hba_line(tmp_path: Path) -> None:
    (tmp_path / "hba.conf").write_text("local all all trust\nlocal all all peer map=staff\n")
    ini = tmp_path / "ecluse.ini"
    ini.write_text("[pgbouncer]\nauth_type = hba\nauth_hba_file = hba.conf\n")
    with pytest.raises(ConfigError, match="map=staff needs auth_ident_file") as err:
        load_config(str(ini))
    assert (err.value.path, err.value.line) == (str(tmp_path / "hba.conf"), 2)
    (tmp_path / "ident.conf").write_text("staff alice\n")
    ini.write_text("[pgbouncer]\nauth_type = hba\nauth_hba_file = hba.conf\n"
                   "auth_ident_file = ident.conf\n")
    with pytest.raises(ConfigError, match="found 2 fields") as err:
        load_config(str(ini))
    assert (err.value.path, err.value.line) == (str(tmp_path / "ident.conf"), 1)


def test_peers_section_and_peer_id() -> None:
    config = config_from_string(
        "[pgbouncer]\npeer_id = 2\n[peers]\n1 = host=10.0.0.1 port=6433\n2 = host=h2\n", "p.ini")
    assert config.settings.peer_id == 2
    assert (config.peers[1].host, config.peers[1].port) == ("10.0.0.1", 6433)
    assert config.peers[2].port == 6432
    for bad, message in (("[peers]\n0 = host=x\n", "peer id: expected an integer from 1"),
                         ("[peers]\n1 = port=5\n", "peer 1: host is required"),
                         ("[pgbouncer]\npeer_id = 256\n", "peer_id: expected an integer")):
        with pytest.raises(ConfigError, match=message):
            config_from_string(bad, "p.ini")


def test_database_and_user_overrides_of_pgbouncer_settings() -> None:
    config = config_from_string(
        "[databases]\n"
        "short = host=h server_lifetime=60 query_wait_timeout=5\n"
        "unset = host=h query_wait_timeout=-1\n"
        "[users]\n"
        "alice = reserve_pool_size=3 query_timeout=30 query_wait_timeout=0 "
        "idle_transaction_timeout=10 transaction_timeout=120 client_idle_timeout=600\n"
        "bob = query_timeout=-1\n"
        "[pgbouncer]\nserver_lifetime = 3600\nquery_wait_timeout = 120\nquery_timeout = 7\n"
        "reserve_pool_size = 1\n")
    short, unset = config.databases["short"], config.databases["unset"]
    assert (short.server_lifetime, short.query_wait_timeout) == (60.0, 5.0)
    assert unset.query_wait_timeout is None and unset.server_lifetime is None
    assert config.server_lifetime_for(short) == 60.0
    assert config.server_lifetime_for(unset) == 3600.0
    # query_wait_timeout: the user's, else the database's, else [pgbouncer]'s.
    assert config.query_wait_timeout_for(short, "alice") == 0.0
    assert config.query_wait_timeout_for(short, "bob") == 5.0
    assert config.query_wait_timeout_for(unset, "bob") == 120.0
    assert config.reserve_pool_for(short, "alice") == 3
    assert config.reserve_pool_for(short, "bob") == 1
    assert config.client_timeouts_for("alice") == (600.0, 10.0, 30.0, 120.0)
    assert config.client_timeouts_for("bob") == (0.0, 0.0, 7.0, 0.0)  # -1: not set
    assert config.client_timeouts_for("carol") == (0.0, 0.0, 7.0, 0.0)
    with pytest.raises(ConfigError, match="query_timeout"):
        config_from_string("[users]\nalice = query_timeout=-2\n")


def test_scram_iterations() -> None:
    assert config_from_string("[pgbouncer]\n").settings.scram_iterations == 4096
    assert config_from_string("[pgbouncer]\nscram_iterations = 10000\n") \
        .settings.scram_iterations == 10000
    with pytest.raises(ConfigError, match="scram_iterations"):
        config_from_string("[pgbouncer]\nscram_iterations = 0\n")


def test_host_lists_and_their_options() -> None:
    config = config_from_string(
        "[databases]\n"
        "one = host=db1\n"
        "many = host=' db1 , 10.0.0.2,/var/run/postgresql' port=5433\n"
        "sticky = host=a,b load_balance_hosts=DISABLE target_session_attrs=read-write\n"
        "[pgbouncer]\n", "p.ini")
    one, many, sticky = (config.databases[n] for n in ("one", "many", "sticky"))
    assert (one.host, one.load_balance_hosts, one.target_session_attrs) == (
        "db1", "round-robin", "any")
    assert not one.has_host_list()
    assert many.host == "db1,10.0.0.2,/var/run/postgresql" and many.has_host_list()
    assert host_list(many.host) == ("db1", "10.0.0.2", "/var/run/postgresql")
    assert host_list(None) == ("/tmp",)
    assert (sticky.load_balance_hosts, sticky.target_session_attrs) == ("disable", "read-write")


@pytest.mark.parametrize(("value", "message"), [
    ("host=a,,b", "database 'd': host: expected a host name, IP address or unix-socket"),
    ("host=a, ", "database 'd': host: expected a host name"),
    ("load_balance_hosts=random", "database 'd': load_balance_hosts: expected one of "
                                  "round-robin, disable"),
    ("target_session_attrs=prefer-standby", "database 'd': target_session_attrs: expected "
                                            "one of any, read-write, read-only, primary, standby"),
])
def test_bad_host_list_options(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_string(f"[databases]\nd = {value}\n", "p.ini")
    assert str(info.value).startswith(f"p.ini:2: {message}")
