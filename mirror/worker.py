"""The process: consume a job's queues with bounded concurrency and settle every delivery.

What becomes of a delivery after its handler is the error policy's (``mirror.policy``); a
fatal error stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from mirror.broker import Broker, Consumer, Delivery, Topology
from mirror.concurrency import AdaptiveLimit
from mirror.control import Presence, job_done
from mirror.controls import Control, learn_from_peers, local, merged
from mirror.crawl import Context, Outcome, fetch_file, list_dir
from mirror.disk import Placement
from mirror.errors import FatalError, MirrorError
from mirror.events import finished_event
from mirror.jobs import FetchJob, JobSpec, ListJob
from mirror.policy import Policy
from mirror.ratelimit import UNLIMITED, Limiter
from mirror.settings import WorkerSettings
from mirror.sources import Source
from mirror.stats import Stats

log = logging.getLogger(__name__)
# With --processes auto, files are fetched here until the job shows this much work.
ENGAGE_FILES = 1000
ENGAGE_BYTES = 256 << 20


class Pool(Protocol):
    """Fetch processes (``mirror.fetchpool.FetchPool``)."""

    async def fetch(self, job: FetchJob) -> Outcome: ...

    def total_limit(self) -> int:
        """Transfers the processes allow at once now, in all."""
        ...

    def start_at(self, limit: int) -> None:
        """Have the processes start from ``limit`` transfers in all."""
        ...

    def syncing(self) -> int:
        """Files of the processes that wait only for their group's syncs."""
        ...

    def controls(self) -> list[dict[str, Any]]:
        """Each process's fetch controllers (``Control.to_dict``), as last reported."""
        ...


class Worker:
    def __init__(self, broker: Broker, spec: JobSpec, source: Source, placement: Placement,  # noqa: PLR0913  (the worker's parts, injected)
                 settings: WorkerSettings, stats: Stats | None = None,
                 limiter: Limiter | None = None, pool: Pool | None = None,
                 pool_when_needed: bool = False) -> None:
        self.broker = broker
        self.spec = spec
        self.topology = Topology(spec)
        self.settings = settings
        self.stats = stats or Stats()
        self.limiter = limiter or Limiter(UNLIMITED)
        self.ctx = Context(spec, self.topology, source, broker, placement, settings, self.stats,
                           self.limiter)
        self.fatal: FatalError | None = None
        self.policy = Policy(broker, spec, self.stats, settings.file_events, self._fatal)
        # Where files are fetched: here, or in child processes (mirror.fetchpool; each
        # file's outcome is settled here as if fetched here). With ``pool_when_needed``
        # (--processes auto) they are used once the job shows enough work to gain from them:
        # a small job is done here, without the hand-offs.
        self._pool = pool
        self._pooled = pool is not None and not pool_when_needed
        # Jobs taken and not yet settled (acked, retried, parked, released; their events
        # confirmed), so also the messages that carried them.
        self._held = 0
        self._listing = 0  # listing pages now (those may still publish more work)
        self._taken = 0
        self._handlers: set[asyncio.Task[object]] = set()
        self._consumers: list[Consumer] = []
        self._stop = asyncio.Event()
        # Set on a stop request and whenever this worker's last held job is settled: a job
        # that just ran out of work is then seen done at once instead of at the next poll
        # (the polling interval was most of the run time of a small embedded job).
        self._wake = asyncio.Event()
        self._stopping = False
        # Transfers at once: adaptive here, or, with fetch processes, in each of them (the
        # pool says how many they take in all).
        self._fetch_slots = self.limiter.limit_for(
            "fetch", settings.concurrency, settings.max_concurrency,
            settings.adaptive_concurrency)
        self._fetch_slots.changed = self._limit_changed
        self._pool_slots = AdaptiveLimit(settings.most_transfers, settings.most_transfers,
                                         adaptive=False)
        self.ctx.list_slots.changed = self._limit_changed
        self._prefetch: dict[str, int] = {}  # queue -> prefetch asked of its consumer
        self._told_syncing = 0  # files waiting for their syncs when prefetch last followed
        self._fetch_consumers: list[tuple[str, Consumer]] = []
        self._list_consumer: Consumer | None = None
        self._prefetch_task: asyncio.Task[None] | None = None
        self.presence = Presence(broker, settings.role, self.queues, self.snapshot,
                                 settings.presence_interval_s, on_stop=self.request_stop,
                                 counts=self.counts, on_idle_peer=self._wake.set,
                                 controls=lambda: [c.to_dict() for c in self.controls()])

    @property
    def queues(self) -> list[str]:
        queues = [self.topology.list_queue] if self.settings.lists else []
        if self.settings.fetches:
            queues += [self.topology.fetch_queue(s) for s in self.ctx.placement.shards]
        return queues

    def snapshot(self) -> tuple[int, int]:
        return self._held, self._taken

    def counts(self) -> dict[str, int]:
        """This process's totals, sent with every presence report (``mirror status``)."""
        s, carried = self.stats, self.broker.carriage()
        return {"fetched": s.fetched, "skipped": s.skipped, "parked": s.parked,
                "retried": s.retried, "fetched_bytes": s.fetched_bytes,
                "skipped_bytes": s.skipped_bytes, "received_bytes": s.transferred,
                "listed_files": s.listed_files, "listed_bytes": s.listed_bytes,
                "carried_jobs": carried.jobs, "carried_messages": carried.messages,
                "pages": s.pages, "inflight": s.inflight, "listing": self._listing}

    def request_stop(self, why: str = "stop requested") -> None:
        if not self._stop.is_set():
            log.info("stopping: %s", why)
            self._stop.set()
            self._wake.set()
            self.presence.state = "stopping"

    def _fatal(self, exc: FatalError) -> None:
        self.fatal = self.fatal or exc
        self.request_stop(f"fatal: {exc}")

    def abort(self) -> None:
        """Stop now: held jobs are given back at once instead of finishing."""
        self.request_stop("aborted")
        for task in list(self._handlers):
            task.cancel()

    async def run(self, until_idle: bool = False) -> None:
        """Work until stopped (signal, ``mirror stop``, fatal error) or, with ``until_idle``,
        until the whole job is done. Raises the fatal error, if one stopped the worker."""
        await self.presence.start()
        try:
            for queue in self.queues:
                listing = queue == self.topology.list_queue
                prefetch = self._list_prefetch() if listing else self._fetch_prefetch()
                self._prefetch[queue] = prefetch
                consumer = await self.broker.consume(queue, prefetch, self._deliver)
                self._consumers.append(consumer)
                if listing:
                    self._list_consumer = consumer
                else:
                    self._fetch_consumers.append((queue, consumer))
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(),
                                           timeout=self.settings.idle_poll_s)
                self._wake.clear()
                peers = self.presence.peers()
                self.limiter.set_workers(1 + len(peers))
                learn_from_peers(self.limiter, peers.values())
                if until_idle and not self._stop.is_set() and await self._job_done():
                    log.info("job %s is done", self.spec.name)
                    await self._finished()
                    break
        finally:
            await self._drain()
            await self.presence.stop()
        if self.fatal is not None:
            raise self.fatal

    def controls(self) -> list[Control]:
        """What this worker's adaptive rates and limits are doing, per budget."""
        out = [local("list", self.limiter, self.ctx.list_slots)] if self.settings.lists else []
        if self.settings.fetches:
            if self._pool is not None and self._pooled:
                out.append(merged("fetch", self._pool.controls(), self._pool.total_limit()))
            else:
                out.append(local("fetch", self.limiter, self._fetch_slots))
        return out

    def _list_prefetch(self) -> int:
        return self.ctx.list_slots.limit

    def _fetch_prefetch(self) -> int:
        """Jobs to hold: enough to keep every transfer slot busy, and no more, since held
        jobs age towards the consumer timeout and are out of reach of other workers. A file
        that only waits for its group's syncs has given its transfer slot back but still
        holds its job: those come on top, or the transfers would idle while files wait for
        the disk (a third of a small-file run's time, bench/RESULTS.md)."""
        syncing = self._syncing()
        if self._pool is not None and self._pooled:
            total = self._pool.total_limit()
            # Plus what is still fetched here (handed over, the pool needs its own share).
            return total + max(2, total // 4) + self._fetch_slots.slots.held + syncing
        limit = self._fetch_slots.limit
        return limit + max(2, limit // 4) + syncing

    def _syncing(self) -> int:
        if self._pool is not None and self._pooled:
            return self._pool.syncing() + self.ctx.placement.syncing()
        return self.ctx.placement.syncing()

    def _syncing_moved(self) -> None:
        """Prefetch and the hand-over to the fetch processes follow the files waiting for
        their syncs (checked as jobs end; followed once they moved by a quarter)."""
        syncing = self._syncing()
        told = self._told_syncing
        if abs(syncing - told) >= max(8, told // 4):
            self._told_syncing = syncing
            self._pool_slots.slots.resize(self.settings.most_transfers + syncing)
            self._limit_changed(0)

    def _use_pool(self) -> bool:
        if self._pooled or self._pool is None:
            return self._pooled
        s = self.stats
        sight = max(s.listed_files + s.publishing_files, self._taken)
        if sight >= ENGAGE_FILES or s.listed_bytes + s.fetched_bytes >= ENGAGE_BYTES:
            log.info("fetching in the fetch processes from now on: the job has %d files in "
                     "sight", sight)
            self._pooled = True
            self._pool.start_at(self._fetch_slots.limit)
            self._limit_changed(0)
        return self._pooled

    def _limit_changed(self, _limit: int) -> None:
        """A concurrency limit moved: let the consumers' prefetch follow (in the background,
        as a broker round trip)."""
        if self._prefetch_task is None or self._prefetch_task.done():
            self._prefetch_task = asyncio.get_running_loop().create_task(self._set_prefetch())

    def pool_limits_changed(self) -> None:
        self._limit_changed(0)

    async def _set_prefetch(self) -> None:
        while not self._stopping:  # until no limit moved while the last change went out
            wanted = [(queue, consumer, self._fetch_prefetch())
                      for queue, consumer in self._fetch_consumers]
            if self._list_consumer is not None:
                wanted.append((self.topology.list_queue, self._list_consumer,
                               self._list_prefetch()))
            stale = [(q, c, n) for q, c, n in wanted if self._prefetch.get(q) != n]
            if not stale:
                return
            for queue, consumer, prefetch in stale:
                self._prefetch[queue] = prefetch
                with contextlib.suppress(MirrorError):
                    await consumer.set_prefetch(prefetch)

    async def _finished(self) -> None:
        """Tell followers of the job's events that it is done (the listing worker does)."""
        if not self.settings.lists:
            return
        parked = 0
        with contextlib.suppress(MirrorError):
            depth = (await self.broker.depths()).get(self.topology.parked_queue)
            parked = depth.ready if depth is not None else 0
        with contextlib.suppress(MirrorError):
            await self.broker.publish_event(finished_event(self.spec.name, {
                "parked_total": parked, **self.counts()}))

    async def _job_done(self) -> bool:
        try:
            return await job_done(self.broker, self.topology, self.presence, self.snapshot)
        except MirrorError as exc:  # the broker is restarting: ask again later
            log.info("cannot tell whether the job is done yet: %s", exc)
            return False

    async def _drain(self) -> None:
        """Take nothing new; let held work finish within the deadline; give back the rest."""
        self._stopping = True
        for consumer in self._consumers:
            with contextlib.suppress(Exception):
                await consumer.cancel()
        self._consumers.clear()
        if self._handlers:
            _, late = await asyncio.wait(set(self._handlers),
                                         timeout=self.settings.drain_deadline_s)
            for task in late:
                task.cancel()  # the handler releases its delivery; .part files stay
            if late:
                log.warning("drain deadline passed: %d jobs given back to the queue", len(late))
                await asyncio.wait(late, timeout=10)

    async def _deliver(self, delivery: Delivery) -> None:
        if self._stopping:
            await delivery.release()
            return
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._held += 1
        self._taken += 1
        try:
            await self._process(delivery)
        finally:
            self._held -= 1
            self._syncing_moved()
            if not self._held:
                self._wake.set()
                self.presence.nudge()
            if task is not None:
                self._handlers.discard(task)

    async def _process(self, delivery: Delivery) -> None:
        job = delivery.job
        started = 0.0  # when the fetch got its transfer slot (its event tells the seconds)
        try:
            if isinstance(job, ListJob):
                self._listing += 1
                try:
                    outcome = await list_dir(job, self.ctx)
                finally:
                    self._listing -= 1
            elif self._pool is not None and self._use_pool():
                async with self._pool_slots:  # the processes adapt their own slots
                    started = time.monotonic()
                    outcome = await self._pool.fetch(job)
            else:
                async with self._fetch_slots:
                    started = time.monotonic()
                    moved = 0
                    try:
                        outcome = await fetch_file(job, self.ctx)
                        moved = job.size if outcome == "fetched" else 0
                    finally:
                        self._fetch_slots.done(moved)
        except asyncio.CancelledError:
            await asyncio.shield(self.policy.release(delivery))
            raise
        except Exception as exc:
            await self.policy.failed(delivery, exc)
        else:
            await self.policy.done(delivery, outcome,
                                   time.monotonic() - started if started else None)
