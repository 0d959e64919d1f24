"""``mirror status`` and ``mirror watch``: following a job that runs over RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import click

from mirror import status as job_status
from mirror.aio import run_async
from mirror.broker import Topology
from mirror.commands.admin import open_admin
from mirror.commands.ledger import ledger_source, ledger_status, read_counts
from mirror.commands.options import job_option, start_logging
from mirror.events import KINDS, each_file

broker_required = click.option("--broker", envvar="MIRROR_BROKER_URL", required=True,
                               metavar="URL", help="RabbitMQ URL of the job.")


@click.command()
@job_option
@click.option("--broker", envvar="MIRROR_BROKER_URL", metavar="URL",
              help="RabbitMQ URL of the job (or --ledger).")
@ledger_source(required=False)
@click.option("--management-url", envvar="MIRROR_MANAGEMENT_URL", metavar="URL", default=None,
              help="RabbitMQ management API, e.g. http://user:pass@host:15672 (default: the "
                   "broker's host, port 15672, same credentials; '' to use AMQP only).")
@click.option("--watch", "watch_s", type=click.FloatRange(1), default=None, is_flag=False,
              flag_value=5.0, metavar="[S]", help="Refresh every S seconds (default 5).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object (per refresh with --watch, one per line).")
@click.option("--listen", type=click.FloatRange(0.5), default=2.0, show_default=True,
              metavar="S", help="How long to listen for worker reports.")
@click.pass_context
def status(ctx: click.Context, /, job_name: str, broker: str | None, ledger: str | None,
           management_url: str | None, watch_s: float | None, as_json: bool,
           listen: float) -> int:
    """Show job NAME now: queues, live workers, files and bytes done, rate and ETA.

    Files done are the totals of the workers running now (each since it started; with
    --watch also of those seen stopping meanwhile); parked files are read from the parked
    queue. Exits 0 once the job is done with --watch. With --ledger too: the job's files by
    status as its ledger has them; with --ledger alone only those (with --watch refreshed
    until interrupted).
    """
    start_logging(ctx, False)
    if broker is None and ledger is None:
        raise click.UsageError("give --broker URL or --ledger URL")
    if broker is None:
        assert ledger is not None
        while True:
            click.echo(ledger_status(ledger, job_name, as_json))
            if watch_s is None:
                return 0
            time.sleep(watch_s)

    async def go() -> int:
        b = await open_admin(broker, job_name)
        try:
            topology = Topology(await b.attach())
            reports = job_status.Reports()
            await b.subscribe(reports)
            before: job_status.Snapshot | None = None
            while True:
                snap = await job_status.take(b, topology, reports, broker_url=broker,
                                             management=management_url, listen_s=listen)
                summary = job_status.summarize(snap, before)
                in_ledger = (await read_counts(ledger, job_name)) if ledger else None
                if as_json:
                    if in_ledger is not None:
                        summary["ledger"] = in_ledger.to_dict()
                    click.echo(json.dumps(summary, ensure_ascii=False))
                else:
                    if watch_s is not None and sys.stdout.isatty():
                        click.clear()
                    click.echo(job_status.render(summary))
                    if in_ledger is not None:
                        click.echo(in_ledger.render(job_name))
                if watch_s is None or summary["done"]:
                    return 0
                before = snap
                await asyncio.sleep(max(0.0, watch_s - listen))
        finally:
            await b.close()

    return run_async(go())


@click.command()
@job_option
@broker_required
@click.option("--event", "kinds", multiple=True, type=click.Choice(KINDS), metavar="KIND",
              help=f"Only these events ({', '.join(KINDS)}); repeatable. Default: all.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as one JSON line.")
@click.option("--until-finished", is_flag=True, help="Exit after the job.finished event.")
@click.option("--timeout", type=click.FloatRange(0), default=None, metavar="S",
              help="Give up after S seconds (exit 1).")
@click.pass_context
def watch(ctx: click.Context, /, job_name: str, broker: str, kinds: tuple[str, ...],
          as_json: bool, until_finished: bool, timeout: float | None) -> int:
    """Print the events of job NAME as they happen: each file fetched, skipped (current) or
    parked, each folder parked, and job.finished.

    Only events from now on are seen. A system that must not miss any binds its own durable
    queue to the topic exchange NAME.events (routing keys file.fetched, file.skipped,
    file.parked, folder.parked, job.finished) before it seeds the job.
    """
    start_logging(ctx, False)

    async def go() -> int:
        b = await open_admin(broker, job_name)
        finished = asyncio.Event()

        def on_event(message: dict[str, Any]) -> None:
            kind = str(message.get("event", ""))
            for event in each_file(message):  # a batch's event: one line per file
                if kinds and kind not in kinds:
                    pass
                elif as_json:
                    click.echo(json.dumps(event, ensure_ascii=False))
                else:
                    click.echo(_line(event))
            if kind == "job.finished":
                finished.set()

        try:
            await b.subscribe_events(on_event)
            click.echo(f"watching events of job {job_name} on {b.name}", err=True)
            deadline = None if timeout is None else time.monotonic() + timeout
            while not (until_finished and finished.is_set()):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    click.echo(f"mirror watch: no job.finished within {timeout:g} s", err=True)
                    return 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), min(left or 1.0, 1.0))
            return 0
        finally:
            await b.close()

    return run_async(go())


def _line(event: dict[str, Any]) -> str:
    kind = str(event.get("event", "?"))
    if kind == "job.finished":
        return (f"{kind}  fetched {event.get('fetched', 0)}, skipped {event.get('skipped', 0)}, "
                f"parked in total {event.get('parked_total', 0)}")
    extra = ""
    if "reason" in event:
        reason = event["reason"]
        extra = f"  ({reason.get('error')}: {reason.get('message', '')})"
    elif "size" in event:
        extra = f"  {event['size']} bytes"
    return f"{kind:<14} {event.get('path', '')}{extra}"
