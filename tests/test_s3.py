"""The S3 source: its requests and answers without sockets (MockTransport), then against a
real S3 API server (moto) behind the signature-checking fault proxy, through the `mirror`
command on both brokers. What every source must do is in test_source_contract.py."""

from __future__ import annotations

import asyncio
import calendar
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirror.errors import (
    AccessDenied,
    ConfigError,
    CredentialsRejected,
    NotFound,
    RateLimited,
    SourceUnavailable,
)
from mirror.ratelimit import Limiter, RateSettings
from mirror.settings import SourceSettings
from mirror.sources.registry import open_source
from mirror.sources.s3 import S3Options, S3Source
from mirror.sources.s3xml import Range, md5_of_etag, parse_list
from mirror.sources.transport import Request, Transport
from mirror.testing.compare import tree_differences
from mirror.testing.mock_transport import MockResponse, MockTransport
from mirror.testing.moto import S3_ENV, MotoServer
from mirror.testing.s3proxy import S3FaultProxy, S3Faults, error_body
from tests.s3_fixtures import (
    BUCKET,
    HOSTILE_BUCKET,
    S3Bucket,
    hostile_bucket,
    moto_server,
    s3_bucket,
)
from tests.test_cli import mirror_cmd

__all__ = ["hostile_bucket", "moto_server", "s3_bucket"]  # fixtures, used by name
SETTINGS = SourceSettings(env=S3_ENV, request_retries=0)
FAULTS = S3Faults(rate_503=0.03, rate_500=0.02, rate_429=0.02, rate_cut=0.03, seed=20)
LISTING = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bkt</Name>
<Prefix>pre/</Prefix><KeyCount>3</KeyCount><MaxKeys>2</MaxKeys><Delimiter>/</Delimiter>
<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
<Contents><Key>pre/</Key><Size>0</Size></Contents>
<Contents><Key>pre/a+b%2Bc%25d%3F%23.txt</Key><LastModified>2026-11-20T10:00:00.000Z</LastModified>
<ETag>"0CC175B9C0F1B6A831C399E269772661"</ETag><Size>1</Size></Contents>
<Contents><Key>pre/big</Key><LastModified>2026-11-20T10:00:00.000Z</LastModified>
<ETag>"0cae9dffb3aa1aaf93df41c0a17ca493-2"</ETag><Size>6291456</Size></Contents>
<CommonPrefixes><Prefix>pre/%E4%B8%AD%20dir/</Prefix></CommonPrefixes>
<CommonPrefixes><Prefix>pre//</Prefix></CommonPrefixes>
<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
</ListBucketResult>"""


def mock_source(handler: MockTransport, limiter: Limiter | None = None,
                **options: object) -> S3Source:
    chosen = S3Options.from_dict({"endpoint": "http://s3.test:9000", **options})
    return S3Source("bkt", "pre", SETTINGS, limiter, options=chosen,
                    transport=Transport(SETTINGS, limiter, handler))


async def test_listing_request_and_page() -> None:
    wire = MockTransport(lambda r: MockResponse(body=LISTING))
    page = await mock_source(wire, list_limit=2).list_page("", "tok/en=")
    sent = wire.requests[0]
    assert sent.budget == "list" and not sent.follow_redirects
    assert sent.url == ("http://s3.test:9000/bkt?continuation-token=tok%2Fen%3D&delimiter=%2F"
                        "&encoding-type=url&list-type=2&max-keys=2&prefix=pre%2F")
    assert sent.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKID")
    assert {"X-Amz-Date", "X-Amz-Content-SHA256"} <= set(sent.headers)
    assert [(e.path, e.is_dir, e.size, e.etag) for e in page.entries] == [
        ("a b+c%d?#.txt", False, 1, "0cc175b9c0f1b6a831c399e269772661"),  # "+" is a space
        ("big", False, 6291456, "0cae9dffb3aa1aaf93df41c0a17ca493-2"),
        ("中 dir", True, 0, None), ("/", True, 0, None)]
    assert page.entries[0].mtime == calendar.timegm((2026, 11, 20, 10, 0, 0))
    assert page.cursor == "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="


async def test_object_urls_addressing_and_ranges() -> None:
    def handle(r: Request) -> MockResponse:
        return MockResponse(206, {"Content-Range": "bytes 4-9/10",
                                  "ETag": '"781e5e245d69b566979b86e28d23f2c7"'}, b"456789")

    wire = MockTransport(handle)
    async with mock_source(wire).open("sp ace/+%?#é", 4) as body:
        assert (body.offset, body.total_size) == (4, 10)
        assert body.md5 == "781e5e245d69b566979b86e28d23f2c7"
        assert await body.read_all() == b"456789"
    sent = wire.requests[0]
    assert sent.url == "http://s3.test:9000/bkt/pre/sp%20ace/%2B%25%3F%23%C3%A9"
    assert sent.headers["Range"] == "bytes=4-"
    # virtual-hosted on request, and on AWS by default (path-style for a dotted bucket)
    await mock_source(wire, path_style=False).stat("k")
    assert wire.requests[-1].url == "http://bkt.s3.test:9000/pre/k"
    for bucket, url in (("bkt", "https://bkt.s3.eu-west-1.amazonaws.com/k"),
                        ("my.bkt", "https://s3.eu-west-1.amazonaws.com/my.bkt/k")):
        source = S3Source(bucket, "", SourceSettings(env={**S3_ENV, "AWS_REGION": "eu-west-1"}),
                          transport=Transport(SETTINGS, None, wire))
        await source.stat("k")
        assert wire.requests[-1].url == url


def test_multipart_etags_are_no_md5() -> None:
    assert md5_of_etag('"0CC175B9C0F1B6A831C399E269772661"') == "0cc175b9c0f1b6a831c399e269772661"
    assert md5_of_etag('"0cae9dffb3aa1aaf93df41c0a17ca493-2"') is None
    assert md5_of_etag(None) is None


@pytest.mark.parametrize(("status", "code", "kind"), [
    (503, "SlowDown", RateLimited), (429, "TooManyRequests", RateLimited),
    (500, "InternalError", SourceUnavailable), (502, None, SourceUnavailable),
    (403, "AccessDenied", AccessDenied), (404, "NoSuchKey", NotFound),
    (404, "NoSuchBucket", NotFound), (403, "InvalidAccessKeyId", CredentialsRejected),
    (403, "SignatureDoesNotMatch", CredentialsRejected), (401, None, CredentialsRejected),
    (400, "ExpiredToken", CredentialsRejected),
])
async def test_errors_are_translated(status: int, code: str | None, kind: type) -> None:
    limiter = Limiter(RateSettings())
    body = error_body(code, "said the store") if code else b""
    source = mock_source(MockTransport(lambda r: MockResponse(
        status, {"x-amz-request-id": "RID"}, body)), limiter)
    with pytest.raises(kind) as caught:
        async with source.open("k"):
            pass
    detail = caught.value.detail
    assert (detail.http_status, detail.code, detail.request_id) == (status, code, "RID")
    if code:
        assert code in str(caught.value)
    assert limiter.throttled("fetch") == (1 if status in (429, 503) else 0)


async def test_a_bucket_in_another_region_names_it() -> None:
    source = mock_source(MockTransport(lambda r: MockResponse(
        301, {"x-amz-bucket-region": "eu-central-1"}, error_body("PermanentRedirect", "x"))))
    with pytest.raises(ConfigError, match="--region eu-central-1"):
        await source.list_page("", None)


async def test_anonymous_requests_are_unsigned_and_only_when_asked() -> None:
    wire = MockTransport(lambda r: MockResponse(body=LISTING))
    source = S3Source("bkt", "", SourceSettings(env={"AWS_REGION": "us-east-1"}),
                      options=S3Options(endpoint="http://s3.test", anonymous=True),
                      transport=Transport(SETTINGS, None, wire))
    await source.list_page("", None)
    assert "Authorization" not in wire.requests[0].headers


def test_missing_credentials_are_a_usage_error(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    code, _, err = asyncio.run(mirror_cmd("ls", "s3://bkt/", "--endpoint", "http://127.0.0.1:1",
                                          env={**{k: "" for k in S3_ENV}, **env}))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "no AWS credentials found" in lines[0] and "--anonymous" in lines[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("09azAZ-/._ é中"), min_size=1, max_size=6),
                min_size=1, max_size=300, unique=True), st.integers(1, 7))
def test_flat_key_ranges_list_every_key_once(keys: list[str], limit: int) -> None:
    """Whatever the keys and page size, the ranges a flat listing forks cover each key once."""
    ordered = sorted(keys)
    pending, seen = [Range.of(None, "t")], []
    while pending:
        keys_range = pending.pop()
        after = [k for k in ordered if keys_range.after is None or k > keys_range.after]
        page, truncated = after[:limit], len(after) > limit
        inside = [k for k in page if keys_range.holds(k)]
        seen += inside
        if truncated and inside and len(inside) == len(page):
            rest, fork = keys_range.split(inside[0], inside[-1])
            pending += [Range.of(rest.cursor(), "t")] + ([fork] if fork else [])
    assert sorted(seen) == ordered


def test_listings_that_are_not_s3s() -> None:
    from mirror.errors import ProtocolError

    for raw in (b"<html>", b'<!DOCTYPE x [<!ENTITY a "b">]><ListBucketResult/>',
                b"<ListBucketResult><Contents><Key>k</Key></Contents></ListBucketResult>"):
        with pytest.raises(ProtocolError):
            parse_list(raw, "t")


# -- against moto ---------------------------------------------------------------------------


async def test_open_from_url_and_list_through_the_proxy(s3_bucket: S3Bucket) -> None:
    async with S3FaultProxy(s3_bucket.url) as proxy:
        source = open_source(f"s3://{BUCKET}/names", SourceSettings(env=S3_ENV),
                             options={"endpoint": proxy.url, "list_limit": 5})
        try:
            names, cursor = [], None
            while True:
                page = await source.list_page("", cursor)
                names += [e.path for e in page.entries]
                if (cursor := page.cursor) is None:
                    break
        finally:
            await source.close()
    assert sorted(names) == sorted(os.listdir(s3_bucket.root / "names"))
    assert proxy.stats.rejected == 0  # every odd key signed exactly as sent


async def test_mirror_run_with_faults_is_byte_for_byte(s3_bucket: S3Bucket,
                                                       tmp_path: Path) -> None:
    """The issue's run: default flags, 10% of first attempts faulted (503 SlowDown, 500,
    429, bodies cut short); then a second run fetches nothing."""
    dest = tmp_path / "dest"
    async with S3FaultProxy(s3_bucket.url, faults=FAULTS) as proxy:
        code, out, err = await mirror_cmd(
            "run", f"s3://{BUCKET}/", str(dest), "--endpoint", proxy.url, "--no-progress",
            "--state-dir", str(tmp_path / "state"), env=S3_ENV, timeout=400)
        assert code == 0, out + err[-3000:]
        faults = sum(proxy.stats.faults.values())
        assert faults > 0.05 * s3_bucket.keys, proxy.stats
        assert proxy.stats.rejected == 0
        assert tree_differences(s3_bucket.root, dest) == []
        code, out, err = await mirror_cmd(
            "run", f"s3://{BUCKET}/", str(dest), "--endpoint", proxy.url, "--no-progress",
            "--state-dir", str(tmp_path / "state"), env=S3_ENV)
        assert code == 0 and "fetched 0 files" in out, out + err


async def test_flat_listing_mirrors_the_same_tree(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    async with S3FaultProxy(s3_bucket.url, faults=FAULTS) as proxy:
        code, out, err = await mirror_cmd(
            "run", f"s3://{BUCKET}/", str(dest), "--endpoint", proxy.url, "--flat",
            "--list-limit", "100", "--no-progress", "--state-dir", str(tmp_path / "state"),
            env=S3_ENV, timeout=400)
    assert code == 0, out + err[-3000:]
    assert tree_differences(s3_bucket.root, dest) == []


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.rabbitmq
async def test_rabbitmq_with_sharded_fetchers(s3_bucket: S3Bucket, tmp_path: Path,
                                              rabbit_url: str, job_name: str) -> None:
    """Seeded on RabbitMQ with 4 shards, fetched by two workers each owning two, faulted:
    each file lands once, on its shard's disk, byte for byte."""
    from mirror.broker.rabbitmq import RabbitBroker

    disks = [tmp_path / "d0", tmp_path / "d1"]
    for disk in disks:
        disk.mkdir()
    env = {**S3_ENV, "MIRROR_BROKER_URL": ""}
    try:
        async with S3FaultProxy(s3_bucket.url, faults=FAULTS) as proxy:
            code, out, err = await mirror_cmd(
                "seed", f"s3://{BUCKET}/", "--job", job_name, "--broker", rabbit_url,
                "--endpoint", proxy.url, "--list-limit", "50", "--shards", "4", env=env)
            assert code == 0, out + err
            common = ("work", "--job", job_name, "--broker", rabbit_url, "--until-idle",
                      "--no-progress")
            results = await asyncio.gather(
                mirror_cmd(*common, "--disk", f"0-1={disks[0]}", env=env, timeout=400),
                mirror_cmd(*common, "--disk", f"2-3={disks[1]}", env=env, timeout=400))
            for code, out, err in results:
                assert code == 0, out + err[-3000:]
            assert sum(proxy.stats.faults.values()) > 0
    finally:
        broker = await RabbitBroker.connect(rabbit_url, job_name)
        await broker.delete_job()
        await broker.close()
    first, second = _files(disks[0]), _files(disks[1])
    assert first and second and not set(first) & set(second)
    assert {**first, **second} == _files(s3_bucket.root)


async def test_hostile_keys_are_parked_as_unsafe(hostile_bucket: Path, moto_server: MotoServer,
                                                 tmp_path: Path) -> None:
    dest = tmp_path / "mirror" / "dest"
    async with S3FaultProxy(moto_server.url) as proxy:
        for flat in (False, True):
            target = dest / ("flat" if flat else "tree")
            code, out, err = await mirror_cmd(
                "run", f"s3://{HOSTILE_BUCKET}/", str(target), "--endpoint", proxy.url,
                "--no-progress", "--state-dir", str(tmp_path / "state"),
                *(["--flat"] if flat else []), env=S3_ENV)
            assert code == 1, out + err
            parked = [line for line in out.splitlines() if "UnsafePath" in line]
            assert parked and all("unsafe" in line.lower() for line in parked), out
            assert tree_differences(hostile_bucket, target) == [], out
    # nothing anywhere but the two mirrors
    assert sorted(p.name for p in (tmp_path / "mirror").iterdir()) == ["dest"]
    assert sorted(p.name for p in dest.iterdir()) == ["flat", "tree"]


async def test_mirror_ls(s3_bucket: S3Bucket) -> None:
    async with S3FaultProxy(s3_bucket.url) as proxy:
        code, out, err = await mirror_cmd("ls", f"s3://{BUCKET}/names", "-l", "--endpoint",
                                          proxy.url, env=S3_ENV)
    assert code == 0, err
    assert "emoji 😀🎉.txt" in out and "question?mark.txt" in out and "folder#hash" in out


async def test_rejected_credentials_exit_3_with_one_line(s3_bucket: S3Bucket,
                                                        tmp_path: Path) -> None:
    async with S3FaultProxy(s3_bucket.url) as proxy:
        code, _, err = await mirror_cmd(
            "run", f"s3://{BUCKET}/", str(tmp_path / "d"), "--endpoint", proxy.url,
            env={**S3_ENV, "AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 3 and len(lines) == 1, err
    assert "SignatureDoesNotMatch" in lines[0] and "AWS_SECRET_ACCESS_KEY" in lines[0]
    assert "wrong-secret" not in err
