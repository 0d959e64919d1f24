"""Scale run: a synthetic bucket of N files (default 1,000,000) mirrored through RabbitMQ.

One lister and F fetcher processes (``mirror work``) against the fake UpYun server in synthetic
mode (nothing stored at the source). Prints, from measurements taken during the run: peak RSS
of every process (VmHWM), the highest fetch backlog seen against --max-backlog, listing and
fetching rates, and checks that every file arrived with the right bytes.

    python bench/million.py [--files 1000000] [--broker amqp://guest:guest@127.0.0.1:5672/]

Needs RabbitMQ; about 4 KB of disk per file (tiny files still take a block).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mirror.broker.rabbitmq import RabbitBroker
from mirror.errors import ConfigError
from mirror.testing.rabbit_node import free_port
from mirror.testing.synthetic import SyntheticBucket

BUCKET, OPERATOR, PASSWORD = "bench", "bench", "bench-password"


@dataclass
class Proc:
    name: str
    proc: asyncio.subprocess.Process
    peak_kb: int = 0
    exited_at: float | None = None

    def sample(self) -> None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass


@dataclass
class Samples:
    backlog_peak: int = 0
    listed_at: float | None = None
    pages: int = 0
    timeline: list[tuple[float, int, int]] = field(default_factory=list)


async def spawn(name: str, *args: str, log: Path, env: dict[str, str]) -> Proc:
    out = log.open("wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "mirror", *args,
                                                stdout=out, stderr=out, env=env)
    out.close()
    return Proc(name, proc)


def fake_stats(url: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{url}/_fake/stats", timeout=10) as r:
        body: dict[str, object] = json.load(r)
        return body


async def main() -> int:  # noqa: PLR0912, PLR0915  (one linear script)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--per-folder", type=int, default=1000)
    ap.add_argument("--max-size", default="512")
    ap.add_argument("--broker", default=os.environ.get("MIRROR_BROKER_URL",
                                                       "amqp://guest:guest@127.0.0.1:5672/"))
    ap.add_argument("--fetchers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-backlog", type=int, default=50_000)
    ap.add_argument("--list-limit", type=int, default=1000)
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="Keep the mirrored files.")
    a = ap.parse_args()

    work = a.work_dir or Path(tempfile.mkdtemp(prefix="bm-million-"))
    dest, logs = work / "dest", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "UPYUN_OPERATOR": OPERATOR, "UPYUN_PASSWORD": PASSWORD}
    job = f"bench-million-{int(time.time())}"
    port = free_port()
    synthetic = SyntheticBucket(a.files, per_folder=a.per_folder,
                                max_size=int(a.max_size.rstrip("Bb")), seed=0)
    fake = await spawn("fake", "fake-upyun", "--synthetic", str(a.files), "--max-size",
                       a.max_size, "--port", str(port), "--bucket", BUCKET, "--operator",
                       OPERATOR, "--password", PASSWORD, log=logs / "fake.log", env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            fake_stats(url)
            break
        except OSError:
            await asyncio.sleep(0.1)
    procs: list[Proc] = []
    started = time.monotonic()
    samples = Samples()
    folders = synthetic.folders
    pages_expected = -(-folders // a.list_limit) + sum(
        -(-min(a.per_folder, a.files - f * a.per_folder) // a.list_limit) for f in range(folders))
    try:
        seed = await spawn("seed", "seed", f"upyun://{BUCKET}/", "--job", job, "--broker",
                           a.broker, "--endpoint", url, "--list-limit", str(a.list_limit),
                           log=logs / "seed.log", env=env)
        if await seed.proc.wait() != 0:
            print((logs / "seed.log").read_text())
            return 2
        started = time.monotonic()
        common = ("--job", job, "--broker", a.broker, "--until-idle", "--no-progress",
                  "--max-backlog", str(a.max_backlog))
        procs.append(await spawn("lister", "-q", "work", *common, "--role", "list",
                                 log=logs / "lister.log", env=env))
        for i in range(a.fetchers):
            procs.append(await spawn(f"fetcher{i}", "-q", "work", *common, "--role", "fetch",
                                     "--dest", str(dest), "--no-fsync", "--concurrency",
                                     str(a.concurrency), log=logs / f"fetcher{i}.log", env=env))
        watcher = await RabbitBroker.connect(a.broker, job, connection_name="bench watcher")
        await watcher.attach()
        last_print = 0.0
        while any(p.proc.returncode is None for p in procs):
            for p in procs:
                p.sample()
                if p.proc.returncode is not None and p.exited_at is None:
                    p.exited_at = time.monotonic() - started
            try:
                depths = await watcher.depths()
                backlog = max(depths[q].ready for q in depths if ".fetch." in q)
                samples.backlog_peak = max(samples.backlog_peak, backlog)
            except (ConfigError, KeyError, ValueError, OSError):
                backlog = -1
            stats = await asyncio.to_thread(fake_stats, url)
            pages = int(stats["list_pages"])  # type: ignore[call-overload]
            fetched = sum(stats["complete"].values())  # type: ignore[attr-defined]
            now = time.monotonic() - started
            samples.timeline.append((now, pages, fetched))
            if samples.listed_at is None and pages >= pages_expected:
                samples.listed_at = now
            if now - last_print >= 15:
                last_print = now
                print(f"  {now:7.0f}s  pages {pages}/{pages_expected}  fetched {fetched}  "
                      f"backlog {backlog}  rss " + " ".join(
                          f"{p.name}={p.peak_kb // 1024}MB" for p in procs), flush=True)
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        await watcher.delete_job()
        await watcher.close()
    finally:
        for p in [*procs, fake]:
            if p.proc.returncode is None:
                p.proc.terminate()
                await p.proc.wait()

    codes = {p.name: p.proc.returncode for p in procs}
    count = sum(len(names) for _, _, names in os.walk(dest))
    rng = random.Random(1)
    checked = 0
    for i in rng.sample(range(a.files), min(2000, a.files)):
        path = dest / synthetic.folder_name(i // a.per_folder) / synthetic.file_name(i)
        assert path.read_bytes() == synthetic.content(i), f"{path} differs from the source"
        checked += 1
    listed = samples.listed_at or elapsed
    entries = a.files + folders
    print()
    print(f"synthetic bucket: {a.files} files in {folders} folders, list limit {a.list_limit}, "
          f"max backlog {a.max_backlog}, {a.fetchers} fetchers x {a.concurrency}")
    print(f"exit codes: {codes}")
    print(f"files in DEST: {count} (expected {a.files}); {checked} sampled files byte-exact")
    print(f"listing: {entries} entries in {listed:.0f} s = {entries / listed:.0f} entries/s "
          "(paced by the fetchers through backpressure)")
    print(f"whole run: {elapsed:.0f} s = {a.files / elapsed:.0f} files/s")
    print(f"highest fetch backlog: {samples.backlog_peak} (limit {a.max_backlog} + one page "
          f"{a.list_limit} = {a.max_backlog + a.list_limit})")
    for p in procs:
        print(f"peak RSS {p.name}: {p.peak_kb / 1024:.1f} MB")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    ok = count == a.files and all(c == 0 for c in codes.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
