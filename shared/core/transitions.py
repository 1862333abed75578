"""A state reported only when it changes: one health event when something starts failing, one when it is over.

Used by the fail-open paths (the creation quota and the email rate when Redis cannot be read, the email rate
when it holds emails back), so that a degraded state is never silent and never logs once per request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from shared.core.health import Level, record_detached

log = logging.getLogger(__name__)


@dataclass
class Transitions:
    """`await t.report(ok, reason)` after each use; a health event only on a change (none for a first `ok`)."""

    pool: AsyncConnectionPool
    source: str
    down_event: str
    down_message: str
    up_event: str
    up_message: str
    down_level: Level = Level.WARNING
    ok: bool | None = None

    async def report(self, ok: bool, reason: str = "") -> None:
        """Record the state; on a change, one health event (WARNING or the given level down, INFO up)."""
        previous, self.ok = self.ok, ok
        if previous is ok or (previous is None and ok):
            return
        level, event, message = ((Level.INFO, self.up_event, self.up_message) if ok
                                 else (self.down_level, self.down_event, self.down_message))
        try:
            await record_detached(self.pool, level, event, message, {"reason": reason, "instance": self.source},
                                  source=self.source)
        except Exception:
            log.exception("health event %s could not be recorded", event)
