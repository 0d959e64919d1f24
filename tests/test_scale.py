"""Splitting a job: shards on disks, workers per role, backpressure, jobs side by side."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from mirror.broker.rabbitmq import RabbitBroker
from mirror.diskpool import DiskPool
from mirror.errors import ConfigError
from mirror.jobs import JobSpec, shard_of
from mirror.placement import build_placement, parse_claim, parse_shards
from mirror.runner import WorkOptions, run_job
from mirror.settings import SourceSettings, WorkerSettings
from mirror.testing.compare import tree_differences
from mirror.testing.fake_upyun import FakeUpyun, Faults
from mirror.testing.sample import BucketInfo
from mirror.testing.synthetic import SyntheticBucket

from .conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mirror", *args, env={**os.environ, **CREDENTIALS},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def delete_job(url: str, job: str) -> None:
    broker = await RabbitBroker.connect(url, job)
    try:
        await broker.attach()
        await broker.delete_job()
    except ConfigError:
        pass
    finally:
        await broker.close()


def test_shard_lists_parse() -> None:
    assert parse_shards("0-3") == {0, 1, 2, 3}
    assert parse_shards("0,2,5-6") == {0, 2, 5, 6}
    assert parse_claim("4-6=/mnt/b").path == Path("/mnt/b")
    for bad in ("x", "3-1", "-1", "1-"):
        with pytest.raises(ConfigError):
            parse_shards(bad)
    with pytest.raises(ConfigError, match="SHARDS=PATH"):
        parse_claim("/mnt/a")


async def test_placement_refuses_bad_claims(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with DiskPool(2) as pool:
        ok = await build_placement([parse_claim(f"0-1={a}"), parse_claim(f"2={b}")], None, 3,
                                   fsync=False, pool=pool)
        assert ok.shards == [0, 1, 2] and ok.disk_for(2).root == b
        with pytest.raises(ConfigError, match="claimed by two disks"):
            await build_placement([parse_claim(f"0-1={a}"), parse_claim(f"1-2={b}")], None, 3,
                                  fsync=False, pool=pool)
        with pytest.raises(ConfigError, match="shards 0-2, not 3"):
            await build_placement([parse_claim(f"3={a}")], None, 3, fsync=False, pool=pool)
        with pytest.raises(ConfigError, match="is the disk mounted"):
            await build_placement([parse_claim(f"0={tmp_path / 'missing'}")], None, 3,
                                  fsync=False, pool=pool)
        (tmp_path / "file").write_text("x")
        with pytest.raises(ConfigError):
            await build_placement([parse_claim(f"0={tmp_path / 'file'}")], None, 1,
                                  fsync=False, pool=pool)


async def test_three_shards_two_fetchers_one_lister(small_bucket: BucketInfo, tmp_path: Path,
                                                    rabbit_url: str, job_name: str) -> None:
    disk_a, disk_b = tmp_path / "disk-a", tmp_path / "disk-b"
    disk_a.mkdir()
    disk_b.mkdir()
    try:
        async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                             password=PASSWORD, faults=Faults(latency_s=0.005)) as fake:
            code, out = await cli("seed", f"upyun://{BUCKET}/", "--job", job_name, "--broker",
                                  rabbit_url, "--endpoint", fake.url, "--shards", "3",
                                  "--list-limit", "50")
            assert code == 0, out
            common = ("--job", job_name, "--broker", rabbit_url, "--until-idle",
                      "--no-progress", "--state-dir", str(tmp_path / "state"))
            results = await asyncio.gather(
                cli("work", *common, "--role", "list"),
                cli("work", *common, "--role", "fetch", "--disk", f"0-1={disk_a}"),
                cli("work", *common, "--role", "fetch", "--disk", f"2={disk_b}"),
            )
            for code, out in results:
                assert code == 0, out
            bodies = dict(fake.stats.bodies)
    finally:
        await delete_job(rabbit_url, job_name)
    assert max(bodies.values()) == 1  # no file was served twice
    seen: dict[str, str] = {}
    for disk, shards in ((disk_a, {0, 1}), (disk_b, {2})):
        for dirpath, _, names in os.walk(disk):
            for name in names:
                rel = (Path(dirpath) / name).relative_to(disk).as_posix()
                assert rel not in seen, f"{rel} is on both disks"
                seen[rel] = disk.name
                assert shard_of(rel, 3) in shards, f"{rel} is on the wrong disk"
                assert (Path(dirpath) / name).read_bytes() == (small_bucket.root / rel).read_bytes()
    expected = {p.relative_to(small_bucket.root).as_posix()
                for p in small_bucket.root.rglob("*") if p.is_file()}
    assert set(seen) == expected
    assert {v for v in seen.values()} == {"disk-a", "disk-b"}


async def test_two_jobs_on_one_broker_stay_apart(small_bucket: BucketInfo, tmp_path: Path,
                                                 rabbit_url: str, job_name: str) -> None:
    synthetic = SyntheticBucket(600, per_folder=200, max_size=2000, seed=3)
    jobs = [job_name + "-x", job_name + "-y"]
    try:
        async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                             password=PASSWORD) as real, \
                FakeUpyun(tmp_path, bucket=BUCKET, operator=OPERATOR, password=PASSWORD,
                          synthetic=synthetic) as made_up:
            outcomes = await asyncio.gather(*(
                run_job(JobSpec(name=job, source=f"upyun://{BUCKET}/",
                                source_options={"endpoint": fake.url, "list_limit": 100}),
                        tmp_path / job, rabbit_url, SourceSettings(env=CREDENTIALS),
                        WorkOptions(WorkerSettings(concurrency=8, fsync=False)),
                        tmp_path / "state")
                for job, fake in zip(jobs, (real, made_up), strict=True)))
    finally:
        for job in jobs:
            await delete_job(rabbit_url, job)
    assert [o.exit_code for o in outcomes] == [0, 0]
    assert tree_differences(small_bucket.root, tmp_path / jobs[0]) == []
    got = sorted(p.relative_to(tmp_path / jobs[1]).as_posix()
                 for p in (tmp_path / jobs[1]).rglob("*") if p.is_file())
    assert len(got) == 600
    for i in (0, 199, 200, 599):
        path = tmp_path / jobs[1] / synthetic.folder_name(i // 200) / synthetic.file_name(i)
        assert path.read_bytes() == synthetic.content(i)


async def test_backlog_stays_bounded(tmp_path: Path, rabbit_url: str, job_name: str) -> None:
    synthetic = SyntheticBucket(3000, per_folder=1000, max_size=100, seed=9)
    limit, page = 200, 100
    peak = 0
    watcher = await RabbitBroker.connect(rabbit_url, job_name)
    try:
        async with FakeUpyun(tmp_path, bucket=BUCKET, operator=OPERATOR, password=PASSWORD,
                             synthetic=synthetic, faults=Faults(latency_s=0.002)) as fake:
            spec = JobSpec(name=job_name, source=f"upyun://{BUCKET}/",
                           source_options={"endpoint": fake.url, "list_limit": page})
            run = asyncio.create_task(run_job(
                spec, tmp_path / "dest", rabbit_url,
                SourceSettings(env=CREDENTIALS),
                # One file a message, so that the queue depth counts files.
                WorkOptions(WorkerSettings(concurrency=4, list_concurrency=4, fsync=False,
                                           max_backlog=limit, batch_files=1)),
                tmp_path / "state"))
            while not run.done():
                try:
                    await watcher.attach()
                    depths = await watcher.depths()
                    peak = max(peak, depths[f"{job_name}.fetch.0"].ready)
                except ConfigError:
                    pass
                await asyncio.sleep(0.05)
            outcome = await run
    finally:
        await watcher.delete_job()
        await watcher.close()
    assert outcome.exit_code == 0 and outcome.stats.fetched == 3000
    assert limit / 2 < peak <= limit + page, peak
