"""Being a good client: request rates, bandwidth, and backing off when the source says so.

Every HTTP request of a source passes through a ``Limiter`` (one per worker), under one of two
budgets, ``list`` and ``fetch``, each with:

- a token bucket for the configured rate (``--rps`` / ``--list-rps``), or for this worker's share
  of ``--cluster-rps`` (the job's rate divided by the live workers heard through the broker);
- an adaptive rate (``mirror.ratecontrol``) that slows down when the source pushes back
  because of the rate (a 429/503 share that follows the rate, Retry-After) and not for a steady
  background of failures that the retries absorb.

Bytes received pass through one shared bandwidth bucket (``--bwlimit``).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Literal

from mirror.concurrency import AdaptiveLimit
from mirror.ratecontrol import Pushback, RateController, Reading
from mirror.stats import REQUEST_SECONDS, Histogram

Budget = Literal["list", "fetch"]


@dataclass(frozen=True)
class RateSettings:
    rps: float = 0.0  # fetch requests per second per worker; 0: no fixed limit
    list_rps: float = 0.0
    cluster_rps: float = 0.0  # the whole job's request rate, shared by its live workers
    bwlimit_bps: float = 0.0  # bytes per second across all transfers of the worker
    delay_s: float = 0.0  # pause after each download
    adaptive: bool = True


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; rate 0 or inf: no limit."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()
        self.rate = rate
        self.burst = burst
        self._set_burst()

    def _set_burst(self) -> None:
        self._burst = self.burst if self.burst is not None else max(1.0, self.rate / 10)
        self._tokens = min(self._tokens, self._burst)

    def set_rate(self, rate: float) -> None:
        self._refill()
        self.rate = rate
        self._set_burst()

    @property
    def limited(self) -> bool:
        return 0 < self.rate < math.inf

    def _refill(self) -> None:
        now = time.monotonic()
        if self.limited:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, amount: float = 1.0) -> None:
        if not self.limited:
            return
        async with self._lock:  # first come, first served
            while True:
                self._refill()
                if self._tokens >= min(amount, self._burst):
                    self._tokens -= amount  # may go negative for a large amount: a debt
                    return
                if not self.limited:
                    return
                wait = (min(amount, self._burst) - self._tokens) / self.rate
                await asyncio.sleep(min(wait, 1.0))


class Limiter:
    """The request and bandwidth budgets of one worker."""

    def __init__(self, settings: RateSettings = RateSettings()) -> None:
        self.settings = settings
        self._share = 1  # live workers of the job, for --cluster-rps
        fixed = {"fetch": settings.rps, "list": settings.list_rps}
        self._fixed = {k: v if v > 0 else math.inf for k, v in fixed.items()}
        self._adaptive: dict[Budget, RateController] = {
            b: RateController(self._ceiling(b)) for b in ("list", "fetch")}
        self._buckets: dict[Budget, TokenBucket] = {
            b: TokenBucket(self._ceiling(b)) for b in ("list", "fetch")}
        self._cluster = TokenBucket(self._cluster_share())
        # HTTP requests by (budget, status) and their durations, for metrics.
        self.requests: dict[tuple[str, int], int] = {}
        self.request_seconds = {b: Histogram(REQUEST_SECONDS) for b in ("list", "fetch")}
        # Time requests spent waiting for the budgets (a transfer holds its slot meanwhile).
        self.waited_s: dict[Budget, float] = {"list": 0.0, "fetch": 0.0}
        self.bandwidth = TokenBucket(settings.bwlimit_bps,
                                     burst=max(64 * 1024.0, settings.bwlimit_bps / 20))

    def _cluster_share(self) -> float:
        c = self.settings.cluster_rps
        return c / max(1, self._share) if c > 0 else math.inf

    def _ceiling(self, budget: Budget) -> float:
        return self._fixed[budget]

    def set_workers(self, live: int) -> None:
        """How many workers share ``--cluster-rps`` now (this one included)."""
        if live != self._share:
            self._share = max(1, live)
            self._cluster.set_rate(self._cluster_share())

    def rate(self, budget: Budget) -> float:
        """The rate this worker holds itself to now (inf: none)."""
        own = self._adaptive[budget].rate if self.settings.adaptive else self._fixed[budget]
        return min(own, self._cluster.rate)

    def throttled(self, budget: Budget) -> int:
        return self._adaptive[budget].throttled

    def reading(self, budget: Budget) -> Reading:
        """What the adaptive rate of ``budget`` is doing and why."""
        return self._adaptive[budget].reading()

    def controller(self, budget: Budget) -> RateController:
        return self._adaptive[budget]

    async def admit(self, budget: Budget) -> None:
        """Wait until one more request fits the budgets."""
        adaptive = self._adaptive[budget]
        started = time.monotonic()
        if self.settings.adaptive:
            hold = adaptive.holding_s
            if hold > 0:
                await asyncio.sleep(hold)
            self._buckets[budget].set_rate(adaptive.rate)
        await self._buckets[budget].take()
        await self._cluster.take()
        self.waited_s[budget] += time.monotonic() - started

    def record(self, budget: Budget, status: int, seconds: float) -> None:
        """One answered request (status 0: no answer: timeout, dropped connection)."""
        key = (budget, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.request_seconds[budget].observe(seconds)

    def limit_for(self, budget: Budget, initial: int, maximum: int,
                  adaptive: bool) -> AdaptiveLimit:
        """Slots for the requests of ``budget``, shrunk to what the allowed rate keeps busy."""
        limit = AdaptiveLimit(initial, maximum, adaptive=adaptive,
                              name="listings" if budget == "list" else "transfers")
        limit.rate_allowed = lambda: self.rate(budget)
        limit.waited_s = lambda: self.waited_s[budget]
        return limit

    def success(self, budget: Budget) -> None:
        if self.settings.adaptive:
            self._adaptive[budget].on_success()

    def throttle(self, budget: Budget, retry_after_s: float | None = None,
                 kind: Pushback = "rate") -> None:
        """The source pushed back: ``rate``-wide (429, 503) or for one URI only."""
        a = self._adaptive[budget]
        a.on_throttle(retry_after_s if self.settings.adaptive else None, kind)
        if self.settings.adaptive:
            self._buckets[budget].set_rate(a.rate)

    async def received(self, n: int) -> None:
        await self.bandwidth.take(n)


UNLIMITED = RateSettings(adaptive=False)

__all__ = ["UNLIMITED", "Budget", "Limiter", "RateSettings", "TokenBucket"]
