"""The lean HTTP/1.1 client (mirror/sources/lean.py) against real servers on loopback: aiohttp's
web server for well-behaved answers, and scripted raw servers for what real servers and
networks also do (idle keep-alives closed, HTTP/1.0 bodies, garbage, stalls, cut bodies)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from mirror.errors import ProtocolError, SourceUnavailable, Stalled
from mirror.sources.lean import LeanClient, split_url
from tests.test_httpindex import serving

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def lean(limit: int = 8, read_timeout_s: float = 5.0) -> AsyncIterator[LeanClient]:
    c = LeanClient("test", connect_timeout_s=2.0, read_timeout_s=read_timeout_s,
                   max_connections=limit)
    try:
        yield c
    finally:
        await c.close()


@contextlib.asynccontextmanager
async def web_app(handle: Callable[[web.Request], Awaitable[web.Response]],
                  ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """``handle`` answering every GET on loopback (aiohttp's server); yields the base URL."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    async with serving(app, ssl_context) as port:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server running ``script`` per connection; yields its port and a list that
    gets one entry per accepted connection."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted))
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def get_body(c: LeanClient, url: str, **kw: object) -> tuple[int, bytes]:
    resp = await c.get(url, {}, f"GET {url}", **kw)  # type: ignore[arg-type]
    try:
        return resp.status, await resp.read()
    finally:
        resp.release()


async def test_keeps_connections_alive_and_reads_bodies_whole() -> None:
    peers: set[object] = set()
    data = os.urandom(300_000)

    async def handle(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        assert request.headers["Accept-Encoding"] == "identity"
        if request.path == "/missing":
            return web.Response(status=404, text="nope")
        return web.Response(body=data)

    async with web_app(handle) as base, lean() as c:
        for _ in range(20):
            assert await get_body(c, f"{base}/f") == (200, data)
        assert await get_body(c, f"{base}/missing") == (404, b"nope")
        assert await get_body(c, f"{base}/f") == (200, data)
    assert len(peers) == 1  # 22 requests, one connection


async def test_head_answers_end_at_their_headers_and_the_connection_is_reused() -> None:
    """A HEAD's Content-Length announces no body: the answer is complete at its headers, and
    the next request on the same connection is parsed afresh."""
    requests: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            requests.append(await read_request(reader))
            if requests[-1].startswith(b"HEAD "):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n"
                             b"Last-Modified: Fri, 20 Nov 2026 10:00:00 GMT\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with raw_server(script) as (port, accepted), lean() as c:
        url = f"http://127.0.0.1:{port}/f"
        for _ in range(3):
            resp = await c.request("HEAD", url, {}, "stat f")
            assert (resp.status, resp.content_length, resp.complete) == (200, 12345, True)
            assert await resp.read() == b""
            resp.release()
            assert await get_body(c, url) == (200, b"ok")
        with pytest.raises(ProtocolError, match="GET and HEAD only"):
            await c.request("PUT", url, {}, "put f")
    assert len(accepted) == 1
    assert [r.split(b" ", 1)[0] for r in requests] == [b"HEAD", b"GET"] * 3


async def test_a_keep_alive_ended_by_the_server_is_replaced_without_an_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_request(reader)  # the next request on this connection finds it ending

    async with raw_server(script) as (port, accepted), lean() as c:
        for _ in range(4):  # each later one is sent on a connection that then ends
            assert await get_body(c, f"http://127.0.0.1:{port}/") == (200, b"ok")
    assert len(accepted) == 4


async def test_connection_close_http10_chunked_and_informational_answers() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\none",
        b"HTTP/1.0 200 OK\r\n\r\nuntil the line closes",  # no length: ends with the line
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nchun\r\n3\r\nked\r\n0\r\n\r\n",
    ]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answers.pop(0))
            await writer.drain()
            if len(answers) < 2:
                return  # the first two answers end their connection

    async with raw_server(script) as (port, accepted), lean() as c:
        url = f"http://127.0.0.1:{port}/"
        assert await get_body(c, url) == (200, b"one")
        assert await get_body(c, url) == (200, b"until the line closes")
        assert await get_body(c, url) == (200, b"chunked")
    assert len(accepted) == 3  # neither closing answer's connection was reused


async def test_redirects_are_followed_within_a_limit() -> None:
    async def handle(request: web.Request) -> web.Response:
        if request.path == "/old":
            raise web.HTTPFound("new%20name")  # relative, already encoded
        if request.path == "/loop":
            raise web.HTTPFound("/loop")
        return web.Response(text=f"at {request.path}")

    async with web_app(handle) as base, lean() as c:
        assert await get_body(c, f"{base}/old") == (200, b"at /new name")
        status, _ = await get_body(c, f"{base}/old", follow_redirects=False)
        assert status == 302
        with pytest.raises(ProtocolError, match="redirects"):
            await c.get(f"{base}/loop", {}, "GET loop")


async def test_credentials_do_not_follow_a_redirect_to_another_host() -> None:
    """A storage server that redirects a download to a CDN must not hand it our token; a
    redirect on the same origin keeps every header, and Range follows everywhere."""
    seen: dict[str, dict[str, str]] = {}

    async def cdn(request: web.Request) -> web.Response:
        seen["cdn"] = dict(request.headers)
        return web.Response(text="from the cdn")

    async with web_app(cdn) as cdn_url:
        cdn_base = cdn_url.replace("127.0.0.1", "localhost")  # another origin

        async def origin(request: web.Request) -> web.Response:
            seen[request.path] = dict(request.headers)
            if request.path == "/here":
                raise web.HTTPFound("/there")
            if request.path == "/away":
                raise web.HTTPFound(f"{cdn_base}/file")
            return web.Response(text="at home")

        async with web_app(origin) as base, lean() as c:
            headers = {"Authorization": "Bearer secret", "X-JFrog-Art-Api": "key",
                       "Range": "bytes=0-"}
            response = await c.get(f"{base}/here", headers, "GET here")
            response.release()
            response = await c.get(f"{base}/away", headers, "GET away")
            assert await response.read() == b"from the cdn"
            response.release()
    assert seen["/there"]["Authorization"] == "Bearer secret"
    assert "Authorization" not in seen["cdn"] and "X-JFrog-Art-Api" not in seen["cdn"]
    assert seen["cdn"]["Range"] == "bytes=0-"


async def test_failures_become_source_errors() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if b"/garbage" in request:
            writer.write(b"SMTP ready\r\n\r\n")
        elif b"/cut" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 400)
        elif b"/silent" in request:
            await asyncio.sleep(3)
        elif b"/trickle" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nxx")
            await writer.drain()
            await asyncio.sleep(3)
        await writer.drain()

    async with raw_server(script) as (port, _), lean(read_timeout_s=0.5) as c:
        base = f"http://127.0.0.1:{port}"
        with pytest.raises(SourceUnavailable, match="malformed HTTP response"):
            await get_body(c, f"{base}/garbage")
        with pytest.raises(SourceUnavailable, match="cut short"):
            await get_body(c, f"{base}/cut")
        with pytest.raises(Stalled, match="read timeout"):
            await get_body(c, f"{base}/silent")
        with pytest.raises(Stalled, match="read timeout"):
            await get_body(c, f"{base}/trickle")
    async with lean() as c:
        with pytest.raises(SourceUnavailable, match="cannot connect"):
            await get_body(c, f"{base}/")  # the server is gone
        with pytest.raises(ProtocolError, match="line break"):
            await c.get(f"{base}/", {"Range": "bytes=0-\r\nX-Evil: 1"}, "GET /")


async def test_connections_are_limited_and_a_cancel_gives_the_slot_back() -> None:
    busy = 0
    most = 0
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal busy, most
        while True:
            request = await read_request(reader)
            busy += 1
            most = max(most, busy)
            if b"/hold" in request:
                await release.wait()
            await asyncio.sleep(0.02)
            busy -= 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with raw_server(script) as (port, _), lean(limit=2) as c:
        url = f"http://127.0.0.1:{port}/"
        results = await asyncio.gather(*(get_body(c, url) for _ in range(10)))
        assert results == [(200, b"ok")] * 10
        assert most == 2
        held = asyncio.ensure_future(get_body(c, url + "hold"))
        await asyncio.sleep(0.1)
        held.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held
        release.set()
        assert await asyncio.wait_for(asyncio.gather(get_body(c, url), get_body(c, url)),
                                      5) == [(200, b"ok")] * 2


async def test_a_large_body_streams_with_flow_control() -> None:
    data = os.urandom(12 << 20)

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=data)

    async with web_app(handle) as base, lean() as c:
        resp = await c.get(f"{base}/", {}, "GET /")
        parts = []
        while chunk := await resp.readany():
            parts.append(chunk)
            await asyncio.sleep(0.01)  # a slow disk: the buffer must not grow unbounded
            assert len(chunk) <= 1 << 20
        resp.release()
        assert b"".join(parts) == data


def test_urls_split_into_origin_and_target() -> None:
    origin, target = split_url("http://Example.org:8080/a%20b/c?x=1")
    assert (origin.host, origin.port, origin.tls, target) == ("example.org", 8080, False,
                                                               "/a%20b/c?x=1")
    assert origin.host_header() == "example.org:8080"
    origin, target = split_url("https://h/raw name/é")
    assert origin.port == 443 and origin.host_header() == "h"
    assert target == "/raw%20name/%C3%A9"
    with pytest.raises(ProtocolError):
        split_url("ftp://h/x")


async def test_https_verifies_the_certificate(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS through the system's trust store (SSL_CERT_FILE here): a certificate the store
    trusts works, one it does not is refused with a clear error; a TLS body is never handed
    to a disk thread (the bytes on the socket are encrypted)."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    data = os.urandom(5 << 20)

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=data)

    async with web_app(handle, server_ctx) as base:
        async with lean() as c:
            with pytest.raises(SourceUnavailable, match=r"cannot connect.*certificate"):
                await get_body(c, f"{base}/x")
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        async with lean() as c:  # a new client loads the trust store again
            resp = await c.get(f"{base}/x", {}, "GET x")
            assert resp.direct(5.0, "GET x") is None
            assert await resp.read() == data
            resp.release()
            assert await get_body(c, f"{base}/y") == (200, data)
