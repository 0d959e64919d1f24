"""`mirror failures`, `mirror retry` and `mirror stop`, run as an operator would run them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from mirror.broker.rabbitmq import RabbitBroker
from mirror.testing.fake_upyun import FakeUpyun, Faults

from .conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mirror", *args, env={**os.environ, **CREDENTIALS},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


def bucket(root: Path) -> None:
    for i in range(10):
        (root / "d").mkdir(parents=True, exist_ok=True)
        (root / "d" / f"f{i}.txt").write_bytes(os.urandom(500 + i))
    (root / "bad.bin").write_bytes(os.urandom(4000))


def corrupt(data: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return bytes(reversed(data)), headers


COMMON = ("--retry-delays", "0.1,0.2", "--max-attempts", "2", "--request-retries", "0",
          "--no-progress")


async def test_failures_and_retry_embedded(tmp_path: Path) -> None:
    root, dest, state = tmp_path / "b", tmp_path / "dest", str(tmp_path / "state")
    bucket(root)
    async with FakeUpyun(root, bucket=BUCKET, operator=OPERATOR, password=PASSWORD) as fake:
        fake.body_override["bad.bin"] = corrupt
        code, out = await cli("run", f"upyun://{BUCKET}/", str(dest), "--job", "adm",
                              "--endpoint", fake.url, "--state-dir", state, *COMMON)
        assert code == 1, out
        assert "bad.bin" in out and "IntegrityError" in out  # the summary names it
        code, out = await cli("failures", "--job", "adm", "--state-dir", state, "--json")
        assert code == 0, out
        report = json.loads(out)
        assert report["parked"] == 1
        [group] = report["groups"]
        assert group["error"] == "IntegrityError" and group["paths"] == ["bad.bin"]
        assert "MD5" in group["example"]
        code, out = await cli("failures", "--job", "adm", "--state-dir", state)
        assert "1 parked" in out and "IntegrityError" in out and "bad.bin" in out
        code, out = await cli("retry", "--job", "adm", "--state-dir", state, "--reason",
                              "NotFound", "--no-progress")
        assert code == 0 and "no parked job matches" in out, out
        del fake.body_override["bad.bin"]
        code, out = await cli("retry", "--job", "adm", "--state-dir", state, "--reason",
                              "integrityerror", "--no-progress")
        assert code == 0, out
        assert (dest / "bad.bin").read_bytes() == (root / "bad.bin").read_bytes()
        code, out = await cli("failures", "--job", "adm", "--state-dir", state)
        assert "nothing is parked" in out


async def test_failures_and_retry_on_rabbitmq(tmp_path: Path, rabbit_url: str,
                                              job_name: str) -> None:
    root, dest, state = tmp_path / "b", tmp_path / "dest", str(tmp_path / "state")
    bucket(root)
    try:
        async with FakeUpyun(root, bucket=BUCKET, operator=OPERATOR,
                             password=PASSWORD) as fake:
            fake.body_override["bad.bin"] = corrupt
            code, out = await cli("run", f"upyun://{BUCKET}/", str(dest), "--job", job_name,
                                  "--broker", rabbit_url, "--endpoint", fake.url,
                                  "--state-dir", state, *COMMON)
            assert code == 1, out
            code, out = await cli("failures", "--job", job_name, "--broker", rabbit_url,
                                  "--json")
            report = json.loads(out)
            assert report["parked"] == 1 and report["groups"][0]["paths"] == ["bad.bin"]
            del fake.body_override["bad.bin"]
            code, out = await cli("retry", "--job", job_name, "--broker", rabbit_url)
            assert code == 0 and "1 parked jobs put back" in out, out
            code, out = await cli("work", "--job", job_name, "--broker", rabbit_url,
                                  "--dest", str(dest), "--until-idle", "--state-dir", state,
                                  "--no-progress")
            assert code == 0, out
            assert (dest / "bad.bin").read_bytes() == (root / "bad.bin").read_bytes()
            code, out = await cli("failures", "--job", job_name, "--broker", rabbit_url)
            assert "nothing is parked" in out
    finally:
        broker = await RabbitBroker.connect(rabbit_url, job_name)
        await broker.attach()
        await broker.delete_job()
        await broker.close()


async def test_stop_drains_every_worker(tmp_path: Path, rabbit_url: str, job_name: str) -> None:
    root, dest, state = tmp_path / "b", tmp_path / "dest", str(tmp_path / "state")
    for i in range(400):
        (root / f"d{i % 20}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 20}" / f"f{i}.txt").write_bytes(os.urandom(200))
    try:
        async with FakeUpyun(root, bucket=BUCKET, operator=OPERATOR, password=PASSWORD,
                             faults=Faults(latency_s=0.2)) as fake:
            code, out = await cli("seed", f"upyun://{BUCKET}/", "--job", job_name, "--broker",
                                  rabbit_url, "--endpoint", fake.url)
            assert code == 0, out
            workers = [await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mirror", "work", "--job", job_name, "--broker",
                rabbit_url, "--dest", str(dest), "--state-dir", state, "--no-progress",
                "--concurrency", "2", env={**os.environ, **CREDENTIALS},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                for _ in range(2)]
            while sum(fake.stats.bodies.values()) < 10:
                await asyncio.sleep(0.1)
            started = time.monotonic()
            code, out = await cli("stop", "--job", job_name, "--broker", rabbit_url,
                                  "--wait", "3")
            assert code == 0 and "2 workers confirmed" in out, out
            outs = [await asyncio.wait_for(w.communicate(), 30) for w in workers]
            assert [w.returncode for w in workers] == [0, 0], outs
            assert time.monotonic() - started < 30
            fetched = sum(fake.stats.bodies.values())
            assert fetched < 400  # stopped before the end: the rest is still queued
        broker = await RabbitBroker.connect(rabbit_url, job_name)
        await broker.attach()
        depths = await broker.depths()
        await broker.close()
        assert sum(d.ready for d in depths.values()) > 0
        assert not list(dest.rglob("*.mirror.part"))  # drained, nothing half-done left behind
    finally:
        broker = await RabbitBroker.connect(rabbit_url, job_name)
        await broker.attach()
        await broker.delete_job()
        await broker.close()
