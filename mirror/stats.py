"""Counters of one process's work, read by the progress display, the summary and metrics."""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field

from mirror.jobs import Reason

PARKED_KEPT = 1000  # parked items kept for the summary; the broker keeps them all
# Whole-file durations: a tiny file takes milliseconds, a multi-GB one hours.
FILE_SECONDS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600)
REQUEST_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)


@dataclass
class Histogram:
    """Cumulative-free bucket counts, exposed as a Prometheus histogram at scrape time."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # first bound >= value
        self.total += value
        self.count += 1


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    pages: int = 0
    entries: int = 0
    listed_files: int = 0
    listed_bytes: int = 0
    publishing_files: int = 0  # files of pages being published now (listed once confirmed)
    fetched: int = 0
    fetched_bytes: int = 0  # sizes of files fetched (a resumed file counts whole)
    skipped: int = 0
    skipped_bytes: int = 0
    dirs: int = 0
    parked: int = 0
    retried: int = 0
    transferred: int = 0  # bytes received from the source
    parked_items: deque[tuple[str, Reason]] = field(
        default_factory=lambda: deque(maxlen=PARKED_KEPT)
    )
    retried_by: dict[str, int] = field(default_factory=dict)  # error class -> count
    parked_by: dict[str, int] = field(default_factory=dict)
    inflight: int = 0  # transfers running now
    file_seconds: Histogram = field(default_factory=lambda: Histogram(FILE_SECONDS))
    # Requests the fetch processes sent, by (budget, HTTP status), as they reported them.
    pool_requests: dict[tuple[str, int], int] = field(default_factory=dict)
    last_done_at: float = 0.0  # wall-clock time of the last file fetched or found current

    @property
    def done_files(self) -> int:
        return self.fetched + self.skipped + self.parked

    @property
    def done_bytes(self) -> int:
        return self.fetched_bytes + self.skipped_bytes

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def park(self, path: str, reason: Reason) -> None:
        self.parked += 1
        self.parked_by[reason.error] = self.parked_by.get(reason.error, 0) + 1
        self.parked_items.append((path, reason))

    def file_done(self, outcome: str, size: int, seconds: float | None = None) -> None:
        """Count a file job's outcome ("fetched", "skipped" or "dir"), wherever it ran."""
        if outcome == "dir":
            self.dirs += 1
            return
        if outcome == "fetched":
            self.fetched += 1
            self.fetched_bytes += size
            if seconds is not None:
                self.file_seconds.observe(seconds)
        elif outcome == "skipped":
            self.skipped += 1
            self.skipped_bytes += size
        self.last_done_at = time.time()

    def retry(self, error: str) -> None:
        self.retried += 1
        self.retried_by[error] = self.retried_by.get(error, 0) + 1
