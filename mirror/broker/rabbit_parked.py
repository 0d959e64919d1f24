"""The parked queue of a RabbitMQ job: how a parked job carries its reason (headers), and how
parked jobs are read in place or put back on their work queues."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from mirror.broker import ParkedJob, Topology
from mirror.broker.rabbit_common import ATTEMPTS, FROM_QUEUE, REASON, RECOVERABLE
from mirror.errors import ProtocolError
from mirror.jobs import Reason, decode_job, encode_job


def park_headers(queue: str, reason: Reason) -> dict[str, Any]:
    return {ATTEMPTS: reason.attempts, FROM_QUEUE: queue,
            REASON: json.dumps(reason.to_dict(), ensure_ascii=True)}


def parked_of(message: AbstractIncomingMessage) -> ParkedJob | None:
    headers = message.headers or {}
    raw_reason = headers.get(REASON)
    reason_text = raw_reason.decode() if isinstance(raw_reason, bytes) else raw_reason
    origin = headers.get(FROM_QUEUE)
    origin_text = origin.decode() if isinstance(origin, bytes) else str(origin)
    try:
        job = decode_job(message.body)
        reason = Reason.from_dict(json.loads(str(reason_text)))
    except (ProtocolError, ValueError, TypeError, KeyError):
        return None
    return ParkedJob(job, origin_text, reason)


async def read_parked(conn: AbstractRobustConnection, topology: Topology,
                      limit: int) -> list[ParkedJob]:
    """Read (and leave in place) up to ``limit`` parked jobs."""
    channel = await conn.channel()
    out: list[ParkedJob] = []
    held: list[AbstractIncomingMessage] = []
    try:
        queue = await channel.declare_queue(topology.parked_queue, passive=True)
        while len(out) < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            held.append(message)
            parked = parked_of(message)
            if parked is not None:
                out.append(parked)
    finally:
        with contextlib.suppress(*RECOVERABLE):
            await channel.close()  # returns every message read above to the queue
    return out


async def requeue_parked(conn: AbstractRobustConnection, topology: Topology,
                         select: Callable[[ParkedJob], bool],
                         publish: Callable[[str, bytes], Awaitable[None]]) -> int:
    """Put the selected parked jobs back on their work queues, attempts reset; ``publish``
    (queue, body) returns once the job is durable there."""
    channel = await conn.channel()
    moved = 0
    try:
        queue = await channel.declare_queue(topology.parked_queue, passive=True)
        while True:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break  # the ones not selected stay unacked until the channel closes
            parked = parked_of(message)
            if parked is None or not select(parked):
                continue
            target = (parked.queue if parked.queue in topology.work_queues
                      else topology.queue_for(parked.job))
            await publish(target, encode_job(parked.job))
            await message.ack()  # only once the job is durable on its queue again
            moved += 1
    finally:
        with contextlib.suppress(*RECOVERABLE):
            await channel.close()
    return moved


__all__ = ["park_headers", "parked_of", "read_parked", "requeue_parked"]
