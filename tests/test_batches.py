"""Batching is the RabbitMQ broker's own business: it packs small files and folders into
messages and hands them out one delivery per job, each settled on its own; the embedded broker
packs nothing. The same per-job behaviour is checked on both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from mirror.broker import Broker, Carriage, Delivery, QueueDepth, Topology
from mirror.broker.batching import (
    BatchLimits,
    FileOutbox,
    decode_message,
    encode_message,
    in_jobs,
    split,
)
from mirror.broker.memory import MemoryBroker
from mirror.broker.rabbitmq import RabbitBroker
from mirror.errors import BrokerError, BrokerUnavailable, ErrorDetail, NotFound, ProtocolError
from mirror.events import each_file, file_event
from mirror.jobs import FetchJob, Job, JobSpec, ListJob, Reason
from tests.test_broker_contract import collect, spec_of, wait_depth

Factory = Callable[[], Awaitable[Broker]]


@pytest.fixture(params=["memory", "rabbitmq"])
async def batching(request: pytest.FixtureRequest, job_name: str) -> AsyncIterator[Factory]:
    """Brokers of one job as the workers connect them: RabbitMQ packing (``--batch-files``
    32), the embedded one as it is."""
    made: list[Broker] = []
    shared = MemoryBroker()
    url = request.getfixturevalue("rabbit_url") if request.param == "rabbitmq" else None

    async def make() -> Broker:
        if url is None:
            made[:] = [shared]
            return shared
        broker = await RabbitBroker.connect(url, job_name, connection_name="batch-test",
                                            batching=BatchLimits())
        made.append(broker)
        return broker

    yield make
    if url is not None and made:
        cleaner = await RabbitBroker.connect(url, job_name)
        assert isinstance(made[0], RabbitBroker)
        cleaner._topology = made[0]._topology
        await cleaner.delete_job()
        await cleaner.close()
    for broker in made:
        await broker.close()


async def declared(b: Broker, job_name: str, jobs: list[Job]) -> Topology:
    spec = spec_of(job_name)
    await b.declare(spec)
    await b.publish(jobs)
    return Topology(spec)


async def events_until_marker(b: Broker, job_name: str, events: list[dict[str, Any]]
                              ) -> list[dict[str, Any]]:
    """The file events received before a marker event sent now: every event confirmed before
    it has arrived once it has (one publisher, one exchange, in order)."""
    await b.publish_event({"event": "job.finished", "job": job_name, "marker": True})
    for _ in range(100):
        if any(e.get("marker") for e in events):
            return [e for e in events[:next(i for i, e in enumerate(events) if e.get("marker"))]
                    if e["event"].startswith("file.")]
        await asyncio.sleep(0.05)
    raise AssertionError(f"the marker event never came: {events}")


async def told(b: Broker, job_name: str, d: Delivery) -> None:
    """What the worker does on success: the file's event, confirmed, then the ack."""
    assert isinstance(d.job, FetchJob)
    await b.publish_event(file_event("fetched", job_name, d.job))
    await d.ack()


def test_split_sets_small_files_apart_and_groups_folders() -> None:
    limits = BatchLimits(files=3, bytes=25, small_max=1000, folders=3)
    folders = [ListJob(f"d{i}") for i in range(7)]
    big, empty = FetchJob("d/big", size=5000), FetchJob("d/e", is_dir=True)
    small = [FetchJob(f"d/f{i}", size=10) for i in range(4)]
    files, messages = split([*folders, big, empty, *small], limits)
    assert files == small
    assert messages == [folders[:3], folders[3:6], folders[6:], [big], [empty]]
    # --batch-files 1: files alone, folders still grouped; no batching: all alone
    files, messages = split([*folders[:2], *small], BatchLimits(files=1, folders=3))
    assert files == [] and messages == [folders[:2], *([f] for f in small)]
    assert split(small, None) == ([], [[f] for f in small])


def test_messages_round_trip_and_bad_ones_are_refused() -> None:
    files = [FetchJob("a/x", 3, 1.5, "e"), FetchJob("a/\udcff y", 0)]
    assert decode_message(encode_message(files)) == files
    lists = [ListJob("a"), ListJob("b", "cursor", 2, 0, "b/z")]
    assert decode_message(encode_message(lists)) == lists
    assert decode_message(encode_message(files[:1])) == files[:1]
    for bad in (b'{"v":1,"t":"batch","files":[]}', b'{"v":1,"t":"batch","files":[1]}',
                b'{"v":1,"t":"batch","files":[{"path":"a"}],"x":1}',
                b'{"v":1,"t":"batch","files":[{"nope":"a"}]}',
                b'{"v":1,"t":"lists","files":[{"path":"a"}]}',
                b'{"v":1,"t":"lists","folders":[{"path":"a","size":1}]}',
                b'{"v":2,"t":"batch","files":[{"path":"a"}]}', b"[1]", b"{"):
        with pytest.raises(ProtocolError):
            decode_message(bad)


async def test_each_file_is_delivered_and_settled_on_its_own(batching: Factory,
                                                             job_name: str) -> None:
    b = await batching()
    files = [FetchJob(f"d/f{i}", size=i) for i in range(5)]
    t = await declared(b, job_name, list(files))
    # RabbitMQ carries them in one message, and says so; the embedded broker in five
    depth = (await b.depths())[t.fetch_queue(0)]
    assert (depth.ready, depth.ready_jobs) == ((1, 5) if isinstance(b, RabbitBroker) else (5, 5))
    events: list[dict[str, Any]] = []
    await b.subscribe_events(events.append)

    async def per_file(d: Delivery) -> None:
        name = d.job.path
        if name == "d/f2":
            await d.retry(0.3)  # a transient failure: this file alone comes back
        elif name == "d/f3":
            await d.park(Reason.from_error(NotFound("gone", ErrorDetail()), 1))
        else:
            await told(b, job_name, d)

    got = await collect(b, t.fetch_queue(0), 5, per_file)
    assert sorted(d.job.path for d in got) == [f.path for f in files]

    async def ack(d: Delivery) -> None:
        await d.ack()

    [again] = await collect(b, t.fetch_queue(0), 1, ack)
    assert again.job == files[2] and again.attempts == 1
    await wait_depth(b, t.parked_queue, 1)
    await wait_depth(b, t.fetch_queue(0), 0)
    seen = await events_until_marker(b, job_name, events)
    assert sorted(e["path"] for event in seen for e in each_file(event)) == [
        "d/f0", "d/f1", "d/f4"]
    if isinstance(b, RabbitBroker):
        assert len(seen) == 1  # told together: one event for the three files


async def test_a_released_job_comes_back_with_the_jobs_of_its_message(
        batching: Factory, job_name: str) -> None:
    b = await batching()
    files = [FetchJob(f"d/f{i}", size=1) for i in range(3)]
    t = await declared(b, job_name, list(files))
    seen: list[tuple[str, bool]] = []

    async def release_one(d: Delivery) -> None:
        seen.append((d.job.path, d.redelivered))
        if d.job.path == "d/f1" and not d.redelivered:
            await d.release()  # e.g. the worker is stopping
        else:
            await d.ack()

    whole = isinstance(b, RabbitBroker)
    await collect(b, t.fetch_queue(0), 6 if whole else 4, release_one)
    again = [f.path for f in files] if whole else ["d/f1"]
    assert sorted(seen) == sorted([(f.path, False) for f in files] +
                                  [(p, True) for p in again])
    await wait_depth(b, t.fetch_queue(0), 0)


async def test_a_message_is_acked_only_once_all_its_jobs_are_settled(
        rabbit_url: str, job_name: str) -> None:
    """A worker that dies with some jobs of a message done and others in hand: the message
    comes back whole (the done ones are redone, skipped as current: at least once)."""
    first = await RabbitBroker.connect(rabbit_url, job_name, batching=BatchLimits())
    second = await RabbitBroker.connect(rabbit_url, job_name, batching=BatchLimits())
    try:
        files = [FetchJob(f"d/f{i}", size=1) for i in range(3)]
        t = await declared(first, job_name, list(files))
        await second.attach()
        hanging = asyncio.Event()

        async def ack_one_then_hang(d: Delivery) -> None:
            if d.job.path == "d/f0":
                await d.ack()
            else:
                hanging.set()
                await asyncio.Event().wait()  # the worker dies before settling these

        consumer = await first.consume(t.fetch_queue(0), 1, ack_one_then_hang)
        await asyncio.wait_for(hanging.wait(), 20)
        await consumer.cancel()
        await first.close()  # its connections drop: RabbitMQ requeues what it held
        got = await collect(second, t.fetch_queue(0), 3, lambda d: d.ack())
        assert sorted(d.job.path for d in got) == [f.path for f in files]
        assert all(d.redelivered for d in got)
        await wait_depth(second, t.fetch_queue(0), 0)
    finally:
        await second.delete_job()
        await second.close()


async def test_prefetch_counts_jobs_not_messages(rabbit_url: str, job_name: str) -> None:
    """A worker that asks for 40 jobs holds a few messages of 32 files, not 40 of them: the
    rest stays within reach of the other workers."""
    first = await RabbitBroker.connect(rabbit_url, job_name, batching=BatchLimits())
    second = await RabbitBroker.connect(rabbit_url, job_name, batching=BatchLimits())
    try:
        files = [FetchJob(f"d{i // 100}/f{i}", size=1) for i in range(640)]
        t = await declared(first, job_name, list(files))
        await wait_depth(first, t.fetch_queue(0), 20)  # 20 messages of 32 files
        await second.attach()
        held: list[Delivery] = []
        other: list[Delivery] = []
        done = asyncio.Event()

        async def hold(d: Delivery) -> None:
            held.append(d)
            await done.wait()
            await d.ack()

        async def hold_other(d: Delivery) -> None:
            other.append(d)
            await done.wait()
            await d.ack()

        consumer = await first.consume(t.fetch_queue(0), 40, hold)
        await asyncio.sleep(0.5)
        assert 40 <= len(held) <= 3 * 32
        rival = await second.consume(t.fetch_queue(0), 40, hold_other)
        await asyncio.sleep(0.5)
        assert 40 <= len(other) <= 3 * 32
        done.set()  # from now on every job is acked as it comes
        await wait_depth(first, t.fetch_queue(0), 0)
        await consumer.cancel()
        await rival.cancel()
    finally:
        await first.delete_job()
        await first.close()
        await second.close()


async def test_an_event_that_fails_brings_its_jobs_back(rabbit_url: str,
                                                        job_name: str) -> None:
    class Refusing(RabbitBroker):
        refused = 0

        async def _send_event(self, event: dict[str, Any]) -> None:
            if not self.refused:
                self.refused += 1
                raise BrokerUnavailable("the broker went away")
            await super()._send_event(event)

    b = await Refusing.connect(rabbit_url, job_name, batching=BatchLimits())
    try:
        t = await declared(b, job_name, [FetchJob("a/x", 1), FetchJob("a/y", 1)])
        seen: list[tuple[str, bool]] = []

        async def fetched(d: Delivery) -> None:
            seen.append((d.job.path, d.redelivered))
            try:
                await told(b, job_name, d)
            except BrokerError:
                await d.release()  # what the worker does: the job comes back

        await collect(b, t.fetch_queue(0), 4, fetched)
        # both files shared the event that failed: both came back, and were told again
        assert sorted(seen) == sorted((p, again) for p in ("a/x", "a/y")
                                      for again in (False, True))
        await wait_depth(b, t.fetch_queue(0), 0)
    finally:
        await b.delete_job()
        await b.close()


async def test_each_folder_is_listed_and_settled_on_its_own(batching: Factory,
                                                            job_name: str) -> None:
    b = await batching()
    folders = [ListJob(f"d{i}") for i in range(4)]
    t = await declared(b, job_name, list(folders))
    depth = (await b.depths())[t.list_queue]
    assert depth.ready == (1 if isinstance(b, RabbitBroker) else 4)
    seen: list[str] = []

    async def per_folder(d: Delivery) -> None:
        seen.append(d.job.path)
        if d.job.path == "d1":
            await d.retry(0.3)  # this folder alone is listed again
        elif d.job.path == "d2":
            await d.park(Reason.from_error(ProtocolError("bad page", ErrorDetail()), 1))
        else:
            await d.ack()

    await collect(b, t.list_queue, 4, per_folder)
    assert sorted(seen) == ["d0", "d1", "d2", "d3"]

    async def ack(d: Delivery) -> None:
        await d.ack()

    [again] = await collect(b, t.list_queue, 1, ack)
    assert again.job == folders[1] and again.attempts == 1
    await wait_depth(b, t.parked_queue, 1)
    await wait_depth(b, t.list_queue, 0)


async def test_pages_listed_together_fill_messages_together(rabbit_url: str,
                                                            job_name: str) -> None:
    """Two pages of 20 small files each, published at about the same time: 32 + 8 files in
    two messages instead of 20 + 20; each page returns once its files are all published."""
    b = await RabbitBroker.connect(rabbit_url, job_name, batching=BatchLimits())
    try:
        t = await declared(b, job_name, [])
        pages = [[FetchJob(f"d{p}/f{i}", size=10) for i in range(20)] for p in range(2)]
        await asyncio.gather(*(b.publish(page) for page in pages))
        assert b.carriage() == Carriage(40, 2)
        await wait_depth(b, t.fetch_queue(0), 2)
        got = await collect(b, t.fetch_queue(0), 40, lambda d: d.ack())
        assert sorted(d.job.path for d in got) == sorted(j.path for page in pages
                                                         for j in page)
    finally:
        await b.delete_job()
        await b.close()


async def test_a_shared_message_that_fails_fails_every_page_in_it() -> None:
    async def refuse(queue: str, jobs: list[Job]) -> None:
        raise BrokerUnavailable("the broker went away")

    topology = Topology(spec_of("refusing-files"))
    outbox = FileOutbox(topology, BatchLimits(), refuse)
    results = await asyncio.gather(
        *(outbox.send([FetchJob(f"d{p}/f{i}", size=1) for i in range(3)]) for p in range(2)),
        return_exceptions=True)
    assert [type(r) for r in results] == [BrokerUnavailable, BrokerUnavailable]


def test_status_counts_queued_files_not_messages() -> None:
    """``mirror status`` reads message counts as files the way the broker reckons them,
    from what the workers report they carried."""
    from mirror.status import Snapshot, summarize

    spec = JobSpec(name="s", source="upyun://b/", shards=2)
    t = Topology(spec)
    queues = {q: QueueDepth(0, 0, 1) for q in [*t.pending_queues, t.parked_queue]}
    queues[t.fetch_queue(0)] = QueueDepth(3, 1, 1)  # messages: batches of 25 files here
    queues[t.retry_queue(0)] = QueueDepth(2, 0, 0)  # single files waiting for a retry
    reckoned = in_jobs(queues, t, Carriage(100, 4))
    assert reckoned[t.fetch_queue(0)].ready_jobs == 75
    lister = {"counts": {"listed_files": 100, "listing": 1}, "held": 1}
    now = Snapshot("s", "memory", "management", 0.0, reckoned, t, {"w1": lister})
    assert summarize(now)["files"]["queued"] == 3 * 25 + 2 + 1 * 25
    # nothing carried yet: at least one file per message
    unknown = in_jobs(queues, t, Carriage())
    assert unknown[t.fetch_queue(0)].per_message is None
    now = Snapshot("s", "memory", "management", 0.0, unknown, t, {"w1": lister})
    assert summarize(now)["files"]["queued"] == 3 + 2 + 1
