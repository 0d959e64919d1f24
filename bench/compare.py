"""bucket-mirror against rclone and aria2 on the same data, from the same nginx, in one run.

    python bench/compare.py [--small 20000] [--large 20] [--repeat 3] [--write-results]

Builds (once, cached under --out) (a) small files with log-normal sizes (median about 15 KB)
in folders of 20 and (b) 50 MB files; serves both with nginx on loopback (HTML indexes, the
format rclone's http backend reads); then mirrors each set with:

- bucket-mirror embedded: `mirror run URL DEST` with no flags (the headline row), the same
  with `--no-fsync` (what the group commit costs), and the hand-tuned run of earlier benches
  (`--processes 2 --concurrency 128 --list-concurrency 16 --no-fsync`);
- bucket-mirror over RabbitMQ (the broker at --broker), default flags: `mirror run --broker`
  with one `mirror work`, and one `--role list` with two `--role fetch` workers;
- `rclone copy` (http backend) with a few --transfers settings, where installed;
- `aria2c -i` on the list of URLs (it cannot list), where installed.

Every output tree is verified byte for byte. For each run it prints wall time, files/s, MB/s,
CPU seconds (children included) and peak RSS (for each command its largest process, from
wait4) and the ratio to rclone's best. Nothing
here asserts a timing; --write-results writes the table and the machine to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mirror.testing.compare import tree_differences
from mirror.testing.nginx import Nginx, find_nginx

HERE = Path(__file__).resolve().parent


@dataclass
class Result:
    data: str
    name: str
    wall_s: float
    files: int
    size: int
    cpu_s: float
    peak_rss_mb: list[float] = field(default_factory=list)  # per process
    ok: bool = True
    note: str = ""
    walls: list[float] = field(default_factory=list)  # every repeat, shortest first

    @property
    def files_s(self) -> float:
        return self.files / self.wall_s

    @property
    def mb_s(self) -> float:
        return self.size / 1e6 / self.wall_s


def build_small(root: Path, files: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    folders = max(1, files // 20)
    for i in range(files):
        folder = root / f"d{i % folders:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = min(4 << 20, int(math.exp(rng.gauss(math.log(15_000), 0.85))))
        (folder / f"f{i:06d}.bin").write_bytes(rng.randbytes(size))


def build_large(root: Path, files: int, size: int = 50 << 20) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        with (root / f"big{i:02d}.bin").open("wb") as fh:
            for _ in range(size >> 20):
                fh.write(os.urandom(1 << 20))


def ensure_data(out: Path, small: int, large: int) -> dict[str, Path]:
    sets = {"small": (out / f"data-small-{small}", lambda p: build_small(p, small)),
            "large": (out / f"data-large-{large}", lambda p: build_large(p, large))}
    for name, (path, build) in sets.items():
        if not (path / ".complete").exists():
            print(f"building the {name} data set in {path} ...", flush=True)
            shutil.rmtree(path, ignore_errors=True)
            build(path)
            (path / ".complete").write_text("")  # hidden: nginx does not list it
    return {name: path for name, (path, _) in sets.items()}


def tree_size(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            if not n.startswith("."):
                files += 1
                size += os.stat(os.path.join(dirpath, n)).st_size
    return files, size


def run_procs(commands: list[list[str]], env: dict[str, str],
              log: Path) -> tuple[float, float, list[float], list[int]]:
    """Start the commands together; wall time, total CPU, peak RSS (MB) and exit codes."""
    started = time.monotonic()
    with log.open("ab") as out:
        procs = [subprocess.Popen(c, env=env, stdout=out, stderr=out) for c in commands]
    cpu, rss, codes = 0.0, [], []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        rss.append(usage.ru_maxrss / 1024)
        codes.append(p.returncode)
    return time.monotonic() - started, cpu, rss, codes


def verify(src: Path, dest: Path, mtimes: bool) -> str:
    problems = tree_differences(src, dest, mtimes=mtimes, mtime_resolution_s=60,
                                skip_hidden=True, limit=5)
    return "; ".join(problems)


def drop_cached(root: Path) -> None:
    """Let the kernel forget the page cache of a verified output tree.

    Thirty small-file runs kept 13 GB in the page cache of this 24 GB machine, and the
    large-file runs after them paid for its reclaim (one took 6.7 s instead of 0.5-0.9 s).
    The tree is written back first; nothing is deleted (a deletion slows the next run).
    """
    os.sync()
    for dirpath, _, names in os.walk(root):
        for name in names:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def warm(root: Path) -> None:
    """Read a data set once, so that no run pays for loading it from disk into the page
    cache: the first run of the large set took 3.4-8 s instead of 0.5 s when earlier runs
    had pushed the 1 GB of sources out of the cache (it was always bucket-mirror's, the
    first setting)."""
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as fh:
                while fh.read(1 << 20):
                    pass


def rabbit_up(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 3):
            return True
    except OSError:
        return False


def delete_jobs(url: str, jobs: list[str], env: dict[str, str]) -> None:
    for job in jobs:
        subprocess.run([sys.executable, "-c", (
            "import asyncio\nfrom mirror.broker.rabbitmq import RabbitBroker\n"
            "async def m():\n"
            f"    b = await RabbitBroker.connect({url!r}, {job!r})\n"
            "    await b.attach(); await b.delete_job(); await b.close()\n"
            "asyncio.run(m())")], env=env, check=False)


# The tuned run lists 16 pages at once (the default adapts from 4 up to 32), and rclone gets
# as many --checkers as --transfers.
LISTING = ("--list-concurrency", "16")


def mirror_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mirror", "-q", *args]


def main() -> int:  # noqa: PLR0915  (one linear script)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=20_000, help="small files (default 20000)")
    ap.add_argument("--large", type=int, default=20, help="50 MB files (default 20)")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--broker", default=os.environ.get("MIRROR_TEST_BROKER_URL",
                                                       "amqp://guest:guest@127.0.0.1:5672/"))
    ap.add_argument("--transfers", default="16,32,64", help="rclone --transfers to try")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each setting; the median is reported (default 1)")
    ap.add_argument("--only", default="", help="run only runs whose name contains this")
    ap.add_argument("--sets", default="small,large", help="data sets to run")
    ap.add_argument("--write-results", action="store_true", help="write bench/RESULTS.md")
    args = ap.parse_args()

    if find_nginx() is None:
        print("installing nginx (apt-get install nginx) ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx"], check=True,
                       stdout=subprocess.DEVNULL)
    # An editable install leaves our modules uncompiled, and with PYTHONDONTWRITEBYTECODE set
    # (as on this project's machines) every run compiled them again (60 ms a start); a
    # regular `pip install` compiles them, so the runs start from compiled modules too.
    import mirror

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(mirror.__file__).parent)],
                   check=True)
    args.out.mkdir(parents=True, exist_ok=True)
    data = ensure_data(args.out, args.small, args.large)
    work = args.out / "runs"
    log = args.out / "bench.log"
    env = {**os.environ}
    results: list[Result] = []
    rclone, aria2 = shutil.which("rclone"), shutil.which("aria2c")
    jobs: list[str] = []
    shutil.rmtree(work, ignore_errors=True)

    counter = 0

    def run_set(nginx: Nginx, name: str, src: Path) -> None:  # noqa: PLR0915
        url = f"{nginx.url}{src.name}/"
        files, size = tree_size(src)

        settings: list[tuple[str, Callable[[Path, Path], list[list[str]]], bool]] = []

        def record(label: str, commands: Callable[[Path, Path], list[list[str]]],
                   mtimes: bool = True) -> None:
            if args.only in label:
                settings.append((label, commands, mtimes))

        def run_one(label: str, commands: Callable[[Path, Path], list[list[str]]],
                    mtimes: bool) -> Result:
            nonlocal counter
            # A fresh destination per run, all deleted at the end: deleting a tree right
            # before a run makes ext4 hunt for inodes not recently deleted, which would
            # slow whichever run comes next.
            counter += 1
            dest, state = work / f"run-{counter}", work / f"state-{counter}"
            cmds = commands(dest, state)
            os.sync()  # earlier runs' dirty pages must not slow this one down
            print(f"[{name}] {label} ...", flush=True)
            wall, cpu, rss, codes = run_procs(cmds, env, log)
            problem = "" if all(c == 0 for c in codes) else f"exit codes {codes}"
            problem = problem or verify(src, dest, mtimes)
            if files < 1000:
                # A few large files: deleting them costs ext4 nothing worth saying, and kept
                # they would fill the page cache (33 GB of runs on a 24 GB machine), so that
                # later rounds paid for its reclaim.
                shutil.rmtree(dest, ignore_errors=True)
            else:
                drop_cached(dest)
            print(f"    {wall:.1f} s, {files / wall:.0f} files/s, "
                  f"{size / 1e6 / wall:.1f} MB/s, CPU {cpu:.1f} s, peak RSS "
                  f"{max(rss):.0f} MB {'OK' if not problem else 'FAILED: ' + problem}",
                  flush=True)
            return Result(name, label, wall, files, size, cpu, rss, not problem, problem)

        def run_settings() -> None:
            # Round by round, every setting once per round: the machine drifts during a
            # run (the file system fills, the host's load moves), and the drift then falls
            # on every tool alike instead of on whichever runs last.
            runs: dict[str, list[Result]] = {label: [] for label, _, _ in settings}
            for _ in range(args.repeat):
                for label, commands, mtimes in settings:
                    runs[label].append(run_one(label, commands, mtimes))
            for of_setting in runs.values():
                # The median run stands for the setting; the spread of walls goes with it.
                done = sorted(of_setting, key=lambda r: r.wall_s)
                middle = done[len(done) // 2]
                middle.walls = [r.wall_s for r in done]
                middle.ok = all(r.ok for r in done)
                middle.note = "; ".join(r.note for r in done if r.note)
                results.append(middle)

        # The headline: what a user gets with no flags at all.
        record("bucket-mirror run URL DEST (no flags)",
               lambda d, s: [[sys.executable, "-m", "mirror", "run", url, str(d)]])
        record("bucket-mirror run URL DEST --no-fsync",
               lambda d, s: [mirror_cmd("run", url, str(d), "--state-dir", str(s),
                                        "--no-fsync")])
        # The hand-tuned run that was the headline before the defaults adapted.
        record(f"bucket-mirror run --processes 2 --concurrency 128 {' '.join(LISTING)} "
               "--no-fsync",
               lambda d, s: [mirror_cmd("run", url, str(d), "--state-dir", str(s),
                                        "--processes", "2", "--concurrency", "128", *LISTING,
                                        "--no-fsync")])

        def over_rabbit(d: Path, s: Path) -> list[list[str]]:
            """``mirror run --broker`` and one ``mirror work``, both with default flags."""
            job = f"bench-{uuid.uuid4().hex[:8]}"
            jobs.append(job)
            # Seeded first (untimed), so that the worker finds the job when it starts.
            subprocess.run(mirror_cmd("seed", url, "--job", job, "--broker", args.broker),
                           env=env, capture_output=True, check=True)
            return [mirror_cmd("run", url, str(d), "--broker", args.broker, "--job", job,
                               "--state-dir", str(s)),
                    mirror_cmd("work", "--job", job, "--broker", args.broker, "--dest",
                               str(d), "--until-idle", "--state-dir", str(s))]

        def lister_and_fetchers(d: Path, s: Path) -> list[list[str]]:
            job = f"bench-{uuid.uuid4().hex[:8]}"
            jobs.append(job)
            subprocess.run(mirror_cmd("seed", url, "--job", job, "--broker", args.broker),
                           env=env, capture_output=True, check=True)
            common = ("work", "--job", job, "--broker", args.broker, "--until-idle",
                      "--state-dir", str(s))
            return [mirror_cmd(*common, "--role", "list"),
                    *[mirror_cmd(*common, "--role", "fetch", "--dest", str(d))
                      for _ in range(2)]]

        if rabbit_up(args.broker):
            record("bucket-mirror rabbitmq: run --broker + 1 work (default flags)",
                   over_rabbit)
            record("bucket-mirror rabbitmq: 1 lister + 2 fetchers (default flags)",
                   lister_and_fetchers)
        else:
            print(f"    (no RabbitMQ at {args.broker}: skipping the broker run)")

        if rclone:
            # rclone's default HEADs every file for its mtime; --http-no-head skips that
            # (faster) but leaves mtimes unset, so only contents are compared.
            for t in args.transfers.split(","):
                record(f"rclone copy --transfers {t} --http-no-head",
                       lambda d, s, t=t: [[rclone, "copy", "--http-url", url, ":http:",
                                           str(d), "--transfers", t, "--checkers", t,
                                           "--http-no-head", "-q"]], mtimes=False)
            t = args.transfers.split(",")[-1]
            record(f"rclone copy --transfers {t} (HEADs, keeps mtimes)",
                   lambda d, s: [[rclone, "copy", "--http-url", url, ":http:", str(d),
                                  "--transfers", t, "--checkers", t, "-q"]])
            # rclone leaves its files in the page cache; our default has them on the disk
            # before it reports them. The same run followed by `sync -f` shows what rclone
            # takes to the same point (not counted as rclone's best).
            record(f"rclone copy --transfers {t} (HEADs), then sync -f DEST (on disk)",
                   lambda d, s: [["sh", "-c", f'"$0" copy --http-url "$1" :http: "$2" '
                                  f'--transfers {t} --checkers {t} -q && sync -f "$2"',
                                  rclone, url, str(d)]])
        if aria2:
            def aria2_cmd(d: Path, s: Path, src: Path = src) -> list[list[str]]:
                listing = work / f"aria2-{d.name}.txt"
                listing.parent.mkdir(parents=True, exist_ok=True)
                with listing.open("w") as fh:
                    for dirpath, _, names in os.walk(src):
                        rel = os.path.relpath(dirpath, src)
                        sub = "" if rel == "." else rel + "/"
                        for n in names:
                            if not n.startswith("."):
                                fh.write(f"{url}{sub}{n}\n  dir={d / sub}\n  out={n}\n")
                return [[aria2, "-i", str(listing), "-j", "32", "-x", "1", "-q",
                         "--auto-file-renaming=false", "--allow-overwrite=true",
                         "--file-allocation=none", "--console-log-level=error"]]

            record("aria2c -i (URL list given) -j 32", aria2_cmd, mtimes=False)
        warm(src)
        run_settings()

    def run_all(nginx: Nginx) -> None:
        for name, src in data.items():
            if name in args.sets.split(","):
                run_set(nginx, name, src)

    # nginx is started and stopped on an event loop of its own; the runs are plain processes.
    nginx = Nginx(args.out, workers=2)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(nginx.start())
    try:
        run_all(nginx)
    finally:
        loop.run_until_complete(nginx.stop())
        loop.close()
        delete_jobs(args.broker, jobs, env)
        shutil.rmtree(work, ignore_errors=True)
    table = render(results)
    print("\n" + table)
    if args.write_results:
        write_results(table, rclone, aria2)
    return 0 if all(r.ok for r in results) else 1


def render(results: list[Result]) -> str:
    lines = ["| data | run | wall s (median; all runs) | files/s | MB/s | CPU s "
             "| peak RSS MB (per command) | vs rclone best | verified |",
             "|---|---|---|---|---|---|---|---|---|"]
    for data in dict.fromkeys(r.data for r in results):
        rows = [r for r in results if r.data == data]
        key = (lambda r: r.files_s) if data == "small" else (lambda r: r.mb_s)
        rclones = [key(r) for r in rows
                   if r.name.startswith("rclone") and "sync -f" not in r.name and r.ok]
        best = max(rclones) if rclones else None
        for r in rows:
            ratio = f"{key(r) / best:.2f}" if best else "n/a"
            rss = ", ".join(f"{m:.0f}" for m in r.peak_rss_mb)
            walls = ", ".join(f"{w:.1f}" for w in r.walls) if len(r.walls) > 1 else ""
            wall = f"{r.wall_s:.1f}" + (f" ({walls})" if walls else "")
            lines.append(f"| {data} | {r.name} | {wall} | {r.files_s:.0f} | "
                         f"{r.mb_s:.1f} | {r.cpu_s:.1f} | {rss} | {ratio} | "
                         f"{'yes' if r.ok else 'NO: ' + r.note} |")
    return "\n".join(lines)


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "not installed"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "?"


def write_results(table: str, rclone: str | None, aria2: str | None) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(line.split(":", 1)[1].strip() for line in
               Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    nginx = find_nginx() or "nginx"
    machine = [
        f"- CPU: {os.cpu_count()} x {cpu}; memory {mem}; {platform.platform()}",
        f"- Python {platform.python_version()}; {_version([nginx, '-v'])}",
        f"- rclone: {_version([rclone, 'version']) if rclone else 'not installed'}",
        f"- aria2: {_version([aria2, '--version']) if aria2 else 'not installed'}",
    ]
    text = (HERE / "RESULTS.md").read_text() if (HERE / "RESULTS.md").exists() else ""
    head = text.split("<!-- compare.py -->")[0].rstrip() or "# Benchmark results"
    body = (f"{head}\n\n<!-- compare.py -->\n## bench/compare.py, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
            + "\n".join(machine) + "\n\n" + table + "\n")
    (HERE / "RESULTS.md").write_text(body)


if __name__ == "__main__":
    sys.exit(main())
