"""Counters of one process's work, read by the progress display, the summary and metrics."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from mirror.jobs import Reason

PARKED_KEPT = 1000  # parked items kept for the summary; the broker keeps them all


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    pages: int = 0
    entries: int = 0
    listed_files: int = 0
    listed_bytes: int = 0
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
        self.parked_items.append((path, reason))
