"""`mirror run SOURCE DEST` with no flags against sources as they are: flaky, and far away.

Each case runs the command as a user would (a subprocess, no tuning flags) and, in the same
test, the hand-tuned run it must keep up with, interleaved (default, tuned, default, tuned)
so that the machine's drift falls on both; the best of each pair of runs is compared.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from mirror.testing.fake_upyun import FakeUpyun, Faults
from mirror.testing.synthetic import SyntheticBucket

from .conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD

FILES = 6000


async def timed_run(url: str, dest: Path, state: Path, *flags: str) -> float:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mirror", "run", f"upyun://{BUCKET}/", str(dest),
        "--endpoint", url, "--no-progress", "--state-dir", str(state), *flags,
        env={**os.environ, **CREDENTIALS},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    assert sum(1 for p in dest.rglob("*") if p.is_file()) == FILES
    return elapsed


async def compare(tmp_path: Path, faults: Faults, tuned: tuple[str, ...],
                  per_folder: int = 500) -> tuple[float, float, dict[str, object]]:
    """Best of two default runs and best of two tuned runs, each from an empty DEST."""
    synthetic = SyntheticBucket(FILES, per_folder=per_folder, max_size=4096, seed=9)
    times: dict[str, list[float]] = {"default": [], "tuned": []}
    async with FakeUpyun(tmp_path / "root", bucket=BUCKET, operator=OPERATOR,
                         password=PASSWORD, synthetic=synthetic, faults=faults) as fake:
        for round_ in range(2):
            for label, flags in (("default", ()), ("tuned", tuned)):
                fake.rearm()  # the same first attempts fail in every run
                dest = tmp_path / f"{label}{round_}"
                times[label].append(await timed_run(fake.url, dest, tmp_path / "state",
                                                    *flags))
        stats = fake.stats.to_dict()
    print(f"default runs {times['default']}, tuned ({' '.join(tuned)}) {times['tuned']}, "
          f"source {stats['faults']}")
    return min(times["default"]), min(times["tuned"]), stats


async def test_a_flaky_source_does_not_slow_the_defaults_down(tmp_path: Path) -> None:
    """5% of first attempts fail whatever the rate (listings 429, files 503 or cut short)."""
    default, tuned, stats = await compare(tmp_path, Faults(rate_random=0.05, seed=3),
                                          ("--no-adaptive",), per_folder=100)
    faults = stats["faults"]
    assert isinstance(faults, dict) and sum(faults.values()) > 0.02 * FILES
    assert default <= tuned / 0.7


async def test_a_distant_source_needs_no_tuning(tmp_path: Path) -> None:
    """60 ms per request: the default run keeps up with 256 transfers set by hand."""
    default, tuned, _ = await compare(tmp_path, Faults(latency_s=0.06),
                                      ("--concurrency", "256"))
    assert default <= tuned / 0.8
