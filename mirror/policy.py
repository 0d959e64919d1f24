"""The error policy, in one place: what becomes of a delivery once its handler has run.

Success acks (after the file's event is confirmed, where anyone can hear it); a transient error
retries through the broker's delay tiers until the job's ``max_attempts``, then parks; a
permanent error parks at once; a fatal error (credentials, disk full) gives the delivery back
and stops the worker; a broker error gives it back; anything else is a bug, retried and parked
in the end like a transient error.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from mirror.broker import Broker, Delivery, Topology
from mirror.crawl import Outcome, describe
from mirror.errors import (
    BrokerError,
    FatalError,
    MirrorError,
    PermanentError,
    RateLimited,
    TransientError,
)
from mirror.events import file_event, parked_event
from mirror.jobs import FetchJob, JobSpec, Reason
from mirror.stats import Stats

log = logging.getLogger(__name__)


class Policy:
    """Settles deliveries for one worker; ``on_fatal`` stops it."""

    def __init__(self, broker: Broker, spec: JobSpec, stats: Stats, file_events: bool,
                 on_fatal: Callable[[FatalError], None]) -> None:
        self.broker = broker
        self.spec = spec
        self.topology = Topology(spec)
        self.stats = stats
        self.file_events = file_events
        self._on_fatal = on_fatal

    async def done(self, delivery: Delivery, outcome: Outcome,
                   seconds: float | None = None) -> None:
        """``seconds``: how long the fetch took (told in a fetched file's event)."""
        try:
            job = delivery.job
            if (outcome in ("fetched", "skipped") and self.file_events
                    and isinstance(job, FetchJob) and self.broker.events_heard):
                # Confirmed before the ack: at least once, never lost.
                await self.broker.publish_event(file_event(
                    outcome, self.spec.name, job, seconds if outcome == "fetched" else None,
                    self.spec.source))
        except BrokerError as exc:
            await self.failed(delivery, exc)
            return
        await self._settle(delivery.ack())

    async def failed(self, delivery: Delivery, exc: BaseException) -> None:
        """The error policy: give back, retry, park, or stop."""
        job = delivery.job
        if isinstance(exc, BrokerError):
            log.warning("%s: %s; giving the job back", job.path or "/", exc)
            await self._settle(delivery.release())
        elif isinstance(exc, TransientError):
            await self._retry_or_park(delivery, exc)
        elif isinstance(exc, PermanentError):
            await self._park(delivery, exc, delivery.attempts + 1)
        elif isinstance(exc, FatalError):
            await self._settle(delivery.release())
            self._on_fatal(exc)
        else:  # a bug: keep the job, retry it, park it in the end
            log.error("internal error on %s", job.path or "/",
                      exc_info=(type(exc), exc, exc.__traceback__))
            await self._retry_or_park(delivery, exc)

    async def _retry_or_park(self, delivery: Delivery, exc: BaseException) -> None:
        attempts = delivery.attempts + 1
        if attempts >= self.spec.max_attempts:
            await self._park(delivery, exc, attempts)
            return
        delay = self.topology.delay_for_attempt(attempts)
        if isinstance(exc, RateLimited) and exc.retry_after_s:
            delay = max(delay, exc.retry_after_s)
        log.info("%s: %s; retry %d/%d in about %.0fs", delivery.job.path or "/", describe(exc),
                 attempts, self.spec.max_attempts - 1, delay)
        self.stats.retry(type(exc).__name__)
        await self._settle(delivery.retry(delay))

    async def _park(self, delivery: Delivery, exc: BaseException, attempts: int) -> None:
        reason = Reason.from_error(exc, attempts)
        log.warning("parked %s: %s", delivery.job.path or "/", describe(exc))
        self.stats.park(delivery.job.path, reason)
        with contextlib.suppress(MirrorError):  # parking matters more than telling about it
            if self.file_events:
                await self.broker.publish_event(parked_event(self.spec.name, delivery.job,
                                                             reason, self.spec.source))
        await self._settle(delivery.park(reason))

    async def release(self, delivery: Delivery) -> None:
        """Give the job back as it is (the worker is stopping or was cancelled)."""
        await self._settle(delivery.release())

    async def _settle(self, action: Awaitable[None]) -> None:
        """Run an ack/retry/park/release; if the broker is gone the job comes back anyway."""
        try:
            await action
        except MirrorError as exc:
            log.warning("could not settle a delivery (%s); the broker will deliver it again", exc)


__all__ = ["Policy"]
