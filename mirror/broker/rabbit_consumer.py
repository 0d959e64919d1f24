"""The consuming side of the RabbitMQ broker: a message unpacked into one delivery per job, and
a consumer whose prefetch is counted in jobs.

Two facts of RabbitMQ shape the consumer:

- prefetch (``basic.qos``) counts messages, and a message may carry many jobs
  (``mirror.broker.batching``). A worker asks for the jobs it can work on; the consumer turns
  that into messages by the jobs its recent messages carried. Counted in messages, a worker
  that asked for 40 held 40 messages of 32 files: a whole small job, out of reach of the other
  workers (which then idled while it worked alone).
- a consumer's prefetch is fixed when it starts: ``basic.qos`` with ``global=false`` applies to
  consumers started after it, and ``global=true`` (per channel) is deprecated in RabbitMQ 4
  and not offered on quorum queues. So a new prefetch starts a new consumer on the same
  channel and then cancels the old one. The deliveries in hand stay valid (they belong to the
  channel), and those that reached the old consumer before its cancel-ok still arrive (frames
  of a channel come in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from mirror.broker import Handler, Topology
from mirror.broker.batching import decode_message
from mirror.broker.rabbit_common import ATTEMPTS, RECOVERABLE
from mirror.errors import BrokerError, ProtocolError
from mirror.jobs import Job, Reason

log = logging.getLogger(__name__)


class Settler(Protocol):
    """What a delivery needs of its broker to move its job elsewhere, durably."""

    @property
    def topology(self) -> Topology: ...

    async def publish_to_tier(self, job: Job, tier: int, queue: str, attempts: int) -> None: ...

    async def park_from(self, job: Job, queue: str, reason: Reason) -> None: ...

    async def park_raw(self, body: bytes, queue: str, reason: Reason) -> None: ...


def attempts_of(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(ATTEMPTS, 0)
    return max(0, value) if isinstance(value, int) else 0


class RabbitMessage:
    """One AMQP message and the jobs it carried: acked once every one of them is settled
    (acked, in a retry tier, parked), given back whole (nack, requeue) when any was."""

    def __init__(self, message: AbstractIncomingMessage, queue: str, jobs: int) -> None:
        self._message = message
        self._left = jobs
        self._give_back = False
        self.queue = queue
        self.attempts = attempts_of(message)
        self.redelivered = bool(message.redelivered)

    async def settled(self, give_back: bool) -> None:
        self._left -= 1
        self._give_back = self._give_back or give_back
        if self._left:
            return
        how = "nack" if self._give_back else "ack"
        try:
            if self._give_back:
                await self._message.nack(requeue=True)
            else:
                await self._message.ack()
        except (aio_pika.exceptions.ChannelInvalidStateError, aiormq.exceptions.AMQPError,
                ConnectionError, RuntimeError) as exc:
            # The channel this message came on is gone (reconnect, consumer timeout): the
            # broker has requeued it and will deliver it again; the handler's skip check
            # makes that redelivery cheap.
            log.warning("could not %s a message on %s (%s); the broker redelivers it", how,
                        self.queue, type(exc).__name__)


class RabbitDelivery:
    """One job of a message."""

    def __init__(self, settler: Settler, message: RabbitMessage, job: Job) -> None:
        self._settler = settler
        self._message = message
        self._settled = False
        self.job = job
        self.queue = message.queue
        self.attempts = message.attempts
        self.redelivered = message.redelivered

    @property
    def settled(self) -> bool:
        return self._settled

    async def _done(self, give_back: bool) -> None:
        self._settled = True
        await self._message.settled(give_back)

    async def _moved(self, move: Awaitable[None]) -> None:
        """Settled once ``move`` (a publish to a retry tier or the parked queue) is durable:
        a crash in between duplicates the job, never loses it. If it fails the job is given
        back with its message."""
        try:
            await move
        except BaseException:
            await self._done(True)
            raise
        await self._done(False)

    async def ack(self) -> None:
        if not self._settled:
            await self._done(False)

    async def retry(self, delay_s: float) -> None:
        if not self._settled:
            tier = self._settler.topology.tier_for(delay_s)
            await self._moved(self._settler.publish_to_tier(self.job, tier, self.queue,
                                                            self.attempts + 1))

    async def park(self, reason: Reason) -> None:
        if not self._settled:
            await self._moved(self._settler.park_from(self.job, self.queue, reason))

    async def release(self) -> None:
        if not self._settled:
            await self._done(True)


class JobsPerMessage:
    """A running estimate of the jobs one queue's messages carry."""

    WEIGHT = 0.25  # of the newest message: a few messages move it most of the way

    def __init__(self, guess: float) -> None:
        self.value = max(1.0, guess)

    def observe(self, jobs: int) -> None:
        self.value = max(1.0, self.value + self.WEIGHT * (jobs - self.value))

    def messages_for(self, jobs: int) -> int:
        """Messages to hold for ``jobs`` jobs in hand: exactly as many while a message
        carries one job; one more than they fill while messages carry several, so that a
        message kept by its last slow job does not leave the others idle."""
        return math.ceil(max(1, jobs) / self.value) + (1 if self.value >= 2 else 0)


def _worth_a_change(held: int, wanted: int) -> bool:
    # Each change costs a consume and a cancel: not for a message or two on a large prefetch.
    return wanted != held and abs(wanted - held) >= max(1, held // 4)


class QueueConsumer:
    """The consumer of one work queue, with its prefetch asked for in jobs."""

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, name: str,
                 deliver: Callable[[RabbitMessage, list[Job]], Awaitable[None]],
                 settler: Settler, tasks: set[asyncio.Task[None]],
                 guess: float) -> None:
        self._channel = channel
        self._queue = queue
        self.name = name
        self._deliver = deliver
        self._settler = settler
        self._tasks = tasks
        self.per_message = JobsPerMessage(guess)
        self._wanted = 1  # jobs
        self.prefetch = 0  # messages, as the running consumer was started with
        self._tag: str | None = None
        self._lock = asyncio.Lock()
        self._resizing: asyncio.Task[None] | None = None

    async def start(self, jobs: int) -> None:
        self._wanted = jobs
        self.prefetch = self.per_message.messages_for(jobs)
        # Prefetch is the concurrency: the consumer-timeout clock starts at delivery, so
        # messages waiting in the client would age towards it.
        await self._channel.set_qos(prefetch_count=self.prefetch)
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    async def set_prefetch(self, prefetch: int) -> None:
        """Hold about ``prefetch`` jobs from now on (the concurrency moved)."""
        self._wanted = max(1, prefetch)
        await self._resize()

    async def _resize(self) -> None:
        async with self._lock:
            messages = self.per_message.messages_for(self._wanted)
            if self._tag is None or not _worth_a_change(self.prefetch, messages):
                return
            try:
                await self._channel.set_qos(prefetch_count=messages)
                tag = await self._queue.consume(self._on_message, no_ack=False)
            except RECOVERABLE as exc:
                # A broker that is away now misses this one; the next change comes.
                log.debug("prefetch of %s not changed: %s", self.name, exc)
                return
            old, self._tag, self.prefetch = self._tag, tag, messages
            with contextlib.suppress(*RECOVERABLE):
                await self._queue.cancel(old)

    async def cancel(self) -> None:
        """Stop new deliveries; deliveries already handed out stay owned until settled."""
        async with self._lock:
            tag, self._tag = self._tag, None
            if tag is None:
                return
            try:
                await self._queue.cancel(tag)
            except RECOVERABLE as exc:
                log.debug("cancel of consumer %s failed: %s", tag, exc)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Our own task, not aio-pika's: a channel that closes (consumer timeout, broker
        # restart) cancels its callback tasks, which would abort a download that is fine and
        # make its redelivered copy download the file again.
        task = asyncio.create_task(self._receive(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receive(self, message: AbstractIncomingMessage) -> None:
        try:
            jobs = decode_message(message.body)
        except ProtocolError as exc:
            log.error("undecodable message on %s parked: %s", self.name, exc.message)
            try:
                await self._settler.park_raw(message.body, self.name, Reason.from_error(exc, 0))
                await message.ack()
            except (BrokerError, *RECOVERABLE):
                log.warning("could not park an undecodable message; it stays queued")
            return
        self._observe(len(jobs))
        await self._deliver(RabbitMessage(message, self.name, len(jobs)), jobs)

    def _observe(self, jobs: int) -> None:
        self.per_message.observe(jobs)
        wanted = self.per_message.messages_for(self._wanted)
        if (_worth_a_change(self.prefetch, wanted) and self._tag is not None
                and (self._resizing is None or self._resizing.done())):
            self._resizing = asyncio.get_running_loop().create_task(self._resize())


async def deliver_each(handler: Handler, deliveries: list[RabbitDelivery]) -> None:
    """Run ``handler`` on each delivery of one message, as if each had come alone; a failed
    or unsettled one goes back to its queue."""
    if len(deliveries) == 1:
        await _deliver(handler, deliveries[0])
    else:
        await asyncio.gather(*(_deliver(handler, d) for d in deliveries))


async def _deliver(handler: Handler, delivery: RabbitDelivery) -> None:
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
