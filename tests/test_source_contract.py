"""What every source must do, one suite for all: paging across many pages, empty folders,
stat of a file, a folder and a missing path, ranged reads for resume, mtimes, the error
mapping (rejected credentials fatal, 403/404 parked, 429/503 transient) and hostile names
refused with a reason, each case run against every source's real or faithful server.

Adding a source is one entry in ``HARNESSES``: a ``Harness`` with

- ``name``: the parameter's id;
- ``cannot``: the cases this source cannot have, each with the reason (the case is skipped
  with that reason in its parameter; never for a missing server, which fails in CI);
- ``serve(tree, request)``: an async context manager that serves the local folder ``tree``
  (session fixtures through ``request.getfixturevalue``) and yields a ``Served``:
  ``url`` and ``options`` (a small page size where the source pages) and ``env`` (the
  credentials) open the source as the command line would; ``bad_env``: credentials the
  server rejects; ``force(path, status)``: from then on the server answers ``status``
  (403, 429 or 503) for that file, as the store does, with its own error body; and, with
  ``hostile=True``, the served folder ``hostile`` also holds names that cannot be written
  (``..``, ``.``, empty, absolute...), however that store can carry them.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web

from mirror.errors import (
    AccessDenied,
    CredentialsRejected,
    FatalError,
    NotFound,
    PermanentError,
    RateLimited,
    TransientError,
)
from mirror.jobs import JobSpec
from mirror.parking import journal_path, read_journal
from mirror.runner import WorkOptions, run_job
from mirror.settings import SourceSettings, WorkerSettings
from mirror.sources.base import Entry, Source
from mirror.sources.registry import open_source
from mirror.sources.upyun import LIST_END
from mirror.testing.fake_upyun import FakeUpyun
from mirror.testing.fake_upyun.core import Refused
from mirror.testing.moto import S3_ENV, MotoServer, fill, stamp, tree_objects
from mirror.testing.nginx import Nginx, find_nginx
from mirror.testing.s3proxy import S3FaultProxy
from tests.conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD
from tests.s3_fixtures import moto_server

__all__ = ["moto_server"]  # a fixture the S3 harness takes
MANY = 60  # files in one folder, listed 7 a page where the source pages
PAGE = 7
DATA = "files/data.bin"


@dataclass
class Served:
    url: str
    options: dict[str, Any]
    env: dict[str, str]
    bad_env: dict[str, str] | None = None
    force: Callable[[str, int], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Harness:
    name: str
    serve: Callable[[Path, pytest.FixtureRequest, bool], AbstractAsyncContextManager[Served]]
    cannot: dict[str, str] = field(default_factory=dict)


# -- UpYun: the fake, with per-path answers -------------------------------------------------

UPYUN_CODES = {403: 40300011, 404: 40400001, 429: 42900003, 503: 50300031}


class ForcingUpyun(FakeUpyun):
    """The fake UpYun, answering chosen paths with a chosen status and UpYun's code."""

    forced: dict[str, int]

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        key = unquote(request.raw_path.partition("?")[0]).split("/", 2)[-1].strip("/")
        status = self.forced.get(key)
        if status is not None:
            raise Refused(status, UPYUN_CODES[status], "forced by the test")
        return await super()._serve(request)


@asynccontextmanager
async def serve_upyun(tree: Path, request: pytest.FixtureRequest,
                      hostile: bool) -> AsyncIterator[Served]:
    async with ForcingUpyun(tree, bucket=BUCKET, operator=OPERATOR,
                            password=PASSWORD) as fake:
        fake.forced = {}
        if hostile:
            names = ["..", ".", "", "a/b", "/etc"]
            fake.listing_override["hostile"] = lambda _iter: (upyun_listing(names), LIST_END)
            fake.listing_override[""] = lambda _iter: (upyun_listing(
                [p.name for p in sorted(tree.iterdir())] + ["hostile"], tree), LIST_END)
        yield Served(f"upyun://{BUCKET}/", {"endpoint": fake.url, "list_limit": PAGE},
                     CREDENTIALS, {**CREDENTIALS, "UPYUN_PASSWORD": "wrong"},
                     fake.forced.__setitem__)


def upyun_listing(names: list[str], tree: Path | None = None) -> bytes:
    import json

    def entry(name: str) -> dict[str, Any]:
        path = tree / name if tree is not None and name != "hostile" and name else None
        folder = name == "hostile" or (path is not None and path.is_dir())
        size = path.stat().st_size if path is not None and path.is_file() else 3
        return {"name": name, "type": "folder" if folder else "text/plain",
                "length": 0 if folder else size, "last_modified": 1_700_000_000}

    return json.dumps({"files": [entry(n) for n in names], "iter": LIST_END}).encode()


# -- HTTP index: nginx ----------------------------------------------------------------------

NGINX_CANNOT = "nginx serves a real folder as it is: no credentials, no injected answers"


@asynccontextmanager
async def serve_nginx(tree: Path, request: pytest.FixtureRequest,
                      hostile: bool) -> AsyncIterator[Served]:
    if find_nginx() is None:
        message = "nginx is not installed (apt-get install nginx)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    async with Nginx(tree) as nginx:
        yield Served(nginx.json_url, {}, {})


# -- S3: moto behind the fault proxy --------------------------------------------------------


@asynccontextmanager
async def serve_s3(tree: Path, request: pytest.FixtureRequest,
                   hostile: bool) -> AsyncIterator[Served]:
    moto: MotoServer = request.getfixturevalue("moto_server")
    bucket = f"contract-{random.randrange(1 << 30):x}"
    objects = tree_objects(tree)
    if hostile:
        objects.update({"hostile/../x": b"1", "hostile//y": b"2", "hostile/./z": b"3",
                        "/abs": b"4"})
    fill(moto.url, bucket, objects)
    stamp(moto.url, bucket, tree, [k for k in objects if not k.endswith("/")
                                   and not k.startswith(("hostile", "/"))])
    async with S3FaultProxy(moto.url) as proxy:
        def force(path: str, status: int) -> None:
            code = {403: "AccessDenied", 404: "NoSuchKey", 429: "TooManyRequests",
                    503: "SlowDown"}[status]
            proxy.forced[f"{bucket}/{path}"] = (status, code)

        yield Served(f"s3://{bucket}/", {"endpoint": proxy.url, "list_limit": PAGE}, S3_ENV,
                     {**S3_ENV, "AWS_SECRET_ACCESS_KEY": "wrong"}, force)


HARNESSES = [
    Harness("upyun", serve_upyun),
    Harness("httpindex", serve_nginx, {
        "paging": "a directory index is one page per folder",
        "credentials": NGINX_CANNOT, "403": NGINX_CANNOT, "429": NGINX_CANNOT,
        "503": NGINX_CANNOT,
        "hostile": "a real folder cannot hold names like '..' or '/'"}),
    Harness("s3", serve_s3),
]
CASES = ["paging", "empty", "stat", "range", "mtime", "credentials", "403", "404", "429", "503",
         "hostile"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each test takes ``harness``; a case a source cannot have is skipped with the reason."""
    if "harness" not in metafunc.fixturenames:
        return
    case = metafunc.function.__name__.removeprefix("test_").split("_")[0]
    params = []
    for h in HARNESSES:
        why = h.cannot.get(case)
        marks = [pytest.mark.skip(reason=f"{h.name} cannot: {why}")] if why else []
        params.append(pytest.param(h, id=f"{h.name}" + (f"-cannot-{case}" if why else ""),
                                   marks=marks))
    metafunc.parametrize("harness", params)


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What every source serves: a folder of many files, an empty folder, a file to read in
    ranges, odd names."""
    root = tmp_path_factory.mktemp("contract") / "tree"
    rng = random.Random(4)
    for i in range(MANY):
        path = root / "many" / f"f{i:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randrange(0, 300)))
    (root / "empty" / "inner").mkdir(parents=True)
    (root / "files").mkdir()
    (root / DATA).write_bytes(rng.randbytes(100_000))
    (root / "files" / "odd name + % #.txt").write_bytes(b"odd")
    for i, path in enumerate(sorted(root.rglob("*"))):
        if path.is_file():
            os.utime(path, (1_600_000_000 + i * 101, 1_600_000_000 + i * 101))
    return root


def source_of(served: Served, env: dict[str, str] | None = None) -> Source:
    return open_source(served.url, SourceSettings(env=served.env if env is None else env,
                                                  request_retries=0),
                       options=served.options)


async def list_all(source: Source, path: str) -> tuple[list[Entry], int]:
    entries, pages, cursor = [], 0, None
    while True:
        page = await source.list_page(path, cursor)
        entries += page.entries
        pages += 1
        if (cursor := page.cursor) is None:
            return entries, pages


@asynccontextmanager
async def opened(harness: Harness, tree: Path, request: pytest.FixtureRequest,
                 hostile: bool = False) -> AsyncIterator[tuple[Served, Source]]:
    async with harness.serve(tree, request, hostile) as served:
        source = source_of(served)
        try:
            yield served, source
        finally:
            await source.close()


async def test_paging_across_many_pages(harness: Harness, tree: Path,
                                        request: pytest.FixtureRequest) -> None:
    async with opened(harness, tree, request) as (_, source):
        entries, pages = await list_all(source, "many")
    assert sorted(e.path for e in entries) == [f"many/f{i:03d}.txt" for i in range(MANY)]
    assert pages >= MANY // PAGE


async def test_empty_folders(harness: Harness, tree: Path, request: pytest.FixtureRequest
                             ) -> None:
    async with opened(harness, tree, request) as (_, source):
        top, _ = await list_all(source, "empty")
        inner, _ = await list_all(source, "empty/inner")
    assert [(e.path, e.is_dir) for e in top] == [("empty/inner", True)]
    assert inner == []


async def test_stat_of_a_file_a_folder_and_a_missing_path(
        harness: Harness, tree: Path, request: pytest.FixtureRequest) -> None:
    async with opened(harness, tree, request) as (_, source):
        file = await source.stat(DATA)
        folder = await source.stat("files")
        with pytest.raises(NotFound):
            await source.stat("files/not-there.txt")
    assert (file.is_dir, file.size) == (False, 100_000)
    assert folder.is_dir


async def test_range_reads_resume_where_asked(harness: Harness, tree: Path,
                                              request: pytest.FixtureRequest) -> None:
    data = (tree / DATA).read_bytes()
    async with opened(harness, tree, request) as (_, source):
        for offset in (0, 1, 65_536, len(data) - 1):
            async with source.open(DATA, offset) as body:
                assert body.offset == offset
                assert await body.read_all() == data[offset:]
        async with source.open("files/odd name + % #.txt") as body:
            assert await body.read_all() == b"odd"


async def test_mtime_and_sizes_as_listed(harness: Harness, tree: Path,
                                         request: pytest.FixtureRequest) -> None:
    async with opened(harness, tree, request) as (_, source):
        entries, _ = await list_all(source, "files")
    listed = {e.path: e for e in entries}
    for name in ("data.bin", "odd name + % #.txt"):
        st = (tree / "files" / name).stat()
        entry = listed[f"files/{name}"]
        assert entry.size == st.st_size and entry.mtime is not None
        assert abs(entry.mtime - st.st_mtime) < 1, name


async def test_credentials_rejected_are_fatal(harness: Harness, tree: Path,
                                              request: pytest.FixtureRequest) -> None:
    async with harness.serve(tree, request, False) as served:
        assert served.bad_env is not None
        source = source_of(served, served.bad_env)
        try:
            with pytest.raises(CredentialsRejected) as caught:
                await source.list_page("", None)
        finally:
            await source.close()
    assert isinstance(caught.value, FatalError) and "wrong" not in str(caught.value)


async def _forced(harness: Harness, tree: Path, request: pytest.FixtureRequest,
                  status: int) -> BaseException:
    async with opened(harness, tree, request) as (served, source):
        assert served.force is not None
        served.force(DATA, status)
        with pytest.raises(Exception) as caught:
            async with source.open(DATA):
                pass
    return caught.value


async def test_403_is_parked(harness: Harness, tree: Path, request: pytest.FixtureRequest
                             ) -> None:
    error = await _forced(harness, tree, request, 403)
    assert isinstance(error, AccessDenied) and error.detail.http_status == 403


async def test_404_is_parked(harness: Harness, tree: Path, request: pytest.FixtureRequest
                             ) -> None:
    async with opened(harness, tree, request) as (_, source):
        with pytest.raises(NotFound) as caught:
            async with source.open("files/gone.bin"):
                pass
    assert isinstance(caught.value, PermanentError) and caught.value.detail.http_status == 404


async def test_429_is_transient(harness: Harness, tree: Path, request: pytest.FixtureRequest
                                ) -> None:
    error = await _forced(harness, tree, request, 429)
    assert isinstance(error, RateLimited)


async def test_503_is_transient(harness: Harness, tree: Path, request: pytest.FixtureRequest
                                ) -> None:
    error = await _forced(harness, tree, request, 503)
    assert isinstance(error, TransientError)


async def test_hostile_names_are_refused_with_a_reason(
        harness: Harness, tree: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dest, state = tmp_path / "out" / "dest", tmp_path / "state"
    async with harness.serve(tree, request, True) as served:
        spec = JobSpec(name="contract", source=served.url, source_options=served.options,
                       retry_delays_s=(0.1,), max_attempts=2)
        outcome = await run_job(spec, dest, None, SourceSettings(env=served.env),
                                WorkOptions(WorkerSettings(concurrency=4)), state)
    parked = read_journal(journal_path(state, "contract"))
    assert outcome.exit_code == 1 and parked
    for item in parked:
        reason = f"{item.reason.error}: {item.reason.message}"
        assert "unsafe" in reason.lower() and item.reason.message, reason
    wanted = {p.relative_to(tree).as_posix(): p.read_bytes() for p in tree.rglob("*")
              if p.is_file()}
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*")
           if p.is_file()}
    assert got == wanted
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["dest"]
