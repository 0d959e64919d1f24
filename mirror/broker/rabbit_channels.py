"""Confirmed publishing on RabbitMQ, and the fan-out subscriptions of a job's control and events
exchanges: the two ways the RabbitMQ broker talks besides its work queues."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from mirror.broker import ControlCallback
from mirror.broker.rabbit_common import RECOVERABLE, short
from mirror.errors import BrokerError

log = logging.getLogger(__name__)
# How long a publish keeps retrying through a reconnect before it gives up with BrokerError:
# long enough for a broker restart, short enough that a worker does not hang forever.
PUBLISH_PATIENCE_S = 120.0


class Publisher:
    """Persistent, confirmed publishes on one channel of ``conn``, at most ``window`` waiting
    for their confirms at once."""

    def __init__(self, conn: AbstractRobustConnection, where: str, job: str,
                 window: int) -> None:
        self._conn = conn
        self._where = where
        self._job = job
        self._window = asyncio.Semaphore(window)
        self._channel: AbstractChannel | None = None

    async def channel(self) -> AbstractChannel:
        if self._channel is None:
            self._channel = await self._conn.channel(publisher_confirms=True,
                                                     on_return_raises=True)
        return self._channel

    async def publish(self, exchange_name: str, routing_key: str, body: bytes,
                      headers: dict[str, Any], mandatory: bool = True) -> None:
        """One persistent, confirmed publish (mandatory: a queue must take it); rides out
        reconnects for a while."""
        message = aio_pika.Message(body, headers=headers or None,
                                   delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                   content_type="application/json")
        deadline = time.monotonic() + PUBLISH_PATIENCE_S
        delay = 0.2
        async with self._window:
            while True:
                try:
                    channel = await self.channel()
                    exchange: AbstractExchange
                    if exchange_name:
                        exchange = await channel.get_exchange(exchange_name, ensure=False)
                    else:
                        exchange = channel.default_exchange
                    await exchange.publish(message, routing_key, mandatory=mandatory, timeout=30)
                    return
                except aio_pika.exceptions.PublishError as exc:
                    raise BrokerError(
                        f"RabbitMQ could not route a message to {routing_key!r} "
                        f"(queue or exchange missing: was job {self._job!r} deleted?)"
                    ) from exc
                except RECOVERABLE as exc:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise BrokerError(
                            f"publishing to {routing_key!r} on {self._where} failed for "
                            f"{PUBLISH_PATIENCE_S:.0f} s ({short(exc)}); nothing was acked, "
                            "the work will be redone"
                        ) from exc
                    log.debug("publish to %s failed (%s); retrying", routing_key, short(exc))
                    await asyncio.sleep(min(delay, left))
                    delay = min(delay * 2, 5.0)
                    await self._wait_ready(left)

    async def _wait_ready(self, limit_s: float) -> None:
        channel = self._channel
        if channel is None:
            return
        ready = getattr(channel, "ready", None)
        if ready is not None:
            with contextlib.suppress(TimeoutError, *RECOVERABLE):
                await asyncio.wait_for(ready(), timeout=max(0.1, min(limit_s, 30)))


async def subscribe_json(conn: AbstractRobustConnection, exchange: str,
                         callback: ControlCallback) -> AbstractChannel:
    """Call ``callback`` with each JSON object published to ``exchange`` from now on (an
    exclusive queue of our own; not durable work). Returns the channel, which the caller
    keeps: the robust connection restores only channels that are still referenced."""
    channel = await conn.channel()
    queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key="#")

    async def on_message(message: AbstractIncomingMessage) -> None:
        try:
            data = json.loads(message.body)
        except ValueError:
            return
        if isinstance(data, dict):
            callback(data)

    await queue.consume(on_message, no_ack=True)
    return channel


__all__ = ["PUBLISH_PATIENCE_S", "Publisher", "subscribe_json"]
