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
from aio_pika.abc import AbstractRobustConnection

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
