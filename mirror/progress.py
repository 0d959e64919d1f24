"""What the operator sees: a live view on a terminal, log lines otherwise, a final summary.

What is left comes from the queues, counted in files (``mirror.backlog``): exactly on the
embedded broker, scaled from messages over RabbitMQ (and then said to be "about"). While the
listing runs the total is not known, so the ETA is a lower bound (for the files found so far);
once it is done the live view shows a progress bar with the total.

On a terminal the log lines and the live view share one console (``terminal_console``): a line
logged while the view is up is printed above it. The view is transient: it is erased when the
work ends, and the summary printed after it stands alone.
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
from typing import TYPE_CHECKING, Any, Protocol

from mirror.backlog import fetch_backlog
from mirror.broker import Broker, Topology
from mirror.controls import Control
from mirror.ratelimit import Limiter
from mirror.stats import Stats

if TYPE_CHECKING:  # rich is imported only for a live display: it costs every start 20 ms
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.progress import Progress as Bar
    from rich.progress import TaskID

log = logging.getLogger("mirror.progress")
RATE_WINDOW_S = 30.0
_terminal: Console | None = None


def terminal_console() -> Console:
    """The stderr console that the live view and the log lines share. A line written by
    another console lands inside the view's frame, which the view then redraws below it,
    leaving stale copies of itself above."""
    global _terminal
    if _terminal is None:
        from rich.console import Console

        _terminal = Console(stderr=True)
    return _terminal


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


def estimate_eta(files_left: int, files_rate: float, bytes_left: int | None,
                 bytes_rate: float) -> float | None:
    """Seconds until ``files_left`` files of ``bytes_left`` bytes are done; None: no rate yet.

    Small files are bound by per-file costs (requests, renames, syncs), large ones by the
    bandwidth, and the rates of the last seconds reflect the mix done then, not the mix left
    (a few multi-GB files after thousands of small ones, or the other way round). The work
    left needs at least its files at the file rate and its bytes at the byte rate, so the
    longer of the two estimates is the honest one; with the same mix they agree.
    """
    if files_left <= 0 and not bytes_left:
        return 0.0
    estimates = []
    if files_rate > 0:
        estimates.append(files_left / files_rate)
    if bytes_left and bytes_rate > 0:
        estimates.append(bytes_left / bytes_rate)
    return max(estimates) if estimates else None


@dataclass(frozen=True)
class View:
    """One reading of the progress, shared by the live view and the log lines."""

    files_done: int  # fetched, found current or parked by this process
    files_rate: float  # files done per second over the last RATE_WINDOW_S
    bytes_rate: float  # bytes received per second
    listed: int  # files this process listed so far
    backlog: int  # files queued, not yet handed to a worker
    in_flight: int  # files handed to workers, not done yet
    exact: bool  # counted file by file (embedded broker); else scaled from messages: "about"
    at_least: bool  # one file counted per message (files per message unknown): a lower bound
    listing_done: bool
    bytes_done: int  # listed sizes of the files fetched or found current
    bytes_left: int | None  # listed sizes of the files left; None where unknown
    eta_s: float | None  # None: no rate yet; while listing, for the files found so far

    @property
    def left(self) -> int:
        return self.backlog + self.in_flight

    @property
    def total(self) -> int | None:
        """Files of the job, known once the listing is done."""
        return self.files_done + self.left if self.listing_done else None

    @property
    def percent(self) -> float | None:
        total = self.total
        if total is None:
            return None
        return 100.0 if total == 0 else 100.0 * self.files_done / total

    @property
    def about(self) -> str:
        """How far to trust the files left (and so the total)."""
        return "" if self.exact else "at least " if self.at_least else "about "


class Holder(Protocol):
    """What the worker of this process tells about the work in its hands."""

    def snapshot(self) -> tuple[int, int]: ...  # (jobs held, jobs taken)

    def counts(self) -> dict[str, int]: ...  # with "listing": pages being listed now

    def controls(self) -> list[Control]: ...  # its adaptive rates and limits


class Progress:
    def __init__(self, stats: Stats, broker: Broker, topology: Topology, *, live: bool,  # noqa: PLR0913  (keyword options of the display)
                 log_every_s: float = 10.0, console: Console | None = None,
                 limiter: Limiter | None = None, worker: Holder | None = None) -> None:
        self._stats = stats
        self._limiter = limiter
        self._broker = broker
        self._topology = topology
        self._worker = worker
        self._live_wanted = live
        self._log_every = log_every_s
        self._console = console
        self._samples: deque[tuple[float, int, int, int]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._live: Live | None = None
        self._bar: tuple[Bar, TaskID] | None = None

    async def __aenter__(self) -> Progress:
        if self._live_wanted:
            from rich.live import Live

            self._live = Live(console=self._console or terminal_console(),
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
            self._live.stop()  # transient: the frame is erased, the summary follows alone

    async def read(self) -> View:
        s = self._stats
        now = time.monotonic()
        self._samples.append((now, s.done_files, s.transferred, s.done_bytes))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        t0, f0, b0, d0 = self._samples[0]
        span = max(now - t0, 1e-6)
        files_rate = (s.done_files - f0) / span if now > t0 else 0.0
        bytes_rate = (s.transferred - b0) / span if now > t0 else 0.0
        # Bytes retire as they arrive and as files are found current (a resumed run):
        # whichever is faster is the rate at which the listed bytes get done.
        done_bytes_rate = max(bytes_rate, (s.done_bytes - d0) / span if now > t0 else 0.0)
        try:
            depths = await self._broker.depths()
        except Exception as exc:  # a reconnecting broker must not break the display
            log.debug("no queue depths: %s", exc)
            depths = {}
        held, listing_here = 0, 0
        if self._worker is not None:
            held = self._worker.snapshot()[0]
            listing_here = self._worker.counts().get("listing", 0)
        b = fetch_backlog(depths, self._topology)
        bytes_left: int | None
        if b.exact:
            # One process lists and fetches everything: what it listed and has not done is
            # left. Bounded by the broker's own counts: at least the files queued, at most
            # those also handed out.
            left = min(max(s.listed_files - s.done_files, b.ready), b.ready + b.held)
            ready_bytes, held_bytes = b.ready_bytes or 0, b.held_bytes or 0
            bytes_left = min(max(s.listed_bytes - s.done_bytes, ready_bytes),
                             ready_bytes + held_bytes)
            listing_done = bool(depths) and b.listings == 0
        else:
            # RabbitMQ: plain AMQP does not count what consumers hold; this worker knows
            # what it holds (less the folders it is listing), other workers' share is missed.
            in_hand = b.held if b.held_known else max(0, held - listing_here)
            left = b.ready + in_hand
            bytes_left = (round(left * s.listed_bytes / s.listed_files) if s.listed_files
                          else None)
            lq = depths.get(self._topology.list_queue)
            listing_done = (lq is not None and lq.ready == 0 and not lq.unacked
                            and not listing_here)
        eta = estimate_eta(left, files_rate, bytes_left, done_bytes_rate)
        queued = min(b.ready, left)
        return View(s.done_files, files_rate, bytes_rate, s.listed_files, queued, left - queued,
                    b.exact, b.lower_bound, listing_done, s.done_bytes, bytes_left, eta)

    def _eta(self, v: View) -> str:
        if not v.listing_done:
            if v.eta_s is None or not v.left:
                return "after listing"
            return f"at least {human_duration(math.ceil(v.eta_s))}, for the files listed so far"
        if v.eta_s is None:
            return "unknown (nothing done in the last seconds)"
        bound = "at least " if v.at_least else "about " if not v.exact and v.left else ""
        return bound + human_duration(math.ceil(v.eta_s))  # 0s only when nothing is left

    def _left(self, v: View) -> str:
        size = f" ({human_bytes(v.bytes_left)})" if v.bytes_left is not None else ""
        return (f"{v.about}{v.left} files{size} left: {v.backlog} queued, "
                f"{v.in_flight} in flight")

    def _done_of_total(self, v: View) -> str:
        return f"{v.files_done} of {v.about}{max(v.total or 0, v.files_done)} files"

    def line(self, v: View) -> str:
        s = self._stats
        if v.total is not None:
            progress = f"{self._done_of_total(v)} ({v.percent:.0f}%)"
        else:
            progress = f"listing ({s.pages} pages, {v.listed} files so far), {v.files_done} done"
        return (f"{progress}, {self._left(v)} | {s.fetched} fetched, {s.skipped} skipped, "
                f"{s.parked} parked, {s.retried} retried | {human_bytes(s.transferred)} at "
                f"{human_bytes(v.bytes_rate)}/s, {v.files_rate:.0f} files/s | "
                f"ETA {self._eta(v)}{self._throttling(why=True)}")

    def _throttling(self, why: bool = False) -> str:
        """' | 429/503s 12 | fetch limited at 85 req/s, 24 at once | list free, 8 at once':
        what the source and the adaptive controllers do (``why``: and the reasons).

        The one place the source's line is made: the live view and the log lines show it."""
        controls = self._worker.controls() if self._worker is not None else []
        lim = self._limiter
        if not controls and lim is None:
            return ""
        hits = (sum(c.throttled for c in controls) if controls else
                lim.throttled("fetch") + lim.throttled("list") if lim is not None else 0)
        parts = [f"429/503s {hits}"] if hits else []
        for c in controls:
            rate = f" at {c.rate:.0f} req/s" if math.isfinite(c.rate) else ""
            text = f"{c.budget} {c.state}{rate}, {c.concurrency} at once"
            if why and c.state != "free":
                text += f" ({c.reason})"
            parts.append(text)
        if not controls and lim is not None:
            parts += [f"{b} {lim.rate(b):.0f}/s" for b in ("fetch", "list")
                      if math.isfinite(lim.rate(b))]
        return "".join(f" | {p}" for p in parts)

    def table(self, v: View) -> RenderableType:
        """The live view: the counts, and once the total is known a progress bar above."""
        from rich.console import Group
        from rich.table import Table

        s = self._stats
        t = Table.grid(padding=(0, 2))
        t.add_row("files", f"{s.fetched} fetched  {s.skipped} skipped  {s.parked} parked  "
                           f"{s.retried} retried  {s.dirs} empty folders")
        t.add_row("bytes", f"{human_bytes(s.transferred)} received  "
                           f"{human_bytes(v.bytes_rate)}/s")
        t.add_row("rate", f"{v.files_rate:.0f} files/s over the last {RATE_WINDOW_S:.0f}s")
        t.add_row("listing", f"done: {v.listed} files" if v.listing_done else
                  f"{s.pages} pages, {v.listed} files so far, {v.files_done} done")
        t.add_row("left", self._left(v))
        if v.total is None:
            t.add_row("ETA", self._eta(v))
        for i, part in enumerate(self._throttling(why=True).split(" | ")[1:]):
            t.add_row("source" if i == 0 else "", part)
        t.add_row("elapsed", human_duration(s.elapsed_s))
        if v.total is None:
            return t
        return Group(self._progress_bar(v), t)

    def _progress_bar(self, v: View) -> RenderableType:
        """rich's Progress, drawn inside this view (never started: the view refreshes it)."""
        total = max(v.total or 0, v.files_done)
        size = human_bytes(v.bytes_done)
        if v.bytes_left is not None:
            size += f" of {v.about}{human_bytes(v.bytes_done + v.bytes_left)}"
        fields: dict[str, Any] = {
            "count": self._done_of_total(v), "size": size,
            "rate": f"{v.files_rate:.0f} files/s {human_bytes(v.bytes_rate)}/s",
            "eta": self._eta(v)}
        if self._bar is None:
            from rich.progress import BarColumn, TaskProgressColumn, TextColumn
            from rich.progress import Progress as Bar

            bar = Bar(BarColumn(), TaskProgressColumn(), TextColumn("{task.fields[count]}"),
                      TextColumn("{task.fields[size]}"), TextColumn("{task.fields[rate]}"),
                      TextColumn("ETA {task.fields[eta]}"),
                      console=self._live.console if self._live else None, auto_refresh=False)
            self._bar = bar, bar.add_task("files", total=total, completed=v.files_done,
                                          **fields)
        bar, task = self._bar
        bar.update(task, total=total, completed=v.files_done, **fields)
        return bar.get_renderable()

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
