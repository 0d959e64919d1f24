"""Fetch processes: one worker's downloads spread over N child processes (``--processes N``).

A small file costs about a millisecond of CPU in one process, half of it in the kernel
(sockets, create, rename) and the rest in Python under one GIL; a process cannot go faster
than one core. Here the worker keeps the queue, the listing, the error policy, stats and
events, and hands each file job to a child over a pipe (one JSON line each way; the lines of
one turn of the loop go in one write). The child runs the same ``fetch_file`` as the worker
would, with its own HTTP session and disk pool, and answers the outcome or the error (class,
message, detail) of the file, which the worker then settles exactly as if it had happened
in-process: ack, retry, park or stop.

A job always goes to the same child (by a hash of its path), so the in-process guard against
two deliveries of one file writing at once still holds for a job delivered twice. A child
that dies fails its jobs as transient errors (they are retried) and is started again for the
next job. The first children are forked by the command before its event loop starts
(``mirror.prefork``); one started again is a new interpreter (``python -m mirror.fetchpool``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from mirror import errors
from mirror.aio import run_async, tune_gc
from mirror.broker import Topology
from mirror.broker.memory import MemoryBroker
from mirror.controls import local
from mirror.crawl import Context, Outcome, fetch_file
from mirror.disk import Disk, Placement
from mirror.diskpool import DiskPool, disk_pool
from mirror.errors import ConfigError, ErrorDetail, MirrorError, SourceUnavailable
from mirror.jobs import FetchJob, JobSpec, encode_job, job_from_dict
from mirror.jobsource import source_for
from mirror.prefork import Forked, ForkedProcess, fork_children, reap
from mirror.ratelimit import Limiter, RateSettings
from mirror.settings import SourceSettings, WorkerSettings
from mirror.stats import Stats

log = logging.getLogger(__name__)
LINE_LIMIT = 64 * 1024 * 1024


class _Lines:
    """Lines for a pipe, written together once per turn of the loop.

    One write per job and one per answer was a system call and a wake-up of the other side
    for every small file; with many transfers running, a turn of the loop sends dozens at once.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._buffer: list[bytes] = []

    async def send(self, line: bytes) -> None:
        if not self._buffer:
            asyncio.get_running_loop().call_soon(self._flush)
        self._buffer.append(line)
        await self._writer.drain()  # waits only while the pipe is full

    def _flush(self) -> None:
        lines, self._buffer = self._buffer, []
        if not self._writer.is_closing():
            self._writer.write(b"".join(lines))


def _error_from(reply: Mapping[str, Any]) -> MirrorError:
    cls = getattr(errors, str(reply.get("error")), None)
    message = str(reply.get("message", "error in a fetch process"))
    detail = ErrorDetail(**reply.get("detail", {}))
    if isinstance(cls, type) and issubclass(cls, errors.RateLimited):
        return cls(message, detail, reply.get("retry_after_s"))
    if isinstance(cls, type) and issubclass(cls, MirrorError):
        return cls(message, detail)
    return SourceUnavailable(f"fetch process: {message}")  # a bug there: retried, then parked


def _reply_for(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MirrorError):
        reply: dict[str, Any] = {"error": type(exc).__name__, "message": exc.message,
                                 "detail": dataclasses.asdict(exc.detail)}
        if isinstance(exc, errors.RateLimited):
            reply["retry_after_s"] = exc.retry_after_s
        return reply
    return {"error": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}"}


class _Child:
    def __init__(self, index: int, setup: bytes, initial_limit: int,
                 forked: Forked | None = None) -> None:
        self.index = index
        self._setup = setup
        self._forked = forked  # forked before the loop started: used for the first process
        if forked is not None:
            forked.taken = True
        self._proc: asyncio.subprocess.Process | ForkedProcess | None = None
        self._lines: _Lines | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._lock = asyncio.Lock()
        self.transferred = 0  # the child's own running total, last reported
        self.limit = initial_limit  # transfers it allows at once, last reported
        self.syncing = 0  # its files waiting only for their group's syncs, last reported
        self.control: dict[str, Any] = {}  # its fetch rate controller, last reported
        self.requests: dict[tuple[str, int], int] = {}  # its requests by budget and status

    async def _ensure(self) -> asyncio.subprocess.Process | ForkedProcess:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            return proc  # the common case, without taking the lock
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                forked, self._forked = self._forked, None
                self._proc = (await ForkedProcess.connect(forked, LINE_LIMIT) if forked else
                              await asyncio.create_subprocess_exec(
                                  sys.executable, "-m", "mirror.fetchpool",
                                  stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                  limit=LINE_LIMIT))
                assert self._proc.stdin is not None
                self._proc.stdin.write(self._setup + b"\n")
                self._lines = _Lines(self._proc.stdin)
                self.transferred = 0
                self._reader = asyncio.create_task(self._read(self._proc))
            return self._proc

    async def start(self) -> None:
        await self._ensure()

    async def _read(self, proc: asyncio.subprocess.Process | ForkedProcess) -> None:
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                reply = json.loads(line)
                future = self._pending.pop(int(reply["id"]), None)
                if future is not None and not future.done():
                    future.set_result(reply)
        finally:
            code = await proc.wait()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(SourceUnavailable(
                        f"fetch process {self.index} exited (code {code}) during the job"))
            self._pending.clear()

    async def ask(self, request: bytes) -> dict[str, Any]:
        """Send one request (JSON fields after the id) and wait for its answer."""
        await self._ensure()
        assert self._lines is not None
        lines = self._lines
        self._next += 1
        ident = self._next
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        try:
            await lines.send(b'{"id":%d,%s}\n' % (ident, request))
            return await future
        except (ConnectionError, BrokenPipeError) as exc:
            raise SourceUnavailable(f"fetch process {self.index} is gone: {exc}") from exc
        finally:
            self._pending.pop(ident, None)

    async def close(self) -> None:
        if self._forked is not None:  # never used
            await asyncio.to_thread(reap, [self._forked])
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the child finishes what it holds and exits
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._reader is not None:
            await self._reader


class FetchPool:
    def __init__(self, processes: int, spec: JobSpec, source: SourceSettings,  # noqa: PLR0913  (every setting a fetch process needs)
                 worker: WorkerSettings, placement: Placement, rates: RateSettings,
                 stats: Stats, forked: Sequence[Forked] = ()) -> None:
        if processes < 2:
            raise ConfigError("a fetch pool needs at least 2 processes")
        if rates.cluster_rps:
            raise ConfigError("--cluster-rps cannot be combined with --processes above 1 yet; "
                              "use --rps (split among the processes)")
        share = RateSettings(rps=rates.rps / processes, list_rps=rates.list_rps,
                             bwlimit_bps=rates.bwlimit_bps / processes, delay_s=rates.delay_s,
                             adaptive=rates.adaptive)
        setup = {
            "spec": json.loads(spec.to_json()),
            "source": {**dataclasses.asdict(source), "env": dict(source.env)},
            # Each process adapts its own share of the transfers (mirror.concurrency).
            "worker": {**dataclasses.asdict(worker),
                       "concurrency": max(1, -(-worker.concurrency // processes)),
                       "max_concurrency": max(1, -(-worker.max_concurrency // processes))},
            "disks": {str(s): str(placement.disk_for(s).root) for s in placement.shards},
            "rates": dataclasses.asdict(share),
            # The worker's own log level: -v shows what each process's limits decide.
            "log_level": logging.getLogger().getEffectiveLevel(),
        }
        raw = json.dumps(setup).encode()
        spare = [f for f in forked if not f.taken]
        self._children = [_Child(i, raw, setup["worker"]["concurrency"],
                                 spare[i] if i < len(spare) else None)
                          for i in range(processes)]
        self._stats = stats
        self.on_limits: Callable[[], None] | None = None  # the children's limits moved
        self._telling: set[asyncio.Future[dict[str, Any]]] = set()

    def total_limit(self) -> int:
        """Transfers the children allow at once now, in all."""
        return sum(c.limit for c in self._children)

    def syncing(self) -> int:
        """Files of the children that wait only for their group's syncs, as last reported."""
        return sum(c.syncing for c in self._children)

    def start_at(self, limit: int) -> None:
        """Have the children start from ``limit`` transfers in all (found by the worker)."""
        share = max(1, -(-limit // len(self._children)))
        for child in self._children:
            task = asyncio.ensure_future(child.ask(b'"start_at":%d' % share))
            self._telling.add(task)
            task.add_done_callback(functools.partial(self._told, child))

    def _told(self, child: _Child, task: asyncio.Future[dict[str, Any]]) -> None:
        self._telling.discard(task)
        if not task.cancelled() and task.exception() is None:
            self._count_bytes(child, task.result())

    def controls(self) -> list[dict[str, Any]]:
        """The fetch rate controller of each child, as it last reported."""
        return [c.control for c in self._children if c.control]

    async def start(self) -> None:
        """Start the children now: a child's interpreter and imports (about 0.15 s) then run
        while the worker lists the first pages, instead of after the first files are ready."""
        await asyncio.gather(*(c.start() for c in self._children))

    async def fetch(self, job: FetchJob) -> Outcome:
        child = self._children[zlib.crc32(job.path.encode()) % len(self._children)]
        self._stats.inflight += 1  # jobs in the children (a skip counts while it is checked)
        try:
            reply = await child.ask(b'"job":%s' % encode_job(job))
        finally:
            self._stats.inflight -= 1
        self._count_bytes(child, reply)
        return self._outcome(job, reply)

    def _count_bytes(self, child: _Child, reply: Mapping[str, Any]) -> None:
        if "syncing" in reply:
            child.syncing = int(reply["syncing"])
        if "transferred" in reply:
            total = int(reply["transferred"])
            self._stats.transferred += max(0, total - child.transferred)
            child.transferred = max(child.transferred, total)
        if "control" in reply:
            child.control = reply["control"]
        if "requests" in reply:  # its running totals: the worker's metrics count them too
            for budget, status, n in reply["requests"]:
                key = (str(budget), int(status))
                seen = child.requests.get(key, 0)
                if n > seen:
                    self._stats.pool_requests[key] = (
                        self._stats.pool_requests.get(key, 0) + n - seen)
                    child.requests[key] = n
        if "limit" in reply and reply["limit"] != child.limit:
            child.limit = int(reply["limit"])
            if self.on_limits is not None:
                self.on_limits()

    def _outcome(self, job: FetchJob, reply: Mapping[str, Any]) -> Outcome:
        if "error" in reply:
            raise _error_from(reply)
        outcome: Outcome = reply["outcome"]
        self._stats.file_done(outcome, job.size, float(reply.get("seconds", 0.0)))
        return outcome

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._children), return_exceptions=True)


# -- the child ---------------------------------------------------------------------------


def _context(setup: Mapping[str, Any], pool: DiskPool) -> Context:
    """What ``fetch_file`` needs, from the setup line the worker sent."""
    spec = JobSpec.from_json(json.dumps(setup["spec"]).encode())
    worker = WorkerSettings(**setup["worker"])
    disks: dict[str, Disk] = {}
    shards = {int(s): disks.setdefault(root, Disk(Path(root), fsync=worker.fsync,
                                                  pool=pool))
              for s, root in setup["disks"].items()}
    limiter = Limiter(RateSettings(**setup["rates"]))
    source = source_for(spec, SourceSettings(**setup["source"]), limiter)
    return Context(spec, Topology(spec), source, MemoryBroker(), Placement(shards), worker,
                   Stats(), limiter)


class _Fetcher:
    """A fetch process's side: its files run within its own adaptive share of transfers."""

    # What the worker shows of this process (its limit, rate controller and request counts)
    # is sent at most this often, and when the process runs out of work: built for every
    # answer it was a tenth of a small-file process's CPU.
    REPORT_EVERY_S = 0.1

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        w = ctx.settings
        self.slots = ctx.limiter.limit_for("fetch", w.concurrency, w.max_concurrency,
                                           w.adaptive_concurrency)
        self._told: tuple[int | None, dict[str, Any] | None] = (None, None)
        self._next_report = 0.0
        self._busy = 0

    async def one(self, job: FetchJob) -> dict[str, Any]:
        reply: dict[str, Any]
        async with self.slots:  # the worker may hand over more than this process's share
            started = time.monotonic()
            moved = 0
            try:
                outcome = await fetch_file(job, self.ctx)
                reply = {"outcome": outcome}
                moved = job.size if outcome == "fetched" else 0
            except Exception as exc:
                reply = _reply_for(exc)
            finally:
                self.slots.done(moved)
            reply["seconds"] = round(time.monotonic() - started, 6)
        return reply

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any]
        self._busy += 1
        try:
            if "start_at" in request:  # the worker's own level, as it hands its work over
                self.slots.raise_to(int(request["start_at"]))
                reply = {}
            else:
                job = job_from_dict(request["job"])
                reply = await (self.one(job) if isinstance(job, FetchJob)
                               else _unexpected(job))
        finally:
            self._busy -= 1
        reply["id"] = request["id"]
        reply["transferred"] = self.ctx.stats.transferred
        reply["syncing"] = self.ctx.placement.syncing()
        limit = self.slots.limit
        if limit != self._told[0]:
            reply["limit"] = limit
        now = time.monotonic()
        if now >= self._next_report or not self._busy:
            self._next_report = now + self.REPORT_EVERY_S
            reply["requests"] = [[b, status, n] for (b, status), n
                                 in self.ctx.limiter.requests.items()]
            control = local("fetch", self.ctx.limiter, self.slots).to_dict()
            if control != self._told[1]:
                reply["control"] = control
            self._told = (limit, control)
        else:
            self._told = (limit, self._told[1])
        return reply


async def _child_main(requests: IO[bytes], answers: IO[bytes]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), requests)
    first = await reader.readline()
    if not first:
        return  # forked, and not needed after all
    setup = json.loads(first)
    logging.getLogger().setLevel(int(setup.get("log_level", logging.WARNING)))
    for noisy in ("aiohttp", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    pool = disk_pool(int(setup["worker"]["max_concurrency"]))
    ctx = _context(setup, pool)
    fetcher = _Fetcher(ctx)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                        answers)
    out = _Lines(asyncio.StreamWriter(transport, protocol, None, loop))
    tasks: set[asyncio.Task[None]] = set()

    async def handle(request: dict[str, Any]) -> None:
        reply = await fetcher.answer(request)
        await out.send(json.dumps(reply).encode() + b"\n")

    try:
        while line := await reader.readline():
            task = asyncio.create_task(handle(json.loads(line)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await ctx.source.close()
        pool.shutdown(wait=True)


async def _unexpected(job: object) -> dict[str, Any]:
    return _reply_for(TypeError(f"a fetch process got a {type(job).__name__}"))


def child(requests: IO[bytes], answers: IO[bytes]) -> None:
    """A fetch process: answer the requests of one pipe on the other until the first ends."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True,
                        format=f"fetch process {os.getpid()}: %(levelname)s %(message)s")
    tune_gc()  # a fetch process is mirror's own, like the command that started it
    run_async(_child_main(requests, answers))


def fork(processes: int) -> list[Forked]:
    """Fetch processes for ``--processes``, forked now (before the event loop starts)."""
    return fork_children(processes, child)


def main() -> None:
    child(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
