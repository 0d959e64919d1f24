"""What every HTTP-based source shares on top of ``mirror.sources.transport``: the transport
itself (one per source), quick retries of transient failures, and the mapping of statuses to
``mirror.errors``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mirror.errors import (
    ErrorDetail,
    MirrorError,
    RateLimited,
    SourceUnavailable,
    Stalled,
    TransientError,
)
from mirror.ratelimit import Limiter
from mirror.settings import SourceSettings
from mirror.sources.transport import Reply, Transport

log = logging.getLogger(__name__)
T = TypeVar("T")

# Retry-After beyond this is left to the broker's retry tiers instead of holding a slot.
MAX_INLINE_WAIT_S = 30.0


def translate(exc: BaseException, what: str) -> MirrorError:
    """Map a failure during ``what`` (e.g. "GET a/b.jpg") that the wire did not already
    translate to our tree."""
    if isinstance(exc, MirrorError):
        return exc
    if isinstance(exc, TimeoutError):
        return Stalled(f"{what}: no data from the source within the read timeout")
    return SourceUnavailable(f"{what}: {type(exc).__name__}: {exc}")


def status_detail(resp: Reply, code: str | None = None) -> ErrorDetail:
    return ErrorDetail(
        http_status=resp.status,
        code=code,
        request_id=resp.headers.get("X-Request-Id"),
    )


def transient_for_status(status: int, message: str, detail: ErrorDetail,
                         retry_after: float | None) -> TransientError | None:
    """The transient class for an HTTP status, or None when the status is not transient."""
    if status == 429:
        return RateLimited(message, detail, retry_after)
    if status in (408, 499) or status >= 500:
        return SourceUnavailable(message, detail)
    return None


async def with_retries(
    settings: SourceSettings, what: str, attempt: Callable[[], Awaitable[T]]
) -> T:
    """Run ``attempt`` with a few quick retries on transient errors.

    Each call of ``attempt`` must build its request afresh (UpYun signs a new Date per try).
    What remains after the quick retries goes to the broker's retry tiers.
    """
    tries = 0
    while True:
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as raw:
            exc = translate(raw, what)
            if not isinstance(exc, TransientError) or tries >= settings.request_retries:
                raise exc from (None if exc is raw else raw)
            tries += 1
            wait = settings.request_retry_backoff_s * (2 ** (tries - 1)) * random.uniform(0.5, 1.5)
            if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
                if exc.retry_after_s > MAX_INLINE_WAIT_S:
                    raise exc from None
                wait = max(wait, exc.retry_after_s)
            log.debug("%s: %s; retry %d in %.2fs", what, exc, tries, wait)
            await asyncio.sleep(wait)


class HttpSource:
    """What an HTTP source keeps: its settings and the transport all its requests go
    through (``transport``: a ready one, e.g. over ``MockTransport`` in unit tests)."""

    def __init__(self, settings: SourceSettings, limiter: Limiter | None,
                 transport: Transport | None = None) -> None:
        self._settings = settings
        self._transport = transport or Transport(settings, limiter)

    async def close(self) -> None:
        await self._transport.close()
