"""Large plain-HTTP bodies copied from the socket in a disk thread (mirror.sources.direct).

Real servers on loopback: nginx for the splice path, small aiohttp servers that cut a body
short, stall, or honour ranges. The file must hold exactly the bytes received, so that a cut
transfer resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest
from aiohttp import web

from mirror.checksum import Checksum
from mirror.disk import Disk
from mirror.errors import SourceUnavailable, Stalled
from mirror.ratelimit import Limiter, RateSettings
from mirror.settings import SourceSettings
from mirror.sources.direct import DirectBody
from mirror.sources.registry import open_source
from mirror.sources.transport import direct_copy
from mirror.testing.nginx import Nginx
from tests.test_cli import mirror_cmd
from tests.test_httpindex import nginx_available, serving  # noqa: F401  (fixture)

SIZE = 3 * 1024 * 1024 + 17  # above small_file_max: streamed, not read whole


def _index(name: str, size: int) -> str:
    return f'<a href="{name}">{name}</a>   20-Nov-2026 10:00   {size}\n'


async def _copy(direct: DirectBody, disk: Disk, rel: str, size: int, md5: bool,
                seen: list[int]) -> tuple[Exception | None, int]:
    """Copy into the part file of ``rel`` in a thread; (the error, the part's size)."""
    part = disk.begin(rel, size, None, 1.0)
    assert part is not None
    error: Exception | None = None
    try:
        await asyncio.to_thread(part.write_from, direct, "md5" if md5 else None,
                                seen.append)
    except (SourceUnavailable, Stalled) as exc:
        error = exc
    finally:
        direct.close()
    held = part.size
    part.close()
    return error, held


@pytest.mark.usefixtures("nginx_available")
@pytest.mark.parametrize("md5", [False, True], ids=["splice", "read-and-hash"])
async def test_large_body_from_nginx_arrives_whole(tmp_path: Path, md5: bool) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(SIZE)
    (src / "big.bin").write_bytes(data)
    disk = Disk(tmp_path / "dest", fsync=False)
    disk.root.mkdir()
    async with Nginx(src) as nginx:
        source = open_source(nginx.url, SourceSettings())
        try:
            async with source.open("big.bin") as body:
                direct = direct_copy(body)
                assert direct is not None, "plain HTTP with a length goes direct"
                seen: list[int] = []
                part = disk.begin("big.bin", SIZE, None, 1.0)
                assert part is not None
                await asyncio.to_thread(part.write_from, direct, "md5" if md5 else None,
                                        seen.append)
                direct.close()
                part.commit(SIZE, None,
                            Checksum("md5", hashlib.md5(data).hexdigest()) if md5 else None)
        finally:
            await source.close()
    assert (disk.root / "big.bin").read_bytes() == data
    assert sum(seen) == SIZE


async def test_cut_short_body_keeps_what_arrived_and_the_run_resumes(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    cut = SIZE // 2
    ranges: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/":
            return web.Response(text=_index("big.bin", SIZE), content_type="text/html")
        rng = request.headers.get("Range")
        if rng is None:  # the first try: full length promised, half sent, line dropped
            resp = web.StreamResponse(headers={"Content-Length": str(SIZE)})
            await resp.prepare(request)
            await resp.write(data[:cut])
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.close()
            return resp
        ranges.append(rng)
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        return web.Response(status=206, body=data[start:], headers={
            "Content-Range": f"bytes {start}-{SIZE - 1}/{SIZE}"})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    disk = Disk(tmp_path / "dest", fsync=False)
    disk.root.mkdir()
    async with serving(app) as port:
        source = open_source(f"http://127.0.0.1:{port}/", SourceSettings())
        try:
            async with source.open("big.bin") as body:
                direct = direct_copy(body)
                assert direct is not None
                error, held = await _copy(direct, disk, "big.bin", SIZE, False, [])
        finally:
            await source.close()
        assert isinstance(error, SourceUnavailable) and "cut short" in str(error)
        part_file = disk.root / "big.bin.mirror.part"
        assert held == part_file.stat().st_size <= cut
        assert part_file.read_bytes() == data[:held]  # every byte counted is on disk
        part_file.unlink()

        code, out, err = await mirror_cmd("run", f"http://127.0.0.1:{port}/",
                                          str(tmp_path / "mirror"), "--no-progress",
                                          "--state-dir", str(tmp_path / "state"))
    assert code == 0, out + err
    assert (tmp_path / "mirror" / "big.bin").read_bytes() == data
    assert ranges, "the second request resumed from the bytes already on disk"
    assert not list((tmp_path / "mirror").glob("*.part"))


async def test_stalled_body_times_out_and_a_cancel_stops_the_copy(tmp_path: Path) -> None:
    done = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(SIZE)})
        await resp.prepare(request)
        await resp.write(b"x" * (SIZE // 4))
        await done.wait()  # then nothing until the test is over
        return resp

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    disk = Disk(tmp_path / "dest", fsync=False)
    disk.root.mkdir()
    async with serving(app) as port:
        source = open_source(f"http://127.0.0.1:{port}/", SourceSettings(read_timeout_s=1.0))
        try:
            async with source.open("a.bin") as body:
                direct = direct_copy(body)
                assert direct is not None
                started = time.monotonic()
                error, held = await _copy(direct, disk, "a.bin", SIZE, False, [])
                assert isinstance(error, Stalled) and "read timeout" in str(error)
                assert 0.9 < time.monotonic() - started < 10
                assert held == SIZE // 4

            async with source.open("b.bin") as body:
                direct = direct_copy(body)
                assert direct is not None
                asyncio.get_running_loop().call_later(0.3, direct.cancel)
                started = time.monotonic()
                error, _ = await _copy(direct, disk, "b.bin", SIZE, False, [])
                assert isinstance(error, Stalled) and "stopped" in str(error)
                assert time.monotonic() - started < 0.9  # before the read timeout
        finally:
            done.set()
            await source.close()


@pytest.mark.usefixtures("nginx_available")
async def test_a_bandwidth_limit_keeps_the_body_on_the_loop(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(SIZE))
    async with Nginx(tmp_path) as nginx:
        limiter = Limiter(RateSettings(bwlimit_bps=100e6))
        source = open_source(nginx.url, SourceSettings(), limiter)
        try:
            async with source.open("big.bin") as body:
                assert direct_copy(body) is None
                data = b"".join([c async for c in body.chunks(1 << 20)])
        finally:
            await source.close()
    assert data == (tmp_path / "big.bin").read_bytes()
