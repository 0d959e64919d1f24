"""Rate limits, adaptive backoff on 429 and bandwidth caps, measured at the server."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from mirror.broker.rabbitmq import RabbitBroker
from mirror.errors import ConfigError
from mirror.jobs import JobSpec
from mirror.ratelimit import RateSettings, TokenBucket
from mirror.runner import WorkOptions, run_job
from mirror.settings import SourceSettings, WorkerSettings
from mirror.testing.fake_upyun import FakeUpyun, Faults
from mirror.testing.synthetic import SyntheticBucket

from .conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD


def window_rates(timeline: list[tuple[float, int]], start: float) -> list[int]:
    """Requests arriving in each whole second after ``start``."""
    counts: dict[int, int] = {}
    for t, _ in timeline:
        if t >= start:
            counts[int(t - start)] = counts.get(int(t - start), 0) + 1
    last = max(counts, default=-1)
    return [counts.get(i, 0) for i in range(last)]  # the last second is partial


async def test_token_bucket_paces_requests() -> None:
    bucket = TokenBucket(50)
    started = time.monotonic()
    for _ in range(60):
        await bucket.take()
    assert 1.0 <= time.monotonic() - started < 1.6


async def test_adaptive_rate_settles_under_the_source_limit(tmp_path: Path) -> None:
    limit = 100.0
    synthetic = SyntheticBucket(2000, per_folder=500, max_size=200, seed=4)
    async with FakeUpyun(tmp_path, bucket=BUCKET, operator=OPERATOR, password=PASSWORD,
                         synthetic=synthetic, faults=Faults(rate_limit_rps=limit)) as fake:
        spec = JobSpec(name="rate", source=f"upyun://{BUCKET}/",
                       source_options={"endpoint": fake.url}, retry_delays_s=(1.0, 2.0, 4.0),
                       max_attempts=8)
        outcome = await run_job(spec, tmp_path / "dest", None,
                                SourceSettings(env=CREDENTIALS),
                                WorkOptions(WorkerSettings(fsync=False)), tmp_path / "state")
        timeline = list(fake.stats.timeline)
    assert outcome.exit_code == 0 and outcome.stats.fetched == 2000
    first = timeline[0][0]
    settled = [(t, status) for t, status in timeline if t >= first + 5]
    throttled = sum(1 for _, status in settled if status == 429)
    ok = sum(1 for _, status in settled if status < 300)
    span = settled[-1][0] - settled[0][0]
    share_429 = throttled / len(settled)
    achieved = ok / span
    print(f"adaptive: {len(timeline)} requests, after 5 s {share_429:.1%} answered 429, "
          f"{achieved:.0f} ok/s against a limit of {limit:.0f}/s")
    assert share_429 < 0.05
    assert achieved >= 0.7 * limit


async def test_cluster_rps_is_shared_by_the_live_workers(tmp_path: Path, rabbit_url: str,
                                                         job_name: str) -> None:
    limit, cluster = 100.0, 90.0
    synthetic = SyntheticBucket(1200, per_folder=400, max_size=200, seed=5)
    env = {**os.environ, **CREDENTIALS}
    try:
        async with FakeUpyun(tmp_path, bucket=BUCKET, operator=OPERATOR, password=PASSWORD,
                             synthetic=synthetic, faults=Faults(rate_limit_rps=limit)) as fake:
            seed = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mirror", "seed", f"upyun://{BUCKET}/", "--job",
                job_name, "--broker", rabbit_url, "--endpoint", fake.url, env=env)
            assert await seed.wait() == 0
            workers = [await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mirror", "work", "--job", job_name, "--broker",
                rabbit_url, "--dest", str(tmp_path / "dest"), "--until-idle", "--no-progress",
                "--cluster-rps", str(cluster), "--no-fsync", "--state-dir",
                str(tmp_path / "state"), env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                for _ in range(2)]
            outs = [await asyncio.wait_for(w.communicate(), 120) for w in workers]
            assert [w.returncode for w in workers] == [0, 0], outs
            timeline = list(fake.stats.timeline)
    finally:
        broker = await RabbitBroker.connect(rabbit_url, job_name)
        try:
            await broker.attach()
            await broker.delete_job()
        except ConfigError:
            pass
        await broker.close()
    files = sum(1 for p in (tmp_path / "dest").rglob("*") if p.is_file())
    assert files == 1200
    rates = window_rates(timeline, timeline[0][0] + 3)  # after the workers found each other
    throttled = sum(1 for _, status in timeline if status == 429)
    print(f"cluster: per-second request counts {rates}, {throttled} answered 429")
    assert rates and max(rates) < limit
    assert sum(rates) / len(rates) >= 0.7 * cluster


async def test_bwlimit_holds_the_transfer_rate(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    root.mkdir()
    size = 20 * 1024 * 1024
    (root / "big.bin").write_bytes(os.urandom(size))
    rate = 2 * 1024 * 1024
    async with FakeUpyun(root, bucket=BUCKET, operator=OPERATOR, password=PASSWORD) as fake:
        spec = JobSpec(name="bw", source=f"upyun://{BUCKET}/",
                       source_options={"endpoint": fake.url})
        started = time.monotonic()
        outcome = await run_job(spec, tmp_path / "dest", None,
                                SourceSettings(env=CREDENTIALS),
                                WorkOptions(WorkerSettings(fsync=False),
                                            rates=RateSettings(bwlimit_bps=rate)),
                                tmp_path / "state")
        elapsed = time.monotonic() - started
    assert outcome.exit_code == 0
    measured = size / elapsed
    print(f"bwlimit: {measured / 1024 / 1024:.2f} MiB/s for a limit of 2 MiB/s")
    assert abs(measured - rate) <= 0.1 * rate
