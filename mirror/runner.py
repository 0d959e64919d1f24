"""Seed a job, work a job, or do both in one process: what the commands run, minus parsing."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mirror.broker import Broker, ParkedJob, Topology
from mirror.broker.memory import MemoryBroker
from mirror.disk import Disk, Placement
from mirror.diskpool import disk_pool
from mirror.errors import ConfigError, FatalError, NotFound
from mirror.jobs import Job, JobSpec, ListJob
from mirror.jobsource import options_of, source_for
from mirror.ledger import LedgerSettings
from mirror.parking import journal_path, write_journal
from mirror.progress import Progress, summary
from mirror.ratelimit import Limiter, RateSettings
from mirror.settings import SourceSettings, WorkerSettings
from mirror.sources import Source
from mirror.stats import Stats
from mirror.worker import Worker

if TYPE_CHECKING:
    from mirror.fetchpool import FetchPool
    from mirror.prefork import Forked

log = logging.getLogger(__name__)
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def default_job_name(source: str, dest: Path | None = None) -> str:
    """A readable, stable job name: the source URL as a slug (plus the destination's hash)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", source.replace("://", "-")).strip("-.") or "job"
    tail = hashlib.blake2b(f"{source}|{dest}".encode(), digest_size=3).hexdigest()
    return f"{slug[:60]}-{tail}" if dest is not None or len(slug) > 60 else slug


def check_job_name(name: str) -> str:
    if not JOB_NAME.match(name):
        raise ConfigError(f"job name {name!r} must be 1-100 of A-Z a-z 0-9 _ . - and start with "
                          "a letter or digit")
    return name


@dataclass(frozen=True)
class Outcome:
    stats: Stats
    parked_total: int
    fatal: FatalError | None = None

    @property
    def exit_code(self) -> int:
        if self.fatal is not None:
            return 3
        return 1 if self.parked_total else 0


@dataclass(frozen=True)
class WorkOptions:
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    until_idle: bool = True
    live_progress: bool = False
    rates: RateSettings = field(default_factory=RateSettings)
    metrics_addr: str | None = None  # HOST:PORT for /metrics; None: no exporter
    metrics_linger_s: float = 0.0  # keep serving after the end, for a last scrape
    processes: int = 1  # fetch in this many child processes (mirror.fetchpool); 1: in-process
    # --processes auto: ``processes`` is what the cores allow, used once the job is big enough.
    processes_auto: bool = False
    ledger: LedgerSettings | None = None  # --ledger: write each file's outcome there


async def connect_broker(url: str | None, job: str, role: str = "all",
                         settings: WorkerSettings | None = None) -> Broker:
    """The embedded broker, or RabbitMQ at ``url``, packing small jobs as ``settings`` say
    (``--batch-files``; the embedded broker packs nothing)."""
    if url is None:
        return MemoryBroker()
    from mirror.broker.batching import BatchLimits
    from mirror.broker.rabbitmq import RabbitBroker

    s = settings or WorkerSettings()
    batching = BatchLimits(files=s.batch_files, bytes=s.batch_bytes, small_max=s.small_file_max)
    return await RabbitBroker.connect(url, job, connection_name=f"bucket-mirror {role}",
                                      batching=batching)


async def check_source(source: Source, url: str) -> None:
    """Fail fast on bad credentials or a missing prefix, before any job is created."""
    try:
        entry = await source.stat("")
    except NotFound as exc:
        raise ConfigError(f"{url}: the source folder does not exist") from exc
    if not entry.is_dir:
        raise ConfigError(f"{url} is a file, not a folder; mirror its parent folder instead")


async def seed(broker: Broker, spec: JobSpec, *, force: bool = False,
               initial: Sequence[Job] | None = None, ledger: bool = False
               ) -> tuple[JobSpec, str]:
    """Create the job (or find it) and put its root listing in the queue unless it is running.
    ``ledger``: keep the job's events for a ledger, from before its first file.

    Returns the spec in force and what was done, for the operator.
    """
    try:
        existing: JobSpec | None = await broker.attach()
    except ConfigError:
        existing = None
    if existing is not None:
        if existing.source != spec.source:
            raise ConfigError(f"job {spec.name!r} already mirrors {existing.source}; "
                              "choose another --job")
        differences = options_of(existing).differences(options_of(spec))
        if differences:
            raise ConfigError(f"job {spec.name!r} mirrors {existing.source} with "
                              f"{', '.join(differences)}; give the job's options or choose "
                              "another --job")
        if existing.shards != spec.shards:
            raise ConfigError(f"job {spec.name!r} has {existing.shards} shards; its shard count "
                              "cannot change")
        spec = existing
    else:
        await broker.declare(spec)
    if ledger:
        await broker.declare_ledger_feed()
    topology = Topology(spec)
    depths = await broker.depths()
    pending = sum(d.ready + (d.unacked or 0) for q, d in depths.items()
                  if q in topology.pending_queues)
    consumers = sum(d.consumers or 0 for q, d in depths.items() if q in topology.pending_queues)
    if (pending or consumers) and not force:
        return spec, (f"job {spec.name} resumes: {pending} jobs queued, {consumers} consumers "
                      "attached; not seeding again")
    if initial is not None:
        await broker.publish(initial)
        return spec, f"job {spec.name}: {len(initial)} parked jobs queued again"
    await broker.publish([ListJob("")])
    return spec, f"job {spec.name} seeded: listing {spec.source}"


@contextlib.asynccontextmanager
async def _signals(worker: Worker) -> AsyncIterator[None]:
    """First SIGINT/SIGTERM drains; a second one gives in-flight work back at once."""
    loop = asyncio.get_running_loop()
    count = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal count
        count += 1
        if count == 1:
            worker.request_stop(f"{sig.name}: draining (again to stop at once)")
        else:
            worker.abort()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def forked_fetchers(options: WorkOptions) -> Iterator[list[Forked]]:
    """The fetch processes of ``options``, forked now: enter before the event loop starts and
    pass them to ``work``; those it did not take end with the block."""
    if options.processes < 2 or not options.worker.fetches:
        yield []
        return
    from mirror.fetchpool import fork  # with --processes only (start-up time)
    from mirror.prefork import reap

    forked = fork(options.processes)
    try:
        yield forked
    finally:
        reap(forked)


async def work(broker: Broker, spec: JobSpec, source: Source, placement: Placement,  # noqa: PLR0913  (the parts a command assembles)
               options: WorkOptions, stats: Stats | None = None,
               limiter: Limiter | None = None,
               source_settings: SourceSettings | None = None,
               forked: Sequence[Forked] = ()) -> Outcome:
    """Work the job until it is done or the worker is stopped. ``forked``: fetch processes
    from ``forked_fetchers`` (else the pool starts its own)."""
    stats = stats or Stats()
    pool: FetchPool | None = None
    if options.processes > 1 and options.worker.fetches:
        if source_settings is None:
            raise ConfigError("fetch processes need the source settings")
        from mirror.fetchpool import FetchPool  # with --processes only (start-up time)

        pool = FetchPool(options.processes, spec, source_settings, options.worker, placement,
                         options.rates, stats, forked)
    try:
        async with _ledger(broker, spec, options) as working:
            worker = Worker(broker, spec, source, placement, working.worker, stats, limiter,
                            pool, pool_when_needed=working.processes_auto)
            if pool is not None:
                pool.on_limits = worker.pool_limits_changed
                await pool.start()
            return await _exported(broker, spec, worker, stats, placement, working)
    finally:
        if pool is not None:
            await pool.close()


@contextlib.asynccontextmanager
async def _ledger(broker: Broker, spec: JobSpec,
                  options: WorkOptions) -> AsyncIterator[WorkOptions]:
    """The work's options, with the ledger of ``options`` written meanwhile (and drained at
    the end of a job worked until idle). File events are sent where a ledger keeps them."""
    if not options.worker.file_events and (
            options.ledger is not None or await broker.declare_ledger_feed(create=False)):
        log.warning("job %s has a ledger: file events are sent despite --no-events", spec.name)
        options = replace(options, worker=replace(options.worker, file_events=True))
    if options.ledger is None:
        yield options
        return
    from mirror.ledger.attach import attached  # SQLAlchemy: only with a ledger

    async with attached(broker, spec, options.ledger, drain=options.until_idle):
        yield options


async def _exported(broker: Broker, spec: JobSpec, worker: Worker, stats: Stats,
                    placement: Placement, options: WorkOptions) -> Outcome:
    exporter = None
    if options.metrics_addr:
        # prometheus_client: only when asked for
        from mirror.metrics import Exporter, QueueReading, Sources

        queues = QueueReading(broker.depths, asyncio.get_running_loop())
        exporter = Exporter(options.metrics_addr, Sources(
            spec.name, options.worker.role, spec.source.partition("://")[0], stats,
            worker.limiter, placement, options.worker, worker.controls, queues.ready))
        await asyncio.to_thread(exporter.start)
    try:
        return await _work(broker, worker, stats, options)
    finally:
        if exporter is not None:
            if options.metrics_linger_s:
                await asyncio.sleep(options.metrics_linger_s)
            await asyncio.to_thread(exporter.stop)


async def _work(broker: Broker, worker: Worker, stats: Stats, options: WorkOptions) -> Outcome:
    fatal: FatalError | None = None
    async with _signals(worker), Progress(stats, broker, worker.topology,
                                          live=options.live_progress, limiter=worker.limiter,
                                          worker=worker):
        try:
            await worker.run(until_idle=options.until_idle)
        except FatalError as exc:
            fatal = exc
    parked = 0
    with contextlib.suppress(Exception):
        depth = (await broker.depths()).get(worker.topology.parked_queue)
        parked = depth.ready if depth is not None else 0
    return Outcome(stats, max(parked, stats.parked), fatal)


async def run_job(spec: JobSpec, dest: Path, broker_url: str | None,  # noqa: PLR0913  (the parts a command assembles)
                  source_settings: SourceSettings, options: WorkOptions,
                  state_dir: Path, initial: Sequence[Job] | None = None,
                  keep_parked: Sequence[ParkedJob] = (), forked: Sequence[Forked] = ()
                  ) -> Outcome:
    """``mirror run``: seed (embedded or on RabbitMQ) and work the job here until it is done.

    ``initial`` replaces the root listing (an embedded ``mirror retry``); ``keep_parked`` are
    earlier parked jobs that stay in the journal next to this run's.
    """
    await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
    journal: list[ParkedJob] = []
    broker = (MemoryBroker(on_park=journal.append) if broker_url is None
              else await connect_broker(broker_url, spec.name, settings=options.worker))
    limiter = Limiter(options.rates)
    source = source_for(spec, source_settings, limiter)
    pool = disk_pool(options.worker.most_transfers)
    try:
        await check_source(source, spec.source)
        spec, what = await seed(broker, spec, initial=initial,
                                ledger=options.ledger is not None)
        log.info("%s", what)
        disk = Disk(dest, fsync=options.worker.fsync, pool=pool)
        await disk.run(disk.check_writable)
        outcome = await work(broker, spec, source, Placement.single(disk, spec.shards), options,
                             limiter=limiter, source_settings=source_settings, forked=forked)
    finally:
        await source.close()
        await broker.close()
        pool.shutdown(wait=False)
    await asyncio.to_thread(write_state, state_dir, spec, dest, outcome,
                            [*keep_parked, *journal], broker_url is None)
    return outcome


def write_state(state_dir: Path, spec: JobSpec, dest: Path, outcome: Outcome,
                parked: list[ParkedJob], embedded: bool) -> Path:
    """Keep the run's summary (and, for embedded runs, every parked job) in the state dir."""
    folder = state_dir / "jobs" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    s = outcome.stats
    (folder / "last-run.json").write_text(json.dumps({
        "job": spec.name, "source": spec.source, "dest": str(dest.resolve()),
        "spec": json.loads(spec.to_json()), "finished": time.time(),
        "embedded": embedded, "fetched": s.fetched, "skipped": s.skipped,
        "parked": outcome.parked_total, "bytes": s.transferred, "elapsed_s": s.elapsed_s,
        "fatal": str(outcome.fatal) if outcome.fatal else None,
    }, indent=2))
    if embedded:
        write_journal(journal_path(state_dir, spec.name), parked)
    return folder


@dataclass(frozen=True)
class LastRun:
    spec: JobSpec
    dest: Path
    embedded: bool


def read_last_run(state_dir: Path, job: str) -> LastRun:
    path = state_dir / "jobs" / job / "last-run.json"
    try:
        body = json.loads(path.read_text())
        return LastRun(JobSpec.from_json(json.dumps(body["spec"]).encode()), Path(body["dest"]),
                       bool(body["embedded"]))
    except FileNotFoundError as exc:
        raise ConfigError(f"no run of job {job!r} is recorded in {path.parent}; check --job "
                          "and --state-dir (or pass --broker for a RabbitMQ job)") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}); run the job again with "
                          "`mirror run`") from exc


def report(outcome: Outcome) -> str:
    text = summary(outcome.stats, outcome.parked_total)
    if outcome.fatal is not None:
        text += f"\nstopped: {outcome.fatal}"
    return text


__all__ = ["Outcome", "WorkOptions", "run_job", "seed", "source_for", "work"]
