"""How a job lies on RabbitMQ (the layout is in ``mirror.broker.rabbitmq``'s docstring): its
queues and exchanges declared, its stored spec read back, all of it deleted."""

from __future__ import annotations

import contextlib

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from mirror.broker import Topology
from mirror.broker.rabbit_common import QUEUE_ARGS, RECOVERABLE, short
from mirror.broker.rabbit_ledger import ledger_queue
from mirror.errors import ConfigError, ProtocolError
from mirror.events import events_exchange
from mirror.jobs import JobSpec


def meta_queue(job: str) -> str:
    return f"{job}.meta"


def control_exchange(job: str) -> str:
    return f"{job}.control"


async def declare_job(conn: AbstractRobustConnection, spec: JobSpec, where: str) -> Topology:
    """Declare every queue and exchange of ``spec``'s job (harmless when they exist); the
    spec itself is published by the caller, into ``meta_queue``."""
    topology = Topology(spec)
    job = spec.name
    channel = await conn.channel()
    try:
        for name in topology.work_queues:
            await channel.declare_queue(name, durable=True, arguments=QUEUE_ARGS)
        await channel.declare_queue(topology.parked_queue, durable=True, arguments=QUEUE_ARGS)
        for tier, delay in enumerate(spec.retry_delays_s):
            name = topology.retry_queue(tier)
            queue = await channel.declare_queue(name, durable=True, arguments={
                **QUEUE_ARGS,
                "x-message-ttl": max(1, round(delay * 1000)),
                "x-dead-letter-exchange": "",  # back by routing key = the original queue
            })
            exchange = await channel.declare_exchange(
                name, aio_pika.ExchangeType.FANOUT, durable=True)
            await queue.bind(exchange)
        await channel.declare_exchange(control_exchange(job), aio_pika.ExchangeType.FANOUT,
                                       durable=True)
        await channel.declare_exchange(events_exchange(job), aio_pika.ExchangeType.TOPIC,
                                       durable=True)
        # drop-head at length 1: publishing a new spec replaces the old one.
        await channel.declare_queue(meta_queue(job), durable=True,
                                    arguments={**QUEUE_ARGS, "x-max-length": 1})
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigError(
            f"job {job!r} has queues on {where} with other settings ({short(exc)}); delete "
            "the job or choose another --job"
        ) from exc
    finally:
        with contextlib.suppress(*RECOVERABLE):
            await channel.close()
    return topology


async def read_spec(conn: AbstractRobustConnection, job: str, where: str) -> JobSpec | None:
    """The stored spec of ``job``, left in place for the other workers; None while another
    worker holds the message for a moment (it reads it the same way)."""
    channel = await conn.channel()
    try:
        queue = await channel.declare_queue(meta_queue(job), passive=True)
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            return None
        body = message.body
        await message.nack(requeue=True)
        return JobSpec.from_json(body)
    except aio_pika.exceptions.ChannelNotFoundEntity as exc:
        raise ConfigError(
            f"no job named {job!r} on {where}; seed it first with "
            f"`mirror seed SOURCE --job {job} --broker URL`"
        ) from exc
    except ProtocolError as exc:
        raise ConfigError(f"the stored spec of job {job!r} is unreadable: "
                          f"{exc.message}") from exc
    finally:
        with contextlib.suppress(*RECOVERABLE):
            await channel.close()


async def delete_job(conn: AbstractRobustConnection, job: str,
                     topology: Topology | None) -> None:
    """Remove every queue and exchange of the job (its queued and parked work too)."""
    names = [meta_queue(job), ledger_queue(job)]
    if topology is not None:
        names += [*topology.pending_queues, topology.parked_queue]
    channel = await conn.channel()
    try:
        for name in names:
            await channel.queue_delete(name)
        if topology is not None:
            for name in topology.retry_queues:
                await channel.exchange_delete(name)
        await channel.exchange_delete(control_exchange(job))
        await channel.exchange_delete(events_exchange(job))
    finally:
        with contextlib.suppress(*RECOVERABLE):
            await channel.close()


__all__ = ["control_exchange", "declare_job", "delete_job", "meta_queue", "read_spec"]
