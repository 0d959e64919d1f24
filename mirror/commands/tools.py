"""``mirror demo``, ``mirror ls``, ``mirror fake-upyun`` and ``mirror fake-artifactory``."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path
from typing import Any

import click

from mirror import runner
from mirror.aio import run_async
from mirror.commands.options import (
    SIZE,
    live_progress,
    make_source_settings,
    make_worker_settings,
    start_logging,
    state_dir_of,
    worker_options,
)
from mirror.commands.sourceflags import chosen_options, source_options
from mirror.errors import ConfigError
from mirror.jobs import JobSpec
from mirror.progress import human_bytes
from mirror.settings import SourceSettings
from mirror.sources.registry import open_source

DEMO_OPERATOR, DEMO_PASSWORD, DEMO_BUCKET = "demo", "demo-password", "demo"


@click.command()
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              default=Path("mirror-demo"), show_default=True, help="Where the mirror goes.")
@click.option("--files", type=click.IntRange(10, 1_000_000), default=400, show_default=True,
              help="Files in the sample bucket.")
@click.option("--fresh", is_flag=True, help="Rebuild the sample bucket and empty DEST first.")
@worker_options
@click.pass_context
def demo(ctx: click.Context, /, dest: Path, files: int, fresh: bool, **o: Any) -> int:
    """Build a sample bucket, serve it with the fake UpYun server, and mirror it.

    Everything runs in this process over the embedded broker: a quick look at what a real
    run shows. The bucket has deep folders, empty folders, zero-byte and multi-MB files and
    names with spaces, quotes, brackets, '#', '?', '%', CJK and emoji.
    """
    from mirror.testing.compare import tree_differences
    from mirror.testing.fake_upyun import FakeUpyun
    from mirror.testing.sample import build_bucket

    live = live_progress(o, ctx)
    start_logging(ctx, live)
    state = state_dir_of(o)
    bucket = state / "demo" / f"bucket-{files}"
    if fresh:
        shutil.rmtree(bucket, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
    if not (bucket / ".complete").exists():
        shutil.rmtree(bucket, ignore_errors=True)
        click.echo(f"building a sample bucket of {files} files in {bucket} ...")
        build_bucket(bucket / "data", files=files, deep=12, wide=min(files // 3, 300),
                     big_files=2, big_size=3 * 1024 * 1024)
        (bucket / ".complete").write_text("ok")

    async def go() -> runner.Outcome:
        async with FakeUpyun(bucket / "data", bucket=DEMO_BUCKET, operator=DEMO_OPERATOR,
                             password=DEMO_PASSWORD) as fake:
            click.echo(f"fake UpYun serving bucket {DEMO_BUCKET!r} at {fake.url}")
            settings = SourceSettings(env={"UPYUN_OPERATOR": DEMO_OPERATOR,
                                           "UPYUN_PASSWORD": DEMO_PASSWORD})
            spec = JobSpec(name="demo", source=f"upyun://{DEMO_BUCKET}/",
                           source_options={"endpoint": fake.url, "list_limit": 100},
                           retry_delays_s=(0.5, 2.0, 5.0))
            options = runner.WorkOptions(make_worker_settings(o), until_idle=True,
                                         live_progress=live)
            return await runner.run_job(spec, dest, None, settings, options, state)

    outcome = run_async(go())
    click.echo(runner.report(outcome))
    differences = tree_differences(bucket / "data", dest)
    click.echo(f"\nmirror: {dest.resolve()}\nsource: {(bucket / 'data').resolve()}")
    if differences:
        click.echo("the mirror differs from the source:\n  " + "\n  ".join(differences))
        return 1
    click.echo(f"identical: every file, folder, byte and mtime matches "
               f"(check yourself: diff -r '{bucket / 'data'}' '{dest}')")
    return outcome.exit_code


@click.command()
@click.argument("source")
@click.option("-R", "--recursive", is_flag=True, help="List sub-folders too.")
@click.option("-l", "--long", "long_format", is_flag=True, help="Show size and mtime.")
@source_options
@click.pass_context
def ls(ctx: click.Context, /, source: str, recursive: bool, long_format: bool, **o: Any) -> int:
    """List SOURCE (e.g. upyun://bucket/path), one entry per line; folders end with '/'."""
    start_logging(ctx, False)
    settings = make_source_settings(ctx, o)
    options = chosen_options(ctx, source, o)

    async def go() -> int:
        src = open_source(source, settings, options=options)
        try:
            folders = [""]
            while folders:
                folder = folders.pop()
                cursor: str | None = None
                while True:
                    page = await src.list_page(folder, cursor)
                    for e in page.entries:
                        name = e.path + ("/" if e.is_dir else "")
                        if long_format:
                            size = "-" if e.is_dir else human_bytes(e.size)
                            click.echo(f"{size:>10}  {int(e.mtime or 0):>10}  {name}")
                        else:
                            click.echo(name)
                        if e.is_dir and recursive:
                            folders.append(e.path)
                    if page.cursor is None:
                        break
                    cursor = page.cursor
        finally:
            await src.close()
        return 0

    return run_async(go())


@click.command("fake-upyun")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path),
                required=False)
@click.option("--synthetic", type=click.IntRange(1), default=None, metavar="N",
              help="Serve a made-up bucket of N files instead of ROOT.")
@click.option("--per-folder", type=click.IntRange(1), default=1000, show_default=True,
              metavar="N", help="Files per folder of the synthetic bucket.")
@click.option("--max-size", type=SIZE, default="4K", show_default=True,
              help="Largest synthetic file.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--bucket", default="demo", show_default=True)
@click.option("--operator", default="operator", show_default=True)
@click.option("--password", default="password", show_default=True)
@click.option("--fault-429", type=click.FloatRange(0, 1), default=0.0,
              help="Share of first attempts answered 429.")
@click.option("--fault-503", type=click.FloatRange(0, 1), default=0.0,
              help="Share of first attempts answered 503.")
@click.option("--fault-truncate", type=click.FloatRange(0, 1), default=0.0,
              help="Share of first attempts whose body is cut short.")
@click.option("--fault-drop", type=click.FloatRange(0, 1), default=0.0,
              help="Share of first attempts whose connection is dropped.")
@click.option("--fault-random", type=click.FloatRange(0, 1), default=0.0,
              help="Share of first attempts that fail as a real bucket's do: listings 429, "
              "files 503 or cut short.")
@click.option("--latency", type=click.FloatRange(0), default=0.0, metavar="S",
              help="Added before every response.")
@click.option("--body-rate", type=SIZE, default="0", metavar="RATE",
              help="Send each body no faster than this (bytes/s, e.g. 100K); 0: no limit.")
@click.option("--seed", type=int, default=0, help="Seed of the fault draw.")
@click.pass_context
def fake_upyun(ctx: click.Context, /, root: Path | None, synthetic: int | None,
               per_folder: int, max_size: int,
               host: str, port: int, bucket: str, operator: str,
               password: str, fault_429: float, fault_503: float, fault_truncate: float,
               fault_drop: float, fault_random: float, latency: float, body_rate: int,
               seed: int) -> int:
    """Serve folder ROOT as an UpYun bucket (a faithful fake of the REST API, for tests)."""
    from mirror.testing.fake_upyun import Faults, run_fake_server
    from mirror.testing.synthetic import SyntheticBucket

    if (root is None) == (synthetic is None):
        raise click.UsageError("give a ROOT folder or --synthetic N")
    made_up = (SyntheticBucket(synthetic, seed=seed, per_folder=per_folder, max_size=max_size)
               if synthetic is not None else None)

    start_logging(ctx, False)
    if fault_429 + fault_503 + fault_truncate + fault_drop + fault_random > 1:
        raise ConfigError("the fault shares add up to more than 1")
    faults = Faults(rate_429=fault_429, rate_503=fault_503, rate_truncate=fault_truncate,
                    rate_drop=fault_drop, rate_random=fault_random, latency_s=latency,
                    seed=seed,
                    body_rate_bps=float(body_rate))
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        run_async(run_fake_server(root or Path("."), host=host, port=port, bucket=bucket,
                                  operator=operator, password=password, faults=faults,
                                  synthetic=made_up))
    return 0


@click.command("fake-artifactory")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8081, show_default=True)
@click.option("--repo", default="generic-local", show_default=True,
              help="The repository ROOT is served as.")
@click.option("--token", default=None, help="An access token it accepts (Bearer).")
@click.option("--user", default=None, help="A user it accepts (basic auth) ...")
@click.option("--password", default=None, help="... with this password.")
@click.option("--api-key", default=None,
              help="An API key it accepts (X-JFrog-Art-Api, or as the user's password).")
@click.option("--anonymous/--no-anonymous", default=True, show_default=True,
              help="Allow anonymous reads.")
@click.option("--oss", is_flag=True, help="Play Artifactory OSS: no file list (400).")
@click.option("--strings", is_flag=True,
              help='Write "folder": "true" and sizes as strings, as the documentation does.')
@click.option("--no-sha256", is_flag=True, help="Know no SHA-256 (files stored before 5.5).")
@click.option("--fault-429", type=click.FloatRange(0, 1), default=0.0,
              help="Share of first attempts answered 429.")
@click.option("--fault-503", type=click.FloatRange(0, 1), default=0.0,
              help="Share of first attempts answered 503.")
@click.option("--fault-truncate", type=click.FloatRange(0, 1), default=0.0,
              help="Share of first attempts whose body is cut short.")
@click.option("--fault-drop", type=click.FloatRange(0, 1), default=0.0,
              help="Share of first attempts whose connection is dropped.")
@click.option("--latency", type=click.FloatRange(0), default=0.0, metavar="S",
              help="Added before every response.")
@click.option("--body-rate", type=SIZE, default="0", metavar="RATE",
              help="Send each body no faster than this (bytes/s, e.g. 100K); 0: no limit.")
@click.option("--rate-limit", type=click.FloatRange(0), default=0.0, metavar="RPS",
              help="Requests per second it accepts; beyond them 429. 0: no limit.")
@click.option("--seed", type=int, default=0, help="Seed of the fault draw.")
@click.pass_context
def fake_artifactory(ctx: click.Context, /, root: Path, host: str, port: int, repo: str,
                     token: str | None, user: str | None, password: str | None,
                     api_key: str | None, anonymous: bool, oss: bool, strings: bool,
                     no_sha256: bool, fault_429: float, fault_503: float,
                     fault_truncate: float, fault_drop: float, latency: float, body_rate: int,
                     rate_limit: float, seed: int) -> int:
    """Serve folder ROOT as an Artifactory repository (a faithful fake of its REST API, for
    tests and the bench); the endpoint to give is printed (http://HOST:PORT/artifactory)."""
    from mirror.testing.fake_artifactory import Access, Flavour, run_fake_server
    from mirror.testing.fake_upyun import Faults

    start_logging(ctx, False)
    if fault_429 + fault_503 + fault_truncate + fault_drop > 1:
        raise ConfigError("the fault shares add up to more than 1")
    faults = Faults(rate_429=fault_429, rate_503=fault_503, rate_truncate=fault_truncate,
                    rate_drop=fault_drop, latency_s=latency, seed=seed,
                    body_rate_bps=float(body_rate), rate_limit_rps=rate_limit)
    access = Access(token=token, user=user, password=password, api_key=api_key,
                    anonymous=anonymous)
    flavour = Flavour(pro=not oss, strings=strings, sha256=not no_sha256)
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        run_async(run_fake_server(root, host=host, port=port, repo=repo, access=access,
                                  flavour=flavour, faults=faults))
    return 0
