"""Prometheus metrics. Their names and labels are an interface: dashboards and alerts depend on them.

The counters and histograms live in this process; the queue gauges are read from the database at
each scrape (one scan of each queue, never of a source table), so every worker reports the same
values for them (aggregate with ``max``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from . import report
from .sources import Source

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)

ROWS = Counter(
    "syncer_rows",
    "Rows settled, by outcome: stored, removed, unchanged, failed, dead",
    ["source", "outcome"],
    registry=None,
)
FRESHNESS = Histogram(
    "syncer_freshness_seconds",
    "From a change's capture (its first unprocessed change) to its vector stored or removed",
    ["source"],
    buckets=FRESHNESS_BUCKETS,
    registry=None,
)
EMBED_SECONDS = Histogram(
    "syncer_embed_seconds", "Seconds of one provider call (one batch of texts)", ["provider"], buckets=LATENCY_BUCKETS,
    registry=None,
)  # fmt: skip
PROVIDER_REQUESTS = Counter(
    "syncer_provider_requests",
    "Provider calls (HTTP requests for remote providers), by outcome",
    ["provider", "outcome"],
    registry=None,
)
TOKENS = Counter(
    "syncer_tokens",
    "Tokens sent to the provider (prompts included; openai: the usage it reports)",
    ["provider"],
    registry=None,
)
LAST_PROGRESS = Gauge(
    "syncer_last_progress_timestamp_seconds", "Unix time this worker last settled rows", registry=None
)
PROCESS_METRICS = (ROWS, FRESHNESS, EMBED_SECONDS, PROVIDER_REQUESTS, TOKENS, LAST_PROGRESS)
STATES = ("ready", "leased", "backoff", "dead")


class QueueCollector(Collector):
    """``syncer_queue_rows{source,state}`` and ``syncer_oldest_pending_seconds{source}``, read at scrape time."""

    def __init__(self, connect: Callable[[], psycopg.Connection], sources: Callable[[], list[Source]]) -> None:
        self.connect = connect
        self.sources = sources

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        rows, oldest = self._families()
        try:
            with self.connect() as conn:
                for source in self.sources():
                    state = report.queue_state(conn, source)
                    for name in STATES:
                        rows.add_metric([source.name, name], getattr(state, name))
                    oldest.add_metric([source.name], state.oldest_seconds or 0.0)
        except psycopg.Error as exc:  # no queue gauges this scrape; /readyz tells the database is away
            log.debug("queue gauges unavailable: %s", exc)
            return iter(())
        return iter((rows, oldest))

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("syncer_queue_rows", "Queue rows by state", labels=["source", "state"]),
            GaugeMetricFamily(
                "syncer_oldest_pending_seconds", "Age of the oldest change not yet embedded (dead rows excluded)",
                labels=["source"],
            ),
        )  # fmt: skip


def registry(queue: Collector | None) -> CollectorRegistry:
    """A registry with this process's metrics, the queue gauges and the process's own (CPU, memory)."""
    collected = CollectorRegistry()
    for metric in (*PROCESS_METRICS, *([queue] if queue else [])):
        collected.register(metric)
    ProcessCollector(registry=collected)
    return collected


def settled(source: str, counts: dict[str, int], ages: tuple[float, ...]) -> None:
    """Count a settle's rows by outcome, their freshness, and the worker's progress."""
    for outcome, count in counts.items():
        if count:
            ROWS.labels(source, outcome).inc(count)
    for age in ages:
        FRESHNESS.labels(source).observe(max(age, 0.0))
    if any(counts.values()):
        LAST_PROGRESS.set(time.time())
