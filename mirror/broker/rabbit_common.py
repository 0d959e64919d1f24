"""What the RabbitMQ broker's modules share: header names, queue arguments, the transport
errors a reconnect can cure, and how a broker is named in messages (never with credentials)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

ATTEMPTS = "x-mirror-attempts"
FROM_QUEUE = "x-mirror-queue"
REASON = "x-mirror-reason"
QUEUE_ARGS: dict[str, Any] = {"x-queue-version": 2}
# Transport trouble that a reconnect can cure.
RECOVERABLE = (
    aio_pika.exceptions.AMQPConnectionError,
    aio_pika.exceptions.ChannelInvalidStateError,
    aio_pika.exceptions.ChannelClosed,
    aio_pika.exceptions.DeliveryError,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    TimeoutError,
    RuntimeError,  # aiormq: "writer is None" while the connection is being replaced
)


def public_name(url: str) -> str:
    """The broker URL without credentials, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    vhost = parts.path or "/"
    return f"rabbitmq://{host}:{port}{vhost}"


def short(exc: BaseException) -> str:
    """An exception's text, cut to a length fit for one log line."""
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."


async def close_all(conns: Sequence[AbstractRobustConnection]) -> None:
    for conn in conns:
        with contextlib.suppress(*RECOVERABLE, asyncio.CancelledError):
            await asyncio.wait_for(conn.close(), timeout=10)


class QueueReader:
    """Reads a queue's counts afresh, on a channel of its own. The raw channel: aio-pika's
    robust channel answers a passive declare of a queue it knows from its cache, with stale
    counts."""

    def __init__(self, conn: AbstractRobustConnection) -> None:
        self._conn = conn
        self._channel: AbstractChannel | None = None

    async def counts(self, name: str) -> tuple[int, int] | None:
        """(messages ready, consumers) of queue ``name``; None where there is no such queue."""
        for _ in range(2):
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._conn.channel()
            try:
                raw = await self._channel.get_underlay_channel()
                result = await raw.queue_declare(name, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                await self.close()  # the broker closed it
                return None
            except (aio_pika.exceptions.ChannelInvalidStateError,
                    aio_pika.exceptions.ChannelClosed):
                await self.close()
                continue
            return result.message_count or 0, result.consumer_count or 0
        return None

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(*RECOVERABLE):
                await channel.close()  # or the robust wrapper reopens it behind our back

