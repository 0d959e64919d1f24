"""A download that outlives RabbitMQ's consumer timeout arrives once, intact, and the job ends.

On 3.10-4.2 the broker closes the channel of a delivery not acked within ``consumer_timeout``
(checked about once a minute) and redelivers it, here to the same process while the first
download is still running. The redelivered copy must wait for that download, not start another.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mirror.jobs import JobSpec
from mirror.runner import WorkOptions, run_job
from mirror.settings import SourceSettings, WorkerSettings
from mirror.testing.fake_upyun import FakeUpyun, Faults
from mirror.testing.rabbit_node import PrivateRabbit

from .conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD

pytestmark = pytest.mark.slow

RATE = 10_000  # bytes per second per body: the big file takes about 135 s


async def test_download_longer_than_consumer_timeout(tmp_path: Path, rabbit_available: None,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "bucket"
    (root / "small").mkdir(parents=True)
    for i in range(5):
        (root / "small" / f"f{i}.txt").write_bytes(os.urandom(500))
    big = os.urandom(1_350_000)
    (root / "big.bin").write_bytes(big)
    dest = tmp_path / "dest"
    node = PrivateRabbit(consumer_timeout_ms=60_000)
    await node.start()
    try:
        async with FakeUpyun(root, bucket=BUCKET, operator=OPERATOR, password=PASSWORD,
                             faults=Faults(body_rate_bps=RATE)) as fake:
            spec = JobSpec(name="slow", source=f"upyun://{BUCKET}/",
                           source_options={"endpoint": fake.url}, retry_delays_s=(1.0, 2.0))
            settings = SourceSettings(env=CREDENTIALS, read_timeout_s=30)
            worker = WorkerSettings(concurrency=2, min_rate_bps=1000, stall_window_s=30)
            with caplog.at_level("WARNING"):
                outcome = await run_job(spec, dest, node.url, settings,
                                        WorkOptions(worker, until_idle=True), tmp_path / "state")
            complete = dict(fake.stats.complete)
            bodies = dict(fake.stats.bodies)
        log_text = node.log_text()
    finally:
        await node.close()
    assert outcome.exit_code == 0 and outcome.fatal is None
    assert hashlib.md5((dest / "big.bin").read_bytes()).digest() == hashlib.md5(big).digest()
    assert complete["big.bin"] == 1 and bodies["big.bin"] == 1  # fetched once, never restarted
    assert sorted(p.name for p in (dest / "small").iterdir()) == [f"f{i}.txt" for i in range(5)]
    # The broker really did time the delivery out: its ack came back on a dead channel.
    assert "the broker redelivers it" in caplog.text
    assert "delivery acknowledgement on channel" in log_text and "timed out" in log_text
