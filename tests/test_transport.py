"""The transport seam (mirror/sources/transport.py): a source that only builds requests and
reads answers is paced, metered and held to the bandwidth limit without doing anything for it.

The source here is written in the test and knows nothing of the limiter; it runs against a
real aiohttp server on loopback, and against ``MockTransport`` (no sockets), which keeps the
same pacing and metering.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from mirror.ratecontrol import Pushback
from mirror.ratelimit import Budget, Limiter, RateSettings
from mirror.settings import SourceSettings
from mirror.sources.transport import HttpBody, Request, Transport, direct_copy
from mirror.testing.mock_transport import MockResponse, MockTransport
from tests.test_httpindex import serving

BODY = os.urandom(600_000)


class RecordingLimiter(Limiter):
    """A limiter that also remembers the push-back and the bytes it was told of."""

    def __init__(self, settings: RateSettings) -> None:
        super().__init__(settings)
        self.pushback: list[tuple[Budget, float | None, Pushback]] = []
        self.received_bytes = 0

    async def received(self, n: int) -> None:
        self.received_bytes += n
        await super().received(n)

    def throttle(self, budget: Budget, retry_after_s: float | None = None,
                 kind: Pushback = "rate") -> None:
        self.pushback.append((budget, retry_after_s, kind))
        super().throttle(budget, retry_after_s, kind)


class TinySource:
    """The least a source can be: it builds requests and parses answers, nothing else."""

    def __init__(self, base: str, transport: Transport) -> None:
        self._base = base
        self._transport = transport

    async def list_page(self) -> tuple[int, bytes]:
        reply = await self._transport.send(Request("GET", f"{self._base}/", "list /",
                                                   budget="list"))
        try:
            return reply.status, await reply.read()
        finally:
            reply.release()

    async def fetch(self, name: str) -> tuple[int, bytes]:
        reply = await self._transport.send(Request("GET", f"{self._base}/{name}",
                                                   f"GET {name}"))
        try:
            return reply.status, await reply.read()
        finally:
            reply.release()

    @asynccontextmanager
    async def open(self, name: str) -> AsyncIterator[HttpBody]:
        reply = await self._transport.send(Request("GET", f"{self._base}/{name}",
                                                   f"GET {name}"))
        try:
            yield HttpBody.of(reply, None)
        finally:
            reply.release()


async def _handle(request: web.Request) -> web.Response:
    if request.path == "/":
        return web.Response(text="index", content_type="text/html")
    if request.path == "/slow-down":
        return web.Response(status=429, headers={"Retry-After": "1"})
    if request.path == "/same-uri":
        return web.Response(status=429, headers={"X-Error-Code": "42900002"})
    if request.path == "/busy":
        return web.Response(status=503)
    return web.Response(body=BODY)


@asynccontextmanager
async def tiny(limiter: Limiter) -> AsyncIterator[TinySource]:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _handle)
    async with serving(app) as port:
        transport = Transport(SourceSettings(), limiter)
        try:
            yield TinySource(f"http://127.0.0.1:{port}", transport)
        finally:
            await transport.close()


async def test_requests_are_paced_by_their_budget_and_counted() -> None:
    limiter = Limiter(RateSettings(rps=20, list_rps=1000, adaptive=False))
    async with tiny(limiter) as source:
        started = time.monotonic()
        for _ in range(10):
            assert (await source.fetch("f"))[0] == 200
        fetching_s = time.monotonic() - started
        started = time.monotonic()
        for _ in range(10):
            assert await source.list_page() == (200, b"index")
        listing_s = time.monotonic() - started
    assert fetching_s >= 0.4  # 10 requests at 20/s: a token every 0.05 s
    assert listing_s < fetching_s  # the list budget is its own
    assert limiter.requests == {("fetch", 200): 10, ("list", 200): 10}
    assert limiter.request_seconds["fetch"].count == 10
    assert limiter.request_seconds["list"].count == 10
    assert limiter.waited_s["fetch"] >= 0.4


async def test_pushback_reaches_the_rate_controller() -> None:
    limiter = RecordingLimiter(RateSettings())
    async with tiny(limiter) as source:
        assert (await source.fetch("slow-down"))[0] == 429
        assert (await source.fetch("same-uri"))[0] == 429
        assert (await source.list_page())[0] == 200
        assert (await source.fetch("busy"))[0] == 503
    assert limiter.pushback == [("fetch", 1.0, "rate"), ("fetch", None, "uri"),
                                ("fetch", None, "rate")]
    assert limiter.waited_s["fetch"] >= 0.9  # the next request obeyed the Retry-After
    assert limiter.throttled("fetch") == 3
    assert limiter.requests[("fetch", 429)] == 2 and limiter.requests[("fetch", 503)] == 1


async def test_a_request_without_an_answer_is_counted_as_status_0() -> None:
    limiter = Limiter(RateSettings())
    transport = Transport(SourceSettings(connect_timeout_s=2.0), limiter)
    try:
        with pytest.raises(Exception, match="cannot connect"):
            await TinySource("http://127.0.0.1:9", transport).fetch("f")
    finally:
        await transport.close()
    assert limiter.requests == {("fetch", 0): 1}


async def test_every_body_byte_passes_the_bandwidth_limit() -> None:
    limiter = RecordingLimiter(RateSettings(bwlimit_bps=1e6))
    async with tiny(limiter) as source:
        started = time.monotonic()
        assert await source.fetch("f") == (200, BODY)
        assert await source.list_page() == (200, b"index")
        async with source.open("f") as body:
            assert direct_copy(body) is None  # the splice would pass the limit by
            assert b"".join([c async for c in body.chunks(1 << 20)]) == BODY
        # 1.2 MB at 1 MB/s; the bucket charges a piece after it arrived, so the last piece
        # (at most http1.HIGH_WATER and a bit) may still be owed.
        assert time.monotonic() - started >= 0.8
    assert limiter.received_bytes == 2 * len(BODY) + len(b"index")


async def test_without_a_bandwidth_limit_a_plain_http_body_can_go_direct() -> None:
    async with tiny(Limiter(RateSettings())) as source, source.open("f") as body:
        direct = direct_copy(body)
        assert direct is not None
        assert len(direct.head) + direct.length == len(BODY)
        direct.close()


async def test_a_mock_wire_keeps_pacing_and_metering() -> None:
    limiter = RecordingLimiter(RateSettings(rps=20, adaptive=False))
    wire = MockTransport(lambda r: MockResponse(429 if r.url.endswith("/x") else 200,
                                                body=b"hi"))
    source = TinySource("http://mock", Transport(SourceSettings(), limiter, wire))
    started = time.monotonic()
    for _ in range(8):
        assert await source.fetch("f") == (200, b"hi")
    assert (await source.fetch("x"))[0] == 429
    assert time.monotonic() - started >= 0.35
    assert [r.url for r in wire.requests] == ["http://mock/f"] * 8 + ["http://mock/x"]
    assert limiter.requests == {("fetch", 200): 8, ("fetch", 429): 1}
    assert limiter.pushback == [("fetch", None, "rate")]
