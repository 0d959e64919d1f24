"""Fetch processes (``--processes N``): same result, same error policy, a dead child costs
nothing but a retry."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from mirror import errors
from mirror.errors import ErrorDetail
from mirror.fetchwire import error_from as _error_from
from mirror.fetchwire import reply_for as _reply_for
from mirror.jobs import JobSpec
from mirror.runner import WorkOptions, run_job
from mirror.settings import SourceSettings, WorkerSettings
from mirror.testing.compare import tree_differences
from mirror.testing.fake_upyun import FakeUpyun, Faults
from mirror.testing.sample import BucketInfo
from tests.conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD


@pytest.mark.parametrize("exc", [
    errors.RateLimited("slow down", ErrorDetail(429, "42900003", "rid"), retry_after_s=7.0),
    errors.NotFound("gone", ErrorDetail(404)),
    errors.IntegrityError("bad md5"),
    errors.DiskFull("disk /x is full"),
    errors.UnsafePath("bad name"),
])
def test_errors_cross_the_process_boundary(exc: errors.MirrorError) -> None:
    back = _error_from(_reply_for(exc))
    assert type(back) is type(exc)
    assert back.message == exc.message and back.detail == exc.detail
    if isinstance(exc, errors.RateLimited):
        assert isinstance(back, errors.RateLimited) and back.retry_after_s == 7.0


def test_a_bug_in_a_child_is_retried_not_fatal() -> None:
    back = _error_from(_reply_for(KeyError("oops")))
    assert isinstance(back, errors.TransientError)
    assert "KeyError" in back.message


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            # forked at the start (the parent's command line), or started again later
            if ppid == pid and (b"mirror" in cmdline):
                found.append(int(entry.name))
    return found


async def test_two_processes_with_faults_and_a_killed_child(small_bucket: BucketInfo,
                                                             tmp_path: Path) -> None:
    """Faults retried across the process boundary; one child SIGKILLed mid-run: the mirror
    is still complete and exact, and the run exits 0."""
    dest = tmp_path / "dest"
    faults = Faults(rate_429=0.05, rate_503=0.05, rate_truncate=0.05, latency_s=0.02, seed=3)
    async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                         password=PASSWORD, faults=faults) as fake:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mirror", "run", f"upyun://{BUCKET}/", str(dest),
            "--endpoint", fake.url, "--processes", "2", "--concurrency", "4",
            "--list-limit", "10", "--request-retries", "0",
            "--retry-delays", "0.2,0.5,1", "--max-attempts", "8", "--no-progress",
            "--state-dir", str(tmp_path / "state"), env={**os.environ, **CREDENTIALS},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        killed = None
        for _ in range(200):  # kill one child once it is working
            await asyncio.sleep(0.05)
            kids = children_of(proc.pid)
            if len(kids) == 2 and any(dest.rglob("*")):
                killed = kids[0]
                os.kill(killed, signal.SIGKILL)
                break
        out, err = await asyncio.wait_for(proc.communicate(), 240)
    text = out.decode() + err.decode()
    assert killed is not None, "the run ended before a child could be killed"
    assert proc.returncode == 0, text
    assert "retries" in text
    assert tree_differences(small_bucket.root, dest) == []
    assert not list(dest.rglob("*.mirror.part"))


@pytest.mark.parametrize("processes", [1, 2])
async def test_the_end_of_a_job_is_seen_without_polling(small_bucket: BucketInfo,
                                                        tmp_path: Path, processes: int) -> None:
    """The worker learns that the job is done when its last message is settled, not at its
    next poll: batches are acked after their shared event, later than their last file."""
    dest = tmp_path / "dest"
    async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                         password=PASSWORD) as fake:
        spec = JobSpec(name=f"end-{processes}", source=f"upyun://{BUCKET}/",
                       source_options={"endpoint": fake.url, "list_limit": 100})
        settings = SourceSettings(env=CREDENTIALS)
        worker = WorkerSettings(concurrency=8, idle_poll_s=3600, fsync=False)
        outcome = await asyncio.wait_for(run_job(
            spec, dest, None, settings, WorkOptions(worker, processes=processes),
            tmp_path / "state"), 120)
    assert outcome.exit_code == 0 and outcome.stats.fetched == small_bucket.files
    assert tree_differences(small_bucket.root, dest) == []


FORK_SCRIPT = """
import os, sys
from mirror.prefork import fork_children, reap

def echo(requests, answers):
    line = requests.readline()
    if line == b"boom\\n":
        raise RuntimeError("a child failed")
    answers.write(line.upper())

children = fork_children(2, echo)
assert len(children) == 2, children
os.write(children[0].to_child, b"hello\\n")
print(os.read(children[0].from_child, 100).decode().strip())
os.write(children[1].to_child, b"boom\\n")
_, status = os.waitpid(children[1].pid, 0)
print("exit", os.waitstatus_to_exitcode(status))
children[1].taken = True  # reaped above
os.close(children[1].to_child)
os.close(children[1].from_child)
reap(children)  # the first: its pipe closes, it exits
print("reaped", all(c.taken for c in children))
"""


async def test_forked_children_answer_on_their_pipes_and_end_with_them() -> None:
    """Forked before any event loop (a fresh interpreter here): each child answers on its
    own pipes, a failure in one is printed and exits 1, and closing a pipe ends its child."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FORK_SCRIPT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split("\n")[:3] == ["HELLO", "exit 1", "reaped True"]
    assert "RuntimeError: a child failed" in err.decode()
