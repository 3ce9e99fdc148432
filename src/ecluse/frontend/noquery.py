"""disable_pqexec: the client session that refuses the simple Query protocol.

PgBouncer's disable_pqexec closes a client that sends a Query ('Q') with FATAL,
SQLSTATE 08P01, "PQexec disallowed"; only the extended protocol is served. It
checks before its admin console sees the message, so console clients are
refused a Query too (ecluse's console also answers the extended protocol).
The worker makes its client sessions of this class when the setting is on:
FrontendSession's own paths, the express path first, pay nothing when it is
off.

Rules:
1. Every way client messages enter is checked: the express path (the whole
   chunk), the relay while linked and the queue while idle or waiting (the
   framed pieces). A batch holding a Query is refused whole, before any of
   it goes anywhere.
2. Only client sessions: ecluse's own queries to servers (run_internal) and
   the control links between workers (worker.ControlSession) are not
   FrontendSessions of this class.
"""

from __future__ import annotations

import logging

from ecluse.errors import ClientRefused
from ecluse.frontend.session import FrontendSession
from ecluse.protocol import codes

log = logging.getLogger("ecluse.client")

_Q = codes.FE_QUERY


class NoSimpleQuerySession(FrontendSession):
    """A FrontendSession that refuses a simple Query (disable_pqexec = 1)."""

    __slots__ = ()

    def _express_request(self, data: bytes) -> bool:
        # A chunk starting with a Query goes the general way, whose framed pieces
        # are checked; plan_request takes no batch with a Query after its start.
        return data[0] != _Q and super()._express_request(data)

    def _forward(self, pieces) -> None:
        if not self._refuse_query(pieces):
            super()._forward(pieces)

    def _queue_pieces(self, pieces) -> None:
        if not self._refuse_query(pieces):
            super()._queue_pieces(pieces)

    def _refuse_query(self, pieces) -> bool:
        """Close this client, as PgBouncer does, if ``pieces`` hold a Query; say so."""
        for msg_type, _raw, start, _end in pieces:
            if start and msg_type == _Q:
                log.error("%s used the \"Query\" message type (disable_pqexec)",
                          self._describe())
                self.fatal(ClientRefused("PQexec disallowed", sqlstate="08P01"))
                return True
        return False
