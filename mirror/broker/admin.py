"""Looking after a job from outside its workers: ``mirror failures``, ``retry``, ``stop``,
``status`` and ``watch``. Only RabbitMQ has jobs that outlive a process, so only
``RabbitBroker`` implements ``BrokerAdmin``; an embedded run keeps its parked jobs in a
journal instead (``mirror.parking``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from mirror.broker import Bus, Carriage, ParkedJob, QueueDepth
from mirror.jobs import JobSpec


class BrokerAdmin(Bus, Protocol):
    """Operations on one job's queues as a whole. An admin connection also speaks on the job's
    bus (``mirror stop`` broadcasts, ``mirror status`` pings and listens)."""

    name: str  # "rabbitmq://host:port/vhost" (no credentials)

    async def attach(self) -> JobSpec:
        """Load the stored spec of the job; ConfigError when there is none."""
        ...

    async def depths(self) -> dict[str, QueueDepth]: ...

    def in_jobs(self, depths: Mapping[str, QueueDepth],
                reported: Carriage | None = None) -> dict[str, QueueDepth]:
        """``depths`` read elsewhere (the management API) with their jobs per message told
        from what the workers report they carried (the broker may pack jobs)."""
        ...

    async def parked_jobs(self, limit: int = 10_000) -> list[ParkedJob]:
        """Read (and leave in place) up to ``limit`` parked jobs."""
        ...

    async def requeue_parked(self, select: Callable[[ParkedJob], bool]) -> int:
        """Put the selected parked jobs back on their work queues, attempts reset; returns
        how many moved."""
        ...

    async def delete_job(self) -> None:
        """Remove every queue and exchange of the job (its queued and parked work too)."""
        ...

    async def close(self) -> None: ...


async def connect_admin(url: str, job: str) -> BrokerAdmin:
    """An admin connection to the existing job ``job`` on the RabbitMQ at ``url``."""
    from mirror.broker.rabbitmq import RabbitBroker  # aio-pika: only for commands that use it

    broker = await RabbitBroker.connect(url, job, connection_name="bucket-mirror admin")
    try:
        await broker.attach()
    except BaseException:
        await broker.close()
        raise
    return broker


__all__ = ["BrokerAdmin", "connect_admin"]
