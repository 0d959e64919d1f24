"""What the subcommands share: their option decorators and parameter types, and the settings
built from the parsed options. The ``mirror`` group itself and ``main`` are in ``mirror.cli``,
which imports the subcommands; they import this module, never ``mirror.cli``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from mirror.commands.sourceflags import chosen_options
from mirror.jobs import JobSpec
from mirror.ledger import LedgerSettings
from mirror.ratelimit import RateSettings
from mirror.runner import WorkOptions
from mirror.settings import SourceSettings, WorkerSettings, default_state_dir
from mirror.sources.registry import backends

F = TypeVar("F", bound=Callable[..., Any])


def credentials(ctx: click.Context) -> dict[str, str]:
    """Credentials from the config file's [credentials] table, overridden by the environment
    variables the backends read (``Backend.credentials``)."""
    found: dict[str, str] = dict(ctx.find_root().meta.get("credentials") or {})
    names = {name for backend in backends() for name in backend.credentials}
    found.update({k: os.environ[k] for k in sorted(names) if os.environ.get(k)})
    return found


def setup_logging(verbose: int, quiet: bool, rich_console: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    if rich_console:
        from rich.logging import RichHandler

        from mirror.progress import terminal_console

        # The live view's console: lines logged while it is up are printed above it.
        handler: logging.Handler = RichHandler(console=terminal_console(), show_path=False,
                                               markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s",
                                               "%Y-%m-%d %H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("aiormq", "aio_pika", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.INFO)


SIZE_UNITS: Mapping[str, int] = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
                                 "T": 1 << 40}


class SizeType(click.ParamType[int]):
    """Bytes with an optional binary suffix: 512, 10K, 20M, 1.5G (K = 1024)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("/S").removesuffix("IB")
        unit = text[-1:] if text[-1:] in "BKMGT" else ""
        number = text[: len(text) - len(unit)] if unit else text
        try:
            amount = float(number)
        except ValueError:
            self.fail(f"{value!r} is not a size like 512, 10K, 20M or 1.5G", param, ctx)
        if amount < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return int(amount * SIZE_UNITS[unit])


SIZE = SizeType()


class ProcessesType(click.ParamType[int]):
    """A number of fetch processes, or ``auto`` (0 here)."""

    name = "processes"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return 0
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of processes nor 'auto'", param, ctx)
        if not 1 <= number <= 64:
            self.fail(f"{number} is not between 1 and 64", param, ctx)
        return number


PROCESSES = ProcessesType()


def worker_options(f: F) -> F:
    options = [
        click.option("--concurrency", type=click.IntRange(1, 1024), default=None,
                     envvar="MIRROR_CONCURRENCY", metavar="N",
                     help="Simultaneous downloads, fixed. Default: adaptive, from 32 up to "
                     "--max-concurrency, as far as more transfers bring more throughput."),
        click.option("--max-concurrency", type=click.IntRange(1, 1024), default=256,
                     envvar="MIRROR_MAX_CONCURRENCY", show_default=True, metavar="N",
                     help="The most simultaneous downloads the adaptive limit may reach."),
        click.option("--list-concurrency", type=click.IntRange(1, 256), default=None,
                     envvar="MIRROR_LIST_CONCURRENCY", metavar="N",
                     help="Simultaneous listing requests, fixed. Default: adaptive, from 4 up "
                     "to --max-list-concurrency."),
        click.option("--max-list-concurrency", type=click.IntRange(1, 256), default=32,
                     envvar="MIRROR_MAX_LIST_CONCURRENCY", show_default=True, metavar="N",
                     help="The most simultaneous listing requests the adaptive limit may "
                     "reach."),
        click.option("--checksum/--no-checksum", default=True, envvar="MIRROR_CHECKSUM",
                     show_default=True,
                     help="Check the SHA-256, SHA-1 or MD5 the source vouches for."),
        click.option("--fsync/--no-fsync", default=True, envvar="MIRROR_FSYNC",
                     show_default=True,
                     help="Make each file durable on disk before it is acked (files finished "
                          "together share each flush); --no-fsync: no flush."),
        click.option("--drain-deadline", type=click.FloatRange(0), default=60.0,
                     envvar="MIRROR_DRAIN_DEADLINE", show_default=True, metavar="S",
                     help="On SIGTERM, let in-flight work finish for this long."),
        click.option("--max-backlog", type=click.IntRange(1), default=50_000,
                     envvar="MIRROR_MAX_BACKLOG", show_default=True,
                     help="Listing pauses while a fetch queue of the job holds about this "
                     "many files."),
        click.option("--batch-files", type=click.IntRange(1, 1000), default=32,
                     envvar="MIRROR_BATCH_FILES", show_default=True, metavar="N",
                     help="Over RabbitMQ, small files (up to 1 MiB) travel N to a message; "
                     "each file is still retried or parked on its own. 1: one message per "
                     "file. The embedded broker sends one message per job."),
        click.option("--min-rate", type=SIZE, default="1K", envvar="MIRROR_MIN_RATE",
                     show_default=True, metavar="RATE",
                     help="A transfer slower than this (bytes/s, e.g. 10K) for a whole "
                     "--stall-window is aborted and resumed; 0 turns it off."),
        click.option("--stall-window", type=click.FloatRange(1), default=60.0,
                     envvar="MIRROR_STALL_WINDOW", show_default=True, metavar="S"),
        click.option("--rps", type=click.FloatRange(0), default=0.0, envvar="MIRROR_RPS",
                     metavar="N", help="Fetch requests per second for this worker (0: no "
                     "fixed limit)."),
        click.option("--list-rps", type=click.FloatRange(0), default=0.0,
                     envvar="MIRROR_LIST_RPS", metavar="N",
                     help="Listing requests per second for this worker (0: no fixed limit)."),
        click.option("--cluster-rps", type=click.FloatRange(0), default=0.0,
                     envvar="MIRROR_CLUSTER_RPS", metavar="N",
                     help="Requests per second for the whole job, shared by its live workers."),
        click.option("--bwlimit", type=SIZE, default="0", envvar="MIRROR_BWLIMIT",
                     metavar="RATE", help="Bytes per second across this worker's transfers "
                     "(e.g. 20M; 0: no limit)."),
        click.option("--delay", type=click.FloatRange(0), default=0.0, envvar="MIRROR_DELAY",
                     metavar="S", help="Pause after each download."),
        click.option("--adaptive/--no-adaptive", default=True, envvar="MIRROR_ADAPTIVE",
                     show_default=True,
                     help="Slow down on 429/503 (honouring Retry-After), recover slowly."),
        click.option("--metrics-addr", envvar="MIRROR_METRICS_ADDR", default=None,
                     metavar="HOST:PORT", help="Serve Prometheus metrics at "
                     "http://HOST:PORT/metrics (a bare PORT binds 127.0.0.1)."),
        click.option("--metrics-linger", type=click.FloatRange(0), default=0.0,
                     envvar="MIRROR_METRICS_LINGER", metavar="S",
                     help="Keep serving metrics this long after the work ends (a last scrape)."),
        click.option("--processes", type=PROCESSES, default="auto",
                     envvar="MIRROR_PROCESSES", show_default=True, metavar="N|auto",
                     help="Fetch in N child processes; the queue, listing and error policy "
                     "stay in this one. auto: one per usable core (CPU affinity and cgroup "
                     "quota), used once the job has 1,000 files or 256 MiB in sight."),
        click.option("--events/--no-events", default=True, envvar="MIRROR_EVENTS",
                     show_default=True, help="Publish an event per file (fetched, skipped, "
                     "parked) to the job's events exchange (`mirror watch`)."),
        click.option("--progress/--no-progress", default=None,
                     help="Live progress view (default: when stderr is a terminal)."),
        click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
                     envvar="MIRROR_STATE_DIR", default=None,
                     help="Job state (parked lists, summaries) [default: ~/.local/state/"
                     "bucket-mirror]."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def job_options(f: F) -> F:
    options = [
        click.option("--retry-delays", default="5,60,600", envvar="MIRROR_RETRY_DELAYS",
                     show_default=True, metavar="S,S,...",
                     help="Retry tiers in seconds (fixed when the job is created)."),
        click.option("--max-attempts", type=click.IntRange(1, 100), default=5,
                     envvar="MIRROR_MAX_ATTEMPTS", show_default=True,
                     help="Attempts per job before it is parked."),
        click.option("--shards", type=click.IntRange(1, 4096), default=1,
                     envvar="MIRROR_SHARDS", show_default=True,
                     help="Fetch queues of the job (fixed when it is created); workers claim "
                     "shards with --disk SHARDS=PATH."),
        click.option("--shard-by", type=click.Choice(["folder", "path"]), default="folder",
                     envvar="MIRROR_SHARD_BY", show_default=True,
                     help="Hash a file's folder (a folder stays on one disk) or its path."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def parse_delays(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        delays = ()
    if not delays or any(d <= 0 for d in delays):
        raise click.BadParameter(f"{text!r}: give positive seconds like 5,60,600",
                                 param_hint="--retry-delays")
    return delays


def make_source_settings(ctx: click.Context, o: Mapping[str, Any]) -> SourceSettings:
    w = make_worker_settings(o) if "checksum" in o else WorkerSettings()
    return SourceSettings(
        connect_timeout_s=o.get("connect_timeout", 30.0), read_timeout_s=o.get("timeout", 120.0),
        request_retries=o.get("request_retries", 2),
        max_connections=max(64, w.most_transfers + w.most_listings + 8),
        env=credentials(ctx),
    )


def concurrency_settings(o: Mapping[str, Any]) -> dict[str, Any]:
    """A given --concurrency or --list-concurrency pins that limit; else it adapts."""
    defaults = WorkerSettings()
    fetch, listing = o.get("concurrency"), o.get("list_concurrency")
    return {
        "concurrency": fetch or defaults.concurrency, "adaptive_concurrency": fetch is None,
        "max_concurrency": o.get("max_concurrency") or defaults.max_concurrency,
        "list_concurrency": listing or defaults.list_concurrency,
        "adaptive_list_concurrency": listing is None,
        "max_list_concurrency": o.get("max_list_concurrency") or defaults.max_list_concurrency,
    }


def make_worker_settings(o: Mapping[str, Any], role: str = "all") -> WorkerSettings:
    return WorkerSettings(
        role=role,  # type: ignore[arg-type]
        **concurrency_settings(o),
        verify_checksum=o["checksum"], fsync=o["fsync"], drain_deadline_s=o["drain_deadline"],
        min_rate_bps=float(o["min_rate"]), stall_window_s=o["stall_window"],
        max_backlog=o["max_backlog"], file_events=o.get("events", True),
        batch_files=o.get("batch_files", 32),
    )


def make_work_options(o: Mapping[str, Any], settings: WorkerSettings, *, until_idle: bool,
                      live: bool) -> WorkOptions:
    rates = make_rate_settings(o)
    processes = o.get("processes", 1)
    auto = processes == 0
    if auto:
        from mirror.cpus import usable_cpus

        # --cluster-rps is kept by one process's limiter (the fetch processes cannot share it
        # yet), and a lister fetches nothing.
        processes = usable_cpus() if not rates.cluster_rps and settings.fetches else 1
    return WorkOptions(settings, until_idle=until_idle, live_progress=live,
                       rates=rates, metrics_addr=o.get("metrics_addr"),
                       metrics_linger_s=o.get("metrics_linger", 0.0),
                       processes=processes, processes_auto=auto and processes > 1,
                       ledger=LedgerSettings(o["ledger"]) if o.get("ledger") else None)


def make_rate_settings(o: Mapping[str, Any]) -> RateSettings:
    return RateSettings(rps=o.get("rps", 0.0), list_rps=o.get("list_rps", 0.0),
                        cluster_rps=o.get("cluster_rps", 0.0),
                        bwlimit_bps=float(o.get("bwlimit", 0)), delay_s=o.get("delay", 0.0),
                        adaptive=o.get("adaptive", True))


def make_spec(ctx: click.Context, name: str, source: str, o: Mapping[str, Any]) -> JobSpec:
    return JobSpec(name=name, source=source, source_options=chosen_options(ctx, source, o),
                   retry_delays_s=parse_delays(o["retry_delays"]),
                   max_attempts=o["max_attempts"], shards=o.get("shards", 1),
                   shard_by=o.get("shard_by", "folder"))


def live_progress(o: Mapping[str, Any], ctx: click.Context) -> bool:
    wanted = o.get("progress")
    if ctx.find_root().meta.get("quiet"):
        return False
    return sys.stderr.isatty() if wanted is None else bool(wanted)


def start_logging(ctx: click.Context, live: bool) -> None:
    root = ctx.find_root()
    setup_logging(root.meta.get("verbose", 0), root.meta.get("quiet", False), live)


def state_dir_of(o: Mapping[str, Any]) -> Path:
    return Path(o["state_dir"]) if o.get("state_dir") else default_state_dir()


job_option = click.option("--job", "job_name", envvar="MIRROR_JOB", required=True,
                          metavar="NAME")
broker_option = click.option(
    "--broker", envvar="MIRROR_BROKER_URL", metavar="URL",
    help="RabbitMQ URL of the job; without it, the embedded run recorded in --state-dir.")
ledger_option = click.option(
    "--ledger", envvar="MIRROR_LEDGER_URL", metavar="URL", default=None,
    help="Keep one row per file (outcome, size, time, error) in this database: "
    "sqlite:///PATH, postgresql://USER@HOST/DB or mysql://USER@HOST/DB (MariaDB).")
state_option = click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
                            envvar="MIRROR_STATE_DIR", default=None,
                            help="Where embedded runs keep their parked jobs.")
