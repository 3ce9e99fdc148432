"""The states of a client session and the only transitions allowed between them.

Kept apart from frontend/session.py so that the modules that share the
session's work (frontend/statekeeping.py) can name states without importing
the session itself. SHOW CLIENTS lists these values.
"""

from __future__ import annotations

import enum


class ClientState(enum.Enum):
    # Enum's own __hash__ is Python code (hash of the name); members are singletons,
    # so identity hashing is equivalent and keeps TRANSITIONS lookups in C.
    __hash__ = object.__hash__

    LOGIN = "login"
    AUTH = "auth"
    WELCOME = "welcome"
    IDLE = "idle"
    WAITING = "waiting"
    LINKED = "active"
    CLOSED = "closed"


TRANSITIONS = {
    ClientState.LOGIN: {ClientState.AUTH, ClientState.CLOSED},
    ClientState.AUTH: {ClientState.WELCOME, ClientState.CLOSED},
    ClientState.WELCOME: {ClientState.IDLE, ClientState.CLOSED},
    ClientState.IDLE: {ClientState.WAITING, ClientState.LINKED, ClientState.CLOSED},
    ClientState.WAITING: {ClientState.LINKED, ClientState.IDLE, ClientState.CLOSED},
    ClientState.LINKED: {ClientState.IDLE, ClientState.CLOSED},
    ClientState.CLOSED: set(),
}
