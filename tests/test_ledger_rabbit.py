"""The ledger of a RabbitMQ job: a worker holding the ledger is killed mid-run and started
again; its job's ledger ends complete, one row per file, nothing parked, nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from mirror.ledger.store import LedgerStore
from mirror.testing.fake_upyun import FakeUpyun, Faults
from mirror.testing.sample import build_bucket

from .conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD, POSTGRES_URL, need_server


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_")}
    return {**env, **CREDENTIALS}


async def mirror_proc(*args: str, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mirror", *args, env=cli_env(), stdout=out, stderr=out)


async def delete_job(url: str, job: str) -> None:
    """Every queue of the job (attached first: delete_job needs its layout)."""
    from mirror.broker.rabbitmq import RabbitBroker
    from mirror.errors import ConfigError

    broker = await RabbitBroker.connect(url, job)
    try:
        with contextlib.suppress(ConfigError):
            await broker.attach()
        await broker.delete_job()
    finally:
        await broker.close()


def files_under(root: Path) -> set[str]:
    return {(Path(d) / n).relative_to(root).as_posix()
            for d, _, names in os.walk(root) for n in names}


async def test_a_killed_ledger_worker_leaves_the_ledger_complete(
        tmp_path: Path, rabbit_url: str, job_name: str) -> None:

    need_server(5432, "PostgreSQL", "pg_ctlcluster 15 main start")
    bucket = build_bucket(tmp_path / "bucket" / "data", files=240, deep=4, wide=40,
                          big_files=0, zero_files=2, empty_folders=1, seed=5)
    expected = files_under(bucket.root)
    logs = tmp_path / "logs"
    logs.mkdir()
    store = await LedgerStore.open(POSTGRES_URL)
    try:
        async with FakeUpyun(bucket.root, bucket=BUCKET, operator=OPERATOR, password=PASSWORD,
                             faults=Faults(latency_s=0.02)) as fake:
            seed = await mirror_proc("seed", f"upyun://{BUCKET}/", "--job", job_name,
                                     "--broker", rabbit_url, "--endpoint", fake.url,
                                     "--list-limit", "50", "--ledger", POSTGRES_URL,
                                     log=logs / "seed.log")
            assert await seed.wait() == 0, (logs / "seed.log").read_text()
            work = ("work", "--job", job_name, "--broker", rabbit_url, "--until-idle",
                    "--dest", str(tmp_path / "dest"), "--concurrency", "4", "--no-progress",
                    "--processes", "1", "--ledger", POSTGRES_URL)
            worker = await mirror_proc(*work, log=logs / "first.log")
            started = time.monotonic()
            while sum(fake.stats.complete.values()) < len(expected) // 3:
                assert worker.returncode is None, (logs / "first.log").read_text()
                assert time.monotonic() - started < 60, "no progress"
                await asyncio.sleep(0.02)
            worker.send_signal(signal.SIGKILL)
            await worker.wait()
            before = (await store.counts(job_name))["fetched"][0]
            done_before = sum(fake.stats.complete.values())
            worker = await mirror_proc(*work, log=logs / "second.log")
            assert await asyncio.wait_for(worker.wait(), 120) == 0, (
                logs / "second.log").read_text()
        rows = [r async for r in store.rows(job_name)]
    finally:
        await store.delete_job(job_name)
        await store.close()
        await delete_job(rabbit_url, job_name)
    print(f"ledger rows before the kill: {before} of {done_before} files done; after: "
          f"{len(rows)} rows of {len(expected)} files")
    assert 0 < done_before < len(expected)
    paths = [r.path for r in rows]
    assert len(paths) == len(set(paths)) == len(expected)
    assert set(paths) == expected
    statuses = {r.status for r in rows}
    assert statuses <= {"fetched", "skipped"}, statuses
    # Skipped: only files the killed worker held (done, and not acked) when it died.
    assert sum(r.status == "skipped" for r in rows) <= 64
    assert all(r.seconds is not None for r in rows if r.status == "fetched")


async def test_the_ledger_queue_keeps_events_until_a_writer_commits_them(
        tmp_path: Path, rabbit_url: str, job_name: str) -> None:
    """Events published before any writer follows wait in J.ledger (a refused name that is
    not UTF-8 among them); a writer that goes before its commit leaves them there."""
    from mirror.broker.rabbitmq import RabbitBroker
    from mirror.events import file_event, parked_event
    from mirror.jobs import FetchJob, JobSpec, Reason
    from mirror.ledger import LedgerSettings
    from mirror.ledger.attach import attached

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    spec = JobSpec(name=job_name, source=f"upyun://{BUCKET}/")
    broker = await RabbitBroker.connect(rabbit_url, job_name)
    try:
        await broker.declare(spec)
        await broker.declare_ledger_feed()
        await broker.publish_event(parked_event(job_name, FetchJob("bad\udcffname"),
                                                Reason("UnsafePath", "not UTF-8", 0)))
        for i in range(5):
            await broker.publish_event(file_event("fetched", job_name, FetchJob(f"f{i}", i), 0.1))
        await broker.publish_event({"event": "job.finished", "job": job_name})  # not kept
        held: list[dict[str, object]] = []
        feed = await broker.follow_ledger_feed(100, lambda event, ack: held.append(event))
        while len(held) < 6:  # handed over, never acked: a writer that dies before its commit
            await asyncio.sleep(0.05)
        await feed.close()
        started = time.monotonic()
        async with attached(broker, spec, LedgerSettings(url)) as writer:
            pass
        assert writer.written == 6 and time.monotonic() - started < 5
    finally:
        await broker.close()
        await delete_job(rabbit_url, job_name)
    store = await LedgerStore.open(url)
    rows = {r.path: r.status async for r in store.rows(job_name)}
    await store.close()
    assert rows == {"bad\\udcffname": "parked", **{f"f{i}": "fetched" for i in range(5)}}
