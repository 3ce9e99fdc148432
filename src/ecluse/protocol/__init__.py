"""Sans-IO PostgreSQL v3 wire protocol: bytes in, message objects out, and back.

Nothing in this package opens a socket or touches asyncio or the configuration.
"""

from ecluse.protocol.framing import Framer
from ecluse.protocol.tracker import RequestTracker

__all__ = ["Framer", "RequestTracker"]
