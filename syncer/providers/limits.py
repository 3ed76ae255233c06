"""Request shaping for remote embedding APIs: how to split a window into requests, and how fast to send them."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


def plan_requests(token_counts: list[int], max_inputs: int, max_tokens: int, parallel: int = 1) -> list[list[int]]:
    """Split input positions into requests of at most ``max_inputs`` inputs and ``max_tokens`` tokens.

    With ``parallel`` > 1 the inputs are spread over at least that many requests (when there are
    enough), so that requests in flight together cut the window's latency.
    """
    per_request = min(max_inputs, max(1, math.ceil(len(token_counts) / max(parallel, 1))))
    requests: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for position, count in enumerate(token_counts):
        if current and (len(current) >= per_request or tokens + count > max_tokens):
            requests.append(current)
            current, tokens = [], 0
        current.append(position)
        tokens += count
    if current:
        requests.append(current)
    return requests


class TokenBucket:
    """``per_minute`` units, refilled continuously; ``take`` blocks until the units are there."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.clock = clock
        self.updated = clock()

    def wait_time(self, units: float) -> float:
        """Seconds until ``units`` are available (a request larger than the bucket waits for a full one)."""
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        needed = min(units, self.capacity)
        return 0.0 if self.level >= needed else (needed - self.level) / self.rate

    def spend(self, units: float) -> None:
        self.level -= min(units, self.capacity)


class RateLimiter:
    """Client-side requests-per-minute and tokens-per-minute limits, shared by all request threads."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        self._requests = TokenBucket(requests_per_minute) if requests_per_minute else None
        self._tokens = TokenBucket(tokens_per_minute) if tokens_per_minute else None
        self._lock = threading.Lock()

    @property
    def limits_tokens(self) -> bool:
        """Whether requests wait for tokens (they then need exact counts, not bounds)."""
        return self._tokens is not None

    def acquire(self, tokens: int) -> None:
        """Block until one request of ``tokens`` tokens may be sent."""
        while True:
            with self._lock:
                wait = max(self._wait(self._requests, 1), self._wait(self._tokens, tokens))
                if wait == 0:
                    self._spend(self._requests, 1)
                    self._spend(self._tokens, tokens)
                    return
            time.sleep(wait)

    @staticmethod
    def _wait(bucket: TokenBucket | None, units: float) -> float:
        return bucket.wait_time(units) if bucket else 0.0

    @staticmethod
    def _spend(bucket: TokenBucket | None, units: float) -> None:
        if bucket:
            bucket.spend(units)
