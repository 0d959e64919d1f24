"""One contract, two brokers: everything here runs against MemoryBroker and the real RabbitMQ."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from mirror.broker import Broker, Delivery, Topology
from mirror.broker.memory import MemoryBroker
from mirror.broker.rabbitmq import RabbitBroker
from mirror.errors import BrokerUnavailable, ConfigError, ErrorDetail, NotFound
from mirror.jobs import FetchJob, JobSpec, ListJob, Reason

Factory = Callable[[], Awaitable[Broker]]


@pytest.fixture(params=["memory", "rabbitmq"])
async def brokers(request: pytest.FixtureRequest, job_name: str) -> AsyncIterator[Factory]:
    """A factory of brokers attached to one job; ``memory`` hands out one shared instance."""
    made: list[Broker] = []
    shared = MemoryBroker()
    url = request.getfixturevalue("rabbit_url") if request.param == "rabbitmq" else None

    async def make() -> Broker:
        if url is None:
            if not made:
                made.append(shared)
            return shared
        broker = await RabbitBroker.connect(url, job_name, connection_name="contract-test")
        made.append(broker)
        return broker

    yield make
    if url is not None:
        cleaner = await RabbitBroker.connect(url, job_name)
        with_spec = made[0] if made else None
        if with_spec is not None and isinstance(with_spec, RabbitBroker):
            cleaner._topology = with_spec._topology
        await cleaner.delete_job()
        await cleaner.close()
    for broker in made:
        await broker.close()


def spec_of(job: str, **kw: Any) -> JobSpec:
    return JobSpec(name=job, source="upyun://b/",
                   source_options=kw.pop("source_options", {"endpoint": "http://127.0.0.1:1"}),
                   retry_delays_s=kw.pop("retry_delays_s", (0.3, 0.6, 1.0)), **kw)


async def collect(broker: Broker, queue: str, n: int, on: Callable[[Delivery], Awaitable[None]],
                  prefetch: int = 10, timeout: float = 20) -> list[Delivery]:
    got: list[Delivery] = []
    done = asyncio.Event()

    async def handler(d: Delivery) -> None:
        got.append(d)
        await on(d)
        if len(got) >= n:
            done.set()

    consumer = await broker.consume(queue, prefetch, handler)
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await consumer.cancel()
    return got


async def wait_depth(broker: Broker, queue: str, ready: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        d = (await broker.depths()).get(queue)
        if d is not None and d.ready == ready:
            return
        assert time.monotonic() < deadline, f"{queue}: {d} never reached ready={ready}"
        await asyncio.sleep(0.1)


async def test_publish_consume_ack(brokers: Factory, job_name: str) -> None:
    b = await brokers()
    spec = spec_of(job_name, shards=2)
    await b.declare(spec)
    t = Topology(spec)
    jobs = [FetchJob(f"d{i}/f #{i}.bin", size=i, mtime=1_700_000_000 + i) for i in range(40)]
    await b.publish([ListJob("a/b/", cursor="xyz", page=3), *jobs])
    depths = await b.depths()
    assert depths[t.list_queue].ready == 1
    assert sum(depths[q].ready for q in t.fetch_queues) == 40
    assert {*depths} >= {*t.pending_queues, t.parked_queue}

    async def ack(d: Delivery) -> None:
        await d.ack()

    [listed] = await collect(b, t.list_queue, 1, ack)
    assert listed.job == ListJob("a/b/", cursor="xyz", page=3)
    assert listed.attempts == 0
    received: list[Delivery] = []
    for q in t.fetch_queues:
        want = depths[q].ready
        if want:
            received += await collect(b, q, want, ack)
    assert sorted(d.job.path for d in received) == sorted(j.path for j in jobs)
    assert {d.job for d in received} == set(jobs)
    for q in t.work_queues:
        await wait_depth(b, q, 0)


async def test_retry_comes_back_later_with_attempts(brokers: Factory, job_name: str) -> None:
    b = await brokers()
    spec = spec_of(job_name)
    await b.declare(spec)
    t = Topology(spec)
    await b.publish([FetchJob("x/y.txt", size=3)])
    seen: list[tuple[int, float]] = []
    start = time.monotonic()

    async def fail_twice(d: Delivery) -> None:
        seen.append((d.attempts, time.monotonic() - start))
        if d.attempts < 2:
            await d.retry(t.delay_for_attempt(d.attempts + 1))
        else:
            await d.ack()

    await collect(b, t.fetch_queue(0), 3, fail_twice)
    assert [a for a, _ in seen] == [0, 1, 2]
    assert seen[1][1] - seen[0][1] >= 0.25  # tier 0 waits 0.3 s
    assert seen[2][1] - seen[1][1] >= 0.5  # tier 1 waits 0.6 s
    await wait_depth(b, t.fetch_queue(0), 0)


async def test_waiting_retry_counts_as_pending(brokers: Factory, job_name: str) -> None:
    b = await brokers()
    spec = spec_of(job_name, retry_delays_s=(2.0,))
    await b.declare(spec)
    t = Topology(spec)
    await b.publish([FetchJob("slow")])

    async def retry(d: Delivery) -> None:
        await d.retry(2.0)

    await collect(b, t.fetch_queue(0), 1, retry)
    await wait_depth(b, t.retry_queue(0), 1, timeout=1.5)
    await wait_depth(b, t.fetch_queue(0), 1, timeout=10)
    await wait_depth(b, t.retry_queue(0), 0)


async def test_park_keeps_job_and_reason(brokers: Factory, job_name: str) -> None:
    b = await brokers()
    spec = spec_of(job_name)
    await b.declare(spec)
    t = Topology(spec)
    await b.publish([FetchJob("gone.txt", size=5)])
    error = NotFound("gone.txt vanished from the source", ErrorDetail(404, "40400001"))

    async def park(d: Delivery) -> None:
        await d.park(Reason.from_error(error, d.attempts + 1))

    await collect(b, t.fetch_queue(0), 1, park)
    await b.park(ListJob("bad/"), Reason.from_error(error, 0))
    await wait_depth(b, t.parked_queue, 2)
    await wait_depth(b, t.fetch_queue(0), 0)
    if isinstance(b, MemoryBroker):
        parked = b.parked
    else:
        assert isinstance(b, RabbitBroker)
        parked = await b.parked_jobs()
        await wait_depth(b, t.parked_queue, 2)  # reading leaves them in place
    by_path = {p.job.path: p for p in parked}
    assert by_path["gone.txt"].queue == t.fetch_queue(0)
    assert by_path["gone.txt"].reason.error == "NotFound"
    assert by_path["gone.txt"].reason.http_status == 404
    assert by_path["gone.txt"].reason.code == "40400001"
    assert by_path["gone.txt"].reason.attempts == 1
    assert by_path["bad/"].queue == t.list_queue


async def test_release_and_handler_crash_redeliver(brokers: Factory, job_name: str) -> None:
    b = await brokers()
    spec = spec_of(job_name)
    await b.declare(spec)
    t = Topology(spec)
    await b.publish([FetchJob("a"), FetchJob("b")])
    calls: dict[str, int] = {}

    async def flaky(d: Delivery) -> None:
        calls[d.job.path] = calls.get(d.job.path, 0) + 1
        if calls[d.job.path] == 1:
            if d.job.path == "a":
                await d.release()
                return
            raise RuntimeError("bug in a handler")
        assert d.attempts == 0 and d.redelivered
        await d.ack()

    await collect(b, t.fetch_queue(0), 4, flaky)
    assert calls == {"a": 2, "b": 2}
    await wait_depth(b, t.fetch_queue(0), 0)


async def test_prefetch_bounds_concurrency(brokers: Factory, job_name: str) -> None:
    b = await brokers()
    spec = spec_of(job_name)
    await b.declare(spec)
    t = Topology(spec)
    await b.publish([FetchJob(f"f{i}") for i in range(12)])
    running = peak = 0

    async def slow(d: Delivery) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        await d.ack()

    await collect(b, t.fetch_queue(0), 12, slow, prefetch=3)
    assert 1 <= peak <= 3


async def held_until(held: list[Delivery], n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(held) < n:
        assert time.monotonic() < deadline, f"{len(held)} deliveries held, never {n}"
        await asyncio.sleep(0.02)


async def test_a_new_prefetch_applies_to_the_running_consumer(brokers: Factory,
                                                              job_name: str) -> None:
    """The worker's prefetch follows its concurrency limit while it runs (RabbitMQ fixes a
    consumer's prefetch when it starts: the broker must start a new one)."""
    b = await brokers()
    spec = spec_of(job_name)
    await b.declare(spec)
    t = Topology(spec)
    await b.publish([FetchJob(f"f{i}") for i in range(20)])
    held: list[Delivery] = []
    gates: dict[int, asyncio.Event] = {}

    async def hold(d: Delivery) -> None:  # a handler owns its delivery until it settles it
        gate = gates[id(d)] = asyncio.Event()
        held.append(d)
        await gate.wait()
        await d.ack()

    async def ack(deliveries: list[Delivery]) -> None:
        for d in deliveries:
            gates[id(d)].set()

    consumer = await b.consume(t.fetch_queue(0), 2, hold)
    try:
        await held_until(held, 2)
        await asyncio.sleep(0.2)
        assert len(held) == 2
        await consumer.set_prefetch(6)
        await held_until(held, 6)
        await asyncio.sleep(0.2)
        # Those held from before the change may come on top (RabbitMQ: they are the old
        # consumer's), until they settle.
        assert 6 <= len(held) <= 6 + 2
        await consumer.set_prefetch(3)  # lower: once the held ones settle, three at most
        acked = len(held)
        await ack(held)
        await held_until(held, acked + 3)
        await asyncio.sleep(0.3)
        assert len(held) == acked + 3
        await consumer.set_prefetch(30)
        await held_until(held, 20)
        await ack(held[acked:])
    finally:
        await consumer.cancel()
    await wait_depth(b, t.fetch_queue(0), 0)


async def test_control_broadcast_reaches_subscribers(brokers: Factory, job_name: str) -> None:
    a, c = await brokers(), await brokers()
    await a.declare(spec_of(job_name))
    await c.attach()
    got: list[dict[str, Any]] = []
    await c.subscribe(got.append)
    await a.subscribe(got.append)
    await a.broadcast({"type": "stop", "reason": "test"})
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert got == [{"type": "stop", "reason": "test"}] * 2


async def test_events_reach_event_subscribers_only(brokers: Factory, job_name: str) -> None:
    """Job events go to event subscribers, in order, and not to control subscribers."""
    a, c = await brokers(), await brokers()
    await a.declare(spec_of(job_name))
    await c.attach()
    events: list[dict[str, Any]] = []
    control: list[dict[str, Any]] = []
    await c.subscribe_events(events.append)
    await c.subscribe(control.append)
    sent = [{"event": "file.fetched", "path": f"a/{i}", "size": i} for i in range(20)]
    sent.append({"event": "job.finished", "fetched": 20})
    for event in sent:
        await a.publish_event(event)
    deadline = time.monotonic() + 5
    while len(events) < len(sent) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert events == sent
    assert control == []


async def test_attach_reads_spec_and_missing_job_is_clear(brokers: Factory,
                                                          job_name: str) -> None:
    b = await brokers()
    if isinstance(b, RabbitBroker):
        with pytest.raises(ConfigError, match="seed it first"):
            await b.attach()
    spec = spec_of(job_name, shards=3,
                   source_options={"endpoint": "http://127.0.0.1:1", "list_limit": 250})
    await b.declare(spec)
    other = await brokers()
    assert await other.attach() == spec
    assert await other.attach() == spec  # reading leaves it for the next worker


# -- RabbitMQ only ---------------------------------------------------------------------


async def test_unacked_work_survives_a_dead_consumer(rabbit_url: str, job_name: str) -> None:
    spec = spec_of(job_name)
    t = Topology(spec)
    first = await RabbitBroker.connect(rabbit_url, job_name)
    second = await RabbitBroker.connect(rabbit_url, job_name)
    try:
        await first.declare(spec)
        await second.attach()
        await first.publish([FetchJob("held")])
        taken = asyncio.Event()

        async def hold(d: Delivery) -> None:
            taken.set()
            await asyncio.sleep(3600)

        await first.consume(t.fetch_queue(0), 1, hold)
        await asyncio.wait_for(taken.wait(), 10)
        await first.close()  # the process "dies" without acking

        async def ack(d: Delivery) -> None:
            assert d.redelivered
            await d.ack()

        [d] = await collect(second, t.fetch_queue(0), 1, ack)
        assert d.job == FetchJob("held")
    finally:
        await second.delete_job()
        await second.close()


async def test_unreachable_or_refused_broker_is_clear(rabbit_url: str) -> None:
    with pytest.raises(BrokerUnavailable, match="cannot reach RabbitMQ") as info:
        await RabbitBroker.connect("amqp://guest:guest@127.0.0.1:1/", "x")
    assert "127.0.0.1:1" in info.value.message
    bad_login = rabbit_url.replace("guest:guest", "guest:wrong-secret")
    with pytest.raises(BrokerUnavailable, match="cannot reach RabbitMQ") as info:
        await RabbitBroker.connect(bad_login, "x")
    assert "wrong-secret" not in info.value.message


async def test_undecodable_message_is_parked(rabbit_url: str, job_name: str) -> None:
    import aio_pika

    spec = spec_of(job_name)
    t = Topology(spec)
    b = await RabbitBroker.connect(rabbit_url, job_name)
    try:
        await b.declare(spec)
        conn = await aio_pika.connect(rabbit_url)
        channel = await conn.channel()
        await channel.default_exchange.publish(aio_pika.Message(b"not json"), t.fetch_queue(0))
        await b.publish([FetchJob("fine")])
        await conn.close()

        async def ack(d: Delivery) -> None:
            await d.ack()

        [d] = await collect(b, t.fetch_queue(0), 1, ack)
        assert d.job == FetchJob("fine")
        await wait_depth(b, t.parked_queue, 1)
        await wait_depth(b, t.fetch_queue(0), 0)
    finally:
        await b.delete_job()
        await b.close()


async def test_jobs_do_not_share_queues(rabbit_url: str, job_name: str) -> None:
    a = await RabbitBroker.connect(rabbit_url, job_name + "-a")
    b = await RabbitBroker.connect(rabbit_url, job_name + "-b")
    try:
        await a.declare(spec_of(job_name + "-a"))
        await b.declare(spec_of(job_name + "-b"))
        await a.publish([FetchJob("only-a")])
        da, db = await a.depths(), await b.depths()
        assert da[f"{job_name}-a.fetch.0"].ready == 1
        assert db[f"{job_name}-b.fetch.0"].ready == 0
        assert not set(da) & set(db)
    finally:
        for x in (a, b):
            await x.delete_job()
            await x.close()
