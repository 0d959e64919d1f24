"""Honest progress: the live view and the log lines count files (not messages), give a real ETA
and percent, and leave no stale frame above the summary. Real jobs over the fake UpYun."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from mirror import runner
from mirror.broker import Topology
from mirror.broker.memory import MemoryBroker
from mirror.broker.rabbitmq import RabbitBroker
from mirror.disk import Disk, Placement
from mirror.jobs import JobSpec
from mirror.progress import Progress, View, estimate_eta, summary
from mirror.runner import WorkOptions
from mirror.settings import SourceSettings, WorkerSettings
from mirror.stats import Stats
from mirror.testing.fake_upyun import FakeUpyun, Faults
from mirror.testing.sample import BucketInfo
from mirror.testing.synthetic import SyntheticBucket
from mirror.worker import Worker
from tests.conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD

CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
FRAME_ROWS = ("files ", "bytes ", "rate ", "listing ", "left ", "ETA ", "source ", "elapsed ",
              "━")  # what only the live view shows


def screen(output: str) -> list[str]:
    """What a terminal shows after ``output``: enough of one for what rich writes (text,
    CR, LF, cursor up, erase line; colours and cursor visibility ignored)."""
    lines, row, col = [""], 0, 0
    pos = 0
    for m in [*CSI.finditer(output), None]:
        text = output[pos:m.start() if m else len(output)]
        for ch in text:
            if ch == "\r":
                col = 0
            elif ch == "\n":
                row, col = row + 1, 0
                lines.extend([""] * (row + 1 - len(lines)))
            elif ch >= " ":
                line = lines[row].ljust(col)
                lines[row] = line[:col] + ch + line[col + 1:]
                col += 1
        if m is None:
            break
        pos = m.end()
        arg, op = m.group(1) or "", m.group(2)
        if op == "A":
            row = max(0, row - int(arg or 1))
        elif op == "K" and arg == "2":
            lines[row] = ""
        elif op == "K":
            lines[row] = lines[row][:col]
    return [line.rstrip() for line in lines]


async def mirror_with_readings(tmp_path: Path, files: int, max_backlog: int,
                               broker_url: str | None = None, job: str = "progress"
                               ) -> tuple[list[tuple[float, View, int]], View, Progress]:
    """Mirror a synthetic bucket of small files (embedded, or over RabbitMQ), reading the
    progress as ``mirror run`` makes it (and the fetch queues' depth in messages) every
    quarter second; each reading carries the seconds that were left then."""
    synthetic = SyntheticBucket(files, per_folder=300, max_size=2000, seed=5)
    async with FakeUpyun(tmp_path, bucket=BUCKET, operator=OPERATOR, password=PASSWORD,
                         synthetic=synthetic, faults=Faults(latency_s=0.01)) as fake:
        spec = JobSpec(name=job, source=f"upyun://{BUCKET}/",
                       source_options={"endpoint": fake.url, "list_limit": 50})
        broker = await runner.connect_broker(broker_url, job)
        source = runner.source_for(spec, SourceSettings(env=CREDENTIALS))
        (tmp_path / "dest").mkdir()
        disk = Disk(tmp_path / "dest", fsync=False)
        worker = Worker(broker, spec, source, Placement.single(disk, spec.shards),
                        WorkerSettings(fsync=False, concurrency=4, max_concurrency=4,
                                       max_backlog=max_backlog))
        progress = Progress(worker.stats, broker, worker.topology, live=False, worker=worker)
        readings: list[tuple[float, View, int]] = []
        try:
            await runner.seed(broker, spec)
            work = asyncio.create_task(worker.run(until_idle=True))
            while not work.done():
                view = await progress.read()
                messages = sum(d.ready for q, d in (await broker.depths()).items()
                               if q in worker.topology.fetch_queues)
                readings.append((time.monotonic(), view, messages))
                await asyncio.sleep(0.25)
            await work
            ended = time.monotonic()
            final = await progress.read()
        finally:
            await source.close()
            if isinstance(broker, RabbitBroker):
                await broker.delete_job()
            await broker.close()
    assert worker.stats.fetched == files
    return [(ended - t, v, m) for t, v, m in readings], final, progress


async def test_backlog_counts_files_and_the_eta_is_plausible(tmp_path: Path) -> None:
    """3,000 small files on the embedded broker (one job a message, counted exactly): the
    view counts the files, the listed total is exact once listing is done, percent reaches
    100, and the ETA is the right order of magnitude."""
    files = 3000
    # The listing pauses while the fetch queue holds ~1,600 files: it finishes mid-run.
    readings, final, progress = await mirror_with_readings(tmp_path, files, max_backlog=1600)
    listing = [(left, v, m) for left, v, m in readings if not v.listing_done]
    listed = [(left, v, m) for left, v, m in readings if v.listing_done]
    assert listing and listed, "readings both while listing and after"
    for _, v, messages in readings:
        assert v.exact
        assert v.backlog >= messages
        # what is queued, in flight and done adds up to what was listed
        assert abs(v.backlog + v.in_flight + v.files_done - v.listed) <= 32, v
    # the backlog is counted in files, and the queue did hold many
    assert any(v.backlog >= 320 for _, v, _ in readings), readings
    for _, v, _ in listing:
        assert v.total is None and v.percent is None
        if v.eta_s is not None and v.left:
            assert "at least" in progress.line(v)
    for _, v, _ in listed:
        assert v.total == files and v.listed == files, v
        assert v.percent is not None and 0 <= v.percent <= 100
        assert f" of {files} files (" in progress.line(v)
    assert final.percent == 100 and final.left == 0 and final.eta_s == 0
    assert final.bytes_left == 0
    assert "3000 of 3000 files (100%)" in progress.line(final)
    # The ETA against the time that really was left, once the rate has settled.
    ratios = [v.eta_s / left for left, v, _ in listed
              if left > 1.5 and v.eta_s is not None and v.files_done > 300]
    assert ratios, listed
    ratios.sort()
    median = ratios[len(ratios) // 2]
    assert 0.33 < median < 3, ratios


async def test_over_rabbitmq_the_backlog_is_scaled_and_said_to_be_about(
        tmp_path: Path, rabbit_url: str, job_name: str) -> None:
    """RabbitMQ counts messages: the view scales them by the files per message listed here,
    adds what this worker holds, and says "about"; it still ends at 100%."""
    files = 2000
    readings, final, progress = await mirror_with_readings(tmp_path, files, 1600, rabbit_url,
                                                           job_name)
    for _, v, messages in readings:
        assert not v.exact
        assert v.backlog >= messages
    assert any(m >= 5 and v.backlog >= 10 * m for _, v, m in readings), readings
    listed = [v for _, v, _ in readings if v.listing_done and v.files_done < files - 200]
    assert listed, readings
    for v in listed:
        # an estimate: within a batch or two per message held of the truth
        assert v.total is not None and abs(v.total - files) <= 0.1 * files, v
        assert re.search(r"of about \d+ files \(\d+%\), about \d+ files", progress.line(v)), v
    assert final.percent == 100 and final.left == 0


def test_eta_takes_the_longer_of_files_and_bytes() -> None:
    # 1,000 tiny files at 100 files/s: 10 s, though their bytes would take 1 s
    assert estimate_eta(1000, 100.0, 1_000_000, 1_000_000.0) == 10.0
    # two 5 GB files at 50 MB/s: 200 s, though at 100 files/s they would take 0.02 s
    assert estimate_eta(2, 100.0, 10_000_000_000, 50_000_000.0) == 200.0
    assert estimate_eta(5, 0.0, None, 0.0) is None
    assert estimate_eta(0, 0.0, 0, 0.0) == 0.0


async def test_live_view_leaves_no_frame_above_the_summary(tmp_path: Path,
                                                           small_bucket: BucketInfo) -> None:
    """The live view drawn on a terminal console, lines logged through the same console while
    it is up, the summary printed after: the screen shows the log lines and the summary, and
    no line of any frame."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, height=40)
    handler = RichHandler(console=console, show_path=False)
    logger = logging.getLogger("mirror")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                             password=PASSWORD, faults=Faults(latency_s=0.02)) as fake:
            spec = JobSpec(name="live", source=f"upyun://{BUCKET}/",
                           source_options={"endpoint": fake.url, "list_limit": 10})
            broker = MemoryBroker()
            await runner.seed(broker, spec)
            source = runner.source_for(spec, SourceSettings(env=CREDENTIALS))
            stats = Stats()
            (tmp_path / "dest").mkdir()
            disk = Disk(tmp_path / "dest", fsync=False)
            options = WorkOptions(WorkerSettings(fsync=False, concurrency=2))
            try:
                async with Progress(stats, broker, Topology(spec), live=True,
                                    console=console):
                    work = asyncio.create_task(runner.work(
                        broker, spec, source, Placement.single(disk, spec.shards), options,
                        stats=stats))
                    await asyncio.sleep(1.5)
                    logging.getLogger("mirror.test").info("a line logged mid-run")
                    outcome = await work
            finally:
                await source.close()
                await broker.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    console.print(summary(outcome.stats, outcome.parked_total))
    output = out.getvalue()
    assert "━" in output and "left" in output, "a frame with a progress bar was drawn"
    shown = [line for line in screen(output) if line]
    assert not [line for line in shown if line.startswith(FRAME_ROWS) or "━" in line], shown
    assert any("a line logged mid-run" in line for line in shown), shown
    assert any("job live is done" in line for line in shown), shown
    assert shown[-2].startswith(f"fetched {small_bucket.files} files"), shown
    assert shown[-1].startswith("received "), shown


def test_mirror_run_on_a_terminal_ends_with_the_summary(tmp_path: Path,
                                                        small_bucket: BucketInfo) -> None:
    """`mirror run --progress` on a pseudo-terminal: log lines and the live view share the
    terminal, and what stays on screen is the log lines and the summary, no frame."""
    async def serve_and_run() -> str:
        async with FakeUpyun(small_bucket.root, bucket=BUCKET, operator=OPERATOR,
                             password=PASSWORD, faults=Faults(latency_s=0.02)) as fake:
            return await asyncio.to_thread(run_on_pty, [
                sys.executable, "-m", "mirror", "run", f"upyun://{BUCKET}/",
                str(tmp_path / "dest"), "--endpoint", fake.url, "--progress",
                "--concurrency", "2", "--list-limit", "10", "--no-fsync",
                "--state-dir", str(tmp_path / "state")])

    output = asyncio.run(serve_and_run())
    assert "━" in output, "the live view drew a progress bar"
    shown = [line for line in screen(output) if line]
    assert not [line for line in shown if line.startswith(FRAME_ROWS) or "━" in line], shown
    assert any("is done" in line for line in shown), shown
    assert shown[-2].startswith(f"fetched {small_bucket.files} files"), shown
    assert shown[-1].startswith("received "), shown


def run_on_pty(argv: list[str], timeout_s: float = 120) -> str:
    """Run a command with a pseudo-terminal as its stdout and stderr; all it wrote."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal,
                            env={**os.environ, **CREDENTIALS, "COLUMNS": "100", "LINES": "40",
                                 "TERM": "xterm"})
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the command ended and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
    text = b"".join(chunks).decode(errors="replace")
    assert code == 0, text
    return text
