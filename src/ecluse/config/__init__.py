"""Configuration: load PgBouncer-format files into immutable, typed objects.

The public names are re-exported here; see model.py for the objects and
loader.py for how files become them. Reload builds a new Config and compares
it with diff_configs().
"""

from ecluse.config.connstr import BadConnStr, format_connstr, parse_connstr, quote_connstr_value
from ecluse.config.diff import ConfigDiff, diff_configs
from ecluse.config.ini import IniDocument, IniEntry, IniSection, parse_ini, read_ini
from ecluse.config.loader import config_from_string, load_config
from ecluse.config.model import (
    FALLBACK_DATABASE,
    AuthType,
    Config,
    DatabaseConfig,
    PoolMode,
    Settings,
    UserConfig,
)
from ecluse.config.userlist import format_userlist, parse_userlist, read_userlist

__all__ = [
    "FALLBACK_DATABASE",
    "AuthType",
    "BadConnStr",
    "Config",
    "ConfigDiff",
    "DatabaseConfig",
    "IniDocument",
    "IniEntry",
    "IniSection",
    "PoolMode",
    "Settings",
    "UserConfig",
    "config_from_string",
    "diff_configs",
    "format_connstr",
    "format_userlist",
    "load_config",
    "parse_connstr",
    "parse_ini",
    "parse_userlist",
    "quote_connstr_value",
    "read_ini",
    "read_userlist",
]
