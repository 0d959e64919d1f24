"""The embedded broker: the same contract as RabbitMQ, inside one process, nothing on disk.

Used by ``mirror run`` without ``--broker`` and by tests. Messages are kept as job objects
(they are frozen), retries wait on the event loop's timers, parked jobs are kept in memory and
reported to an optional callback so the caller can journal them. Holding the jobs, it also
counts the files, bytes and folder listings in each queue (``depths``), which RabbitMQ cannot.
Every message is one job: in one process a message costs next to nothing, so nothing is packed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mirror.broker import (
    Carriage,
    ControlCallback,
    FeedHandler,
    Handler,
    ParkedJob,
    QueueDepth,
    Topology,
)
from mirror.concurrency import Slots
from mirror.errors import ConfigError
from mirror.jobs import FetchJob, Job, JobSpec, ListJob, Reason

log = logging.getLogger(__name__)


@dataclass
class _Message:
    job: Job
    attempts: int = 0
    redelivered: bool = False


@dataclass
class _Load:
    """Files (not empty folders), their bytes and folder listings of some messages."""

    files: int = 0
    bytes: int = 0
    listings: int = 0

    def add(self, job: Job, sign: int = 1) -> None:
        if isinstance(job, FetchJob):
            if not job.is_dir:
                self.files += sign
                self.bytes += sign * job.size
        elif isinstance(job, ListJob):
            self.listings += sign


@dataclass
class _Queue:
    name: str
    items: deque[_Message] = field(default_factory=deque)
    unacked: int = 0
    consumers: int = 0
    delayed: int = 0  # retry tiers: messages waiting for their timer
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    ready_load: _Load = field(default_factory=_Load)  # of the items and the delayed ones
    held_load: _Load = field(default_factory=_Load)  # of the messages handed out

    def put(self, msg: _Message, front: bool = False) -> None:
        if front:
            self.items.appendleft(msg)
        else:
            self.items.append(msg)
        self.ready_load.add(msg.job)
        self.wakeup.set()

    def take(self) -> _Message:
        msg = self.items.popleft()
        self.unacked += 1
        self.ready_load.add(msg.job, -1)
        self.held_load.add(msg.job)
        return msg

    def settled(self, msg: _Message) -> None:
        self.unacked -= 1
        self.held_load.add(msg.job, -1)

    def depth(self) -> QueueDepth:
        ready, held = self.ready_load, self.held_load
        return QueueDepth(len(self.items) + self.delayed, self.unacked, self.consumers,
                          ready_files=ready.files, unacked_files=held.files,
                          ready_bytes=ready.bytes, unacked_bytes=held.bytes,
                          listings=ready.listings + held.listings)


class _Delivery:
    def __init__(self, broker: MemoryBroker, queue: _Queue, msg: _Message, slot: Slots) -> None:
        self._broker = broker
        self._queue = queue
        self._msg = msg
        self._slot = slot
        self._settled = False
        self.job = msg.job
        self.queue = queue.name
        self.attempts = msg.attempts
        self.redelivered = msg.redelivered

    @property
    def settled(self) -> bool:
        return self._settled

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        self._queue.settled(self._msg)
        self._slot.release()
        return True

    async def ack(self) -> None:
        self._settle()

    async def retry(self, delay_s: float) -> None:
        if self._settle():
            again = _Message(self._msg.job, self._msg.attempts + 1, redelivered=False)
            self._broker._delay(self._queue, again, delay_s)

    async def park(self, reason: Reason) -> None:
        if self._settle():
            self._broker._park(ParkedJob(self._msg.job, self._queue.name, reason))

    async def release(self) -> None:
        if self._settle():
            self._queue.put(_Message(self._msg.job, self._msg.attempts, True), front=True)


class _Consumer:
    def __init__(self, queue: _Queue, task: asyncio.Task[None], slots: Slots) -> None:
        self._queue = queue
        self._task = task
        self._slots = slots

    async def set_prefetch(self, prefetch: int) -> None:
        self._slots.resize(prefetch)

    async def cancel(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._queue.consumers -= 1


class _LedgerFeed:
    """A ledger following the events in-process: each handed over as it is published."""

    kept = False

    def __init__(self, subscribers: list[ControlCallback], feeds: list[_LedgerFeed],
                 handler: FeedHandler) -> None:
        self._subscribers = subscribers
        self._feeds = feeds
        self._handler = handler

    def on_event(self, event: dict[str, Any]) -> None:
        self._handler(event, None)

    async def waiting(self) -> int:
        return 0

    async def cancel(self) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(self.on_event)
            self._feeds.remove(self)

    async def close(self) -> None:
        await self.cancel()


class MemoryBroker:
    name = "memory"

    def __init__(self, on_park: Callable[[ParkedJob], None] | None = None) -> None:
        self._spec: JobSpec | None = None
        self._topology: Topology | None = None
        self._queues: dict[str, _Queue] = {}
        self._parked: list[ParkedJob] = []
        self._on_park = on_park
        self._subscribers: list[ControlCallback] = []
        self._event_subscribers: list[ControlCallback] = []
        self._ledgers: list[_LedgerFeed] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            raise ConfigError("the job has not been declared on the embedded broker")
        return self._topology

    @property
    def parked(self) -> list[ParkedJob]:
        return list(self._parked)

    async def declare(self, spec: JobSpec) -> None:
        self._spec = spec
        self._topology = Topology(spec)
        names = [*self._topology.pending_queues, self._topology.parked_queue]
        for name in names:
            self._queues.setdefault(name, _Queue(name))

    async def attach(self) -> JobSpec:
        if self._spec is None:
            raise ConfigError("no job is declared on the embedded broker")
        return self._spec

    async def publish(self, jobs: Sequence[Job]) -> None:
        topology = self.topology
        for job in jobs:
            self._queues[topology.queue_for(job)].put(_Message(job))

    async def park(self, job: Job, reason: Reason) -> None:
        self._park(ParkedJob(job, self.topology.queue_for(job), reason))

    async def consume(self, queue: str, prefetch: int, handler: Handler) -> _Consumer:
        q = self._queues.get(queue)
        if q is None:
            raise ConfigError(f"no queue {queue!r} in this job")
        q.consumers += 1
        slots = Slots(prefetch)
        task = asyncio.create_task(self._consume(q, slots, handler))
        return _Consumer(q, task, slots)

    async def _consume(self, q: _Queue, slot: Slots, handler: Handler) -> None:
        while True:
            await slot.acquire()
            while not q.items:
                q.wakeup.clear()
                await q.wakeup.wait()
            msg = q.take()
            delivery = _Delivery(self, q, msg, slot)
            task = asyncio.create_task(self._handle(handler, delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, handler: Handler, delivery: _Delivery) -> None:
        try:
            await handler(delivery)
        except asyncio.CancelledError:
            await delivery.release()
            raise
        except Exception:
            log.exception("handler failed on %s; job returned to its queue", delivery.job)
            await delivery.release()
        else:
            if not delivery.settled:
                log.error("handler left %s unsettled; returned to its queue", delivery.job)
                await delivery.release()

    def _delay(self, queue: _Queue, msg: _Message, delay_s: float) -> None:
        topology = self.topology
        tier = self._queues[topology.retry_queue(topology.tier_for(delay_s))]
        tier.delayed += 1
        tier.ready_load.add(msg.job)

        def back() -> None:
            self._timers.discard(handle)
            tier.delayed -= 1
            tier.ready_load.add(msg.job, -1)
            queue.put(msg)

        handle = asyncio.get_running_loop().call_later(max(0.0, delay_s), back)
        self._timers.add(handle)

    def _park(self, parked: ParkedJob) -> None:
        self._parked.append(parked)
        self._queues[self.topology.parked_queue].put(_Message(parked.job, parked.reason.attempts))
        if self._on_park is not None:
            self._on_park(parked)

    async def depths(self) -> dict[str, QueueDepth]:
        return {name: q.depth() for name, q in self._queues.items()}

    def carriage(self) -> Carriage:
        return Carriage()  # one job a message: the depths count jobs as they are

    def in_jobs(self, depths: Mapping[str, QueueDepth],
                reported: Carriage | None = None) -> dict[str, QueueDepth]:
        return dict(depths)

    async def broadcast(self, message: dict[str, Any]) -> None:
        for callback in list(self._subscribers):
            callback(dict(message))

    async def subscribe(self, callback: ControlCallback) -> None:
        self._subscribers.append(callback)

    @property
    def events_heard(self) -> bool:
        return bool(self._event_subscribers)

    async def publish_event(self, event: dict[str, Any]) -> None:
        for callback in list(self._event_subscribers):
            callback(dict(event))

    async def subscribe_events(self, callback: ControlCallback) -> None:
        self._event_subscribers.append(callback)

    async def declare_ledger_feed(self, create: bool = True) -> bool:
        return bool(self._ledgers)  # nothing to keep: a ledger here follows in-process

    async def follow_ledger_feed(self, prefetch: int, handler: FeedHandler) -> _LedgerFeed:
        feed = _LedgerFeed(self._event_subscribers, self._ledgers, handler)
        self._event_subscribers.append(feed.on_event)
        self._ledgers.append(feed)
        return feed

    async def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
