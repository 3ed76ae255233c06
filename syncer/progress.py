"""Progress of long work: a bar with rate and ETA on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger(__name__)

LOG_EVERY = 5.0  # seconds between progress log lines when not on a terminal


class Progress:
    """Counts rows done against a total known up front (the queue depth when work started)."""

    def __init__(self, label: str, total: int, *, terminal: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._logged = self.started
        self._logged_done = 0
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self._bar = tqdm(total=total, desc=label, unit="rows", dynamic_ncols=True) if terminal else None

    def advance(self, rows: int) -> None:
        self.done += rows
        if self._bar is not None:
            self._bar.update(rows)
            return
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY:
            self._log(now)

    def _log(self, now: float) -> None:
        self._logged, self._logged_done = now, self.done
        log.info("%s", self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        left = max(self.total - self.done, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        return f"{self.label}: {self.done}/{self.total} rows, {rate:.1f} rows/s, eta {eta}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.done != self._logged_done:
            self._log(time.monotonic())
