"""A fetch process (``mirror.fetchpool``): it reads the setup line the worker sent (the job's
spec, this host's settings, the disks), then answers each file job with the outcome or the error
of ``fetch_file``, within its own adaptive share of the transfers. Forked by the command before
its event loop starts (``mirror.prefork``), or started again as ``python -m mirror.fetchchild``
when one died."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from mirror.aio import run_async, tune_gc
from mirror.broker import Topology
from mirror.broker.memory import MemoryBroker
from mirror.controls import local
from mirror.crawl import Context, fetch_file
from mirror.disk import Disk, Placement
from mirror.diskpool import DiskPool, disk_pool
from mirror.fetchwire import LINE_LIMIT, Lines, reply_for
from mirror.jobs import FetchJob, JobSpec, job_from_dict
from mirror.jobsource import source_for
from mirror.ratelimit import Limiter, RateSettings
from mirror.settings import SourceSettings, WorkerSettings
from mirror.stats import Stats


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
                reply = reply_for(exc)
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
    out = Lines(asyncio.StreamWriter(transport, protocol, None, loop))
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
    return reply_for(TypeError(f"a fetch process got a {type(job).__name__}"))


def child(requests: IO[bytes], answers: IO[bytes]) -> None:
    """A fetch process: answer the requests of one pipe on the other until the first ends."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True,
                        format=f"fetch process {os.getpid()}: %(levelname)s %(message)s")
    tune_gc()  # a fetch process is mirror's own, like the command that started it
    run_async(_child_main(requests, answers))


def main() -> None:
    child(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
