"""The job's ledger feed on RabbitMQ: the durable queue ``J.ledger``, bound to the events
exchange ``J.events`` for file and folder events, and its consumer.

The queue is declared when a job is seeded with a ledger (or by the first worker that holds
one), so events published while no writer runs wait in it. It has a single active consumer:
of several workers holding the ledger one writes and the others stand by, taking over when
it goes; a message is acked once its rows are committed, so a writer killed mid-batch
leaves its messages to the next one.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from mirror.broker import FeedHandler
from mirror.broker.rabbit_common import QUEUE_ARGS, RECOVERABLE, QueueReader, short
from mirror.errors import BrokerError, ConfigError
from mirror.events import events_exchange

log = logging.getLogger(__name__)
# The events a ledger keeps (not job.finished, which is no file's).
LEDGER_KEYS = ("file.*", "folder.*")
LEDGER_ARGS: dict[str, Any] = {**QUEUE_ARGS, "x-single-active-consumer": True}


def ledger_queue(job: str) -> str:
    return f"{job}.ledger"


async def declare_ledger_queue(conn: AbstractRobustConnection, job: str, where: str,
                               create: bool) -> bool:
    """Declare ``J.ledger`` and its bindings (``create``), or tell whether it exists."""
    channel = await conn.channel()
    try:
        if not create:
            try:
                await channel.declare_queue(ledger_queue(job), passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                return False
            return True
        exchange = await channel.declare_exchange(events_exchange(job),
                                                  aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(ledger_queue(job), durable=True,
                                            arguments=LEDGER_ARGS)
        for key in LEDGER_KEYS:
            await queue.bind(exchange, key)
        return True
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigError(f"job {job!r} has a queue {ledger_queue(job)!r} on {where} with other "
                          f"settings ({short(exc)}); delete it or choose another --job") from exc
    finally:
        with contextlib.suppress(*RECOVERABLE):
            await channel.close()


class RabbitLedgerFeed:
    """One writer's consumer of ``J.ledger``."""

    kept = True

    def __init__(self, conn: AbstractRobustConnection, job: str, where: str) -> None:
        self._conn = conn
        self._job = job
        self._where = where
        self._channel: AbstractChannel | None = None
        self._reader = QueueReader(conn)
        self._tag: str | None = None
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self._handler: FeedHandler | None = None

    async def start(self, prefetch: int, handler: FeedHandler) -> None:
        self._handler = handler
        self._channel = await self._conn.channel()
        await self._channel.set_qos(prefetch_count=prefetch)
        try:
            self._queue = await self._channel.declare_queue(ledger_queue(self._job),
                                                            passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigError(f"job {self._job!r} has no ledger queue on {self._where}") from exc
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        assert self._handler is not None
        try:
            event = json.loads(message.body)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            log.warning("ledger queue of job %s: a message that is no JSON object, dropped",
                        self._job)
            await message.ack()
            return
        self._handler(event, message.ack)

    async def waiting(self) -> int:
        """Messages ready in ``J.ledger``, not handed to any writer."""
        try:
            counts = await self._reader.counts(ledger_queue(self._job))
        except RECOVERABLE as exc:
            raise BrokerError(f"cannot read the ledger queue of job {self._job!r} on "
                              f"{self._where}: {short(exc)}") from exc
        return 0 if counts is None else counts[0]

    async def cancel(self) -> None:
        # basic.cancel only: the channel stays, so what was handed out can still be acked.
        tag, self._tag = self._tag, None
        if self._queue is not None and tag is not None:
            with contextlib.suppress(*RECOVERABLE):
                await self._queue.cancel(tag)

    async def close(self) -> None:
        await self.cancel()
        if self._channel is not None:
            with contextlib.suppress(*RECOVERABLE):
                await self._channel.close()  # what it held and did not ack goes back
            self._channel = None
        await self._reader.close()


__all__ = ["LEDGER_KEYS", "RabbitLedgerFeed", "declare_ledger_queue", "ledger_queue"]
