"""Prometheus metrics of one worker process, served with ``--metrics-addr HOST:PORT``.

Nothing on the hot path: the handlers only bump plain counters (``Stats``, ``Limiter``), and
this collector turns them into metric families when Prometheus scrapes, in the exporter's own
thread. Labels carry the job name, roles, budgets, statuses, error classes and disk roots, never
file paths or credentials.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mirror import __version__
from mirror.broker import QueueDepth
from mirror.controls import Control
from mirror.disk import Placement
from mirror.errors import ConfigError
from mirror.ratelimit import Limiter
from mirror.settings import WorkerSettings
from mirror.stats import Histogram, Stats

log = logging.getLogger(__name__)
PREFIX = "bucket_mirror"
STATES = ("free", "probing", "limited", "holding")


class QueueReading:
    """The job's ready messages per queue, read from the broker when Prometheus scrapes.

    The collector runs in the exporter's thread and the broker on the event loop: a scrape
    hands the loop one ``depths()`` call and waits for it a little. A reading younger than
    ``max_age_s`` serves further scrapes; a broker that fails or is slow to answer leaves the
    last good reading in place.
    """

    def __init__(self, depths: Callable[[], Awaitable[Mapping[str, QueueDepth]]],
                 loop: asyncio.AbstractEventLoop, *, max_age_s: float = 1.0,
                 timeout_s: float = 2.0) -> None:
        self._depths = depths
        self._loop = loop
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self._lock = threading.Lock()  # scrapes may come in parallel: one reading at a time
        self._last: dict[str, int] = {}
        self._read_at: float | None = None

    async def _read(self) -> dict[str, int]:
        return {q: d.ready for q, d in (await self._depths()).items()}

    def ready(self) -> dict[str, int]:
        """From a thread other than the loop's (the exporter's)."""
        with self._lock:
            now = time.monotonic()
            if self._read_at is not None and now - self._read_at < self._max_age_s:
                return self._last
            try:
                future = asyncio.run_coroutine_threadsafe(self._read(), self._loop)
            except RuntimeError:  # the loop is closed: the work has ended
                return self._last
            try:
                self._last = future.result(self._timeout_s)
                self._read_at = time.monotonic()
            except concurrent.futures.TimeoutError:
                future.cancel()
                log.debug("queue depths took over %.1f s; the last reading stays",
                          self._timeout_s)
            except Exception as exc:  # a reconnecting broker must not break the scrape
                log.debug("no queue depths: %s", exc)
            return self._last


def _no_queues() -> dict[str, int]:
    return {}


@dataclass
class Sources:
    """What the collector reads; the worker fills it in as it starts."""

    job: str
    role: str
    source: str  # the source's kind, e.g. "upyun"
    stats: Stats
    limiter: Limiter
    placement: Placement
    settings: WorkerSettings
    controls: Callable[[], list[Control]]  # the worker's adaptive rates and limits
    # Ready messages per queue of the job (``QueueReading.ready``), read on each scrape.
    queue_ready: Callable[[], Mapping[str, int]] = field(default=_no_queues)


def _histogram(name: str, doc: str, labels: dict[str, str], h: Histogram,
               family: HistogramMetricFamily | None = None) -> HistogramMetricFamily:
    family = family or HistogramMetricFamily(name, doc, labels=list(labels))
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip([*map(str, h.bounds), "+Inf"], h.counts, strict=True):
        running += count
        buckets.append((bound, running))
    family.add_metric(list(labels.values()), buckets, h.total)
    return family


class MirrorCollector(Collector):
    def __init__(self, src: Sources) -> None:
        self.src = src

    def collect(self) -> Iterator[Metric]:
        s, job = self.src.stats, self.src.job
        info = GaugeMetricFamily(f"{PREFIX}_build_info", "Version of bucket-mirror.",
                                 labels=["version", "mirror_job", "role", "host"])
        info.add_metric([__version__, job, self.src.role, socket.gethostname()], 1)
        yield info

        files = CounterMetricFamily(f"{PREFIX}_files", "Files by outcome (and error class).",
                                    labels=["mirror_job", "outcome", "reason"])
        files.add_metric([job, "fetched", ""], s.fetched)
        files.add_metric([job, "skipped", ""], s.skipped)
        for reason, n in sorted(s.retried_by.items()):
            files.add_metric([job, "retried", reason], n)
        for reason, n in sorted(s.parked_by.items()):
            files.add_metric([job, "parked", reason], n)
        yield files

        mirrored = CounterMetricFamily(f"{PREFIX}_file_bytes",
                                       "Sizes of files fetched or found current.",
                                       labels=["mirror_job", "outcome"])
        mirrored.add_metric([job, "fetched"], s.fetched_bytes)
        mirrored.add_metric([job, "skipped"], s.skipped_bytes)
        yield mirrored
        yield self._simple_counter("received_bytes", "Bytes received from the source.",
                                   s.transferred)
        yield self._simple_counter("listing_pages", "Listing pages processed.", s.pages)
        yield self._simple_counter("listing_entries", "Entries seen in listings.", s.entries)
        yield _histogram(f"{PREFIX}_file_duration_seconds",
                         "Whole-file time from start to rename.", {"mirror_job": job},
                         s.file_seconds)
        yield self._simple_gauge("inflight_transfers", "Transfers running now.", s.inflight)
        if s.last_done_at:
            yield self._simple_gauge("last_success_timestamp_seconds",
                                     "When a file was last fetched or found current.",
                                     s.last_done_at)
        yield from self._source_metrics()
        yield from self._place_metrics()

    def _source_metrics(self) -> Iterator[Metric]:
        lim, job = self.src.limiter, self.src.job
        requests = CounterMetricFamily(f"{PREFIX}_http_requests",
                                       "Requests to the source by budget and HTTP status "
                                       "(0: no answer).",
                                       labels=["mirror_job", "source", "budget", "status"])
        source = self.src.source
        counts = dict(lim.requests)
        for key, n in self.src.stats.pool_requests.items():  # those of the fetch processes
            counts[key] = counts.get(key, 0) + n
        for (budget, status), n in sorted(counts.items()):
            requests.add_metric([job, source, budget, str(status)], n)
        yield requests
        durations = HistogramMetricFamily(f"{PREFIX}_http_request_duration_seconds",
                                          "Time to the response headers of a source request.",
                                          labels=["mirror_job", "budget"])
        for budget, h in lim.request_seconds.items():
            _histogram("", "", {"mirror_job": job, "budget": budget}, h, durations)
        yield durations
        yield from self._control_metrics()

    def _control_metrics(self) -> Iterator[Metric]:
        job = self.src.job
        labels = ["mirror_job", "budget"]
        throttled = CounterMetricFamily(f"{PREFIX}_throttled",
                                        "Answers of 429/503 from the source, by budget.",
                                        labels=labels)
        rate = GaugeMetricFamily(f"{PREFIX}_rate_limit_requests_per_second",
                                 "The request rate this worker holds itself to (+Inf: none).",
                                 labels=labels)
        conc = GaugeMetricFamily(f"{PREFIX}_concurrency",
                                 "Simultaneous requests allowed now (adaptive or pinned).",
                                 labels=labels)
        background = GaugeMetricFamily(
            f"{PREFIX}_background_failure_share", "Share of answers that fail whatever the "
            "rate (retried, not slowed down for), as the rate controller found it.",
            labels=labels)
        state = GaugeMetricFamily(f"{PREFIX}_rate_controller_state",
                                  "1 for the state the adaptive rate is in.",
                                  labels=[*labels, "state"])
        for c in self.src.controls():
            throttled.add_metric([job, c.budget], c.throttled)
            rate.add_metric([job, c.budget], c.rate if math.isfinite(c.rate) else math.inf)
            conc.add_metric([job, c.budget], c.concurrency)
            background.add_metric([job, c.budget], c.background)
            for name in STATES:
                state.add_metric([job, c.budget, name], 1.0 if c.state == name else 0.0)
        yield throttled
        yield rate
        yield conc
        yield background
        yield state

    def _place_metrics(self) -> Iterator[Metric]:
        s, job = self.src.stats, self.src.job
        free = GaugeMetricFamily(f"{PREFIX}_disk_free_bytes",
                                 "Free bytes on each disk this worker writes to.",
                                 labels=["mirror_job", "disk"])
        size = GaugeMetricFamily(f"{PREFIX}_disk_size_bytes", "Size of each disk.",
                                 labels=["mirror_job", "disk"])
        for disk in self.src.placement.disks:
            try:
                st = os.statvfs(disk.root)
            except OSError:
                continue
            free.add_metric([job, str(disk.root)], st.f_bavail * st.f_frsize)
            size.add_metric([job, str(disk.root)], st.f_blocks * st.f_frsize)
        yield free
        yield size

        ready = self.src.queue_ready()
        queues = GaugeMetricFamily(f"{PREFIX}_queue_ready",
                                   "Ready jobs per queue of the job, as this worker read them "
                                   "for the scrape.", labels=["mirror_job", "queue"])
        for queue, n in sorted(ready.items()):
            queues.add_metric([job, queue], n)
        yield queues
        parked = GaugeMetricFamily(f"{PREFIX}_parked_jobs", "Jobs in the parked queue.",
                                   labels=["mirror_job"])
        parked.add_metric([job], ready.get(f"{job}.parked", s.parked))
        yield parked

    def _simple_counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["mirror_job"])
        family.add_metric([self.src.job], value)
        return family

    def _simple_gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["mirror_job"])
        family.add_metric([self.src.job], value)
        return family


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--metrics-addr {text!r}: expected HOST:PORT, e.g. "
                          "127.0.0.1:9464") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"--metrics-addr {text!r}: port out of range")
    return host.strip("[]") or "127.0.0.1", number


class Exporter:
    """The /metrics endpoint of one process (a daemon thread of prometheus-client)."""

    def __init__(self, addr: str, src: Sources) -> None:
        self.host, self.port = parse_addr(addr)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(MirrorCollector(src))
        self._server: Any = None

    def start(self) -> None:
        try:
            self._server, _ = start_http_server(self.port, addr=self.host,
                                                registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {self.host}:{self.port}: "
                              f"{exc.strerror or exc}") from exc
        self.port = self._server.server_port
        log.info("metrics at http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


__all__ = ["Exporter", "MirrorCollector", "QueueReading", "Sources", "parse_addr"]
