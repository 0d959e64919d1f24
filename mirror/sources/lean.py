"""GET and HEAD over kept-alive HTTP/1.1 connections, without aiohttp's per-request machinery.

A profile of 20,000 small files put aiohttp's request path (session, request and response
objects, writer, timers, URL objects) at about 67 us of CPU a request, the largest single part
of a fetch process; a bare protocol around the llhttp parser (httptools) does the same work in
about 11 us. This client does only what a source needs: GET and HEAD with a few headers, reuse
of idle connections (and one quick retry when a reused one turns out closed), redirects,
connect and read timeouts, flow control, and the hand-over of a body's socket to a disk thread
(``mirror.sources.direct``). It is the line under ``mirror.sources.transport``, which paces
and meters every request; sources never call it directly.

Failures are raised as ``mirror.errors`` at once: ``SourceUnavailable`` (cannot connect, the
server closed the connection, a body cut short, a malformed response), ``Stalled`` (no byte
within the read timeout), ``ProtocolError`` (a redirect loop). One connection and its response
are ``mirror.sources.http1``; where a URL goes, ``mirror.sources.origin``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from urllib.parse import urljoin

from mirror.errors import ProtocolError, SourceUnavailable
from mirror.sources.http1 import Closed, Connection, Response
from mirror.sources.origin import Origin, header_lines, split_url

MAX_REDIRECTS = 5
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
# The request headers that follow a redirect to another origin; the rest (Authorization,
# API keys, signatures, cookies) are dropped there.
_CROSS_ORIGIN_SAFE = frozenset(("range", "accept", "if-range", "if-none-match",
                                "if-modified-since"))


class LeanClient:
    """Kept-alive connections per origin, at most ``max_connections`` busy at once."""

    def __init__(self, user_agent: str, *, connect_timeout_s: float, read_timeout_s: float,
                 max_connections: int) -> None:
        self._user_agent = user_agent
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._slots = asyncio.Semaphore(max(1, max_connections))
        self._idle_conns: dict[Origin, list[Connection]] = {}
        self._all: set[Connection] = set()
        self._prefix: dict[Origin, bytes] = {}
        self._tls: ssl.SSLContext | None = None

    async def get(self, url: str, headers: Mapping[str, str], what: str, *,
                  follow_redirects: bool = True) -> Response:
        """The response to ``GET url`` (any status); the caller must ``release()`` it."""
        return await self.request("GET", url, headers, what, follow_redirects=follow_redirects)

    async def request(self, method: str, url: str, headers: Mapping[str, str], what: str, *,
                      follow_redirects: bool = True) -> Response:
        """The response to ``method url`` (GET or HEAD, any status); the caller must
        ``release()`` it. A redirect keeps the method (a GET's or HEAD's 303 too)."""
        if method not in ("GET", "HEAD"):
            raise ProtocolError(f"{what}: the lean client sends GET and HEAD only, not {method}")
        extra = header_lines(headers)
        first: Origin | None = None
        for _ in range(MAX_REDIRECTS + 1):
            origin, target = split_url(url)
            if first is None:
                first = origin
            elif origin != first and extra:
                # Another host: credentials stay with the one they were given for (a storage
                # server that redirects a download to a CDN must not hand it our token).
                extra = header_lines({k: v for k, v in headers.items()
                                      if k.lower() in _CROSS_ORIGIN_SAFE})
            response = await self._send(method, origin, url, target, extra, what)
            location = response.headers.get("Location")
            if not follow_redirects or response.status not in _REDIRECTS or not location:
                return response
            response.close()
            url = urljoin(url, location)
        raise ProtocolError(f"{what}: more than {MAX_REDIRECTS} redirects")

    async def _send(self, method: str, origin: Origin, url: str, target: str, extra: bytes,
                    what: str) -> Response:
        prefix = self._prefix.get(origin)
        if prefix is None:
            prefix = self._prefix[origin] = (
                f"Host: {origin.host_header()}\r\nUser-Agent: {self._user_agent}\r\n"
                "Accept-Encoding: identity\r\n").encode("latin-1")
        data = b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method.encode("ascii"), target.encode("ascii"),
                                                prefix, extra)
        await self._slots.acquire()  # given back by the response's release (or below)
        try:
            resend = True
            while True:
                conn = self._take_idle(origin) or await self._connect(origin, what)
                try:
                    return await conn.request(url, data, what, self._read_timeout_s,
                                              method == "HEAD")
                except Closed:
                    # Hung up before answering: on a reused connection that is the ordinary
                    # end of its keep-alive; otherwise the request (idempotent) is sent once more
                    # at once, as RFC 9112 9.3.1 allows and aiohttp does.
                    if conn.got_bytes or not (conn.reused or resend):
                        raise
                    resend = resend and conn.reused
        except BaseException:
            self._slots.release()
            raise

    def _take_idle(self, origin: Origin) -> Connection | None:
        idle = self._idle_conns.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, origin: Origin, what: str) -> Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if origin.tls:
            if self._tls is None:  # loading the system's CA certificates takes a while
                self._tls = await asyncio.to_thread(ssl.create_default_context)
            tls = self._tls
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(self, origin), origin.host,
                                       origin.port, ssl=tls,
                                       server_hostname=origin.host if tls else None),
                self._connect_timeout_s)
        except TimeoutError:
            raise SourceUnavailable(f"{what}: cannot connect to {origin.host}:{origin.port} "
                                    f"within {self._connect_timeout_s:g} s") from None
        except OSError as exc:
            raise SourceUnavailable(f"{what}: cannot connect to {origin.host}:{origin.port} "
                                    f"({exc.strerror or exc})") from exc
        self._all.add(conn)
        return conn

    def idle(self, conn: Connection) -> None:
        self._idle_conns.setdefault(conn.origin, []).append(conn)

    def forget(self, conn: Connection) -> None:
        self._all.discard(conn)
        idle = self._idle_conns.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def slot_free(self) -> None:
        self._slots.release()

    async def close(self) -> None:
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()
        self._all.clear()
        self._idle_conns.clear()
        await asyncio.sleep(0)  # let the transports finish closing



__all__ = ["LeanClient", "Origin", "Response", "split_url"]
