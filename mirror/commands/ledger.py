"""``mirror ledger``: a job's rows in its ledger, and the answers ``mirror status`` and
``mirror failures`` give from a ledger."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from mirror import runner
from mirror.aio import run_async
from mirror.broker import ParkedJob
from mirror.commands.options import job_option, start_logging
from mirror.jobs import FetchJob, Job, ListJob
from mirror.progress import human_bytes

if TYPE_CHECKING:
    from mirror.ledger.rows import Row
    from mirror.ledger.store import LedgerStore

T = TypeVar("T")
STATUSES = ("fetched", "skipped", "parked")
COLUMNS = ("job", "path", "source", "status", "size", "seconds", "error", "host", "updated_at",
           "path_key")


async def with_store(url: str, use: Callable[[LedgerStore], Awaitable[T]]) -> T:
    """``use`` an existing ledger (SQLAlchemy only for commands given one)."""
    from mirror.ledger.store import LedgerStore

    store = await LedgerStore.open(url, create=False)
    try:
        return await use(store)
    finally:
        await store.close()


@dataclass(frozen=True)
class Counts:
    where: str
    by_status: dict[str, tuple[int, int]]  # status -> (rows, bytes)

    @property
    def rows(self) -> int:
        return sum(n for n, _ in self.by_status.values())

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {s: {"files": n, "bytes": b} for s, (n, b) in self.by_status.items()}

    def render(self, job: str) -> str:
        lines = [f"job {job} in the ledger {self.where}: {self.rows} files"]
        for status, (n, size) in self.by_status.items():
            lines.append(f"  {status:<8} {n:>10}  {human_bytes(size)}")
        return "\n".join(lines)


async def read_counts(url: str, job: str) -> Counts:
    async def use(store: LedgerStore) -> Counts:
        return Counts(store.where, await store.counts(job))

    return await with_store(url, use)


def row_dict(row: Row) -> dict[str, Any]:
    out = row.to_dict()
    out["updated_at"] = row.updated_at.replace(tzinfo=UTC).isoformat()
    return {k: out[k] for k in COLUMNS}


def parked_jobs(url: str, job: str, limit: int) -> list[ParkedJob]:
    """The parked rows of ``job`` as parked jobs (``mirror failures`` groups them)."""
    from mirror.ledger.rows import FOLDER_MARK, reason_of

    async def use(store: LedgerStore) -> list[ParkedJob]:
        out = []
        async for row in store.rows(job, ["parked"], limit):
            folder = row.path.endswith(FOLDER_MARK)
            item: Job = ListJob(row.path[:-1]) if folder else FetchJob(row.path, row.size or 0)
            out.append(ParkedJob(item, "ledger", reason_of(row.error or "")))
        return out

    return run_async(with_store(url, use))


def ledger_source(required: bool) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """``--ledger`` for the commands that read one."""
    return click.option(
        "--ledger", envvar="MIRROR_LEDGER_URL", required=required, metavar="URL",
        help="The job's ledger (sqlite:///PATH, postgresql://USER@HOST/DB, "
        "mysql://USER@HOST/DB)" + ("." if required else ": answer from it."))


@click.command()
@ledger_source(required=True)
@job_option
@click.option("--status", "statuses", multiple=True,
              type=click.Choice([*STATUSES, "all"]), metavar="S",
              help="Print the rows of this status (fetched, skipped, parked, or all); "
                   "repeatable. Default: the counts only.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: the counts, then the rows asked for.")
@click.option("--csv", "as_csv", is_flag=True,
              help="The rows asked for as CSV with a header (the counts go to stderr).")
@click.option("--limit", type=click.IntRange(1), default=None, metavar="N",
              help="Print at most N rows.")
@click.pass_context
def ledger(ctx: click.Context, /, ledger: str, job_name: str, statuses: tuple[str, ...],
           as_json: bool, as_csv: bool, limit: int | None) -> int:
    """Show job NAME in its ledger: the files by status, then the rows asked for (by path).

    Rows are written by the workers given --ledger URL (`mirror run`, `mirror work`): one
    per file, with its outcome, size, seconds to fetch, the reason it was parked, the host
    and the time.
    """
    start_logging(ctx, False)
    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    job = runner.check_job_name(job_name)
    wanted = [] if "all" in statuses else sorted(set(statuses))
    print_rows = bool(statuses)

    async def use(store: LedgerStore) -> None:
        counts = Counts(store.where, await store.counts(job))
        rows = store.rows(job, wanted, limit) if print_rows else _nothing()
        if as_json:
            await _json(job, counts, rows)
        elif as_csv:
            click.echo(counts.render(job), err=True)
            await _csv(rows)
        else:
            click.echo(counts.render(job))
            async for row in rows:
                click.echo(_line(row))

    run_async(with_store(ledger, use))
    return 0


async def _nothing() -> AsyncIterator[Row]:
    return
    yield  # an async generator that yields nothing


async def _json(job: str, counts: Counts, rows: AsyncIterator[Row]) -> None:
    # Written as the rows come: one JSON document however many rows there are.
    head = json.dumps({"job": job, "ledger": counts.where, "counts": counts.to_dict()},
                      ensure_ascii=False)
    out = sys.stdout
    out.write(head[:-1] + ', "rows": [')
    first = True
    async for row in rows:
        out.write(("\n" if first else ",\n") + json.dumps(row_dict(row), ensure_ascii=False))
        first = False
    out.write("\n]}\n")
    out.flush()


async def _csv(rows: AsyncIterator[Row]) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(COLUMNS)
    async for row in rows:
        d = row_dict(row)
        writer.writerow(["" if d[k] is None else d[k] for k in COLUMNS])
    sys.stdout.flush()


def _line(row: Row) -> str:
    size = "-" if row.size is None else human_bytes(row.size)
    took = "" if row.seconds is None else f"{row.seconds:.3f}s"
    error = f"  ({row.error})" if row.error else ""
    return f"{row.status:<8} {size:>10} {took:>9}  {row.path}{error}"


def ledger_status(url: str, job: str, as_json: bool) -> str:
    """``mirror status --ledger``: the job's files by status, as the ledger has them."""
    counts = run_async(read_counts(url, job))
    if as_json:
        return json.dumps({"job": job, "ledger": counts.where, "files": counts.to_dict(),
                           "at": datetime.now(UTC).isoformat()}, ensure_ascii=False)
    return counts.render(job)


__all__ = ["ledger", "ledger_source", "ledger_status", "parked_jobs", "read_counts"]
