"""What the operator sees: a live view on a terminal, log lines otherwise, a final summary.

The ETA comes from the queues, not from this process's own listing: once nothing is left to
list, what remains is the fetch backlog, whoever listed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from mirror.broker import Broker, QueueDepth, Topology
from mirror.ratelimit import Limiter
from mirror.stats import Stats

if TYPE_CHECKING:  # rich is imported only for a live display: it costs every start 20 ms
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

log = logging.getLogger("mirror.progress")
RATE_WINDOW_S = 30.0


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def human_duration(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass(frozen=True)
class View:
    """One reading of the progress, shared by the live view and the log lines."""

    files_done: int
    files_rate: float
    bytes_rate: float
    backlog: int  # fetch jobs queued or held
    listing_done: bool
    eta_s: float | None


class Progress:
    def __init__(self, stats: Stats, broker: Broker, topology: Topology, *, live: bool,
                 log_every_s: float = 10.0, console: Console | None = None,
                 limiter: Limiter | None = None) -> None:
        self._stats = stats
        self._limiter = limiter
        self._broker = broker
        self._topology = topology
        self._live_wanted = live
        self._log_every = log_every_s
        self._console = console
        self._samples: deque[tuple[float, int, int]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._live: Live | None = None

    async def __aenter__(self) -> Progress:
        if self._live_wanted:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=self._console or Console(stderr=True),
                              refresh_per_second=4, transient=True)
            self._live.start()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._live is not None:
            self._live.stop()

    async def read(self) -> View:
        s = self._stats
        now = time.monotonic()
        self._samples.append((now, s.done_files, s.transferred))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        t0, f0, b0 = self._samples[0]
        span = max(now - t0, 1e-6)
        files_rate = (s.done_files - f0) / span if now > t0 else 0.0
        bytes_rate = (s.transferred - b0) / span if now > t0 else 0.0
        try:
            depths = await self._broker.depths()
        except Exception as exc:  # a reconnecting broker must not break the display
            log.debug("no queue depths: %s", exc)
            depths = {}
        if depths:
            s.queue_ready = {q: d.ready for q, d in depths.items()}
        backlog = sum(_held(depths.get(q)) for q in self._topology.fetch_queues)
        backlog += sum(_held(depths.get(q)) for q in self._topology.retry_queues)
        lq = depths.get(self._topology.list_queue)
        listing_done = lq is not None and lq.ready == 0 and not lq.unacked
        eta = backlog / files_rate if listing_done and files_rate > 0 else None
        return View(s.done_files, files_rate, bytes_rate, backlog, listing_done, eta)

    def line(self, v: View) -> str:
        s = self._stats
        eta = human_duration(v.eta_s) if v.eta_s is not None else "—"
        listing = "listing done" if v.listing_done else f"listing ({s.pages} pages so far)"
        return (f"{s.fetched} fetched, {s.skipped} skipped, {s.parked} parked, "
                f"{s.retried} retried | {human_bytes(s.transferred)} at "
                f"{human_bytes(v.bytes_rate)}/s, {v.files_rate:.0f} files/s | "
                f"backlog {v.backlog} | {listing} | ETA {eta}{self._throttling()}")

    def _throttling(self) -> str:
        """' | 429s 12, fetch 85/s, list 20/s' once the source has pushed back or limits set."""
        lim = self._limiter
        if lim is None:
            return ""
        hits = lim.throttled("fetch") + lim.throttled("list")
        rates = [f"{b} {lim.rate(b):.0f}/s" for b in ("fetch", "list")
                 if math.isfinite(lim.rate(b))]
        if not hits and not rates:
            return ""
        return f" | 429s {hits}" + "".join(f", {r}" for r in rates)

    def table(self, v: View) -> Table:
        from rich.table import Table

        s = self._stats
        t = Table.grid(padding=(0, 2))
        t.add_row("files", f"{s.fetched} fetched  {s.skipped} skipped  {s.parked} parked  "
                           f"{s.retried} retried  {s.dirs} empty folders")
        t.add_row("bytes", f"{human_bytes(s.transferred)}  {human_bytes(v.bytes_rate)}/s")
        t.add_row("rate", f"{v.files_rate:.0f} files/s over the last {RATE_WINDOW_S:.0f}s")
        t.add_row("listing", "done" if v.listing_done else
                  f"{s.pages} pages, {s.listed_files} files so far")
        t.add_row("backlog", f"{v.backlog} files to fetch")
        t.add_row("ETA", human_duration(v.eta_s) if v.eta_s is not None else "after listing")
        throttling = self._throttling()
        if throttling:
            t.add_row("source", throttling.removeprefix(" | "))
        t.add_row("elapsed", human_duration(s.elapsed_s))
        return t

    async def _loop(self) -> None:
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(0.5 if self._live else 1.0)
            view = await self.read()
            if self._live is not None:
                self._live.update(self.table(view))
            elif time.monotonic() - last_log >= self._log_every:
                last_log = time.monotonic()
                log.info("%s", self.line(view))


def _held(d: QueueDepth | None) -> int:
    return 0 if d is None else d.ready + (d.unacked or 0)


def summary(stats: Stats, parked_total: int, *, show_parked: int = 20) -> str:
    """The final report; always printed."""
    s = stats
    elapsed = max(s.elapsed_s, 1e-6)
    lines = [
        f"fetched {s.fetched} files ({human_bytes(s.fetched_bytes)}), skipped {s.skipped} "
        f"already current, {s.dirs} empty folders made, parked {parked_total}",
        f"received {human_bytes(s.transferred)} in {human_duration(elapsed)}: "
        f"{human_bytes(s.transferred / elapsed)}/s, {(s.fetched + s.skipped) / elapsed:.0f} "
        f"files/s; {s.retried} retries",
    ]
    if s.parked_items:
        lines.append("parked (not mirrored):")
        for path, reason in list(s.parked_items)[:show_parked]:
            status = f" [HTTP {reason.http_status}]" if reason.http_status else ""
            lines.append(f"  {path or '/'}: {reason.error}{status}: {reason.message}")
        if parked_total > show_parked:
            lines.append(f"  ... and {parked_total - show_parked} more")
    return "\n".join(lines)
