"""The fake UpYun server answers as the reference (upyun-api.md §10) says the real one does.

Driven both with raw signed requests and through our own client, so a disagreement between
the fake and the client shows up here rather than as a mystery in the end-to-end tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from mirror.errors import CredentialsRejected, NotFound, TransientError
from mirror.settings import SourceSettings
from mirror.sources.upyun import LIST_END, UpyunOptions, UpyunSource, quote_key, sign
from mirror.testing.fake_upyun import FakeUpyun, Faults

from .conftest import BUCKET, CREDENTIALS, OPERATOR, PASSWORD

NAMES = ["a+b c.txt", "hash#mark.txt", "q?mark.txt", "pct%41.txt", "br[ck]{x}.txt",
         "中文名.txt", "emoji😀.txt"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "bucket"
    (r / "wide").mkdir(parents=True)
    for i in range(250):
        (r / "wide" / f"f{i:03d}").write_bytes(b"x" * i)
    (r / "even").mkdir()
    for i in range(200):
        (r / "even" / f"e{i:03d}").write_bytes(b"e")
    (r / "empty").mkdir()
    (r / "odd").mkdir()
    for name in NAMES:
        (r / "odd" / name).write_bytes(name.encode() * 3)
    (r / "big.bin").write_bytes(os.urandom(100_000))
    return r


@pytest.fixture
async def fake(root: Path) -> AsyncIterator[FakeUpyun]:
    async with FakeUpyun(root, bucket=BUCKET, operator=OPERATOR, password=PASSWORD) as f:
        yield f


def signed(method: str, uri: str, password: str = PASSWORD, date: str | None = None,
           **extra: str) -> dict[str, str]:
    date = date or formatdate(usegmt=True)
    md5 = hashlib.md5(password.encode()).hexdigest()
    return {"Date": date, "Authorization": sign(OPERATOR, md5, method, uri, date), **extra}


async def call(fake: FakeUpyun, method: str, key: str, query: str = "",
               headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict[str], bytes]:
    uri = quote_key(BUCKET, key) + (f"?{query}" if query else "")
    async with aiohttp.ClientSession() as s, s.request(
        method, aiohttp.client.URL(fake.url + uri, encoded=True),
        headers=headers if headers is not None else signed(method, uri),
    ) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


def source(fake: FakeUpyun, limit: int = 100, retries: int = 0) -> UpyunSource:
    return UpyunSource.from_url(f"upyun://{BUCKET}/", UpyunOptions(fake.url, limit),
                                SourceSettings(env=CREDENTIALS, request_retries=retries))


async def test_auth_failures_carry_the_documented_codes(fake: FakeUpyun) -> None:
    uri = quote_key(BUCKET, "big.bin")
    cases = {
        "40100004": {"Date": formatdate(usegmt=True)},
        "40100005": signed("GET", uri, password="wrong"),
        "40100002": signed("GET", uri, date=formatdate(time.time() - 3600, usegmt=True)),
        "40100001": {"Authorization": signed("GET", uri)["Authorization"]},
    }
    for code, headers in cases.items():
        status, h, body = await call(fake, "GET", "big.bin", headers=headers)
        assert status == 401
        assert json.loads(body)["code"] == int(code) and h["X-Error-Code"] == code
        assert len(json.loads(body)["id"]) == 32 and h["X-Request-Id"]
    basic = base64.b64encode(f"{OPERATOR}:{PASSWORD}".encode()).decode()
    status, _, _ = await call(fake, "GET", "big.bin", headers={"Authorization": f"Basic {basic}"})
    assert status == 200
    src = source(fake)
    src_bad = UpyunSource.from_url(f"upyun://{BUCKET}/", UpyunOptions(fake.url), SourceSettings(
        env={**CREDENTIALS, "UPYUN_PASSWORD": "nope"}))
    try:
        assert (await src.stat("big.bin")).size == 100_000
        with pytest.raises(CredentialsRejected):
            await src_bad.list_page("", None)
    finally:
        await src.close()
        await src_bad.close()


async def test_paging_ends_with_the_sentinel_even_on_a_full_page(fake: FakeUpyun) -> None:
    for folder, count in (("wide", 250), ("even", 200)):
        status, h, body = await call(fake, "GET", folder + "/",
                                     headers=signed("GET", quote_key(BUCKET, folder + "/"),
                                                    **{"Accept": "application/json",
                                                       "x-list-limit": "100"}))
        assert status == 200
        seen, pages, token = [], 1, json.loads(body)["iter"]
        seen += [f["name"] for f in json.loads(body)["files"]]
        assert h["x-upyun-list-iter"] == token
        while token != LIST_END:
            uri = quote_key(BUCKET, folder + "/")
            _, _, body = await call(fake, "GET", folder + "/", headers=signed(
                "GET", uri, **{"Accept": "application/json", "x-list-limit": "100",
                               "x-list-iter": token}))
            page = json.loads(body)
            seen += [f["name"] for f in page["files"]]
            token = page["iter"]
            pages += 1
        assert pages == (count + 99) // 100 and len(seen) == count == len(set(seen))
    src = source(fake)
    try:
        names: list[str] = []
        cursor = None
        while True:
            page = await src.list_page("wide", cursor)
            names += [e.path for e in page.entries]
            if page.cursor is None:
                break
            cursor = page.cursor
        assert names == [f"wide/f{i:03d}" for i in range(250)]
    finally:
        await src.close()


async def test_listing_formats_order_and_empty_folder(fake: FakeUpyun) -> None:
    status, _, body = await call(fake, "GET", "")
    lines = body.decode().split("\n")
    assert status == 200 and not body.endswith(b"\n")
    assert lines[0].split("\t") == ["big.bin", "N", "100000", lines[0].split("\t")[3]]
    assert [ln.split("\t")[:3] for ln in lines[1:]] == [
        ["empty", "F", "0"], ["even", "F", "0"], ["odd", "F", "0"], ["wide", "F", "0"]]
    uri = quote_key(BUCKET, "empty/")
    _, _, body = await call(fake, "GET", "empty/", headers=signed(
        "GET", uri, Accept="application/json"))
    assert json.loads(body) == {"files": [], "iter": LIST_END}
    status, _, body = await call(fake, "GET", "missing/")
    assert status == 404 and json.loads(body)["code"] == 40400001
    status, _, body = await call(fake, "GET", "wide/", headers=signed(
        "GET", quote_key(BUCKET, "wide/"), **{"x-list-limit": "0"}))
    assert status == 400


async def test_hostile_names_round_trip_through_the_client(fake: FakeUpyun, root: Path) -> None:
    src = source(fake)
    try:
        page = await src.list_page("odd", None)
        assert sorted(e.path for e in page.entries) == sorted(f"odd/{n}" for n in NAMES)
        for name in NAMES:
            async with src.open(f"odd/{name}") as body:
                assert await body.read_all() == (root / "odd" / name).read_bytes()
                assert body.md5 == hashlib.md5((root / "odd" / name).read_bytes()).hexdigest()
        with pytest.raises(NotFound):
            async with src.open("odd/nothing"):
                pass
    finally:
        await src.close()


async def test_range_head_usage(fake: FakeUpyun, root: Path) -> None:
    data = (root / "big.bin").read_bytes()
    uri = quote_key(BUCKET, "big.bin")
    status, h, body = await call(fake, "GET", "big.bin",
                                 headers=signed("GET", uri, Range="bytes=1000-1999"))
    assert status == 206 and body == data[1000:2000]
    assert h["Content-Range"] == "bytes 1000-1999/100000"
    assert h["Content-Md5"] == hashlib.md5(data).hexdigest()
    status, h, body = await call(fake, "GET", "big.bin",
                                 headers=signed("GET", uri, Range="bytes=200000-"))
    assert status == 400 and json.loads(body)["code"] == 40001161
    status, h, body = await call(fake, "HEAD", "big.bin")
    assert status == 200 and body == b""
    assert h["x-upyun-file-type"] == "file" and h["x-upyun-file-size"] == "100000"
    assert int(h["x-upyun-file-date"]) == int((root / "big.bin").stat().st_mtime)
    status, h, _ = await call(fake, "HEAD", "wide")
    assert h["x-upyun-file-type"] == "folder"
    status, _, body = await call(fake, "HEAD", "nothing")
    assert status == 404 and body == b""
    status, _, body = await call(fake, "GET", "wide", headers=signed(
        "GET", quote_key(BUCKET, "wide"), **{"x-upyun-folder": "false"}))
    assert status == 403 and json.loads(body)["code"] == 40300015
    status, _, body = await call(fake, "GET", "", query="usage")
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert status == 200 and int(body) == total
    src = source(fake)
    try:
        async with src.open("big.bin", 99_000) as b:
            assert b.offset == 99_000 and b.total_size == 100_000
            assert await b.read_all() == data[99_000:]
    finally:
        await src.close()


@pytest.mark.parametrize("kind", ["503", "429", "drop", "truncate"])
async def test_faults_hit_first_attempts_only(root: Path, kind: str) -> None:
    faults = Faults(**{f"rate_{kind}": 1.0})  # type: ignore[arg-type]
    async with FakeUpyun(root, bucket=BUCKET, operator=OPERATOR, password=PASSWORD,
                         faults=faults) as fake:
        src = source(fake)
        try:
            if kind == "drop":
                # The client sends an idempotent GET once more when the server hangs up
                # before answering (RFC 9112 §9.3.1), so the caller sees no error at all.
                pass
            else:
                with pytest.raises(TransientError) as info:
                    async with src.open("big.bin") as body:
                        await body.read_all()
                if kind == "truncate":
                    assert "cut short" in info.value.message
            async with src.open("big.bin") as body:  # the second attempt is served
                assert await body.read_all() == (root / "big.bin").read_bytes()
        finally:
            await src.close()
        assert fake.stats.faults[kind] == 1
        async with aiohttp.ClientSession() as s:
            stats = await (await s.get(fake.url + "/_fake/stats")).json()
            assert stats["faults"][kind] == 1
            await s.post(fake.url + "/_fake/reset")
        assert fake.stats.requests == 0


async def test_latency_and_body_rate(root: Path) -> None:
    async with FakeUpyun(root, bucket=BUCKET, operator=OPERATOR, password=PASSWORD,
                         faults=Faults(latency_s=0.3, body_rate_bps=200_000)) as fake:
        src = source(fake)
        try:
            started = time.monotonic()
            async with src.open("big.bin") as body:
                await body.read_all()
            assert time.monotonic() - started >= 0.3 + 0.4  # 100 kB at 200 kB/s
        finally:
            await src.close()
