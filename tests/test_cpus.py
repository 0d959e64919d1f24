"""Usable cores: CPU affinity capped by a cgroup quota, read from cgroup trees on disk."""

from __future__ import annotations

import os
from pathlib import Path

from mirror.cpus import cgroup_cores, usable_cpus


def make(root: Path, rel: str, name: str, text: str) -> None:
    folder = root / rel
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_v2_takes_the_tightest_quota_on_the_way_up(tmp_path: Path) -> None:
    make(tmp_path, "", "cpu.max", "max 100000\n")
    make(tmp_path, "system.slice", "cpu.max", "300000 100000\n")
    make(tmp_path, "system.slice/mirror.service", "cpu.max", "max 100000\n")
    assert cgroup_cores(tmp_path, "0::/system.slice/mirror.service\n") == 3.0


def test_v2_without_a_quota(tmp_path: Path) -> None:
    make(tmp_path, "user.slice", "cpu.max", "max 100000\n")
    assert cgroup_cores(tmp_path, "0::/user.slice\n") is None


def test_v1_quota(tmp_path: Path) -> None:
    make(tmp_path, "cpu,cpuacct", "cpu.cfs_quota_us", "150000\n")
    make(tmp_path, "cpu,cpuacct", "cpu.cfs_period_us", "100000\n")
    assert cgroup_cores(tmp_path, "2:cpu,cpuacct:/\n1:name=systemd:/\n") == 1.5


def test_v1_unlimited(tmp_path: Path) -> None:
    make(tmp_path, "cpu", "cpu.cfs_quota_us", "-1\n")
    make(tmp_path, "cpu", "cpu.cfs_period_us", "100000\n")
    assert cgroup_cores(tmp_path, "1:cpu:/\n") is None


def test_this_machine() -> None:
    n = usable_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_affinity_counts() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import os; os.sched_setaffinity(0, {0}); "
                          "from mirror.cpus import usable_cpus; print(usable_cpus())"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
