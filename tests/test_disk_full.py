"""A full disk stops the worker with exit 3 and a message naming the disk; nothing incomplete is
left as a mirrored file, and once there is room again the same command completes the mirror.

The disk is a real, small tmpfs mounted by the test (root is needed to mount).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.testing.compare import tree_differences
from mirror.testing.fake_upyun import FakeUpyun

from .conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        message = f"cannot mount a small tmpfs here ({done.stderr.strip()}); needs root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def mirror_cli(url: str, dest: Path, state: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mirror", "run", f"upyun://{BUCKET}/", str(dest),
        "--endpoint", url, "--state-dir", str(state), "--no-progress", "--concurrency", "4",
        env={**os.environ, **CREDENTIALS},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


def complete_files_match(source: Path, dest: Path) -> int:
    """Every finished file in DEST equals its source; returns how many there are."""
    count = 0
    for dirpath, _, names in os.walk(dest):
        for name in names:
            if name.endswith(".mirror.part"):
                continue
            p = Path(dirpath) / name
            rel = p.relative_to(dest)
            assert p.read_bytes() == (source / rel).read_bytes(), rel
            count += 1
    return count


async def test_full_disk_stops_cleanly_and_resumes(tmp_path: Path, small_disk: Path) -> None:
    root = tmp_path / "bucket"
    for i in range(8):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 3}" / f"big{i}.bin").write_bytes(os.urandom(700_000))
    for i in range(20):
        (root / f"s{i}.txt").write_bytes(os.urandom(1000))
    dest = small_disk / "dest"
    async with FakeUpyun(root, bucket=BUCKET, operator=OPERATOR, password=PASSWORD) as fake:
        code, out = await mirror_cli(fake.url, dest, tmp_path / "state")
        assert code == 3, out
        assert "no space left" in out and str(dest) in out, out
        finished = complete_files_match(root, dest)
        assert finished < 28
        subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
        code, out = await mirror_cli(fake.url, dest, tmp_path / "state")
        assert code == 0, out
    assert tree_differences(root, dest) == []
