"""The queue transport: the ``Broker`` protocol, one ``Delivery``, and the job's queue names.

Three small protocols, so that each caller sees only what it uses: ``Broker``, the job's work
queues; ``Bus``, its control broadcasts and events (every broker is also a bus: one
connection serves both); and ``mirror.broker.admin.BrokerAdmin``, looking after a job
from outside (parked jobs, requeue, delete), which only ``RabbitBroker`` implements.

A broker instance serves one job. Both implementations (``MemoryBroker`` in-process,
``RabbitBroker`` over AMQP) give the same guarantees to the worker:

- ``publish`` returns only once every message is durable (confirmed by the broker);
- a delivery stays owned by its consumer until ``ack``/``retry``/``park``/``release``;
  a consumer that dies loses nothing, its deliveries come back;
- ``retry`` brings the job back to its own queue after about the requested delay, with
  ``attempts`` one higher; ``park`` moves it, with its reason, to the job's parked queue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mirror.jobs import FetchJob, Job, JobSpec, Reason, shard_of


@dataclass(frozen=True)
class Topology:
    """Queue and exchange names of one job; every name starts with the job name."""

    spec: JobSpec

    @property
    def job(self) -> str:
        return self.spec.name

    @property
    def list_queue(self) -> str:
        return f"{self.job}.list"

    def fetch_queue(self, shard: int) -> str:
        return f"{self.job}.fetch.{shard}"

    @property
    def fetch_queues(self) -> list[str]:
        return [self.fetch_queue(s) for s in range(self.spec.shards)]

    def retry_queue(self, tier: int) -> str:
        return f"{self.job}.retry.{tier}"

    @property
    def retry_queues(self) -> list[str]:
        return [self.retry_queue(t) for t in range(len(self.spec.retry_delays_s))]

    @property
    def parked_queue(self) -> str:
        return f"{self.job}.parked"

    @property
    def work_queues(self) -> list[str]:
        return [self.list_queue, *self.fetch_queues]

    @property
    def pending_queues(self) -> list[str]:
        """Queues whose messages are work still to do (parked ones are not)."""
        return [*self.work_queues, *self.retry_queues]

    def queue_for(self, job: Job) -> str:
        if isinstance(job, FetchJob):
            return self.fetch_queue(
                shard_of(job.path, self.spec.shards, self.spec.shard_by, job.is_dir)
            )
        return self.list_queue

    def tier_for(self, delay_s: float) -> int:
        """The shortest retry tier that waits at least ``delay_s`` (else the longest)."""
        delays = self.spec.retry_delays_s
        for tier, tier_delay in enumerate(delays):
            if tier_delay >= delay_s:
                return tier
        return len(delays) - 1

    def delay_for_attempt(self, attempts: int) -> float:
        """Backoff after the ``attempts``-th failure: tier 0 first, then longer ones."""
        delays = self.spec.retry_delays_s
        return delays[min(max(attempts, 1), len(delays)) - 1]


@dataclass(frozen=True)
class QueueDepth:
    """Messages in one queue; and, where the broker holds the jobs themselves (the embedded
    one), the files, bytes and folder listings they carry. None where unknown: RabbitMQ
    counts messages only, and a message of a broker that packs jobs may carry several."""

    ready: int
    unacked: int | None = None  # None where the transport cannot tell (plain AMQP)
    consumers: int | None = None
    # Jobs a message carries, on average, as the broker reckons (``Broker.in_jobs``); None:
    # several, how many is not known (the message count is a lower bound).
    per_message: float | None = 1.0
    ready_files: int | None = None  # files in the ready (or retry-waiting) messages
    unacked_files: int | None = None  # files in the messages handed out, not yet settled
    ready_bytes: int | None = None  # their listed sizes
    unacked_bytes: int | None = None
    listings: int | None = None  # folder listings in the queue's messages, ready or held

    @property
    def ready_jobs(self) -> int:
        """Jobs in the ready messages (at least; about, where a message may carry several)."""
        return round(self.ready * (self.per_message or 1.0))


@dataclass(frozen=True)
class Carriage:
    """Jobs one broker carried on the fetch queues (published or consumed), and the messages
    they took. Workers report it, so that whoever reads the queues elsewhere (``mirror
    status``) can have their message counts read as jobs (``Broker.in_jobs``)."""

    jobs: int = 0
    messages: int = 0

    def per_message(self) -> float | None:
        return self.jobs / self.messages if self.jobs and self.messages else None

    def __add__(self, other: Carriage) -> Carriage:
        return Carriage(self.jobs + other.jobs, self.messages + other.messages)


class Delivery(Protocol):
    @property
    def job(self) -> Job: ...

    @property
    def queue(self) -> str: ...

    @property
    def attempts(self) -> int:
        """Failed attempts before this delivery (0 on the first)."""
        ...

    @property
    def redelivered(self) -> bool:
        """The broker may have handed this message out before."""
        ...

    async def ack(self) -> None: ...

    async def retry(self, delay_s: float) -> None: ...

    async def park(self, reason: Reason) -> None: ...

    async def release(self) -> None: ...


Handler = Callable[[Delivery], Awaitable[None]]
ControlCallback = Callable[[dict[str, Any]], None]
# One event of a job's ledger feed, and its ack (None where nothing is kept to ack).
FeedHandler = Callable[[dict[str, Any], Callable[[], Awaitable[None]] | None], None]


class LedgerFeed(Protocol):
    """The job's file events, kept for its ledger, as one writer receives them."""

    # Whether events wait in the feed for a writer (RabbitMQ); else each is handed over as
    # it is published (in-process), and none is on its way once the work is done.
    kept: bool

    async def waiting(self) -> int:
        """Events kept and not yet handed to any writer (0 where nothing is kept)."""
        ...

    async def cancel(self) -> None:
        """Receive no more; the events handed out can still be acked until ``close``."""
        ...

    async def close(self) -> None:
        """Let go: events handed out and not acked are kept for the next writer."""
        ...


class Consumer(Protocol):
    async def cancel(self) -> None: ...

    async def set_prefetch(self, prefetch: int) -> None:
        """Hold up to ``prefetch`` unsettled deliveries from now on (the concurrency moved).
        Deliveries held from before the change may come on top until they settle, and a
        broker that carries several jobs to a message rounds up to whole messages."""
        ...


@dataclass(frozen=True)
class ParkedJob:
    job: Job
    queue: str
    reason: Reason


class Bus(Protocol):
    """The job's broadcast channel between its processes (stop, ping, presence) and its events
    stream for other systems (``mirror.events``). Nothing on it is durable work."""

    async def broadcast(self, message: dict[str, Any]) -> None: ...

    async def subscribe(self, callback: ControlCallback) -> None: ...

    @property
    def events_heard(self) -> bool:
        """Whether an event can reach anyone now. The embedded broker's events reach only its
        own subscribers: without one, a worker need not build a file's event (a few percent
        of a small-file run's CPU). Over RabbitMQ any process may be listening."""
        ...

    async def publish_event(self, event: dict[str, Any]) -> None:
        """Send one job event (``mirror.events``); returns once the broker has it."""
        ...

    async def subscribe_events(self, callback: ControlCallback) -> None:
        """Receive the job's events from now on (a temporary subscription)."""
        ...

    async def declare_ledger_feed(self, create: bool = True) -> bool:
        """Keep the job's file and folder events for a ledger from now on, whether a writer
        runs or not (RabbitMQ: the durable queue ``J.ledger``); with ``create`` False only
        tell whether they are kept. The embedded broker keeps nothing: its ledger follows
        the events in-process, and it answers whether one does."""
        ...

    async def follow_ledger_feed(self, prefetch: int, handler: FeedHandler) -> LedgerFeed:
        """Hand the kept events to ``handler``, at most ``prefetch`` unacked at once; an
        event's ack is to be called once its rows are committed."""
        ...


class Broker(Bus, Protocol):
    """The job's work queues (and, through ``Bus``, its control and events)."""

    name: str  # e.g. "memory" or "rabbitmq://host:port/vhost" (no credentials)

    async def declare(self, spec: JobSpec) -> None:
        """Create the job's queues and store its spec; harmless when they exist."""
        ...

    async def attach(self) -> JobSpec:
        """Load the stored spec of an existing job; ConfigError when there is none."""
        ...

    async def publish(self, jobs: Sequence[Job]) -> None:
        """Put jobs on their queues; returns once every one is durable. How many travel in
        one message is the broker's business: every consumer gets one delivery per job."""
        ...

    async def park(self, job: Job, reason: Reason) -> None:
        """Put a job straight into the parked queue (a listed entry refused before any work)."""
        ...

    async def consume(self, queue: str, prefetch: int, handler: Handler) -> Consumer:
        """Call ``handler`` with one delivery per job. ``prefetch`` bounds the messages held
        unsettled (a broker that packs jobs hands out those of each message it holds)."""
        ...

    async def depths(self) -> dict[str, QueueDepth]:
        """Depth of every queue of the job (work, retry and parked), its jobs per message
        told from what this broker carried (``in_jobs``)."""
        ...

    def carriage(self) -> Carriage:
        """What this broker carried on the fetch queues so far (for workers' reports)."""
        ...

    def in_jobs(self, depths: Mapping[str, QueueDepth],
                reported: Carriage | None = None) -> dict[str, QueueDepth]:
        """``depths`` (read here or elsewhere, e.g. the management API) with their jobs per
        message told, from what this broker and, ``reported``, other workers carried."""
        ...

    async def close(self) -> None: ...


def topology_of(spec: JobSpec) -> Topology:
    return Topology(spec)


__all__ = [
    "Broker",
    "Bus",
    "Carriage",
    "Consumer",
    "ControlCallback",
    "Delivery",
    "FeedHandler",
    "Handler",
    "LedgerFeed",
    "ParkedJob",
    "QueueDepth",
    "Topology",
    "topology_of",
]
