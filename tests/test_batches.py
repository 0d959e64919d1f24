"""Batches of small files: packed by the lister, settled file by file, on both brokers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from mirror.batches import FileDelivery, FileOutbox, pack, split_batches
from mirror.broker import Broker, Delivery, Topology
from mirror.broker.memory import MemoryBroker
from mirror.errors import BrokerUnavailable, ErrorDetail, NotFound, ProtocolError
from mirror.events import each_file
from mirror.jobs import (
    FetchBatch,
    FetchJob,
    Job,
    JobSpec,
    ListBatch,
    ListJob,
    Reason,
    decode_job,
    encode_job,
)
from tests.test_broker_contract import Factory, brokers, collect, spec_of, wait_depth

__all__ = ["brokers"]  # the fixture, shared with the broker contract


def test_pack_groups_small_files_by_queue_within_limits() -> None:
    spec = JobSpec(name="p", source="upyun://b/", shards=2, shard_by="path")
    topology = Topology(spec)
    small = [FetchJob(f"d/f{i}", size=10) for i in range(9)]
    jobs = [ListJob("d/sub"), FetchJob("d/big", size=5000), FetchJob("d/e", is_dir=True),
            *small]
    out = pack(jobs, topology, max_files=3, max_bytes=25, small_max=1000)
    assert out[:3] == jobs[:3]  # listings, large files and folders go alone
    batches = out[3:]
    # every small file exactly once, each batch on one queue, within 3 files and 25 bytes
    spread = [f for b in batches for f in (b.files if isinstance(b, FetchBatch) else [b])]
    assert sorted(f.path for f in spread) == sorted(f.path for f in small)
    for b in batches:
        files = b.files if isinstance(b, FetchBatch) else (b,)
        assert isinstance(b, FetchBatch | FetchJob)
        assert len(files) <= 2  # 3 x 10 bytes is over 25
        assert len({topology.queue_for(f) for f in files}) == 1
        assert topology.queue_for(b) == topology.queue_for(files[0])
    assert pack(jobs, topology, max_files=1, max_bytes=25, small_max=1000) == jobs


def test_pack_groups_folders_to_list() -> None:
    topology = Topology(JobSpec(name="p", source="upyun://b/"))
    folders = [ListJob(f"d{i}") for i in range(7)]
    files = [FetchJob("f", size=1), FetchJob("g", size=1)]
    out = pack([*folders, *files], topology, max_files=1, max_bytes=25, small_max=10,
               max_folders=3)
    assert out == [ListBatch(tuple(folders[:3])), ListBatch(tuple(folders[3:6])), folders[6],
                   *files]
    assert {topology.queue_for(j) for j in out[:3]} == {topology.list_queue}
    assert pack(folders, topology, 32, 25, 10, max_folders=1) == folders


def test_batch_messages_round_trip_and_bad_ones_are_refused() -> None:
    batch = FetchBatch((FetchJob("a/x", 3, 1.5, "e"), FetchJob("a/\udcff y", 0)))
    assert decode_job(encode_job(batch)) == batch
    lists = ListBatch((ListJob("a"), ListJob("b", "cursor", 2, 0, "b/z")))
    assert decode_job(encode_job(lists)) == lists
    for bad in (b'{"v":1,"t":"batch","files":[]}', b'{"v":1,"t":"batch","files":[1]}',
                b'{"v":1,"t":"batch","files":[{"path":"a"}],"x":1}',
                b'{"v":1,"t":"batch","files":[{"nope":"a"}]}',
                b'{"v":1,"t":"lists","files":[{"path":"a"}]}',
                b'{"v":1,"t":"lists","folders":[{"path":"a","size":1}]}'):
        with pytest.raises(ProtocolError):
            decode_job(bad)


async def declared(b: Broker, job_name: str, jobs: list[Job]) -> Topology:
    """The job declared on ``b`` with ``jobs`` published to their queues."""
    spec = spec_of(job_name)
    await b.declare(spec)
    await b.publish(jobs)
    return Topology(spec)


async def one_batch(brokers: Factory, job_name: str,
                    n: int) -> tuple[Broker, Topology, tuple[FetchJob, ...]]:
    """A declared job with one batch of ``n`` files published on its fetch queue."""
    b = await brokers()
    files = tuple(FetchJob(f"d/f{i}", size=i) for i in range(n))
    return b, await declared(b, job_name, [FetchBatch(files)]), files


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def first_event(events: list[dict[str, Any]]) -> None:
    for _ in range(50):
        if events:
            return
        await asyncio.sleep(0.1)


async def test_each_file_of_a_batch_is_settled_on_its_own(brokers: Factory,
                                                          job_name: str) -> None:
    b, t, files = await one_batch(brokers, job_name, 5)
    events: list[dict[str, Any]] = []
    await b.subscribe_events(events.append)

    async def per_file(d: Delivery) -> None:
        assert isinstance(d, FileDelivery)
        name = d.job.path
        if name == "d/f2":
            await d.retry(0.3)  # a transient failure: this file alone comes back
        elif name == "d/f3":
            await d.park(Reason.from_error(NotFound("gone", ErrorDetail()), 1))
        else:
            d.outcome = "fetched"
            await d.ack()

    [whole] = await collect(b, t.fetch_queue(0), 1, split_batches(per_file, b, job_name))
    assert isinstance(whole.job, FetchBatch)

    async def ack(d: Delivery) -> None:
        await d.ack()

    [again] = await collect(b, t.fetch_queue(0), 1, ack)
    assert again.job == files[2] and again.attempts == 1
    await wait_depth(b, t.parked_queue, 1)
    await wait_depth(b, t.fetch_queue(0), 0)
    await first_event(events)
    # one event for the three files done, spread out by each_file
    [event] = events
    assert event["event"] == "file.fetched"
    assert sorted(e["path"] for e in each_file(event)) == ["d/f0", "d/f1", "d/f4"]


async def test_a_released_file_brings_its_whole_batch_back(brokers: Factory,
                                                          job_name: str) -> None:
    b, t, files = await one_batch(brokers, job_name, 3)
    seen: list[tuple[str, bool]] = []

    async def release_one(d: Delivery) -> None:
        seen.append((d.job.path, d.redelivered))
        if d.job.path == "d/f1" and not d.redelivered:
            await d.release()  # e.g. the worker is stopping
        else:
            await d.ack()

    await collect(b, t.fetch_queue(0), 2, split_batches(release_one, b, job_name))
    assert sorted(seen) == sorted([(f.path, False) for f in files] +
                                  [(f.path, True) for f in files])
    await wait_depth(b, t.fetch_queue(0), 0)


async def test_batches_settled_together_share_one_event(brokers: Factory,
                                                        job_name: str) -> None:
    b = await brokers()
    batches: list[Job] = [FetchBatch(tuple(FetchJob(f"d{i}/f{j}", size=j) for j in range(3)))
                          for i in range(2)]
    t = await declared(b, job_name, batches)
    events: list[dict[str, Any]] = []
    await b.subscribe_events(events.append)

    async def fetched(d: Delivery) -> None:
        assert isinstance(d, FileDelivery)
        d.outcome = "fetched"
        await d.ack()

    split = split_batches(fetched, b, job_name)
    settled: list[Delivery] = []

    async def settling(d: Delivery) -> None:
        await split(d)  # returns once the batch is settled: its events are confirmed by then
        settled.append(d)

    await collect(b, t.fetch_queue(0), 2, settling, prefetch=2)
    await wait_for(lambda: len(settled) == 2, "both batches settled")
    # Every event of the batches is on the broker now: one sent after them arrives after them.
    await b.publish_event({"event": "test.marker"})
    await wait_for(lambda: any(e.get("event") == "test.marker" for e in events), "the marker")
    event, marker = events
    assert marker["event"] == "test.marker"
    assert sorted(e["path"] for e in each_file(event)) == sorted(
        f"d{i}/f{j}" for i in range(2) for j in range(3))


async def test_an_event_that_fails_brings_its_batches_back() -> None:
    class Refusing(MemoryBroker):
        refused = 0

        async def publish_event(self, event: dict[str, Any]) -> None:
            if not self.refused:
                self.refused += 1
                raise BrokerUnavailable("the broker went away")
            await super().publish_event(event)

    b = Refusing()
    t = await declared(b, "refusing", [FetchBatch((FetchJob("a/x", 1), FetchJob("a/y", 1))),
                                       FetchBatch((FetchJob("b/x", 1), FetchJob("b/y", 1)))])
    seen: list[tuple[str, bool]] = []

    async def fetched(d: Delivery) -> None:
        assert isinstance(d, FileDelivery)
        seen.append((d.job.path, d.redelivered))
        d.outcome = "fetched"
        await d.ack()

    await collect(b, t.fetch_queue(0), 4, split_batches(fetched, b, "refusing"), prefetch=2)
    # both batches shared the event that failed: both came back, and were told the second time
    assert sorted(seen) == sorted((p, again) for p in ("a/x", "a/y", "b/x", "b/y")
                                  for again in (False, True))
    await wait_depth(b, t.fetch_queue(0), 0)


async def test_each_folder_of_a_list_batch_is_settled_on_its_own(brokers: Factory,
                                                                 job_name: str) -> None:
    b = await brokers()
    folders = tuple(ListJob(f"d{i}") for i in range(4))
    t = await declared(b, job_name, [ListBatch(folders)])
    seen: list[str] = []

    async def per_folder(d: Delivery) -> None:
        seen.append(d.job.path)
        if d.job.path == "d1":
            await d.retry(0.3)  # this folder alone is listed again
        elif d.job.path == "d2":
            await d.park(Reason.from_error(ProtocolError("bad page", ErrorDetail()), 1))
        else:
            await d.ack()

    [whole] = await collect(b, t.list_queue, 1, split_batches(per_folder, b, job_name))
    assert isinstance(whole.job, ListBatch) and sorted(seen) == ["d0", "d1", "d2", "d3"]

    async def ack(d: Delivery) -> None:
        await d.ack()

    [again] = await collect(b, t.list_queue, 1, ack)
    assert again.job == folders[1] and again.attempts == 1
    await wait_depth(b, t.parked_queue, 1)
    await wait_depth(b, t.list_queue, 0)


def test_status_counts_queued_files_not_messages() -> None:
    from mirror.broker import QueueDepth
    from mirror.status import Snapshot, summarize

    spec = JobSpec(name="s", source="upyun://b/", shards=2)
    t = Topology(spec)
    queues = {q: QueueDepth(0, 0, 1) for q in [*t.pending_queues, t.parked_queue]}
    queues[t.fetch_queue(0)] = QueueDepth(3, 1, 1)  # messages: batches of 25 files here
    queues[t.retry_queue(0)] = QueueDepth(2, 0, 0)  # single files waiting for a retry
    lister = {"counts": {"listed_files": 100, "file_messages": 4, "listing": 1}, "held": 1}
    now = Snapshot("s", "memory", "management", 0.0, queues, t, {"w1": lister})
    files = summarize(now)["files"]
    assert files["queued"] == 3 * 25 + 2 + 1 * 25


async def test_pages_listed_together_fill_batches_together(brokers: Factory,
                                                          job_name: str) -> None:
    """Two pages of 20 small files each, sent at about the same time: 32 + 8 files in two
    messages instead of 20 + 20; each page returns once its files are all published."""
    b = await brokers()
    t = await declared(b, job_name, [])
    counted: list[int] = []
    outbox = FileOutbox(b, t, max_files=32, max_bytes=1 << 20, small_max=1000,
                        on_message=lambda: counted.append(1))
    pages = [[FetchJob(f"d{p}/f{i}", size=10) for i in range(20)] for p in range(2)]
    big = FetchJob("d0/big", size=5000)
    assert [outbox.takes(j) for j in (pages[0][0], big, FetchJob("d1", is_dir=True))] == [
        True, False, False]
    await asyncio.gather(*(outbox.send(page) for page in pages))
    assert len(counted) == 2
    got = await collect(b, t.fetch_queue(0), 2, lambda d: d.ack())
    sizes = sorted(len(d.job.files) if isinstance(d.job, FetchBatch) else 1 for d in got)
    assert sizes == [8, 32]
    files = [f.path for d in got for f in (d.job.files if isinstance(d.job, FetchBatch) else ())]
    assert sorted(files) == sorted(j.path for page in pages for j in page)


async def test_a_shared_batch_that_fails_fails_every_page_in_it() -> None:
    class Refusing(MemoryBroker):
        async def publish(self, jobs: Sequence[Job]) -> None:
            if jobs:
                raise BrokerUnavailable("the broker went away")

    b = Refusing()
    t = await declared(b, "refusing-files", [])
    outbox = FileOutbox(b, t, max_files=32, max_bytes=1 << 20, small_max=1000)
    results = await asyncio.gather(
        *(outbox.send([FetchJob(f"d{p}/f{i}", size=1) for i in range(3)]) for p in range(2)),
        return_exceptions=True)
    assert [type(r) for r in results] == [BrokerUnavailable, BrokerUnavailable]
