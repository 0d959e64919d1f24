"""How fast the ledger writes: rows per second into each database, through the worker's path.

Events as RabbitMQ brings them (32 files to a shared ``file.fetched`` event, with source and
seconds) go to a ``LedgerWriter`` as fast as the loop can hand them over, as a worker's feed
does; the clock runs from the first event to the last row committed (``close``). Two passes
per round: ``insert`` (new rows) and ``update`` (the same files again, later: every row
replaced, the rule evaluated by the database). Rows per second are the median of the rounds;
the job's rows are deleted after each round. The issue asks for at least 10,000 rows/s into
SQLite and PostgreSQL on the project's 2-core machine.

    python bench/ledger.py [--rows 100000] [--rounds 3] [--files-per-event 32]
        [--batch-rows 2000] [--sqlite PATH] [--postgresql URL] [--mariadb URL]
        [--only sqlite,postgresql,mariadb]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mirror.ledger import LedgerSettings
from mirror.ledger.store import LedgerStore
from mirror.ledger.writer import LedgerWriter

ROOT = "upyun://bench-bucket/"
JOB = f"bench-ledger-{os.getpid()}"


def events(rows: int, per_event: int, at: float) -> list[dict[str, Any]]:
    out = []
    for first in range(0, rows, per_event):
        files = [{"path": f"photos/{i // 1000:04d}/img-{i:08d}.jpg", "size": 10_000 + i % 5000,
                  "seconds": 0.05 + (i % 100) / 1000,
                  "source": f"{ROOT}photos/{i // 1000:04d}/img-{i:08d}.jpg"}
                 for i in range(first, min(first + per_event, rows))]
        out.append({"event": "file.fetched", "job": JOB, "time": at, "host": "bench-host",
                    "pid": 1, "files": files})
    return out


async def one_pass(url: str, batch: list[dict[str, Any]], settings: LedgerSettings) -> float:
    store = await LedgerStore.open(url)
    writer = LedgerWriter(store, JOB, ROOT, settings)
    writer.start()
    started = time.perf_counter()
    for i, event in enumerate(batch):
        writer.add(event)
        if i % 64 == 63:
            await asyncio.sleep(0)  # the loop runs other work meanwhile, as in a worker
    await writer.close()
    elapsed = time.perf_counter() - started
    await store.close()
    return elapsed


async def measure(url: str, rows: int, rounds: int, per_event: int,
                  settings: LedgerSettings) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"insert": [], "update": []}
    for _ in range(rounds):
        now = time.time()
        try:
            for label, at in (("insert", now), ("update", now + 1)):
                elapsed = await one_pass(url, events(rows, per_event, at), settings)
                rates[label].append(rows / elapsed)
        finally:
            store = await LedgerStore.open(url)
            await store.delete_job(JOB)
            await store.close()
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--files-per-event", type=int, default=32)
    parser.add_argument("--batch-rows", type=int, default=LedgerSettings("").batch_rows)
    parser.add_argument("--sqlite", default=None, help="file (default: a temporary one)")
    parser.add_argument("--postgresql", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--mariadb", default="mysql://root@127.0.0.1:3306/test")
    parser.add_argument("--only", default="sqlite,postgresql,mariadb")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        urls = {"sqlite": f"sqlite:///{args.sqlite or Path(tmp) / 'ledger.db'}",
                "postgresql": args.postgresql, "mariadb": args.mariadb}
        print(f"{args.rows} rows, {args.files_per_event} files per event, batches up to "
              f"{args.batch_rows} rows, {args.rounds} rounds; {platform.node()}, "
              f"{os.cpu_count()} cores, Python {platform.python_version()}")
        print("| database | insert rows/s | update rows/s |")
        print("|---|---:|---:|")
        for name in args.only.split(","):
            settings = LedgerSettings(urls[name], batch_rows=args.batch_rows)
            rates = asyncio.run(measure(urls[name], args.rows, args.rounds,
                                        args.files_per_event, settings))
            print(f"| {name} | {statistics.median(rates['insert']):,.0f} | "
                  f"{statistics.median(rates['update']):,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
