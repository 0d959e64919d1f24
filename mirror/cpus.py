"""How many cores this process may really use: its CPU affinity and its cgroup's CPU quota.

``os.cpu_count()`` counts the host's cores; in a container limited to two of 64, or under
``taskset``, fetch processes for all 64 would only contend. Python 3.13's
``os.process_cpu_count`` reads the affinity but not the quota.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _affinity() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _v2_quota(root: Path, proc_cgroup: str) -> float | None:
    """The tightest ``cpu.max`` from this process's cgroup up to the root (cgroup v2)."""
    path = next((line[3:] for line in proc_cgroup.splitlines() if line.startswith("0::")), None)
    if path is None:
        return None
    tightest: float | None = None
    folder = root / path.strip("/")
    while True:
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            if quota != "max":
                cores = int(quota) / int(period)
                tightest = cores if tightest is None else min(tightest, cores)
        except (OSError, ValueError):
            pass
        if folder == root or root not in folder.parents:
            return tightest
        folder = folder.parent


def _v1_quota(root: Path) -> float | None:
    for name in ("cpu", "cpu,cpuacct"):
        try:
            quota = int((root / name / "cpu.cfs_quota_us").read_text())
            period = int((root / name / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:
            return quota / period
    return None


def cgroup_cores(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup in cores; None when there is none."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    quota = _v2_quota(root, proc_cgroup)
    return quota if quota is not None else _v1_quota(root)


def usable_cpus() -> int:
    """Cores this process can run on at once: affinity, capped by a cgroup quota (a quota of
    1.5 cores is one core's worth of processes, rounded down, at least one)."""
    cores = _affinity()
    quota = cgroup_cores()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return cores


__all__ = ["cgroup_cores", "usable_cpus"]
