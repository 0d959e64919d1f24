"""The adaptive concurrency limit against a model source on a real event loop.

The model: each transfer takes ``latency_s`` while at most ``knee`` run at once; beyond
that the source shares itself (each takes ``latency * running / knee``), so throughput
stops growing at the knee. The limit must climb there quickly and not far past it, and
shrink to what an allowed request rate keeps busy.
"""

from __future__ import annotations

import asyncio
import math
import time

from mirror.concurrency import AdaptiveLimit, Slots


class ModelSource:
    def __init__(self, latency_s: float, knee: int) -> None:
        self.latency_s = latency_s
        self.knee = knee
        self.running = 0
        self.done = 0

    async def transfer(self) -> None:
        self.running += 1
        try:
            await asyncio.sleep(self.latency_s * max(1.0, self.running / self.knee))
        finally:
            self.running -= 1
        self.done += 1


async def drive(limit: AdaptiveLimit, source: ModelSource, seconds: float,
                rate: float = math.inf) -> list[int]:
    """Keep more work waiting than the limit allows; the limit seen every 0.25 s."""
    stop = time.monotonic() + seconds
    seen: list[int] = []
    interval = 1 / rate if math.isfinite(rate) else 0.0
    next_send = [time.monotonic()]

    async def one() -> None:
        async with limit:
            if interval:  # a token bucket in front of the source, as the limiter is
                now = time.monotonic()
                wait = max(0.0, next_send[0] - now)
                next_send[0] = max(now, next_send[0]) + interval
                await asyncio.sleep(wait)
                waited[0] += wait
            await source.transfer()
            limit.done(1000)

    waited = [0.0]
    limit.waited_s = lambda: waited[0]
    limit.rate_allowed = lambda: rate
    tasks: set[asyncio.Task[None]] = set()
    last_look = 0.0
    while time.monotonic() < stop:
        while len(tasks) < limit.limit + 8:
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.002)
        if time.monotonic() - last_look >= 0.25:
            last_look = time.monotonic()
            seen.append(limit.limit)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return seen


async def test_it_climbs_to_the_knee_and_not_far_past_it() -> None:
    source = ModelSource(latency_s=0.02, knee=64)
    limit = AdaptiveLimit(4, 1024)
    seen = await drive(limit, source, 4.0)
    print(f"limit every 0.25 s: {seen}")
    assert max(seen[:8]) >= 48  # within two seconds
    assert limit.phase == "steady"
    assert 32 <= limit.limit <= 160


class HiccupSource(ModelSource):
    """A source far away whose answers stall once for a moment (a busy machine, a GC pause
    on the server): one epoch of start-up then reads as if a doubling gained nothing."""

    def __init__(self, latency_s: float, knee: int, at_s: float, for_s: float) -> None:
        super().__init__(latency_s, knee)
        self.start = time.monotonic()
        self.at_s, self.for_s = at_s, for_s

    async def transfer(self) -> None:
        since = time.monotonic() - self.start
        if self.at_s <= since < self.at_s + self.for_s:
            await asyncio.sleep(self.at_s + self.for_s - since)  # held until it passes
        await super().transfer()


async def test_one_bad_epoch_does_not_end_the_climb() -> None:
    """60 ms away with room for 128 at once: a stall early in the climb must not leave the
    limit at a fraction of that."""
    source = HiccupSource(latency_s=0.06, knee=128, at_s=0.3, for_s=0.15)
    limit = AdaptiveLimit(16, 1024)
    seen = await drive(limit, source, 4.0)
    print(f"limit every 0.25 s: {seen}")
    assert max(seen[:8]) >= 96, limit.reason  # within two seconds
    assert 64 <= limit.limit <= 320


async def test_a_rate_limit_shrinks_it_to_what_the_rate_keeps_busy() -> None:
    source = ModelSource(latency_s=0.02, knee=1000)
    limit = AdaptiveLimit(64, 256)
    await drive(limit, source, 2.0, rate=100.0)
    # 100 requests/s of 20 ms each keep two transfers busy: twice that, and a margin.
    assert limit.limit <= 2 * 100 * 0.02 + 4, limit.reason
    assert "allows" in limit.reason


async def test_a_pinned_limit_stays() -> None:
    source = ModelSource(latency_s=0.005, knee=1000)
    limit = AdaptiveLimit(8, 8, adaptive=False)
    seen = await drive(limit, source, 1.0)
    assert set(seen) == {8}


async def test_slots_resize_while_held() -> None:
    slots = Slots(2)
    await slots.acquire()
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    slots.resize(3)
    await asyncio.sleep(0)
    assert waiter.done() and slots.held == 3
    slots.resize(1)  # shrinking takes effect as slots come back
    slots.release()
    late = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    assert not late.done() and slots.held == 2
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)
    assert slots.waiting == 0
