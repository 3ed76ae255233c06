"""Where the worker's loop is, as the liveness and readiness probes see it (no server here: see ``http``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Health:
    """Where the worker's loop is, as the probes see it.

    Live unless one step (a claim, an embedding, a settle) has taken longer than ``max_step_seconds``;
    waiting for work, or backing off while the database or the provider is away, is normal.
    """

    max_step_seconds: float
    provider: str | None = None  # the model, once loaded
    _working_since: float | None = field(default=None, repr=False)

    def working(self) -> None:
        self._working_since = time.monotonic()

    def waiting(self) -> None:
        self._working_since = None

    def stuck_for(self) -> float | None:
        since = self._working_since
        if since is None:
            return None
        seconds = time.monotonic() - since
        return seconds if seconds > self.max_step_seconds else None
