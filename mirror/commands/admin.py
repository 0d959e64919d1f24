"""``mirror failures``, ``mirror retry`` and ``mirror stop``: looking after a running job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mirror import runner
from mirror.aio import run_async
from mirror.broker import ParkedJob
from mirror.broker.admin import BrokerAdmin, connect_admin
from mirror.commands.ledger import ledger_source, parked_jobs
from mirror.commands.options import (
    broker_option,
    job_option,
    ledger_option,
    live_progress,
    make_source_settings,
    make_work_options,
    make_worker_settings,
    start_logging,
    state_dir_of,
    state_option,
    worker_options,
)
from mirror.commands.sourceflags import connection_options
from mirror.errors import ConfigError
from mirror.parking import group, journal_path, read_journal, reason_label, reason_matches


async def open_admin(url: str, job: str) -> BrokerAdmin:
    """The admin connection of a command: job ``job`` (its name checked) on ``url``."""
    return await connect_admin(url, runner.check_job_name(job))


def _selector(reasons: tuple[str, ...]) -> Callable[[ParkedJob], bool]:
    return lambda p: not reasons or any(reason_matches(p.reason, r) for r in reasons)


@click.command()
@job_option
@broker_option
@state_option
@ledger_source(required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", type=click.IntRange(1), default=100_000, show_default=True,
              help="Read at most this many parked jobs.")
@click.pass_context
def failures(ctx: click.Context, /, job_name: str, broker: str | None, state_dir: Path | None,
             ledger: str | None, as_json: bool, limit: int) -> int:
    """List the parked jobs of job NAME, grouped by reason (error, HTTP status, source code).

    From the broker's parked queue, the embedded run's journal, or with --ledger the
    ledger's parked rows.
    """
    start_logging(ctx, False)

    async def from_broker(url: str) -> list[ParkedJob]:
        b = await open_admin(url, job_name)
        try:
            return await b.parked_jobs(limit)
        finally:
            await b.close()

    if ledger is not None:
        parked = parked_jobs(ledger, runner.check_job_name(job_name), limit)
    elif broker is not None:
        parked = run_async(from_broker(broker))
    else:
        state = state_dir_of({"state_dir": state_dir})
        runner.read_last_run(state, job_name)  # a clear error for an unknown job
        parked = read_journal(journal_path(state, job_name))[:limit]
    groups = group(parked)
    if as_json:
        click.echo(json.dumps({"job": job_name, "parked": len(parked),
                               "groups": [g.to_dict() for g in groups]}, ensure_ascii=False,
                              indent=2))
        return 0
    if not parked:
        click.echo(f"job {job_name}: nothing is parked")
        return 0
    click.echo(f"job {job_name}: {len(parked)} parked")
    for g in groups:
        click.echo(f"\n{g.count:>8}  {g.label}")
        click.echo(f"          e.g. {g.example}")
        for path in g.paths:
            click.echo(f"          - {path}")
    click.echo("\nput them back with: mirror retry --job NAME [--reason REASON]")
    return 0


@click.command()
@job_option
@broker_option
@click.option("--reason", "reasons", multiple=True, metavar="R",
              help="Only jobs parked for R: an error class (NotFound), an HTTP status (404) or "
                   "a source code (40400001). Repeatable; default: all.")
@connection_options
@worker_options
@ledger_option
@click.pass_context
def retry(ctx: click.Context, /, job_name: str, broker: str | None, reasons: tuple[str, ...],
          **o: Any) -> int:
    """Put parked jobs of job NAME back to work.

    With --broker they return to their queues for the job's workers, attempts reset. Without,
    the embedded run recorded in --state-dir is resumed in this process for those jobs only.
    """
    select = _selector(reasons)
    if broker is not None:
        start_logging(ctx, False)

        async def go() -> int:
            b = await open_admin(broker, job_name)
            try:
                return await b.requeue_parked(select)
            finally:
                await b.close()

        moved = run_async(go())
        click.echo(f"job {job_name}: {moved} parked jobs put back on their queues")
        return 0
    live = live_progress(o, ctx)
    start_logging(ctx, live)
    state = state_dir_of(o)
    last = runner.read_last_run(state, job_name)
    if not last.embedded:
        raise ConfigError(f"job {job_name!r} ran over RabbitMQ; pass --broker URL")
    parked = read_journal(journal_path(state, job_name))
    chosen = [p for p in parked if select(p)]
    keep = [p for p in parked if not select(p)]
    if not chosen:
        labels = sorted({reason_label(p.reason) for p in parked})
        click.echo(f"job {job_name}: no parked job matches"
                   + (f" (reasons present: {', '.join(labels)})" if labels else ""))
        return 0
    click.echo(f"job {job_name}: retrying {len(chosen)} parked jobs into {last.dest}")
    options = make_work_options(o, make_worker_settings(o), until_idle=True, live=live)
    outcome = run_async(runner.run_job(
        last.spec, last.dest, None, make_source_settings(ctx, o), options, state,
        initial=[p.job for p in chosen], keep_parked=keep))
    click.echo(runner.report(outcome))
    return outcome.exit_code


@click.command()
@job_option
@click.option("--broker", envvar="MIRROR_BROKER_URL", required=True, metavar="URL")
@click.option("--reason", default="mirror stop", show_default=True,
              help="Logged by every worker.")
@click.option("--wait", type=click.FloatRange(0), default=5.0, show_default=True, metavar="S",
              help="Listen this long for workers confirming.")
@click.pass_context
def stop(ctx: click.Context, /, job_name: str, broker: str, reason: str, wait: float) -> int:
    """Tell every worker of job NAME, on every host, to drain and exit.

    Workers finish what they hold (within their drain deadline), give the rest back to the
    queue, keep their .part files and exit 0. The job's queues stay: `mirror work` resumes it.
    """
    start_logging(ctx, False)

    async def go() -> set[str]:
        b = await open_admin(broker, job_name)
        seen: set[str] = set()

        def on_message(msg: dict[str, Any]) -> None:
            if msg.get("type") == "presence" and msg.get("state") in ("stopping", "stopped"):
                seen.add(str(msg.get("worker")))

        try:
            await b.subscribe(on_message)
            await b.broadcast({"type": "stop", "reason": reason, "time": time.time()})
            await asyncio.sleep(wait)
        finally:
            await b.close()
        return seen

    seen = run_async(go())
    click.echo(f"job {job_name}: stop sent; {len(seen)} workers confirmed within {wait:g} s")
    return 0
