"""The benches stay runnable: a tiny run of each end to end (they verify every tree themselves)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_compare_runs_and_verifies(tmp_path: Path, rabbit_url: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "compare.py"), "--small", "60", "--large", "1",
         "--out", str(tmp_path), "--transfers", "8", "--broker", rabbit_url],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| small")]
    assert any("(no flags)" in line for line in table)
    assert any("rabbitmq" in line for line in table)
    assert all(line.rstrip().endswith("| yes |") for line in table)


@pytest.mark.slow
def test_s3_bench_runs_and_verifies(tmp_path: Path) -> None:
    """bench/s3.py: moto serves the small set to bucket-mirror (and rclone where installed)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "s3.py"), "--small", "40", "--out",
         str(tmp_path), "--transfers", "8"],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| small")]
    assert any("(no flags)" in line for line in table)
    assert all(line.rstrip().endswith("| yes |") for line in table)
