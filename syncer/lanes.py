"""Live edits ahead of bulk work: in a batch of their own, or riding in the next bulk batch, whichever is quicker.

A batch of their own gets edits embedded right after the bulk batch in hand. That is what a local model
wants: its time grows with the texts, so a few edits take milliseconds. A remote API may take as long for one
text as for hundreds (its latency is per request), and there a batch of their own would cost the backfill a
whole request each time: edits then ride at the head of the next bulk batch instead. The worker times both
kinds of batch and looks again every ``RECHECK`` seconds. While edits come and go alone, bulk batches are cut
to about ``BULK_SECONDS``, so that an edit waits little for the batch in hand.
"""

from __future__ import annotations

import math
import time

from . import queue

ALONE_SHARE = 0.25  # edits go alone while embedding them alone takes less than this share of a bulk batch's time
RECHECK = 30.0  # seconds after which edits go alone once more, to time it again
WEIGHT = 0.3  # of the newest timing in the moving averages
BULK_SECONDS = 0.5  # a bulk batch's time while edits come (they wait for the one in hand)
RECENT = 30.0  # seconds after the last edit during which bulk batches stay cut
MIN_BULK = 16  # rows: a cut bulk batch still fills a model's forward pass


class Lanes:
    """The lanes to claim, in turn, for each source."""

    def __init__(self) -> None:
        self.alone: float | None = None  # seconds to embed a batch of edits alone (moving average)
        self.bulk: float | None = None  # and a bulk batch
        self.per_row: float | None = None  # seconds per row of a bulk batch
        self.timed = -math.inf  # when edits last went alone

    def order(self) -> tuple[queue.Lane, ...]:
        return ("live", "bulk") if self._alone_pays() else ("both",)

    def limit(self, lane: queue.Lane, batch_size: int) -> int:
        """Rows to claim: a bulk batch is cut to about ``BULK_SECONDS`` while edits come."""
        if lane != "bulk" or self.per_row is None or time.monotonic() - self.timed > RECENT:
            return batch_size
        return max(MIN_BULK, min(batch_size, int(BULK_SECONDS / self.per_row)))

    def observe(self, lane: queue.Lane, seconds: float, rows: int) -> None:
        """A batch of ``lane`` took ``seconds`` to embed ``rows`` rows."""
        if lane == "live":
            self.alone, self.timed = _average(self.alone, seconds), time.monotonic()
        elif lane == "bulk":
            self.bulk = _average(self.bulk, seconds)
            self.per_row = _average(self.per_row, seconds / rows)

    def _alone_pays(self) -> bool:
        if self.alone is None or self.bulk is None or time.monotonic() - self.timed > RECHECK:
            return True
        return self.alone < ALONE_SHARE * self.bulk


def _average(old: float | None, new: float) -> float:
    return new if old is None else (1 - WEIGHT) * old + WEIGHT * new
