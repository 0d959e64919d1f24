"""The ``mirror`` command as users run it: separate processes, real servers, exit codes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from mirror.testing.compare import tree_differences
from mirror.testing.fake_upyun import FakeUpyun, Faults
from mirror.testing.sample import BucketInfo, build_bucket
from tests.conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD


async def mirror_cmd(*args: str, env: dict[str, str] | None = None,
                     timeout: float = 240) -> tuple[int, str, str]:
    full_env = {**os.environ, "MIRROR_STATE_DIR": os.environ.get("MIRROR_STATE_DIR", ""),
                **(env or {})}
    full_env.pop("MIRROR_BROKER_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mirror", *args, env={k: v for k, v in full_env.items() if v},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_help_of_every_command() -> None:
    code, out, _ = await mirror_cmd("--help")
    assert code == 0
    for command in ("run", "seed", "work", "demo", "ls", "fake-upyun"):
        assert command in out
        code, sub, err = await mirror_cmd(command, "--help")
        assert code == 0, err
        assert "Usage: mirror" in sub


async def test_demo(tmp_path: Path) -> None:
    code, out, err = await mirror_cmd("demo", "--dest", str(tmp_path / "d"), "--files", "60",
                                      "--state-dir", str(tmp_path / "state"), "--no-progress")
    assert code == 0, out + err
    assert "identical" in out and "fetched" in out


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    code, _, err = await mirror_cmd("run", "ftp://x/", str(tmp_path / "d"))
    assert code == 2 and "unsupported source URL" in err
    code, _, err = await mirror_cmd("run", "upyun://b/", str(tmp_path / "d"),
                                    env={"UPYUN_OPERATOR": "", "UPYUN_PASSWORD": ""})
    assert code == 2 and "UPYUN_OPERATOR" in err
    code, _, err = await mirror_cmd("run", "upyun://b/", str(tmp_path / "d"),
                                    "--retry-delays", "soon")
    assert code == 2 and "--retry-delays" in err
    config = tmp_path / "m.toml"
    config.write_text('concurrency = 4\n[credentials]\nUPYUN_PASSWORD = "x"\n')
    config.chmod(0o644)
    code, _, err = await mirror_cmd("--config", str(config), "run", "upyun://b/", "d")
    assert code == 2 and "chmod 600" in err
    config.write_text("[work]\nconcurency = 4\n")
    code, _, err = await mirror_cmd("--config", str(config), "run", "upyun://b/", "d")
    assert code == 2 and "concurency" in err and "'concurrency'" in err and str(config) in err


async def test_bad_credentials_exit_3_with_one_clear_line(small_bucket: BucketInfo,
                                                          tmp_path: Path) -> None:
    async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                         password=PASSWORD) as fake:
        code, _, err = await mirror_cmd(
            "run", f"upyun://{BUCKET}/", str(tmp_path / "d"), "--endpoint", fake.url,
            env={"UPYUN_OPERATOR": OPERATOR, "UPYUN_PASSWORD": "wrong"})
    assert code == 3
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "rejected the credentials" in lines[0] and "UPYUN_PASSWORD" in lines[0]
    assert "wrong" not in err  # never the password
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


async def test_unreachable_broker_exit_3(small_bucket: BucketInfo, tmp_path: Path) -> None:
    async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                         password=PASSWORD) as fake:
        code, _, err = await mirror_cmd(
            "run", f"upyun://{BUCKET}/", str(tmp_path / "d"), "--endpoint", fake.url,
            "--broker", "amqp://guest:guest@127.0.0.1:1/", env=CREDENTIALS)
    assert code == 3 and "cannot reach RabbitMQ" in err and "guest:guest" not in err


async def test_parked_files_exit_1_and_are_listed(tmp_path: Path) -> None:
    bucket = build_bucket(tmp_path / "b", files=20, deep=2, wide=5, big_files=0, seed=3)
    (bucket.root / "photo.jpg.mirror.part").write_bytes(b"a name we must refuse")
    async with FakeUpyun(bucket.root, bucket=BUCKET, operator=OPERATOR,
                         password=PASSWORD) as fake:
        code, out, err = await mirror_cmd(
            "run", f"upyun://{BUCKET}/", str(tmp_path / "d"), "--endpoint", fake.url,
            "--state-dir", str(tmp_path / "state"), "--no-progress", env=CREDENTIALS)
    assert code == 1, out + err
    assert "parked 1" in out and "photo.jpg.mirror.part" in out and "UnsafePath" in out
    (bucket.root / "photo.jpg.mirror.part").unlink()
    assert tree_differences(bucket.root, tmp_path / "d") == []
    parked = list((tmp_path / "state" / "jobs").glob("*/parked.jsonl"))
    assert len(parked) == 1 and "photo.jpg.mirror.part" in parked[0].read_text()


@pytest.mark.slow
async def test_seed_and_three_workers_until_idle(small_bucket: BucketInfo, tmp_path: Path,
                                                 rabbit_url: str, job_name: str) -> None:
    """A lister, a fetcher and an all-rounder on one job; each exits only when all is done.

    The server is slow (0.05 s a response), so the fetcher often sees its queue empty while
    the lister still holds a page: it must not leave early.
    """
    from mirror.broker.rabbitmq import RabbitBroker

    dest = tmp_path / "dest"
    env = {**CREDENTIALS, "MIRROR_BROKER_URL": ""}
    try:
        async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                             password=PASSWORD, faults=Faults(latency_s=0.05)) as fake:
            code, out, err = await mirror_cmd(
                "seed", f"upyun://{BUCKET}/", "--job", job_name, "--broker", rabbit_url,
                "--endpoint", fake.url, "--list-limit", "7", env=env)
            assert code == 0, err
            assert "seeded" in out
            common = ("work", "--job", job_name, "--broker", rabbit_url, "--dest", str(dest),
                      "--until-idle", "--no-progress")
            results = await asyncio.gather(
                mirror_cmd(*common, "--role", "fetch", env=env),
                mirror_cmd(*common, "--role", "list", "--list-concurrency", "1", env=env),
                mirror_cmd(*common, "--role", "all", "--concurrency", "2", env=env),
            )
            for code, out, err in results:
                assert code == 0, out + err
            assert tree_differences(small_bucket.root, dest) == []
            fetched = sum(int(out.split("fetched ")[1].split()[0]) for _, out, _ in results)
            assert fetched == small_bucket.files  # each file fetched once, by someone
            assert max(fake.stats.bodies.values()) == 1
    finally:
        broker = await RabbitBroker.connect(rabbit_url, job_name)
        await broker.delete_job()
        await broker.close()
