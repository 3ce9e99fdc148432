"""Tests for Config's lookups: the "*" fallback and the precedence of overrides."""

from __future__ import annotations

import pytest

from ecluse.config import Config, DatabaseConfig, PoolMode, config_from_string

TEXT = """\
[databases]
exact = host=h1 pool_mode=statement pool_size=8 min_pool_size=1 reserve_pool=2
plain = host=h2
* = host=fallback port=5555 user=svc
[users]
txuser = pool_mode=transaction pool_size=3 max_user_connections=4
nobody = max_user_connections=0
[pgbouncer]
pool_mode = session
default_pool_size = 20
min_pool_size = 5
reserve_pool_size = 6
max_db_connections = 30
max_user_connections = 40
"""


@pytest.fixture(scope="module")
def config() -> Config:
    return config_from_string(TEXT)


def test_exact_database_entry_wins_over_fallback(config: Config) -> None:
    db = config.database("exact")
    assert db is not None and db.host == "h1"


def test_fallback_takes_the_requested_name(config: Config) -> None:
    db = config.database("anything")
    assert db == DatabaseConfig(name="anything", host="fallback", port=5555, user="svc")
    assert db.server_dbname() == "anything"
    # The stored "*" entry itself is unchanged.
    assert config.databases["*"].name == "*"


def test_no_fallback_means_unknown_database() -> None:
    config = config_from_string("[databases]\nonly = port=1\n")
    assert config.database("other") is None
    assert config.database("only") is not None


def test_server_dbname_prefers_dbname() -> None:
    assert DatabaseConfig(name="alias", dbname="real").server_dbname() == "real"
    assert DatabaseConfig(name="alias").server_dbname() == "alias"


@pytest.mark.parametrize(
    ("db", "user", "mode"),
    [
        ("exact", "txuser", PoolMode.TRANSACTION),  # user beats database
        ("exact", "someone", PoolMode.STATEMENT),  # database beats global
        ("plain", "someone", PoolMode.SESSION),  # global
        ("plain", "txuser", PoolMode.TRANSACTION),
        ("plain", "nobody", PoolMode.SESSION),  # user entry without pool_mode
    ],
)
def test_pool_mode_precedence(config: Config, db: str, user: str, mode: PoolMode) -> None:
    entry = config.database(db)
    assert entry is not None
    assert config.pool_mode_for(entry, user) is mode


@pytest.mark.parametrize(
    ("db", "user", "size"),
    [("exact", "txuser", 3), ("exact", "someone", 8), ("plain", "someone", 20)],
)
def test_pool_size_precedence(config: Config, db: str, user: str, size: int) -> None:
    entry = config.database(db)
    assert entry is not None
    assert config.pool_size_for(entry, user) == size


def test_per_database_limits_fall_back_to_global(config: Config) -> None:
    exact, plain = config.databases["exact"], config.databases["plain"]
    assert (config.min_pool_size_for(exact), config.min_pool_size_for(plain)) == (1, 5)
    assert (config.reserve_pool_for(exact), config.reserve_pool_for(plain)) == (2, 6)
    assert config.max_db_connections_for(plain) == 30


def test_explicit_zero_on_a_database_means_unlimited_not_unset() -> None:
    config = config_from_string(
        "[databases]\nd = max_db_connections=0\ne = max_db_connections=3\n"
        "[pgbouncer]\nmax_db_connections = 5\n"
    )
    assert config.max_db_connections_for(config.databases["d"]) == 0
    assert config.max_db_connections_for(config.databases["e"]) == 3


def test_max_user_connections_precedence(config: Config) -> None:
    assert config.max_user_connections_for("txuser") == 4
    assert config.max_user_connections_for("nobody") == 0  # explicit 0 is kept
    assert config.max_user_connections_for("someone") == 40
