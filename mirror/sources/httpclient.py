"""What every HTTP-based source shares: an aiohttp session (HEAD, UpYun's listing) and a lean
client (file bodies and index pages, ``mirror.sources.lean``) with timeouts, quick retries,
translation of aiohttp's exceptions into ``mirror.errors``, and a streamed ``Body``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Protocol, TypeVar

from mirror import __version__
from mirror.errors import (
    ErrorDetail,
    MirrorError,
    ProtocolError,
    RateLimited,
    SourceUnavailable,
    Stalled,
    TransientError,
)
from mirror.ratecontrol import Pushback
from mirror.ratelimit import UNLIMITED, Budget, Limiter
from mirror.settings import SourceSettings
from mirror.sources.direct import DirectBody
from mirror.sources.lean import LeanClient, Response

if TYPE_CHECKING:  # aiohttp is imported where used: fetch processes never need it (0.13 s)
    import aiohttp
    from yarl import URL

log = logging.getLogger(__name__)
T = TypeVar("T")

USER_AGENT = f"bucket-mirror/{__version__}"
# Retry-After beyond this is left to the broker's retry tiers instead of holding a slot.
MAX_INLINE_WAIT_S = 30.0


def make_session(settings: SourceSettings, user_agent: str) -> aiohttp.ClientSession:
    import aiohttp

    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=settings.connect_timeout_s,
        sock_connect=settings.connect_timeout_s,
        sock_read=settings.read_timeout_s,
    )
    connector = aiohttp.TCPConnector(
        limit=settings.max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
    )
    # auto_decompress off: a mirror stores the bytes the source stores, never a decoded form.
    # No cookie jar: no store we read from needs one, and matching cookies costs every request.
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
    )


def encoded_url(url: str) -> URL:
    """An aiohttp URL of an already-encoded string."""
    from yarl import URL

    return URL(url, encoded=True)


def translate(exc: BaseException, what: str) -> MirrorError:
    """Map an aiohttp/asyncio failure during ``what`` (e.g. "GET a/b.jpg") to our tree."""
    if isinstance(exc, MirrorError):
        return exc
    import aiohttp

    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return Stalled(f"{what}: no data from the source within the read timeout")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return SourceUnavailable(f"{what}: the response body was cut short ({exc})")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return SourceUnavailable(f"{what}: the server closed the connection")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return SourceUnavailable(f"{what}: cannot connect ({exc.os_error or exc})")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return SourceUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    return SourceUnavailable(f"{what}: {type(exc).__name__}: {exc}")


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


def status_detail(resp: Answer, code: str | None = None) -> ErrorDetail:
    return ErrorDetail(
        http_status=resp.status,
        code=code,
        request_id=resp.headers.get("X-Request-Id"),
    )


def transient_for_status(status: int, message: str, detail: ErrorDetail,
                         retry_after: float | None) -> TransientError | None:
    """The transient class for an HTTP status, or None when the status is not transient."""
    if status == 429:
        return RateLimited(message, detail, retry_after)
    if status in (408, 499) or status >= 500:
        return SourceUnavailable(message, detail)
    return None


async def with_retries(
    settings: SourceSettings, what: str, attempt: Callable[[], Awaitable[T]]
) -> T:
    """Run ``attempt`` with a few quick retries on transient errors.

    Each call of ``attempt`` must build its request afresh (UpYun signs a new Date per try).
    What remains after the quick retries goes to the broker's retry tiers.
    """
    tries = 0
    while True:
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except Exception as raw:
            exc = translate(raw, what)
            if not isinstance(exc, TransientError) or tries >= settings.request_retries:
                raise exc from (None if exc is raw else raw)
            tries += 1
            wait = settings.request_retry_backoff_s * (2 ** (tries - 1)) * random.uniform(0.5, 1.5)
            if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
                if exc.retry_after_s > MAX_INLINE_WAIT_S:
                    raise exc from None
                wait = max(wait, exc.retry_after_s)
            log.debug("%s: %s; retry %d in %.2fs", what, exc, tries, wait)
            await asyncio.sleep(wait)


def content_range(value: str | None, what: str) -> tuple[int, int | None]:
    """Start and total size from a 206's Content-Range (total None when ``*``)."""
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (value or "").strip())
    if not m:
        raise ProtocolError(f"{what}: 206 with an unreadable Content-Range {value!r}")
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


class Answer(Protocol):
    """What error handling reads of a response, from aiohttp or from ``mirror.sources.lean``."""

    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


A = TypeVar("A", bound=Answer)


class HttpSessionOwner:
    """What an HTTP source keeps: its settings, its limiter, one lazily opened aiohttp session
    (HEAD, UpYun's listing) and one lean client (file bodies, index pages)."""

    def __init__(self, settings: SourceSettings, limiter: Limiter | None) -> None:
        self._settings = settings
        self._limiter = limiter or Limiter(UNLIMITED)
        self._session: aiohttp.ClientSession | None = None
        self._lean_client: LeanClient | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = make_session(self._settings, USER_AGENT)
        return self._session

    def _lean(self) -> LeanClient:
        if self._lean_client is None:
            s = self._settings
            self._lean_client = LeanClient(USER_AGENT, connect_timeout_s=s.connect_timeout_s,
                                           read_timeout_s=s.read_timeout_s,
                                           max_connections=s.max_connections)
        return self._lean_client

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._lean_client is not None:
            await self._lean_client.close()
            self._lean_client = None


async def metered(limiter: Limiter, budget: Budget, send: Callable[[], Awaitable[A]]) -> A:
    """One request inside the limiter's budget, its status and time recorded, and the
    adaptive rate told of success or push-back (429/503). Returns the response, any status."""
    await limiter.admit(budget)
    started = time.monotonic()
    try:
        resp = await send()
    except Exception:
        limiter.record(budget, 0, time.monotonic() - started)
        raise
    limiter.record(budget, resp.status, time.monotonic() - started)
    if resp.status < 300:
        limiter.success(budget)
    elif resp.status in (429, 503):
        limiter.throttle(budget, retry_after_s(resp.headers.get("Retry-After")),
                         pushback_of(resp))
    return resp


# UpYun's "too many requests of the same uri": one file asked for too often (parallel Range
# requests, quick retries), not a sign that the bucket's rate is too high.
PER_URI_CODES = frozenset({"42900002"})


def pushback_of(resp: Answer) -> Pushback:
    """Whether a 429/503 speaks of the whole rate or of one URI only."""
    if resp.status == 429 and resp.headers.get("X-Error-Code", "").strip() in PER_URI_CODES:
        return "uri"
    return "rate"


class HttpBody:
    """A file's response body (``mirror.sources.lean``), read whole, in pieces, or handed to
    a disk thread straight from its socket."""

    def __init__(
        self,
        resp: Response,
        what: str,
        offset: int,
        total_size: int | None,
        md5: str | None,
        limiter: Limiter | None = None,
        read_timeout_s: float = 120.0,
    ) -> None:
        self._resp = resp
        self._limiter = limiter
        self._what = what
        self._read_timeout_s = read_timeout_s
        self.offset = offset
        self.total_size = total_size
        self.md5 = md5

    def direct(self) -> DirectBody | None:
        """The rest of the body to be read straight from the socket in a thread, or None
        where it must come through ``chunks``: TLS, no Content-Length, a bandwidth limit to
        keep, or a body already complete."""
        if self._limiter is not None and self._limiter.settings.bwlimit_bps > 0:
            return None
        return self._resp.direct(self._read_timeout_s, self._what)

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        # Whatever has arrived, without waiting to fill ``size`` and without an extra copy;
        # the caller batches chunks for the disk.
        while chunk := await self._resp.readany():
            if self._limiter is not None:
                await self._limiter.received(len(chunk))
            yield chunk

    async def read_all(self) -> bytes:
        data = await self._resp.read()
        if self._limiter is not None:
            await self._limiter.received(len(data))
        return data

    @classmethod
    def of(cls, resp: Response, what: str, md5: str | None, limiter: Limiter | None,
           settings: SourceSettings) -> HttpBody:
        """The body of a 200 (the whole file) or a 206 (from where Content-Range says)."""
        start, total = 0, resp.content_length
        if resp.status == 206:
            start, total = content_range(resp.headers.get("Content-Range"), what)
        return cls(resp, what, start, total, md5, limiter, settings.read_timeout_s)
