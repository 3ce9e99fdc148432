"""The console's RELOAD and SET: change the running configuration.

RELOAD re-reads the config file and auth_file through the worker's hook
(ClientContext.reload_config); SET key = value changes one [pgbouncer] setting
in memory and applies it the same way a reload does (ClientContext.apply_config).
A later RELOAD re-reads the file and so undoes SETs, as in PgBouncer.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import TYPE_CHECKING

from ecluse.admin.commands import AdminError, Reply
from ecluse.config.diff import FILE_SETTINGS, SECRET_SETTINGS, settable
from ecluse.config.schema import SETTINGS
from ecluse.config.tls import TlsSettingError, client_tls_context, server_tls
from ecluse.config.values import BadValue
from ecluse.protocol import backend as be

if TYPE_CHECKING:
    from ecluse.frontend.context import ClientContext

log = logging.getLogger("ecluse.admin")

_SET_ARG = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:=|\s+TO\s+|\s)\s*(.*?)\s*;?\s*$",
                      re.IGNORECASE | re.DOTALL)


def reload(ctx: ClientContext, _arg: str) -> Reply:
    log.info("RELOAD command issued")
    if ctx.reload_config is None:
        raise AdminError("RELOAD is not available in this process")
    reason = ctx.reload_config()
    if reason is not None:
        raise AdminError(f"RELOAD failed, the running config stays: {reason}")
    return be.encode_command_complete("RELOAD")


def set_setting(ctx: ClientContext, arg: str) -> Reply:
    """SET key = value (value optionally in single quotes)."""
    match = _SET_ARG.match(arg)
    if match is None:
        raise AdminError("SET needs key = value")
    key, text = match.group(1).lower(), _unquote(match.group(2))
    if key not in SETTINGS:
        raise AdminError(f"unknown config parameter: {key}")
    if not settable(key):
        why = "edit the file and RELOAD" if key in FILE_SETTINGS else "restart ecluse"
        raise AdminError(f"{key} cannot be changed with SET: {why}")
    try:
        value = SETTINGS[key](text)
    except BadValue as exc:
        raise AdminError(f"invalid value for {key}: {exc}") from None
    if ctx.apply_config is None:
        raise AdminError("SET is not available in this process")
    config = ctx.config
    settings = dataclasses.replace(config.settings, **{key: value})
    try:
        # As the loader does: a TLS value that cannot be honoured is refused here,
        # not at the next client's handshake.
        client_tls_context(settings, strict=True)
        server_tls(settings, strict=True)
    except TlsSettingError as exc:
        raise AdminError(f"invalid value for {key}: {exc}") from None
    log.info("SET %s = %s", key, "********" if key in SECRET_SETTINGS else text)
    ctx.apply_config(dataclasses.replace(config, settings=settings))
    return be.encode_command_complete("SET")


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    return text
