"""Chaos: two worker processes over a private broker node, killed with SIGKILL at random moments,
the broker stopped and started mid-run, faults on at the source. Nothing may be lost, corrupt,
duplicated beyond what was in flight, or written outside DEST.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from mirror.testing.compare import tree_differences
from mirror.testing.fake_upyun import FakeUpyun, Faults
from mirror.testing.rabbit_node import PrivateRabbit
from mirror.testing.sample import build_bucket

from .conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD

pytestmark = pytest.mark.slow
CONCURRENCY = 8
KILLS = 3


async def start_worker(url: str, job: str, dest: Path, state: Path, log: Path,
                       env: dict[str, str]) -> asyncio.subprocess.Process:
    out = log.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mirror", "-v", "work", "--job", job, "--broker", url,
            # The adaptive limit stays on, within a bound that bounds the duplicates too.
            "--dest", str(dest), "--until-idle", "--max-concurrency", str(CONCURRENCY),
            "--request-retries", "0", "--no-progress", "--state-dir", str(state),
            "--drain-deadline", "5", env=env, stdout=out, stderr=out)
    finally:
        out.close()


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mirror", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def test_kills_and_broker_restart_lose_nothing(tmp_path: Path,
                                                     rabbit_available: None) -> None:
    rng = random.Random(int(os.environ.get("MIRROR_CHAOS_SEED", "20261122")))
    bucket = build_bucket(tmp_path / "bucket" / "data", files=2000, deep=10, wide=400,
                          big_files=4, big_size=3 * 1024 * 1024, seed=21)
    outside = tmp_path / "out"
    dest = outside / "dest"
    state = tmp_path / "state"
    logs = tmp_path / "logs"
    logs.mkdir()
    faults = Faults(rate_429=0.03, rate_503=0.03, rate_truncate=0.03, rate_drop=0.03,
                    latency_s=0.01, seed=5)
    node = PrivateRabbit()
    await node.start()
    kills: list[tuple[float, int]] = []  # (time, jobs the killed worker could hold)
    workers: list[asyncio.subprocess.Process] = []
    try:
        async with FakeUpyun(bucket.root, bucket=BUCKET, operator=OPERATOR,
                             password=PASSWORD, faults=faults) as fake:
            env = {**os.environ, **CREDENTIALS}
            job = "chaos"
            code, text = await run_cli(
                "seed", f"upyun://{BUCKET}/", "--job", job, "--broker", node.url,
                "--endpoint", fake.url, "--list-limit", "100", "--retry-delays", "0.5,1,2",
                "--max-attempts", "10", env=env)
            assert code == 0, text
            for i in range(2):
                workers.append(await start_worker(node.url, job, dest, state,
                                                  logs / f"w{i}.log", env))
            started = time.monotonic()

            restarts = 0

            def progress() -> int:
                return sum(fake.stats.bodies.values())

            async def supervise() -> None:
                """Restart=on-failure, as systemd would: only for a broker that was away."""
                nonlocal restarts
                for i, w in enumerate(workers):
                    if w.returncode is None or w.returncode == 0:
                        continue
                    tail = (logs / f"w{i}.log").read_text(errors="replace")[-3000:]
                    assert w.returncode == 3 and "RabbitMQ" in tail, (
                        f"worker {i} exited {w.returncode} mid-run:\n{tail}")
                    restarts += 1
                    workers[i] = await start_worker(node.url, job, dest, state,
                                                    logs / f"w{i}.log", env)

            # Kill points at random shares of the bucket's files, broker restart in between.
            marks = sorted(rng.uniform(0.1, 0.75) for _ in range(KILLS))
            broker_mark = rng.uniform(0.3, 0.6)
            events = sorted([(m, "kill") for m in marks] + [(broker_mark, "broker")])
            for share, what in events:
                while progress() < share * bucket.files:
                    assert time.monotonic() - started < 300, "the mirror made no progress"
                    await supervise()
                    assert any(w.returncode is None for w in workers), "workers exited early"
                    await asyncio.sleep(0.05)
                if what == "kill":
                    i = rng.randrange(len(workers))
                    if workers[i].returncode is None:
                        workers[i].send_signal(signal.SIGKILL)
                        await workers[i].wait()
                    kills.append((time.monotonic() - started, CONCURRENCY))
                    workers[i] = await start_worker(node.url, job, dest, state,
                                                    logs / f"w{i}.log", env)
                else:
                    await node.stop()
                    await asyncio.sleep(2)
                    await node.start()
            while any(w.returncode != 0 for w in workers):
                assert time.monotonic() - started < 400, "the job did not finish"
                await supervise()
                await asyncio.sleep(0.2)
            stats = fake.stats
    finally:
        for w in workers:  # a failed run must not leave workers behind
            if w.returncode is None:
                w.kill()
                await w.wait()
        await node.close()

    assert len(kills) == KILLS
    assert tree_differences(bucket.root, dest) == []  # lost 0, corrupt 0, no .part left
    assert sorted(os.listdir(outside)) == ["dest"]  # nothing outside DEST
    duplicates = sum(1 for n in stats.complete.values() if n > 1)
    in_flight_bound = sum(held for _, held in kills) + 2 * CONCURRENCY  # + broker restart
    print(f"chaos: kills={len(kills)} broker restarts=1 worker restarts after the broker "
          f"outage={restarts} faults={stats.faults} "
          f"duplicates={duplicates} (bound {in_flight_bound}) files={bucket.files}")
    assert duplicates <= in_flight_bound
    assert sum(stats.faults.values()) > 0
