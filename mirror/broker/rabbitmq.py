"""The ``Broker`` contract over RabbitMQ (aio-pika), for jobs shared by many processes and hosts.

Layout of one job ``J`` (every name starts with the job name, so jobs never touch each other):

- ``J.list``, ``J.fetch.<n>``: durable classic v2 work queues, fed through the default exchange;
- ``J.retry.<t>``: one queue per retry tier with a per-queue TTL that dead-letters back through
  the default exchange, using the message's routing key (the queue it came from). Each tier is
  fed by a fanout exchange of the same name so the routing key can carry the destination;
- ``J.parked``: jobs that failed for good, with their reason in headers;
- ``J.meta``: one message, the job's spec, so a worker needs nothing but the job name;
- ``J.control``: fanout exchange for presence reports and stop requests (not durable data);
- ``J.events``: topic exchange of job events (``mirror.events``) for other systems to follow;
- ``J.ledger``: where a job with a ledger keeps its file events for the writer
  (``rabbit_ledger``, ``mirror.ledger``).

Publishing and consuming use separate robust connections: a consumer that the broker blocks
(resource alarm) or a slow ack path does not stall follow-up publishes, and vice versa.
Attempts are counted in our own ``x-mirror-attempts`` header: RabbitMQ 4 ignores a
client-republished ``x-death``.

Given ``BatchLimits``, small files and folders are packed several to a message and file events
sent together (``mirror.broker.batching``); every job of a message is still delivered, acked,
retried, parked and reported on its own, and the message is acked once all of them are
settled. A crash before that redelivers the whole message: the jobs already done are redone
cheaply (skipped as current, listed again), at least once as for any message.

Parts: the layout (``rabbit_setup``), publishing and subscriptions (``rabbit_channels``),
consuming (``rabbit_consumer``), the parked queue (``rabbit_parked``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustConnection,
)

from mirror.broker import (
    Carriage,
    ControlCallback,
    FeedHandler,
    Handler,
    ParkedJob,
    QueueDepth,
    Topology,
)
from mirror.broker.batching import (
    COALESCED_EVENTS,
    BatchLimits,
    EventOutbox,
    FileOutbox,
    encode_message,
    in_jobs,
    split,
)
from mirror.broker.rabbit_channels import PUBLISH_PATIENCE_S, Publisher, subscribe_json
from mirror.broker.rabbit_common import (
    ATTEMPTS,
    RECOVERABLE,
    QueueReader,
    close_all,
    public_name,
    short,
)
from mirror.broker.rabbit_consumer import (
    QueueConsumer,
    RabbitDelivery,
    RabbitMessage,
    deliver_each,
)
from mirror.broker.rabbit_ledger import RabbitLedgerFeed, declare_ledger_queue
from mirror.broker.rabbit_parked import park_headers, read_parked, requeue_parked
from mirror.broker.rabbit_setup import (
    control_exchange,
    declare_job,
    delete_job,
    meta_queue,
    read_spec,
)
from mirror.errors import BrokerError, BrokerUnavailable, ConfigError
from mirror.events import events_exchange
from mirror.jobs import Job, JobSpec, Reason, encode_job

log = logging.getLogger(__name__)
T = TypeVar("T")

ATTACH_PATIENCE_S = 5.0


class RabbitBroker:
    def __init__(self, url: str, job: str, publisher: AbstractRobustConnection,
                 consumer: AbstractRobustConnection, window: int,
                 batching: BatchLimits | None = None) -> None:
        self.name = public_name(url)
        self.job = job
        self._pub_conn = publisher
        self._con_conn = consumer
        self._publisher = Publisher(publisher, self.name, job, window)
        self._topology: Topology | None = None
        self._reader = QueueReader(publisher)
        self._channels: list[AbstractChannel] = []  # strong refs: robust restore needs them
        self._tasks: set[asyncio.Task[Any]] = set()
        self._events_declared = False
        self._batching = batching
        self._files: FileOutbox | None = None  # made with the topology
        self._events = (EventOutbox(batching, self._send_event)
                        if batching is not None and batching.packs_files else None)
        self._carried = Carriage()

    @classmethod
    async def connect(cls, url: str, job: str, *, connection_name: str = "bucket-mirror",
                      window: int = 256, batching: BatchLimits | None = None) -> RabbitBroker:
        """``batching``: pack jobs several to a message when publishing (None: one each).
        Packed messages are unpacked on consume either way."""
        name = public_name(url)
        conns: list[AbstractRobustConnection] = []
        try:
            for role in ("publish", "consume"):
                conns.append(await aio_pika.connect_robust(
                    url, client_properties={"connection_name": f"{connection_name} {job} {role}"},
                    reconnect_interval=2, timeout=15))
        except aio_pika.exceptions.ProbableAuthenticationError as exc:
            await close_all(conns)
            raise BrokerUnavailable(
                f"cannot reach RabbitMQ at {name}: the broker refused the login "
                f"({short(exc)}); check the user and password in --broker / MIRROR_BROKER_URL"
            ) from exc
        except (aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError, OSError,
                TimeoutError, ValueError) as exc:
            await close_all(conns)
            raise BrokerUnavailable(
                f"cannot reach RabbitMQ at {name} ({short(exc)}); check that the broker is "
                "running and that --broker / MIRROR_BROKER_URL points at it"
            ) from exc
        return cls(url, job, conns[0], conns[1], window, batching)

    # -- set-up ------------------------------------------------------------------------

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            raise ConfigError(f"job {self.job!r} is not attached; call declare() or attach()")
        return self._topology

    async def _patiently(self, what: str, action: Callable[[], Awaitable[T]]) -> T:
        """Run a set-up step, riding out a broker restart for a while (as publishes do)."""
        deadline = time.monotonic() + PUBLISH_PATIENCE_S
        delay = 0.5
        while True:
            try:
                return await action()
            except RECOVERABLE as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerUnavailable(
                        f"lost RabbitMQ at {self.name} while {what} ({short(exc)}); check the "
                        "broker, then start this worker again"
                    ) from exc
                log.info("%s: broker not ready (%s); trying again", what, short(exc))
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 5.0)
                with contextlib.suppress(TimeoutError, *RECOVERABLE):
                    await asyncio.wait_for(self._con_conn.ready(), timeout=max(0.1, left))

    async def declare(self, spec: JobSpec) -> None:
        await self._patiently(f"creating job {spec.name!r}", lambda: self._declare(spec))

    async def _declare(self, spec: JobSpec) -> None:
        if spec.name != self.job:
            raise ConfigError(f"spec of job {spec.name!r} declared on broker of job {self.job!r}")
        self._topology = await declare_job(self._pub_conn, spec, self.name)
        await self._publish_raw("", meta_queue(self.job), spec.to_json(), {})

    async def attach(self) -> JobSpec:
        """Read the spec from ``J.meta`` without taking it away from other workers."""
        return await self._patiently(f"reading job {self.job!r}", self._attach)

    async def _attach(self) -> JobSpec:
        deadline = time.monotonic() + ATTACH_PATIENCE_S
        while (spec := await read_spec(self._pub_conn, self.job, self.name)) is None:
            if time.monotonic() > deadline:
                raise ConfigError(f"job {self.job!r} on {self.name} has no stored spec; "
                                  "seed it again with `mirror seed`")
            await asyncio.sleep(0.1)
        self._topology = Topology(spec)
        return spec

    # -- publishing --------------------------------------------------------------------

    async def _publish_raw(self, exchange_name: str, routing_key: str, body: bytes,
                           headers: dict[str, Any], mandatory: bool = True) -> None:
        await self._publisher.publish(exchange_name, routing_key, body, headers, mandatory)

    async def publish(self, jobs: Sequence[Job]) -> None:
        topology = self.topology
        files, messages = split(jobs, self._batching)
        sent = [self._send_message(topology.queue_for(m[0]), m) for m in messages]
        if files:
            sent.append(self._file_outbox(topology).send(files))
        results = await asyncio.gather(*sent, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _file_outbox(self, topology: Topology) -> FileOutbox:
        if self._files is None:
            assert self._batching is not None  # only a batching broker has small files apart
            self._files = FileOutbox(topology, self._batching, self._send_message)
        return self._files

    async def _send_message(self, queue: str, jobs: list[Job]) -> None:
        await self._publish_raw("", queue, encode_message(jobs), {})
        self._count(queue, len(jobs))

    def _count(self, queue: str, jobs: int) -> None:
        if queue != self.topology.list_queue:
            self._carried = self._carried + Carriage(jobs, 1)

    def carriage(self) -> Carriage:
        return self._carried

    def in_jobs(self, depths: Mapping[str, QueueDepth],
                reported: Carriage | None = None) -> dict[str, QueueDepth]:
        return in_jobs(depths, self.topology, self._carried + (reported or Carriage()))

    async def publish_to_tier(self, job: Job, tier: int, queue: str, attempts: int) -> None:
        await self._publish_raw(self.topology.retry_queue(tier), queue, encode_job(job),
                                {ATTEMPTS: attempts})

    async def park_from(self, job: Job, queue: str, reason: Reason) -> None:
        await self._publish_raw("", self.topology.parked_queue, encode_job(job),
                                park_headers(queue, reason))

    async def park(self, job: Job, reason: Reason) -> None:
        await self.park_from(job, self.topology.queue_for(job), reason)

    async def park_raw(self, body: bytes, queue: str, reason: Reason) -> None:
        await self._publish_raw("", self.topology.parked_queue, body,
                                park_headers(queue, reason))

    # -- consuming ---------------------------------------------------------------------

    async def consume(self, queue: str, prefetch: int, handler: Handler) -> QueueConsumer:
        return await self._patiently(f"consuming {queue}",
                                     lambda: self._consume(queue, prefetch, handler))

    async def _consume(self, queue: str, prefetch: int, handler: Handler) -> QueueConsumer:
        topology = self.topology
        if queue not in topology.work_queues:
            raise ConfigError(f"no queue {queue!r} in job {self.job!r}")
        channel = await self._con_conn.channel()
        self._channels.append(channel)
        try:
            amqp_queue = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigError(f"queue {queue!r} does not exist on {self.name}; was job "
                              f"{self.job!r} deleted? seed it again with `mirror seed`") from exc

        async def deliver(message: RabbitMessage, jobs: list[Job]) -> None:
            self._count(queue, len(jobs))
            await deliver_each(handler, [RabbitDelivery(self, message, job) for job in jobs])

        consumer = QueueConsumer(channel, amqp_queue, queue, deliver, self, self._tasks,
                                 guess=self._jobs_per_message(queue))
        await consumer.start(prefetch)
        return consumer

    def _jobs_per_message(self, queue: str) -> float:
        """What a message of ``queue`` is expected to carry before any has come."""
        if self._batching is None or not self._batching.packs_files:
            return 1.0
        if queue == self.topology.list_queue:
            return float(self._batching.folders)
        return float(self._batching.files)

    # -- inspection --------------------------------------------------------------------

    async def _queue_depth(self, name: str) -> QueueDepth | None:
        counts = await self._reader.counts(name)
        return None if counts is None else QueueDepth(counts[0], None, counts[1])

    async def depths(self) -> dict[str, QueueDepth]:
        topology = self.topology
        out: dict[str, QueueDepth] = {}
        try:
            for name in [*topology.pending_queues, topology.parked_queue]:
                depth = await self._queue_depth(name)
                if depth is not None:
                    out[name] = depth
        except RECOVERABLE as exc:
            raise BrokerError(f"cannot read queue depths on {self.name}: {short(exc)}") from exc
        return self.in_jobs(out)

    async def parked_jobs(self, limit: int = 10_000) -> list[ParkedJob]:
        """Read (and leave in place) up to ``limit`` parked jobs."""
        return await read_parked(self._pub_conn, self.topology, limit)

    async def requeue_parked(self, select: Callable[[ParkedJob], bool]) -> int:
        """Put the selected parked jobs back on their work queues, attempts reset."""
        return await requeue_parked(self._pub_conn, self.topology, select,
                                    lambda queue, body: self._publish_raw("", queue, body, {}))

    # -- control -----------------------------------------------------------------------

    async def broadcast(self, message: dict[str, Any]) -> None:
        try:
            channel = await self._publisher.channel()
            exchange = await channel.get_exchange(control_exchange(self.job), ensure=False)
            await exchange.publish(aio_pika.Message(json.dumps(message).encode()), "",
                                   mandatory=False, timeout=10)
        except RECOVERABLE as exc:
            raise BrokerError(f"cannot send a control message on {self.name}: "
                              f"{short(exc)}") from exc

    async def subscribe(self, callback: ControlCallback) -> None:
        await self._patiently("subscribing to control messages",
                              lambda: self._subscribe(callback))

    async def _subscribe(self, callback: ControlCallback) -> None:
        await self._subscribe_to(control_exchange(self.job), callback)

    async def _subscribe_to(self, exchange: str, callback: ControlCallback,
                            declare: Callable[[], Awaitable[Any]] | None = None) -> None:
        if declare is not None:
            await declare()
        self._channels.append(await subscribe_json(self._con_conn, exchange, callback))

    # -- events ------------------------------------------------------------------------

    @property
    def events_heard(self) -> bool:
        return True  # a follower of the events exchange may be anywhere

    async def publish_event(self, event: dict[str, Any]) -> None:
        if self._events is not None and event.get("event") in COALESCED_EVENTS:
            await self._events.send(event)  # shared with files settled at about this time
        else:
            await self._send_event(event)

    async def _send_event(self, event: dict[str, Any]) -> None:
        if not self._events_declared:
            # Jobs seeded by an older version have no events exchange yet.
            await self._patiently("creating the events exchange", self._declare_events)
        try:
            body = json.dumps(event, ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a refused name that is not UTF-8: escaped, still JSON
            body = json.dumps(event).encode()
        await self._publish_raw(events_exchange(self.job), str(event.get("event", "")), body,
                                {}, mandatory=False)

    async def _declare_events(self) -> AbstractExchange:
        channel = await self._publisher.channel()
        exchange = await channel.declare_exchange(events_exchange(self.job),
                                                  aio_pika.ExchangeType.TOPIC, durable=True)
        self._events_declared = True
        return exchange

    async def subscribe_events(self, callback: ControlCallback) -> None:
        await self._patiently("subscribing to job events",
                              lambda: self._subscribe_to(events_exchange(self.job), callback,
                                                         declare=self._declare_events))

    async def declare_ledger_feed(self, create: bool = True) -> bool:
        return await self._patiently("declaring the ledger queue", lambda: declare_ledger_queue(
            self._pub_conn, self.job, self.name, create))

    async def follow_ledger_feed(self, prefetch: int, handler: FeedHandler) -> RabbitLedgerFeed:
        feed = RabbitLedgerFeed(self._con_conn, self.job, self.name)
        await self._patiently("consuming the ledger queue", lambda: feed.start(prefetch, handler))
        return feed

    # -- tear-down ---------------------------------------------------------------------

    async def delete_job(self) -> None:
        """Remove every queue and exchange of the job (its layout read first if need be)."""
        if self._topology is None:
            with contextlib.suppress(ConfigError):
                spec = await read_spec(self._pub_conn, self.job, self.name)
                self._topology = Topology(spec) if spec is not None else None
        await delete_job(self._pub_conn, self.job, self._topology)

    async def close(self) -> None:
        for task in list(self._tasks):  # the worker drained them; these are stragglers
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await close_all([self._con_conn, self._pub_conn])


__all__ = ["RabbitBroker", "public_name"]
