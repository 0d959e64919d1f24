"""What the UpYun and HTTP-index sources send and how they read the answers, without sockets:
each source runs over ``MockTransport`` (mirror/testing/mock_transport.py), which records every
request and answers from a function. End-to-end behaviour stays with the fake servers."""

from __future__ import annotations

import hashlib
import json
from email.utils import parsedate_to_datetime

import pytest

from mirror.errors import CredentialsRejected, NotFound, RateLimited, SourceUnavailable
from mirror.ratelimit import Limiter, RateSettings
from mirror.settings import SourceSettings
from mirror.sources.httpindex import HttpIndexSource
from mirror.sources.transport import Request, Transport
from mirror.sources.upyun import LIST_END, UpyunOptions, UpyunSource, sign
from mirror.testing.mock_transport import MockResponse, MockTransport

SETTINGS = SourceSettings(request_retries=0)
UPYUN = UpyunOptions(endpoint="http://upyun.test", list_limit=2)


def upyun(wire: MockTransport, limiter: Limiter | None = None) -> UpyunSource:
    return UpyunSource("bkt", "pre", "op", "pw", SETTINGS, limiter, options=UPYUN,
                       transport=Transport(SETTINGS, limiter, wire))


async def test_upyun_listing_request_is_signed_and_its_pages_parsed() -> None:
    pages = {None: ({"files": [{"type": "folder", "name": "d", "length": 0,
                                "last_modified": 1}], "iter": "next-1"}),
             "next-1": {"files": [{"type": "text/plain", "name": "a b", "length": 3,
                                   "last_modified": 2}], "iter": LIST_END}}

    def handle(r: Request) -> MockResponse:
        return MockResponse(body=json.dumps(pages[r.headers.get("x-list-iter")]).encode())

    wire = MockTransport(handle)
    source = upyun(wire)
    first = await source.list_page("sub dir", None)
    second = await source.list_page("sub dir", first.cursor)
    assert [(e.path, e.is_dir) for e in first.entries] == [("sub dir/d", True)]
    assert first.cursor == "next-1"
    assert [(e.path, e.size, e.mtime) for e in second.entries] == [("sub dir/a b", 3, 2.0)]
    assert second.cursor is None

    sent = wire.requests[0]
    assert (sent.method, sent.url, sent.budget) == ("GET", "http://upyun.test/bkt/pre/sub%20dir/",
                                                    "list")
    assert not sent.follow_redirects
    assert sent.headers["x-list-limit"] == "2" and sent.headers["X-UpYun-Folder"] == "true"
    assert "x-list-iter" not in sent.headers and wire.requests[1].headers["x-list-iter"] == "next-1"
    date = sent.headers["Date"]
    assert parsedate_to_datetime(date)  # an HTTP date, and the signature covers it
    assert sent.headers["Authorization"] == sign(
        "op", hashlib.md5(b"pw").hexdigest(), "GET", "/bkt/pre/sub%20dir/", date)


async def test_upyun_file_ranges_md5_and_stat() -> None:
    data = b"0123456789"
    md5 = hashlib.md5(data).hexdigest()

    def handle(r: Request) -> MockResponse:
        if r.method == "HEAD":
            return MockResponse(headers={"x-upyun-file-type": "file", "x-upyun-file-size": "10",
                                         "x-upyun-file-date": "1700000000", "Content-Md5": md5})
        start = int(r.headers["Range"].removeprefix("bytes=").rstrip("-"))
        return MockResponse(206, {"Content-Range": f"bytes {start}-9/10", "ETag": f'"{md5}"'},
                            data[start:])

    wire = MockTransport(handle)
    source = upyun(wire)
    async with source.open("f.bin", 4) as body:
        assert (body.offset, body.total_size, body.md5) == (4, 10, md5)
        assert await body.read_all() == data[4:]
    assert wire.requests[0].headers["x-upyun-folder"] == "false"
    assert wire.requests[0].budget == "fetch"
    entry = await source.stat("f.bin")
    assert (entry.size, entry.mtime, entry.etag, entry.is_dir) == (10, 1700000000.0, md5, False)
    assert wire.requests[1].method == "HEAD"


async def test_upyun_errors_are_translated_and_pushback_is_metered() -> None:
    answers = {
        "/bkt/pre/gone": MockResponse(404, body=b'{"msg":"file or directory not found",'
                                                 b'"code":40400001,"id":"r1"}'),
        "/bkt/pre/key": MockResponse(401, {"X-Error-Code": "40100002"}, b"{}"),
        "/bkt/pre/hot": MockResponse(429, {"Retry-After": "3"}, b'{"msg":"too many"}'),
        "/bkt/pre/down": MockResponse(503, body=b"<html>not json</html>"),
    }
    limiter = Limiter(RateSettings())
    source = upyun(MockTransport(lambda r: answers[r.url.removeprefix("http://upyun.test")]),
                   limiter)
    with pytest.raises(NotFound) as gone:
        await source.stat("gone")  # HEAD: the body is not read
    assert gone.value.detail is not None and gone.value.detail.http_status == 404
    with pytest.raises(NotFound):
        async with source.open("gone"):
            pass
    with pytest.raises(CredentialsRejected, match="clock"):
        async with source.open("key"):
            pass
    with pytest.raises(RateLimited) as hot:
        async with source.open("hot"):
            pass
    assert hot.value.retry_after_s == 3.0 and "too many" in str(hot.value)
    with pytest.raises(SourceUnavailable):
        async with source.open("down"):
            pass
    assert limiter.throttled("fetch") == 2  # the 429 and the 503, without the source's help
    assert limiter.requests[("fetch", 404)] == 2


async def test_httpindex_lists_json_and_html_and_heads_inexact_sizes() -> None:
    def handle(r: Request) -> MockResponse:
        if r.url == "http://h.test/pub/":
            return MockResponse(headers={"Content-Type": "application/json"}, body=json.dumps(
                [{"name": "a.txt", "type": "file", "size": 5,
                  "mtime": "Fri, 20 Nov 2026 10:00:00 GMT"},
                 {"name": "sub", "type": "directory"}]).encode())
        if r.url == "http://h.test/pub/sub/":
            return MockResponse(headers={"Content-Type": "text/html; charset=utf-8"},
                                body=b'<a href="../">..</a><a href="x%20y.bin">x y.bin</a>'
                                     b'<a href="deeper/">deeper/</a>')
        if r.method == "HEAD" and r.url == "http://h.test/pub/sub/x%20y.bin":
            return MockResponse(headers={"Content-Length": "42",
                                         "Last-Modified": "Fri, 20 Nov 2026 10:00:00 GMT"})
        return MockResponse(404)

    wire = MockTransport(handle)
    source = HttpIndexSource("http://h.test/pub", SETTINGS,
                             transport=Transport(SETTINGS, None, wire))
    top = await source.list_page("", None)
    assert [(e.path, e.is_dir, e.size) for e in top.entries] == [("a.txt", False, 5),
                                                                 ("sub", True, 0)]
    sub = await source.list_page("sub", None)
    assert [(e.path, e.is_dir, e.size) for e in sub.entries] == [("sub/x y.bin", False, 42),
                                                                 ("sub/deeper", True, 0)]
    assert [(r.method, r.budget) for r in wire.requests] == [("GET", "list"), ("GET", "list"),
                                                             ("HEAD", "fetch")]
    assert wire.requests[0].follow_redirects
    with pytest.raises(NotFound):
        await source.stat("missing")


async def test_httpindex_stat_of_a_redirect_to_a_folder() -> None:
    wire = MockTransport(lambda r: MockResponse(url=r.url + "/"))  # as after a 301 to "d/"
    source = HttpIndexSource("http://h.test/", SETTINGS,
                             transport=Transport(SETTINGS, None, wire))
    assert (await source.stat("d")).is_dir
