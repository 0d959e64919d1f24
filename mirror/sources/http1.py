"""One kept-alive HTTP/1.1 connection of the lean client (``mirror.sources.lean``) and the
response it is reading: one request at a time, the answer parsed by llhttp (httptools), the body
handed to its reader as it arrives (with flow control), a read timeout per request, and the
hand-over of the socket to a disk thread (``mirror.sources.direct``)."""

from __future__ import annotations

import asyncio
import os
from typing import Protocol, cast

import httptools
from multidict import CIMultiDict

from mirror.errors import MirrorError, SourceUnavailable, Stalled
from mirror.sources.direct import DirectBody
from mirror.sources.origin import Origin

# Reading pauses while this much of a body waits for its reader (a slow disk, a bandwidth
# limit). A reader takes all that waits at once, so this also bounds the pieces a bandwidth
# limit is charged in (2 MB pieces overshot a 2 MB/s limit by 10% on a 20 MB file).
HIGH_WATER = 256 << 10


class Owner(Protocol):
    """The client a connection belongs to (``LeanClient``)."""

    def idle(self, conn: Connection) -> None:
        """The connection is free for the next request to its origin."""

    def forget(self, conn: Connection) -> None:
        """The connection is closed."""

    def slot_free(self) -> None:
        """A request is over (its connection kept or not)."""


class Closed(SourceUnavailable):
    """The server closed the connection before answering: on a reused connection this is
    the ordinary end of an idle keep-alive and the request is sent again at once."""


class Response:
    """One response: status and headers at once, the body as it arrives."""

    def __init__(self, conn: Connection, url: str, status: int, reason: str,
                 headers: CIMultiDict[str]) -> None:
        self._conn = conn
        self.url = url
        self.status = status
        self.reason = reason
        self.headers = headers
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self.received = 0  # body bytes taken from the connection so far
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._complete = False
        self._error: MirrorError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    # -- from the connection

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self.received += len(data)
        if self._buffered > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, exc: MirrorError) -> None:
        if not self._complete and self._error is None:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- for the reader

    @property
    def complete(self) -> bool:
        return self._complete

    async def readany(self) -> bytes:
        """What has arrived (waiting for something), or b"" once the body is complete."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        self._conn.resume()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body, or its first ``limit`` bytes (the rest then stays unread)."""
        parts: list[bytes] = []
        size = 0
        while (limit is None or size < limit) and (chunk := await self.readany()):
            parts.append(chunk)
            size += len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return data if limit is None else data[:limit]

    def direct(self, timeout_s: float, what: str) -> DirectBody | None:
        """The rest of the body on a duplicate of the socket, for a disk thread to copy; None
        when it cannot be had (TLS, no Content-Length, nothing left). The connection is closed
        when the direct body is."""
        conn = self._conn
        if (self.content_length is None or self._complete or self._error is not None
                or conn.origin.tls or conn.transport is None):
            return None
        left = self.content_length - self.received
        sock = conn.transport.get_extra_info("socket")
        if left <= 0 or sock is None:
            return None
        head = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        conn.detach()
        return DirectBody(os.dup(sock.fileno()), head, left, timeout_s, what, self.close)

    def release(self) -> None:
        """Done with the response: a fully read one gives its connection back for reuse."""
        if not self._released:
            self._released = True
            self._conn.done(reuse=self._complete and not self._chunks)

    def close(self) -> None:
        if not self._released:
            self._released = True
            self._conn.done(reuse=False)


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, its response parsed by llhttp."""

    def __init__(self, client: Owner, origin: Origin) -> None:
        self.client = client
        self.origin = origin
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self.closed = False
        self._busy = False
        self._url = ""
        self._head: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._reason: list[bytes] = []
        self._headers: list[tuple[str, str]] = []
        self._keep_alive = False
        self._until_close = False  # a body without length or chunks: it ends with the line
        self._informational = False
        self._got = False  # any byte of the current response
        self._paused = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._what = ""
        self._head_only = False  # the request was a HEAD: the answer has no body

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self._last = self._loop.time()
        if not self._busy:
            self._abort()  # nothing asked: a late error page or garbage; not reusable
            return
        self._got = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._failed(SourceUnavailable(f"{self._what}: the server sent a malformed HTTP "
                                           f"response ({exc})"))
            self._abort()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        self.client.forget(self)
        response = self._response
        if response is not None and not response.complete:
            if self._until_close and exc is None:
                response._finish()
                return
            if response.content_length is not None:
                left = response.content_length - response.received
                self._failed(SourceUnavailable(f"{self._what}: the response body was cut "
                                               f"short ({left} bytes missing)"))
            else:
                self._failed(SourceUnavailable(f"{self._what}: the connection closed during "
                                               "the response body"))
        elif self._head is not None:
            why = f" ({exc})" if exc is not None else ""
            self._failed(Closed(f"{self._what}: the server closed the connection{why}"))

    # -- llhttp callbacks

    def on_status(self, status: bytes) -> None:
        self._reason.append(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self._head is None:  # a second answer to one request: the line cannot be trusted
            self._abort()
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and the like: the real answer follows
            self._informational = True
            self._reason, self._headers = [], []
            return
        headers: CIMultiDict[str] = CIMultiDict(self._headers)
        response = Response(self, self._url, status, b"".join(self._reason).decode(
            "latin-1").strip(), headers)
        self._response = response
        self._keep_alive = self._parser.should_keep_alive()
        self._until_close = (response.content_length is None and status not in (204, 304)
                             and "chunked" not in headers.get("Transfer-Encoding", "").lower()
                             and not self._head_only)
        head = self._head
        self._head = None
        if self._head_only:
            # httptools cannot be told that a HEAD's Content-Length announces no body: the
            # answer ends here, and the next request gets a fresh parser.
            self._stop_timer()
            response._finish()
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._stop_timer()
        if self._response is not None:
            self._keep_alive = self._keep_alive and self._parser.should_keep_alive()
            self._response._finish()

    # -- used by the client and the response

    async def request(self, url: str, data: bytes, what: str, timeout_s: float,
                      head_only: bool) -> Response:
        assert self.transport is not None
        if self._head_only:  # the last parser still waits for the HEAD's "body"
            self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self._busy, self._got, self._url, self._what = True, False, url, what
        self._reason, self._headers, self._response = [], [], None
        head: asyncio.Future[Response] = self._loop.create_future()
        self._head = head
        self._last = self._loop.time()
        self._arm(timeout_s)
        self.transport.write(data)
        try:
            return await head
        except BaseException:
            self._head = None
            self._abort()  # cancelled or failed half-way: the line's state is unknown
            raise

    @property
    def got_bytes(self) -> bool:
        return self._got

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self._last = self._loop.time()
            self.transport.resume_reading()

    def detach(self) -> None:
        """The socket now belongs to a direct body: no more reading here, no reuse."""
        self._stop_timer()
        self._keep_alive = False
        if self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def done(self, reuse: bool) -> None:
        self._busy = False
        self._response = None
        self._stop_timer()
        if reuse and self._keep_alive and not self.closed and not self._paused:
            self.reused = True
            self.client.idle(self)
        else:
            self._abort()
        self.client.slot_free()

    def _failed(self, exc: MirrorError) -> None:
        self._stop_timer()
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(exc)
        if self._response is not None:
            self._response._fail(exc)

    def _abort(self) -> None:
        self._keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.abort()  # connection_lost follows and fails what waits

    # -- read timeout: one timer per request, moved on lazily rather than per block

    def _arm(self, timeout_s: float) -> None:
        self._stop_timer()
        self._timer = self._loop.call_at(self._last + timeout_s, self._check, timeout_s)

    def _check(self, timeout_s: float) -> None:
        self._timer = None
        if not self._busy or self.closed:
            return
        now = self._loop.time()
        if self._paused or now - self._last < timeout_s:  # the reader is slow, not the line
            self._timer = self._loop.call_at(max(now, self._last) + timeout_s, self._check,
                                             timeout_s)
            return
        self._failed(Stalled(f"{self._what}: no data from the source within the read "
                             f"timeout ({timeout_s:g} s)"))
        self._abort()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None



__all__ = ["HIGH_WATER", "Closed", "Connection", "Owner", "Response"]
