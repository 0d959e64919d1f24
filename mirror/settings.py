"""Settings as frozen dataclasses, built once by the CLI and passed down.

Precedence (applied by the CLI): flags > environment (``MIRROR_*``) > TOML file > these defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Role = Literal["list", "fetch", "all"]


@dataclass(frozen=True)
class SourceSettings:
    """How this host talks to any source: what every backend shares. ``env`` carries the
    credentials (never logged).

    Not stored with a job: each host has its own. What a backend needs of a job (UpYun's
    endpoint, its page size...) is that backend's options (``mirror.sources.backend``),
    stored with the job.
    """

    connect_timeout_s: float = 30.0
    read_timeout_s: float = 120.0  # no byte for this long aborts the request
    request_retries: int = 2  # quick in-process retries before the broker's retry tiers
    request_retry_backoff_s: float = 0.25
    max_connections: int = 64
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    def credential(self, name: str) -> str | None:
        value = self.env.get(name)
        return value if value else None


@dataclass(frozen=True)
class WorkerSettings:
    role: Role = "all"
    # Simultaneous downloads: where the adaptive limit starts (mirror.concurrency), or what
    # it is pinned to; it stays within max_concurrency.
    concurrency: int = 32
    max_concurrency: int = 256
    adaptive_concurrency: bool = True
    list_concurrency: int = 4  # simultaneous listing pages, the same way
    max_list_concurrency: int = 32
    adaptive_list_concurrency: bool = True
    chunk_size: int = 1 << 20  # read/write unit for large files
    small_file_max: int = 1 << 20  # bodies up to this size are written in one disk operation
    resume_retries: int = 2  # a body cut mid-way is resumed in place this often before a retry
    verify_checksum: bool = True  # check the SHA-256, SHA-1 or MD5 the source vouches for
    modify_window_s: float = 0.001  # mtimes this close are equal (skip check)
    drain_deadline_s: float = 60.0  # SIGTERM: in-flight work must finish within this
    presence_interval_s: float = 1.0
    # How often a worker asks whether the job is done when nothing woke it: a safety net,
    # as the settling of its last held message wakes it at once.
    idle_poll_s: float = 0.5
    publish_window: int = 256  # unconfirmed publishes allowed at once
    fsync: bool = True
    # A transfer slower than this over a whole window is stalled: aborted, resumed or retried.
    min_rate_bps: float = 1024.0
    stall_window_s: float = 60.0
    max_backlog: int = 50_000  # listing pauses while a fetch queue holds about this many files
    # Small files of a listing page travel this many to a message (1: one message per file),
    # at most batch_bytes in all.
    batch_files: int = 32
    batch_bytes: int = 32 << 20
    file_events: bool = True  # one confirmed event per file on the job's events exchange

    @property
    def most_transfers(self) -> int:
        """The most downloads that can run at once (what pools and connections are sized for)."""
        return self.max_concurrency if self.adaptive_concurrency else self.concurrency

    @property
    def most_listings(self) -> int:
        adaptive = self.adaptive_list_concurrency
        return self.max_list_concurrency if adaptive else self.list_concurrency

    @property
    def lists(self) -> bool:
        return self.role in ("list", "all")

    @property
    def fetches(self) -> bool:
        return self.role in ("fetch", "all")


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Per-user state directory (XDG): job journals, parked lists, run summaries."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "bucket-mirror"
