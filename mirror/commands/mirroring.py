"""``mirror run``, ``mirror seed`` and ``mirror work``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mirror import runner
from mirror.aio import run_async
from mirror.commands.options import (
    job_options,
    ledger_option,
    live_progress,
    make_source_settings,
    make_spec,
    make_work_options,
    make_worker_settings,
    start_logging,
    state_dir_of,
    worker_options,
)
from mirror.commands.sourceflags import connection_options, source_options
from mirror.disk import Placement
from mirror.diskpool import disk_pool
from mirror.jobsource import source_for
from mirror.ledger import LedgerSettings
from mirror.placement import build_placement, parse_claim
from mirror.ratelimit import Limiter


@click.command()
@click.argument("source")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--broker", envvar="MIRROR_BROKER_URL", metavar="URL",
              help="RabbitMQ URL (amqp://user:pass@host:5672/vhost); default: embedded broker.")
@click.option("--job", "job_name", envvar="MIRROR_JOB", metavar="NAME",
              help="Job name (namespaces its queues); default: derived from SOURCE.")
@source_options
@worker_options
@job_options
@ledger_option
@click.pass_context
def run(ctx: click.Context, /, source: str, dest: Path, broker: str | None, job_name: str | None,
        **o: Any) -> int:
    """Mirror SOURCE (e.g. upyun://bucket/prefix) into DEST and wait until it is done.

    Without --broker everything runs in this process. With --broker the job is seeded on
    RabbitMQ (or resumed, if it exists) and worked here; other hosts can help with
    `mirror work --job NAME`.
    """
    live = live_progress(o, ctx)
    start_logging(ctx, live)
    name = runner.check_job_name(job_name or runner.default_job_name(
        source, dest.resolve() if broker is None else None))
    spec = make_spec(ctx, name, source, o)
    options = make_work_options(o, make_worker_settings(o), until_idle=True, live=live)
    with runner.forked_fetchers(options) as forked:
        outcome = run_async(runner.run_job(spec, dest, broker, make_source_settings(ctx, o),
                                           options, state_dir_of(o), forked=forked))
    click.echo(runner.report(outcome))
    return outcome.exit_code


@click.command()
@click.argument("source", envvar="MIRROR_SOURCE")
@click.option("--job", "job_name", envvar="MIRROR_JOB", required=True, metavar="NAME")
@click.option("--broker", envvar="MIRROR_BROKER_URL", required=True, metavar="URL")
@click.option("--force", is_flag=True, help="Seed again even if the job has pending work.")
@source_options
@job_options
@ledger_option
@click.pass_context
def seed(ctx: click.Context, /, source: str, job_name: str, broker: str, force: bool,
         ledger: str | None, **o: Any) -> int:
    """Create job NAME on the broker and queue the listing of SOURCE.

    Workers started with `mirror work --job NAME` then list and fetch it. Seeding a job that
    still has pending work only resumes it (unless --force). With --ledger the job's file
    events are kept for the ledger from the start (its table is created here), until a
    worker with --ledger writes them.
    """
    start_logging(ctx, False)
    spec = make_spec(ctx, runner.check_job_name(job_name), source, o)

    async def go() -> str:
        src = source_for(spec, make_source_settings(ctx, o))
        try:
            await runner.check_source(src, source)
        finally:
            await src.close()
        where = None
        if ledger:
            from mirror.ledger.attach import prepare  # SQLAlchemy: only with a ledger

            where = await prepare(LedgerSettings(ledger))
        b = await runner.connect_broker(broker, spec.name, "seed")
        try:
            what = (await runner.seed(b, spec, force=force, ledger=where is not None))[1]
        finally:
            await b.close()
        return what + (f"; its ledger is {where}" if where else "")

    click.echo(run_async(go()))
    return 0


@click.command()
@click.option("--job", "job_name", envvar="MIRROR_JOB", required=True, metavar="NAME")
@click.option("--broker", envvar="MIRROR_BROKER_URL", required=True, metavar="URL")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="MIRROR_DEST", help="Mirror root for every shard of the job.")
@click.option("--disk", "disks", multiple=True, metavar="SHARDS=PATH",
              help="Fetch these shards into this existing folder, e.g. 0-3=/mnt/a; "
                   "repeatable. The worker consumes exactly the shards it has a disk for.")
@click.option("--role", type=click.Choice(["list", "fetch", "all"]), default="all",
              envvar="MIRROR_ROLE", show_default=True)
@click.option("--until-idle", is_flag=True,
              help="Exit once the whole job is done (not when this worker's queue is "
                   "momentarily empty).")
@connection_options
@worker_options
@ledger_option
@click.pass_context
def work(ctx: click.Context, /, job_name: str, broker: str, dest: Path | None,
         disks: tuple[str, ...], role: str, until_idle: bool, **o: Any) -> int:
    """Work job NAME: list and/or fetch until stopped (or, with --until-idle, until done).

    The job's source and its options (UpYun's endpoint...), shards and retry tiers come from
    the broker; this host only needs the credentials in its environment. A fetching worker
    needs --dest or --disk.
    """
    live = live_progress(o, ctx)
    start_logging(ctx, live)
    settings = make_worker_settings(o, role)
    options = make_work_options(o, settings, until_idle=until_idle, live=live)
    claims = [parse_claim(d) for d in disks]
    if settings.fetches and dest is None and not claims:
        raise click.UsageError(f"--role {role} fetches files: give --dest DIR or --disk "
                               "SHARDS=PATH")

    async def go() -> runner.Outcome:
        b = await runner.connect_broker(broker, runner.check_job_name(job_name), role, settings)
        pool = disk_pool(settings.most_transfers)
        try:
            spec = await b.attach()
            placement = (await build_placement(claims, dest, spec.shards, fsync=settings.fsync,
                                               pool=pool)
                         if settings.fetches else Placement({}))
            limiter = Limiter(options.rates)
            source_settings = make_source_settings(ctx, o)
            src = source_for(spec, source_settings, limiter)
            try:
                return await runner.work(b, spec, src, placement, options, limiter=limiter,
                                         source_settings=source_settings, forked=forked)
            finally:
                await src.close()
        finally:
            await b.close()
            pool.shutdown(wait=False)

    with runner.forked_fetchers(options) as forked:
        outcome = run_async(go())
    click.echo(runner.report(outcome))
    if not until_idle and outcome.fatal is None:
        return 0  # stopped on request; parked files are the job's, reported by its run/status
    return outcome.exit_code
