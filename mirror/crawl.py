"""The two handlers: list one page of a folder, fetch one file.

A handler either returns (the worker acks) or raises a ``MirrorError`` (the worker retries,
parks or stops). Neither acks nor retries itself; both are safe to run twice for one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from mirror.broker import Broker, Topology
from mirror.concurrency import AdaptiveLimit, hand_back
from mirror.disk import Disk, PartFile, Placement, check_name
from mirror.errors import (
    IntegrityError,
    MirrorError,
    ProtocolError,
    SourceUnavailable,
    Stalled,
    UnsafePath,
)
from mirror.events import parked_event
from mirror.jobs import FetchJob, Job, JobSpec, ListJob, Reason, shard_of
from mirror.ratelimit import Limiter
from mirror.settings import WorkerSettings
from mirror.sources import Body, Source
from mirror.sources.direct import DirectBody
from mirror.sources.transport import direct_copy
from mirror.stats import Stats

log = logging.getLogger(__name__)
Outcome = Literal["fetched", "skipped", "dir", "listed"]

# A folder that keeps returning empty pages with a next iter is a broken listing, not data.
MAX_EMPTY_PAGES = 3


class BacklogGate:
    """Listing waits while any fetch queue holds more than ``limit`` ready jobs.

    A page takes room for its files before it publishes them; once the room seen at the
    last look at the queues is used up, the next page looks again, counting the files that
    other pages are still publishing. The backlog then stays within the limit plus one page
    per listing process. Where the broker packs several jobs into a message (RabbitMQ) the
    depths are its reckoning of the jobs they hold.
    """

    def __init__(self, broker: Broker, topology: Topology, limit: int) -> None:
        self._broker = broker
        self._topology = topology
        self.limit = limit
        self._lock = asyncio.Lock()
        self.paused_s = 0.0
        # Files that may still be published before the queues are looked at again: the
        # room left below the limit at the last look (consumers only ever shrink a queue),
        # at most a tenth of the limit, so that several listers overshoot it by little.
        # Looking before every page cost the lister several broker round trips a page.
        self._room = 0
        self._publishing = 0  # files of pages between their room and their confirm

    async def backlog(self) -> int:
        depths = await self._broker.depths()
        return max((depths[q].ready_jobs for q in self._topology.fetch_queues if q in depths),
                   default=0)

    @contextlib.asynccontextmanager
    async def room(self, files: int = 1) -> AsyncIterator[None]:
        """Room for ``files`` more, held while the block publishes them.

        Only taking room is one page at a time, not the publish: with the lock held through
        it, pages published one after the other, each waiting for its confirm, and a lister
        alone on RabbitMQ listed about 1,500 pages/s instead of 2,500.
        """
        async with self._lock:
            if self._room <= 0:
                waited = False
                started = time.monotonic()
                while (ready := await self.backlog()) + self._publishing > self.limit:
                    if not waited:
                        log.info("listing paused: a fetch queue holds about %d files, above "
                                 "--max-backlog", ready)
                        waited = True
                    await asyncio.sleep(1.0)
                if waited:
                    self.paused_s += time.monotonic() - started
                    log.info("listing resumed")
                self._room = min(self.limit - ready - self._publishing,
                                 max(1, self.limit // 10))
            self._room -= files
            self._publishing += files
        try:
            yield
        finally:
            self._publishing -= files


@dataclass
class Context:
    spec: JobSpec
    topology: Topology
    source: Source
    broker: Broker
    placement: Placement
    settings: WorkerSettings
    stats: Stats
    limiter: Limiter
    # (disk root, path) -> done signal: a second delivery of a file this process is already
    # fetching (consumer-timeout redelivery, duplicate listing) waits instead of downloading.
    inflight: dict[tuple[str, str], asyncio.Future[None]] = field(default_factory=dict)
    backlog: BacklogGate = field(init=False)
    # Index pages requested at once (--list-concurrency, or adaptive), whatever the messages
    # in hand carry; held for the request only (publishing the page's jobs is no load on the
    # source).
    list_slots: AdaptiveLimit = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.backlog = BacklogGate(self.broker, self.topology, max(1, s.max_backlog))
        self.list_slots = self.limiter.limit_for("list", s.list_concurrency,
                                                 s.max_list_concurrency,
                                                 s.adaptive_list_concurrency)

    def disk_for(self, job: FetchJob) -> Disk:
        shard = shard_of(job.path, self.spec.shards, self.spec.shard_by, job.is_dir)
        return self.placement.disk_for(shard)


async def list_dir(job: ListJob, ctx: Context) -> Outcome:
    async with ctx.list_slots:
        try:
            page = await ctx.source.list_page(job.path, job.cursor)
        finally:
            ctx.list_slots.done()
    if job.last is not None and any(e.path == job.last for e in page.entries):
        raise ProtocolError(
            f"listing of {job.path or '/'}: page {job.page + 1} repeats {job.last!r} from the "
            "page before; the source's paging goes round in circles, this folder's listing stops"
        )
    follow: list[Job] = []
    refused: list[tuple[Job, UnsafePath]] = []
    prefix = f"{job.path}/" if job.path else ""
    for entry in page.entries:
        name = entry.path[len(prefix):] if entry.path.startswith(prefix) else entry.path
        item: Job = (FetchJob(entry.path, is_dir=True) if entry.is_dir and page.flat else
                     ListJob(entry.path) if entry.is_dir else
                     FetchJob(entry.path, entry.size, entry.mtime, entry.etag))
        try:
            for part in name.split("/") if page.flat else (name,):
                check_name(part)
        except UnsafePath as exc:
            refused.append((item, UnsafePath(f"in folder {job.path or '/'}: {exc.message}")))
            continue
        follow.append(item)
    if page.cursor is not None:
        empty = 0 if page.entries else job.empty + 1
        if empty >= MAX_EMPTY_PAGES:
            raise ProtocolError(
                f"listing of {job.path or '/'}: {empty} empty pages in a row, each promising "
                "more; stopping this folder's listing"
            )
        last = page.entries[-1].path if page.entries else job.last
        follow.append(ListJob(job.path, page.cursor, job.page + 1, empty, last))
    elif job.cursor is None and not page.entries:
        follow.append(FetchJob(job.path, is_dir=True))  # an empty folder is reproduced too
    follow.extend(ListJob(job.path, fork) for fork in page.forks)
    await _publish(follow, ctx)  # durable before the page counts as listed
    for item, problem in refused:
        log.warning("refused %r: %s", item.path, problem)
        reason = Reason.from_error(problem, attempts=0)
        await ctx.broker.park(item, reason)
        ctx.stats.park(item.path, reason)
        if ctx.settings.file_events:
            with contextlib.suppress(MirrorError):  # the park is done and must not repeat
                await ctx.broker.publish_event(parked_event(ctx.spec.name, item, reason))
    ctx.stats.pages += 1
    ctx.stats.entries += len(page.entries)
    files = [j for j in follow if isinstance(j, FetchJob) and not j.is_dir]
    ctx.stats.listed_files += len(files)
    ctx.stats.listed_bytes += sum(f.size for f in files)
    return "listed"


async def _publish(follow: list[Job], ctx: Context) -> None:
    """Publish what a page found, durable on return."""
    files = sum(1 for j in follow if isinstance(j, FetchJob) and not j.is_dir)
    ctx.stats.publishing_files += files  # in sight already (--processes auto)
    try:
        async with ctx.backlog.room(files) if files else contextlib.nullcontext():
            await ctx.broker.publish(follow)
    finally:
        ctx.stats.publishing_files -= files


async def fetch_file(job: FetchJob, ctx: Context) -> Outcome:
    disk = ctx.disk_for(job)
    key = (str(disk.root), job.path)
    while (running := ctx.inflight.get(key)) is not None:
        await asyncio.shield(running)  # the other delivery's outcome decides; then re-check
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ctx.inflight[key] = done
    try:
        return await _fetch(job, disk, ctx)
    finally:
        del ctx.inflight[key]
        done.set_result(None)


async def _fetch(job: FetchJob, disk: Disk, ctx: Context) -> Outcome:
    if job.is_dir:
        await disk.run(disk.make_dir, job.path)
        ctx.stats.file_done("dir", 0)
        return "dir"
    window = ctx.settings.modify_window_s
    part = await disk.run(disk.begin, job.path, job.size, job.mtime, window)
    if part is None:
        ctx.stats.file_done("skipped", job.size)
        return "skipped"
    started = time.monotonic()
    ctx.stats.inflight += 1
    try:
        if job.size == 0:
            await disk.commit(part, 0, job.mtime, None, waiting=hand_back)
        else:
            await _download(job, part, disk, ctx)
    finally:
        ctx.stats.inflight -= 1
        if part.is_open:  # a commit closes it: no second trip to the disk threads
            await disk.run(part.close)
    ctx.stats.file_done("fetched", job.size, time.monotonic() - started)
    if ctx.limiter.settings.delay_s:
        await asyncio.sleep(ctx.limiter.settings.delay_s)  # operators ask for a breather
    return "fetched"


async def _download(job: FetchJob, part: PartFile, disk: Disk, ctx: Context) -> None:
    """Stream into the part file, resuming from what it holds; a cut body resumes in place."""
    resumes = 0
    while True:
        if part.size >= job.size:
            await disk.run(part.restart, 0)  # complete or oversize leftovers: start over
        try:
            async with ctx.source.open(job.path, part.size) as body:
                await _receive(job, body, part, disk, ctx)
            return
        except (SourceUnavailable, Stalled) as exc:
            # Bytes already written are good; ask for the rest while the budget lasts.
            if resumes >= ctx.settings.resume_retries:
                raise
            resumes += 1
            log.debug("%s: %s; resuming at byte %d", job.path, exc, part.size)


async def _receive(job: FetchJob, body: Body, part: PartFile, disk: Disk, ctx: Context) -> None:
    if body.offset != part.size:
        if body.offset != 0:
            raise ProtocolError(f"{job.path}: asked for bytes from {part.size}, the source sent "
                                f"bytes from {body.offset}")
        await disk.run(part.restart, 0)  # the source ignored our Range: start over
    if body.total_size is not None and body.total_size != job.size:
        raise IntegrityError(
            f"{job.path}: the source now reports {body.total_size} bytes, the listing said "
            f"{job.size}; it changed after listing (re-seed the job to pick up the new version)"
        )
    md5 = body.md5 if ctx.settings.verify_checksum else None
    track = md5 is not None
    remaining = job.size - part.size
    if remaining <= ctx.settings.small_file_max:
        data = await body.read_all()
        ctx.stats.transferred += len(data)
        await disk.commit(part, job.size, job.mtime, md5, data, track, waiting=hand_back)
        return
    direct = direct_copy(body)  # a socket-to-file copy where the transport offers one
    if direct is not None:
        await _receive_direct(job, direct, part, disk, ctx, track, md5)
        return
    watch = RateWatch(ctx.settings.min_rate_bps, ctx.settings.stall_window_s)
    # Chunks are gathered into a batch and written with one pwritev in the disk pool while
    # the next batch is received: network and disk overlap, and no bytes are copied.
    batch: list[bytes] = []
    batched = 0
    received = part.size
    writing: asyncio.Future[None] | None = None
    try:
        async for chunk in body.chunks(ctx.settings.chunk_size):
            received += len(chunk)
            ctx.stats.transferred += len(chunk)
            watch.add(len(chunk), job.path)
            if received > job.size:
                raise IntegrityError(f"{job.path}: the source sent more than the listed "
                                     f"{job.size} bytes")
            batch.append(chunk)
            batched += len(chunk)
            if batched >= ctx.settings.chunk_size:
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(
                    disk.run(part.write_many, batch, track, alone=True))
                batch, batched = [], 0
        if writing is not None:
            await writing
            writing = None
        await disk.commit(part, job.size, job.mtime, md5, b"".join(batch), track, alone=True,
                          waiting=hand_back)
    finally:
        if writing is not None:  # the part must not be closed under a running write
            with contextlib.suppress(Exception):
                await asyncio.shield(writing)


async def _receive_direct(job: FetchJob, direct: DirectBody, part: PartFile, disk: Disk,
                          ctx: Context, track: bool, md5: str | None) -> None:
    """Copy the body from its socket in a disk thread (see ``mirror.sources.direct``)."""
    end = part.size + len(direct.head) + direct.length
    if end != job.size:
        direct.close()
        raise IntegrityError(f"{job.path}: the response ends at byte {end}, the listing says "
                             f"{job.size} bytes")
    progress = _ThreadProgress(ctx.stats, RateWatch(ctx.settings.min_rate_bps,
                                                    ctx.settings.stall_window_s), job.path)
    copying = asyncio.ensure_future(
        disk.run(part.write_from, direct, track, progress.add, alone=True))
    try:
        await asyncio.shield(copying)
    except asyncio.CancelledError:
        direct.cancel()  # the thread stops within a poll; the part must outlive it
        while not copying.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({copying})
        if not copying.cancelled():
            copying.exception()  # retrieved: the cancellation is what is reported
        raise
    finally:
        progress.flush()
        direct.close()
    await disk.commit(part, job.size, job.mtime, md5, track=track, alone=True,
                      waiting=hand_back)


class _ThreadProgress:
    """Bytes counted in a disk thread, handed to the loop's stats about ten times a second
    (each hand-over wakes the loop)."""

    def __init__(self, stats: Stats, watch: RateWatch, what: str) -> None:
        self._stats = stats
        self._watch = watch
        self._what = what
        self._loop = asyncio.get_running_loop()
        self._pending = 0
        self._last = time.monotonic()

    def add(self, n: int) -> None:  # in the disk thread
        self._pending += n
        self._watch.add(n, self._what)
        now = time.monotonic()
        if now - self._last >= 0.1:
            n, self._pending, self._last = self._pending, 0, now
            self._loop.call_soon_threadsafe(self._count, n)

    def _count(self, n: int) -> None:
        self._stats.transferred += n

    def flush(self) -> None:  # on the loop, once the thread is done
        n, self._pending = self._pending, 0
        self._count(n)


class RateWatch:
    """Raises ``Stalled`` when a transfer stays below ``min_bps`` for a whole window.

    The read timeout catches a source that sends nothing; this catches one that trickles.
    """

    def __init__(self, min_bps: float, window_s: float) -> None:
        self.min_bps = min_bps
        self.window_s = window_s
        self._start = time.monotonic()
        self._bytes = 0

    def add(self, n: int, what: str) -> None:
        if self.min_bps <= 0:
            return
        self._bytes += n
        elapsed = time.monotonic() - self._start
        if elapsed < self.window_s:
            return
        rate = self._bytes / elapsed
        if rate < self.min_bps:
            raise Stalled(f"{what}: {rate:.0f} B/s over the last {elapsed:.0f} s, below the "
                          f"minimum of {self.min_bps:.0f} B/s; resuming")
        self._start, self._bytes = time.monotonic(), 0


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MirrorError) else f"{type(exc).__name__}: {exc}"
