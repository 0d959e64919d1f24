"""End to end: a real fake-UpYun server on loopback, a real disk, both brokers, with faults.

The bucket (conftest ``big_bucket``) has over 3,000 files, a 40-level folder chain, a
2,500-entry folder listed 100 entries a page, empty folders, zero-byte and 9 MB files, and the
hostile names of the issue. Each run must reproduce it byte for byte (and mtime for mtime).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from mirror.jobs import JobSpec
from mirror.ratelimit import RateSettings
from mirror.runner import Outcome, WorkOptions, run_job
from mirror.settings import SourceSettings, WorkerSettings
from mirror.testing.compare import tree_differences
from mirror.testing.fake_upyun import FakeUpyun, Faults
from mirror.testing.sample import BucketInfo
from tests.conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD

FAULTS = Faults(rate_429=0.05, rate_503=0.05, rate_truncate=0.05, rate_drop=0.05, seed=11)


@dataclass
class Run:
    outcome: Outcome
    fake_stats: dict[str, object]


async def mirror_bucket(bucket: BucketInfo, dest: Path, state: Path, job: str,
                        broker_url: str | None, faults: Faults = Faults()) -> Run:
    faulted = faults != Faults()
    async with FakeUpyun(bucket.root, bucket=BUCKET, operator=OPERATOR, password=PASSWORD,
                         faults=faults) as fake:
        spec = JobSpec(name=job, source=f"upyun://{BUCKET}/",
                       source_options={"endpoint": fake.url, "list_limit": 100},
                       retry_delays_s=(0.2, 0.5, 1.0), max_attempts=5)
        # With faults, no quick in-process retries: every fault goes through the broker's
        # retry tiers, the path this test is about.
        settings = SourceSettings(env=CREDENTIALS, request_retries=0 if faulted else 2)
        # The fake answers a fixed share of requests 429/503 whatever the rate: the adaptive
        # rate and concurrency (on, as by default) must see that it is not the rate's doing.
        worker = WorkerSettings(resume_retries=0 if faulted else 2)
        outcome = await run_job(spec, dest, broker_url, settings,
                                WorkOptions(worker, until_idle=True, rates=RateSettings()),
                                state)
        return Run(outcome, fake.stats.to_dict())


def manifest(root: Path) -> dict[str, tuple[int, int, str]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = (-1, 0, "dir")
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                digest = hashlib.md5(fh.read()).hexdigest()
            out[os.path.normpath(os.path.join(rel, f))] = (st.st_size, int(st.st_mtime), digest)
    return out


def check_complete(run: Run, bucket: BucketInfo, dest: Path, faulted: bool) -> None:
    o = run.outcome
    assert o.fatal is None and o.parked_total == 0, o.stats.parked_items
    assert o.exit_code == 0
    assert o.stats.fetched + o.stats.skipped == bucket.files
    assert tree_differences(bucket.root, dest) == []
    faults = run.fake_stats["faults"]
    assert isinstance(faults, dict)
    if faulted:
        injected = sum(faults.values())
        assert injected > 0.1 * bucket.files, faults  # about 20% of first attempts
        # A dropped keep-alive connection is retried once by aiohttp itself (idempotent
        # request, no byte received); every other fault must go through a retry tier.
        assert o.stats.retried >= injected - faults["drop"]
    else:
        assert sum(faults.values()) == 0


@pytest.mark.slow
async def test_four_runs_give_identical_mirrors(big_bucket: BucketInfo, tmp_path: Path,
                                                rabbit_url: str, job_name: str) -> None:
    from mirror.broker.rabbitmq import RabbitBroker

    assert big_bucket.files >= 3000
    results: dict[str, dict[str, tuple[int, int, str]]] = {}
    for label, url, faults in [("memory", None, Faults()), ("rabbitmq", rabbit_url, Faults()),
                               ("memory+faults", None, FAULTS),
                               ("rabbitmq+faults", rabbit_url, FAULTS)]:
        dest = tmp_path / label.replace("+", "-")
        job = f"{job_name}-{len(results)}"
        try:
            run = await mirror_bucket(big_bucket, dest, tmp_path / "state", job, url, faults)
        finally:
            if url is not None:
                broker = await RabbitBroker.connect(url, job)
                await broker.delete_job()
                await broker.close()
        check_complete(run, big_bucket, dest, faults != Faults())
        pages = run.fake_stats["list_pages"]
        assert isinstance(pages, int) and pages >= 25 + big_bucket.folders  # 2,500 at 100/page
        results[label] = manifest(dest)
        print(f"{label}: {run.outcome.stats.fetched} files, {run.outcome.stats.retried} retries, "
              f"faults {run.fake_stats['faults']}, {run.outcome.stats.elapsed_s:.1f}s")
    first = results["memory"]
    assert len(first) == big_bucket.files + big_bucket.folders
    for label, m in results.items():
        assert m == first, label


async def test_second_run_skips_everything(small_bucket: BucketInfo, tmp_path: Path,
                                           job_name: str) -> None:
    dest = tmp_path / "dest"
    first = await mirror_bucket(small_bucket, dest, tmp_path / "s", job_name, None)
    check_complete(first, small_bucket, dest, False)
    second = await mirror_bucket(small_bucket, dest, tmp_path / "s", job_name, None)
    assert second.outcome.stats.fetched == 0
    assert second.outcome.stats.skipped == small_bucket.files
    assert sum(v for v in second.fake_stats["bodies"].values()) == 0  # type: ignore[union-attr]


async def test_changed_and_partial_files_are_fetched_again(small_bucket: BucketInfo,
                                                           tmp_path: Path, job_name: str) -> None:
    dest = tmp_path / "dest"
    check_complete(await mirror_bucket(small_bucket, dest, tmp_path / "s", job_name, None),
                   small_bucket, dest, False)
    big = next(p for p in sorted((dest / "big").iterdir()))
    data = big.read_bytes()
    big.unlink()
    part = big.with_name(big.name + ".mirror.part")
    part.write_bytes(data[: len(data) // 3])  # as if a crash cut the download
    victim = dest / "names" / "with space.txt"
    victim.write_bytes(b"local edit")  # wrong size: must be replaced
    run = await mirror_bucket(small_bucket, dest, tmp_path / "s", job_name, None)
    assert run.outcome.stats.fetched == 2
    assert tree_differences(small_bucket.root, dest) == []
    # the big file was resumed: far fewer bytes than its size went over the wire
    assert run.outcome.stats.transferred < len(data)
