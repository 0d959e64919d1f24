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
import sys
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mirror.crawl import Outcome
from mirror.disk import Placement
from mirror.errors import ConfigError, SourceUnavailable
from mirror.fetchchild import child as child_main
from mirror.fetchwire import LINE_LIMIT, Lines, error_from
from mirror.jobs import FetchJob, JobSpec, encode_job
from mirror.prefork import Forked, ForkedProcess, fork_children, reap
from mirror.ratelimit import RateSettings
from mirror.settings import SourceSettings, WorkerSettings
from mirror.stats import Stats

log = logging.getLogger(__name__)


class _Child:
    def __init__(self, index: int, setup: bytes, initial_limit: int,
                 forked: Forked | None = None) -> None:
        self.index = index
        self._setup = setup
        self._forked = forked  # forked before the loop started: used for the first process
        if forked is not None:
            forked.taken = True
        self._proc: asyncio.subprocess.Process | ForkedProcess | None = None
        self._lines: Lines | None = None
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
                                  sys.executable, "-m", "mirror.fetchchild",
                                  stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                  limit=LINE_LIMIT))
                assert self._proc.stdin is not None
                self._proc.stdin.write(self._setup + b"\n")
                self._lines = Lines(self._proc.stdin)
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
            raise error_from(reply)
        outcome: Outcome = reply["outcome"]
        self._stats.file_done(outcome, job.size, float(reply.get("seconds", 0.0)))
        return outcome

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._children), return_exceptions=True)


def fork(processes: int) -> list[Forked]:
    """Fetch processes for ``--processes``, forked now (before the event loop starts)."""
    return fork_children(processes, child_main)


__all__ = ["FetchPool", "fork"]
