"""How many transfers (or listing requests) run at once: a limit that finds its own level.

A source 60 ms away needs hundreds of transfers in flight to keep a fast link busy; the same
number on loopback only queues in our own event loop, and against a rate-limited API it only
waits at the rate limiter. No fixed default is right for all three, so the limit climbs the
way TCP's slow start does and then holds where more stops paying:

- it changes only in epochs when it was the bottleneck (work waited for a slot most of the
  time): when the listing cannot keep up, or a rate limit holds the requests back, a larger
  limit would tell nothing;
- *start-up*: the limit doubles each such epoch while the throughput (files/s or bytes/s,
  whichever rose more) rises by a fifth or more; when a doubling gains less, the next epoch at
  the same limit is asked again (one epoch is noisy on a busy machine: a climb from 16 that
  stopped at 24 on one bad reading left a source 60 ms away at a fifth of its speed), and if
  it also gains little, the limit settles at three quarters of the last;
- *steady*: every few epochs it tries more, and keeps it only if the throughput rose by 8%:
  half as many again while each transfer takes about as long as the quickest epochs did (by
  Little's law more at once then means more done: nothing queues yet), a quarter more
  otherwise; now and then it tries a fifth less, and keeps that if the throughput held
  within 5% (fewer transfers for the same speed spare the source and our memory);
- when the source limits the request rate (``rate_allowed``), more transfers than twice
  that rate x the time each takes would only wait at the limiter: the limit shrinks to that.

``--concurrency N`` pins the limit (``adaptive=False``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

log = logging.getLogger(__name__)
Phase = Literal["start-up", "steady", "pinned"]

EPOCH_MIN_S = 0.5  # the longest an epoch must be; it is shorter for quick transfers
EPOCH_FLOOR_S = 0.1
TURNS_PER_EPOCH = 4  # an epoch lasts this many times the time a transfer holds its slot
TURNS_PER_STARTUP_EPOCH = 1  # ... and in start-up: one, as TCP's slow start doubles every turn
EPOCH_MAX_S = 5.0
SATURATED = 0.6  # share of an epoch with work waiting for a slot, for the epoch to count
STARTUP_GAIN = 1.2
PROBE_GAIN = 1.08
HOLD_WITHIN = 0.95
PROBE_EVERY = 3  # counted epochs between probes
UNQUEUED = 1.25  # a transfer no slower than this times the quickest epoch's: nothing queues
DOWN_EVERY = 4  # every this many probes is a probe downwards


class Slots:
    """A semaphore whose size may change while slots are held (fair: first come, first in)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.held < self.size and not self._waiters:
            self.held += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future  # the releaser counted this slot as held for us
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted and cancelled in the same turn: give it back
            else:
                self._waiters.remove(future)
            raise

    def release(self) -> None:
        self.held -= 1
        self._wake()

    def resize(self, size: int) -> None:
        self.size = max(1, size)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.held < self.size:
            future = self._waiters.popleft()
            if not future.done():
                self.held += 1
                future.set_result(None)


@dataclass(frozen=True)
class LimitReading:
    limit: int
    phase: Phase
    reason: str


class AdaptiveLimit:
    """Slots for one kind of work, sized by the throughput they bring (see module doc)."""

    def __init__(self, initial: int, maximum: int, *, minimum: int = 1, adaptive: bool = True,
                 name: str = "transfers", clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._unit = "pages/s" if name == "listings" else "files/s"
        self.maximum = max(1, maximum)
        self.minimum = max(1, min(minimum, self.maximum))
        self.adaptive = adaptive
        self.slots = Slots(min(self.maximum, max(self.minimum, initial)))
        self.phase: Phase = "start-up" if adaptive else "pinned"
        self.reason = "starting" if adaptive else "pinned"
        # The request rate the source allows now (inf: no limit), asked at each epoch's end,
        # and the time work spent waiting for it while holding a slot (a running total).
        self.rate_allowed: Callable[[], float] = lambda: math.inf
        self.waited_s: Callable[[], float] = lambda: 0.0
        self.changed: Callable[[int], None] | None = None  # told each new limit
        self._now = clock
        now = clock()
        self._epoch_start = now
        self._mark = now
        self._saturated_s = 0.0  # time with work waiting for a slot (or every slot taken)
        self._held_s = 0.0  # slots held x time: with the work done, the time each took
        self._done = 0
        self._bytes = 0
        self._waited_mark = 0.0
        self._rate_cap: float = math.inf
        self._epoch_s = EPOCH_FLOOR_S  # the first epoch only doubles: no need to wait
        self._counted = 0  # epochs that counted since the last probe
        self._probes = 0
        self._last: _Epoch | None = None  # the last epoch that counted
        self._probe_from: int | None = None  # while probing: the limit to go back to
        self._doubted = False  # start-up: the last doubling gained little once
        self._quickest_s = math.inf  # the shortest time a unit held its slot in an epoch

    @property
    def limit(self) -> int:
        return self.slots.size

    def reading(self) -> LimitReading:
        return LimitReading(self.limit, self.phase, self.reason)

    async def __aenter__(self) -> AdaptiveLimit:
        self._account()
        await self.slots.acquire()
        self._account()
        _holding.set(_Hold(self))
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        hold = _holding.get()
        _holding.set(None)
        if hold is not None and hold.limit is self and not hold.handed_back:
            self._account()
            self.slots.release()

    def _hand_back(self, hold: _Hold) -> None:
        hold.handed_back = True
        self._account()
        self.slots.release()

    def done(self, nbytes: int = 0) -> None:
        """One unit of work (a file, a page) finished; ``nbytes`` it moved."""
        self._done += 1
        self._bytes += nbytes
        if not self.adaptive:
            return
        now = self._now()
        span = now - self._epoch_start
        if span < self._epoch_s or (self._done < max(8, self.limit // 2)
                                    and span < EPOCH_MAX_S):
            return
        self._account()
        saturated = self._saturated_s / span
        waited = self.waited_s()
        turn_s = self._held_s / self._done
        each_s = max(0.0, self._held_s - (waited - self._waited_mark)) / self._done
        epoch = _Epoch(self.limit, self._done / span, self._bytes / span, each_s)
        self._waited_mark = waited
        # A few turns of a slot make an epoch: 0.24 s for a source 60 ms away, where half a
        # second per step made the climb from 32 to 256 a good part of a short job.
        turns = TURNS_PER_EPOCH if self.phase != "start-up" else TURNS_PER_STARTUP_EPOCH
        self._epoch_s = min(EPOCH_MIN_S, max(EPOCH_FLOOR_S, turns * turn_s))
        self._epoch_start, self._saturated_s, self._held_s = now, 0.0, 0.0
        self._done = self._bytes = 0
        allowed = self.rate_allowed()
        # More at once than the allowed rate keeps busy would only wait at the limiter.
        self._rate_cap = (math.ceil(2 * allowed * each_s) + 2 if math.isfinite(allowed)
                          else math.inf)
        if self._rate_cap < self.limit:
            self._probe_from = None
            self._last = None
            self._set(self.limit, f"{self._rate_cap} at once: the source allows "
                      f"{allowed:.0f} requests/s and each holds a slot {each_s * 1000:.0f} ms")
            return
        if saturated < SATURATED:
            if self._probe_from is not None:  # the probe told nothing: back to where it was
                self._set(self._probe_from, f"{self._probe_from} at once")
                self._probe_from = None
            self._last = None
            return
        self._decide(epoch)

    def _account(self) -> None:
        now = self._now()
        slots = self.slots
        if slots.waiting or slots.held >= slots.size:
            self._saturated_s += now - self._mark
        self._held_s += slots.held * (now - self._mark)
        self._mark = now

    def _decide(self, epoch: _Epoch) -> None:
        last, self._last = self._last, epoch
        limit = epoch.limit
        if epoch.each_s > 0:
            self._quickest_s = min(self._quickest_s, epoch.each_s)
        if self.phase == "start-up":
            if last is None or last.limit >= limit or epoch.gain_over(last) >= STARTUP_GAIN:
                self._doubted = False
                self._set(limit * 2, f"start-up: {epoch.files_s:.0f} {self._unit} at {limit} "
                          "at once")
                return
            if not self._doubted:  # ask again at this limit before believing it
                self._doubted = True
                self._last = last
                self.reason = (f"start-up: {limit} at once gained little over "
                               f"{last.limit}; measuring again")
                return
            self.phase = "steady"
            self._last = None
            # Where to settle: three quarters of the last limit, or (by Little's law) what
            # the best throughput needs at the quickest transfer time, if that is fewer; a
            # climb that overshot the knee (a stalled epoch read as a gain) comes back to it.
            best = max(epoch.files_s, last.files_s)
            needed = math.ceil(1.1 * best * self._quickest_s) if self._quickest_s < 1e9 else 0
            settle = max(last.limit, min(int(limit * 0.75), needed or limit))
            self._set(settle, f"{limit} at once gained little over {last.limit}: holding")
            return
        if self._probe_from is not None and last is not None:
            before, self._probe_from = self._probe_from, None
            gain = epoch.gain_over(last)
            if limit > before and gain < PROBE_GAIN:
                self._last = None
                self._set(before, f"{limit} at once gained {gain - 1:+.0%} over {before}: "
                          f"back to {before}")
            elif limit < before and gain < HOLD_WITHIN:
                self._last = None
                self._set(before, f"{limit} at once lost {1 - gain:.0%} against {before}: "
                          f"back to {before}")
            else:
                self.reason = f"{limit} at once: {epoch.files_s:.0f} {self._unit}"
            return
        self._counted += 1
        if self._counted < PROBE_EVERY:
            return
        self._counted = 0
        self._probes += 1
        self._probe_from = limit
        unqueued = epoch.each_s <= UNQUEUED * self._quickest_s
        step = 1.5 if unqueued else 1.25
        target = int(limit * 0.8) if self._probes % DOWN_EVERY == 0 else int(limit * step) + 1
        self._set(target, f"trying {target} at once (from {limit})")

    def raise_to(self, limit: int) -> None:
        """Start from at least ``limit`` (a level found before, elsewhere)."""
        if limit > self.limit:
            self._last = None
            self._set(limit, f"{limit} at once, as found before")

    def _set(self, limit: int, reason: str) -> None:
        limit = int(max(self.minimum, min(self.maximum, self._rate_cap, limit)))
        self.reason = reason
        if limit != self.slots.size:
            log.debug("%s at once: %d -> %d (%s)", self.name, self.slots.size, limit, reason)
            self.slots.resize(limit)
            if self.changed is not None:
                self.changed(limit)


@dataclass
class _Hold:
    limit: AdaptiveLimit
    handed_back: bool = False


# The slot the current task holds, so that code deep in a transfer can give it back early.
_holding: contextvars.ContextVar[_Hold | None] = contextvars.ContextVar("holding", default=None)


def hand_back() -> None:
    """Give the current task's slot back before its work is quite done: a file that waits
    for its group commit (``mirror.groupsync``) moves no bytes, and the next transfer may
    start meanwhile. The work still counts as done (``done``) when it ends."""
    hold = _holding.get()
    if hold is not None and not hold.handed_back:
        hold.limit._hand_back(hold)


@dataclass(frozen=True)
class _Epoch:
    limit: int
    files_s: float
    bytes_s: float
    each_s: float = 0.0  # the time a unit held its slot, waits for the rate limiter excluded

    def gain_over(self, before: _Epoch) -> float:
        """Throughput against ``before``: files/s or bytes/s, whichever rose more."""
        gains = [x / x0 for x, x0 in ((self.files_s, before.files_s),
                                       (self.bytes_s, before.bytes_s)) if x0 > 0]
        return max(gains, default=1.0)


__all__ = ["AdaptiveLimit", "LimitReading", "Slots", "hand_back"]
