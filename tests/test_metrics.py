"""The exporter reads the job's queues itself when scraped: its gauges do not depend on the
progress display (or anything else) having read them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from prometheus_client.core import Metric

from mirror.broker import QueueDepth
from mirror.broker.memory import MemoryBroker
from mirror.disk import Placement
from mirror.jobs import JobSpec, ListJob
from mirror.metrics import MirrorCollector, QueueReading, Sources
from mirror.ratelimit import Limiter
from mirror.settings import WorkerSettings
from mirror.stats import Stats


def collector(reading: QueueReading, stats: Stats | None = None) -> MirrorCollector:
    return MirrorCollector(Sources("m", "all", "upyun", stats or Stats(), Limiter(),
                                   Placement({}), WorkerSettings(), list, reading.ready))


def samples(metrics: list[Metric], name: str) -> dict[str, float]:
    found = {}
    for family in metrics:
        if family.name == name:
            for sample in family.samples:
                found[sample.labels.get("queue", "")] = sample.value
    return found


async def scrape(c: MirrorCollector) -> list[Metric]:
    return await asyncio.to_thread(lambda: list(c.collect()))  # as the exporter's thread does


async def test_queue_gauges_come_from_the_broker_at_scrape_time() -> None:
    broker = MemoryBroker()
    await broker.declare(JobSpec(name="m", source="upyun://b/"))
    await broker.publish([ListJob(""), ListJob("a")])
    stats = Stats()
    stats.parked = 7  # what this process parked; the broker's count wins where it has one
    metrics = await scrape(collector(QueueReading(broker.depths, asyncio.get_running_loop()),
                                     stats))
    assert samples(metrics, "bucket_mirror_queue_ready")["m.list"] == 2
    assert samples(metrics, "bucket_mirror_parked_jobs") == {"": 0}


async def test_a_fresh_reading_serves_scrapes_and_a_failing_broker_keeps_the_last() -> None:
    calls: list[int] = []
    failing = asyncio.Event()

    async def depths() -> Mapping[str, QueueDepth]:
        calls.append(1)
        if failing.is_set():
            raise ConnectionError("broker reconnecting")
        return {"m.list": QueueDepth(ready=3)}

    loop = asyncio.get_running_loop()
    cached = QueueReading(depths, loop, max_age_s=3600)
    assert await asyncio.to_thread(cached.ready) == {"m.list": 3}
    assert await asyncio.to_thread(cached.ready) == {"m.list": 3}
    assert len(calls) == 1

    uncached = QueueReading(depths, loop, max_age_s=0)
    assert await asyncio.to_thread(uncached.ready) == {"m.list": 3}
    failing.set()
    assert await asyncio.to_thread(uncached.ready) == {"m.list": 3}
    assert len(calls) == 3


async def test_a_slow_broker_does_not_hold_the_scrape() -> None:
    answered = asyncio.Event()

    async def depths() -> Mapping[str, QueueDepth]:
        await answered.wait()  # never set: the broker does not answer
        return {}

    reading = QueueReading(depths, asyncio.get_running_loop(), timeout_s=0.05)
    metrics = await scrape(collector(reading))
    assert samples(metrics, "bucket_mirror_queue_ready") == {}
