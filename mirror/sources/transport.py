"""The one way a source's requests reach the network, with the limits applied to every one.

A source builds a ``Request`` (method, URL, headers, its budget ``list`` or ``fetch``) and reads
the ``Reply``; it never touches the limiter. ``Transport.send`` is rclone's pacer: it waits for
the limiter's admission within the request's budget (``--rps``, ``--list-rps``,
``--cluster-rps``, the adaptive rate), records the status and duration, and tells the rate
controller of success or push-back (429/503, Retry-After, per-URI refusals). Every body byte
read from a ``Reply`` is charged to the bandwidth bucket (``--bwlimit``). A source that forgot
any of this would have to go around the transport, and it has no other way out.

Under the transport is a ``Wire``: the lean HTTP/1.1 client on real sockets
(``mirror.sources.lean``), or ``mirror.testing.mock_transport.MockTransport`` in unit tests
(as httpx's), which answers from a function without sockets and still goes through the same
pacing and metering.

The socket-to-file splice (``mirror.sources.direct``) is the transport's way of writing a
large body to a file: ``direct_copy(body)`` offers it for a body the transport carried, where
the line allows it and no bandwidth limit must see the bytes.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mirror import __version__
from mirror.checksum import Checksum
from mirror.errors import ProtocolError
from mirror.ratecontrol import Pushback
from mirror.ratelimit import UNLIMITED, Budget, Limiter
from mirror.settings import SourceSettings
from mirror.sources.base import Body
from mirror.sources.direct import DirectBody
from mirror.sources.lean import LeanClient

USER_AGENT = f"bucket-mirror/{__version__}"


@dataclass(frozen=True)
class Request:
    """One HTTP request as a source means it. ``what`` names it in errors ("GET a/b.jpg")."""

    method: str
    url: str  # already percent-encoded: sent as it is (signatures cover it byte for byte)
    what: str
    headers: Mapping[str, str] = field(default_factory=dict)
    budget: Budget = "fetch"
    follow_redirects: bool = True


class WireResponse(Protocol):
    """What a wire answers: status and headers at once, the body as it arrives."""

    status: int
    reason: str
    url: str  # after redirects
    content_length: int | None

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def readany(self) -> bytes:
        """What has arrived (waiting for something), or b"" once the body is complete."""
        ...

    def direct(self, timeout_s: float, what: str) -> DirectBody | None: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class Wire(Protocol):
    async def send(self, request: Request) -> WireResponse: ...

    async def close(self) -> None: ...


class LeanWire:
    """Real sockets: ``mirror.sources.lean``, opened at the first request."""

    def __init__(self, settings: SourceSettings, user_agent: str) -> None:
        self._settings = settings
        self._user_agent = user_agent
        self._client: LeanClient | None = None

    async def send(self, request: Request) -> WireResponse:
        if self._client is None:
            s = self._settings
            self._client = LeanClient(self._user_agent, connect_timeout_s=s.connect_timeout_s,
                                      read_timeout_s=s.read_timeout_s,
                                      max_connections=s.max_connections)
        return await self._client.request(request.method, request.url, request.headers,
                                          request.what,
                                          follow_redirects=request.follow_redirects)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class Transport:
    """Paced, metered requests of one source over one wire (one pool of connections)."""

    def __init__(self, settings: SourceSettings, limiter: Limiter | None = None,
                 wire: Wire | None = None) -> None:
        self.settings = settings
        self.limiter = limiter or Limiter(UNLIMITED)
        self._wire = wire or LeanWire(settings, USER_AGENT)

    async def send(self, request: Request) -> Reply:
        """The answer to ``request``, any status; the caller must ``release()`` or
        ``close()`` it. Failures without an answer raise ``mirror.errors``."""
        limiter, budget = self.limiter, request.budget
        await limiter.admit(budget)
        started = time.monotonic()
        try:
            raw = await self._wire.send(request)
        except Exception:
            limiter.record(budget, 0, time.monotonic() - started)
            raise
        status = raw.status
        limiter.record(budget, status, time.monotonic() - started)
        if status < 300:
            limiter.success(budget)
        elif status in (429, 503):
            limiter.throttle(budget, retry_after_s(raw.headers.get("Retry-After")),
                             pushback_of(status, raw.headers))
        return Reply(raw, request, self)

    async def close(self) -> None:
        await self._wire.close()


class Reply:
    """A transport's answer: every body byte read through it is charged to ``--bwlimit``."""

    def __init__(self, raw: WireResponse, request: Request, transport: Transport) -> None:
        self._raw = raw
        self.request = request
        self._transport = transport
        self.status = raw.status
        self.reason = raw.reason
        self.headers = raw.headers
        self.url = raw.url
        self.content_length = raw.content_length
        self._limiter = transport.limiter
        # Without a bandwidth limit the charge is a no-op: skipped, it costs nothing a chunk.
        self._metered_bytes = self._limiter.bandwidth.limited

    async def readany(self) -> bytes:
        chunk = await self._raw.readany()
        if chunk and self._metered_bytes:
            await self._limiter.received(len(chunk))
        return chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        """Whatever has arrived each time, without waiting to fill a size or copying."""
        while chunk := await self.readany():
            yield chunk

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body, or its first ``limit`` bytes (the rest then stays unread)."""
        parts: list[bytes] = []
        size = 0
        while (limit is None or size < limit) and (chunk := await self.readany()):
            parts.append(chunk)
            size += len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return data if limit is None else data[:limit]

    def splice(self) -> DirectBody | None:
        """The rest of the body for a disk thread to copy from its socket, or None where it
        must come through ``readany``: a bandwidth limit to keep (the thread's bytes would
        pass it by), TLS, no Content-Length, a body already complete, a wire without sockets."""
        if self._metered_bytes:
            return None
        return self._raw.direct(self._transport.settings.read_timeout_s, self.request.what)

    def release(self) -> None:
        """Done: a fully read answer gives its connection back for reuse."""
        self._raw.release()

    def close(self) -> None:
        """Done, the connection closed (a body left unread, an error)."""
        self._raw.close()


class HttpBody:
    """A file's body as ``Source.open`` yields it: a plain stream of bytes, read whole or in
    pieces. ``direct_copy`` can hand its socket to a disk thread instead."""

    def __init__(self, reply: Reply, offset: int, total_size: int | None,
                 checksum: Checksum | None) -> None:
        self.reply = reply
        self.offset = offset
        self.total_size = total_size
        self.checksum = checksum

    @property
    def md5(self) -> str | None:
        """The MD5 the source vouches for, where that is its checksum."""
        c = self.checksum
        return c.hex if c is not None and c.algorithm == "md5" else None

    def chunks(self, size: int) -> AsyncIterator[bytes]:
        # ``size`` is a hint that whatever has arrived beats waiting for (the caller batches).
        return self.reply.chunks()

    async def read_all(self) -> bytes:
        return await self.reply.read()

    @classmethod
    def of(cls, reply: Reply, md5: str | None = None, *,
           checksum: Checksum | None = None) -> HttpBody:
        """The body of a 200 (the whole file) or a 206 (from where Content-Range says), with
        the hex ``md5`` the source vouches for (most do), or another ``checksum``."""
        start, total = 0, reply.content_length
        if reply.status == 206:
            start, total = content_range(reply.headers.get("Content-Range"),
                                         reply.request.what)
        return cls(reply, start, total, checksum or Checksum.of("md5", md5))


def direct_copy(body: Body) -> DirectBody | None:
    """The rest of ``body`` as a socket for a disk thread to copy, where the transport that
    carried it can offer that; None: read it through ``chunks``."""
    return body.reply.splice() if isinstance(body, HttpBody) else None


def retry_after_s(value: str | None) -> float | None:
    """Parse a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime  # rare: not paid at every start

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def content_range(value: str | None, what: str) -> tuple[int, int | None]:
    """Start and total size from a 206's Content-Range (total None when ``*``)."""
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (value or "").strip())
    if not m:
        raise ProtocolError(f"{what}: 206 with an unreadable Content-Range {value!r}")
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


# UpYun's "too many requests of the same uri": one file asked for too often (parallel Range
# requests, quick retries), not a sign that the bucket's rate is too high.
PER_URI_CODES = frozenset({"42900002"})


def pushback_of(status: int, headers: Mapping[str, str]) -> Pushback:
    """Whether a 429/503 speaks of the whole rate or of one URI only."""
    if status == 429 and headers.get("X-Error-Code", "").strip() in PER_URI_CODES:
        return "uri"
    return "rate"


__all__ = ["USER_AGENT", "HttpBody", "Reply", "Request", "Transport", "Wire", "WireResponse",
           "content_range", "direct_copy", "pushback_of", "retry_after_s"]
