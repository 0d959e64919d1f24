"""A faithful fake of the UpYun REST API (reference §10): a local folder served as a bucket.

It checks what the real service checks (signatures over the raw request-target, dates, bucket
and operator), answers in the real formats (text and JSON listings, iter paging ending in the
sentinel, the ``{"msg","code","id"}`` error envelope with ``X-Error-Code``), and can misbehave on
purpose: deterministic faults on first attempts, added latency, slow bodies, and per-path
overrides of listings and bodies for hostile-input tests.

Test hooks (no auth): ``GET /_fake/stats`` and ``POST /_fake/reset``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import mimetypes
import os
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote

from aiohttp import web

from mirror.sources.upyun import LIST_END, sign
from mirror.testing.synthetic import SyntheticBucket

log = logging.getLogger(__name__)

MAX_LIMIT = 10000
DEFAULT_LIMIT = 100
CHUNK = 256 * 1024

ListingOverride = Callable[[str | None], tuple[bytes, str | None]]
BodyOverride = Callable[[bytes, dict[str, str]], tuple[bytes, dict[str, str]]]


@dataclass(frozen=True)
class Faults:
    """Shares of *first* attempts (per method, path and iter) that misbehave, and slowness."""

    rate_429: float = 0.0
    rate_503: float = 0.0
    rate_truncate: float = 0.0  # full Content-Length, part of the body, then the line drops
    rate_drop: float = 0.0  # the connection closes before any response
    # Failures as a real bucket has them, whatever the rate: a listing answered 429 (per
    # bucket), a file answered 503 "read upstream timeout" or cut short (half each).
    rate_random: float = 0.0
    latency_s: float = 0.0  # before every response
    seed: int = 0
    body_rate_bps: float = 0.0  # bodies sent no faster than this (0: as fast as possible)
    # Requests per second the bucket accepts (a token bucket, burst a fifth of a second);
    # beyond it: 429 42900003, as UpYun's per-bucket protection answers. 0: no limit.
    rate_limit_rps: float = 0.0


@dataclass
class FakeStats:
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    list_pages: int = 0
    bodies: dict[str, int] = field(default_factory=dict)  # file GETs that began a body
    complete: dict[str, int] = field(default_factory=dict)  # ... that sent through to the end
    bytes_sent: int = 0
    faults: dict[str, int] = field(
        default_factory=lambda: {"429": 0, "503": 0, "truncate": 0, "drop": 0})
    limited: int = 0  # requests refused by rate_limit_rps
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, status)

    def to_dict(self) -> dict[str, object]:
        return {"requests": self.requests, "by_status": dict(self.by_status),
                "list_pages": self.list_pages, "bodies": dict(self.bodies),
                "complete": dict(self.complete), "bytes_sent": self.bytes_sent,
                "faults": dict(self.faults), "limited": self.limited}


@dataclass(frozen=True)
class _Item:
    name: str
    is_dir: bool
    size: int
    mtime: int

    @property
    def order(self) -> tuple[int, bytes]:
        # Files (@#) before folders (@~), each by name bytes, as UpYun's key scheme sorts.
        return (1 if self.is_dir else 0, self.name.encode("utf-8", "surrogateescape"))


class _Refused(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


class FakeUpyun:
    def __init__(self, root: Path, *, bucket: str, operator: str, password: str,
                 faults: Faults = Faults(), max_skew_s: float = 1800,
                 synthetic: SyntheticBucket | None = None) -> None:
        self.root = Path(root)
        self.synthetic = synthetic  # serve a made-up bucket instead of ``root``
        self.bucket = bucket
        self.operator = operator
        self.password = password
        self.password_md5 = hashlib.md5(password.encode()).hexdigest()
        self.faults = faults
        self.max_skew_s = max_skew_s
        self.stats = FakeStats()
        # Per-path misbehaviour for hostile-input tests; keys are bucket-relative paths.
        self.listing_override: dict[str, ListingOverride] = {}
        self.body_override: dict[str, BodyOverride] = {}
        self._seen: set[str] = set()
        self._listings: dict[str, tuple[int, list[_Item]]] = {}
        self._md5s: dict[tuple[str, int, int], str] = {}
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._bucket_tokens = max(1.0, faults.rate_limit_rps / 5)  # starts full
        self._bucket_stamp = time.monotonic()

    # -- life cycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the fake UpYun server is not started")
        return self._url

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024)
        app.router.add_get("/_fake/stats", self._stats)
        app.router.add_post("/_fake/reset", self._reset)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        self._url = f"http://{host}:{bound}"
        return self._url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeUpyun:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # -- test hooks --------------------------------------------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_dict())

    async def _reset(self, request: web.Request) -> web.Response:
        self.stats = FakeStats()
        self.rearm()
        return web.json_response({"ok": True})

    def rearm(self) -> None:
        """Forget which requests were tried: the same first attempts fail again."""
        self._seen.clear()

    # -- the API -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        if self.faults.latency_s:
            await asyncio.sleep(self.faults.latency_s)
        head = request.method == "HEAD"
        try:
            if not request.path.startswith("/_fake/") and not self._within_rate():
                self.stats.limited += 1
                raise _Refused(429, 42900003, "too many requests of the same bucket")
            response = await self._serve(request)
        except _Refused as exc:
            response = self._error(exc.status, exc.code, exc.msg, head)
        if not isinstance(response, _Dropped):
            self.stats.by_status[response.status] = self.stats.by_status.get(response.status,
                                                                             0) + 1
        if self.faults.rate_limit_rps > 0:
            self.stats.timeline.append((time.monotonic(), response.status))
        return response

    def _within_rate(self) -> bool:
        rate = self.faults.rate_limit_rps
        if rate <= 0:
            return True
        now = time.monotonic()
        burst = max(1.0, rate / 5)
        self._bucket_tokens = min(burst, self._bucket_tokens + (now - self._bucket_stamp) * rate)
        self._bucket_stamp = now
        if self._bucket_tokens >= 1:
            self._bucket_tokens -= 1
            return True
        return False

    def _error(self, status: int, code: int, msg: str, head: bool = False) -> web.Response:
        request_id = uuid.uuid4().hex
        headers = {"X-Error-Code": str(code), "X-Request-Id": request_id}
        if head:
            return web.Response(status=status, headers=headers)
        body = json.dumps({"msg": msg, "code": code, "id": request_id})
        return web.Response(status=status, text=body, content_type="application/json",
                            headers=headers)

    async def _serve(self, request: web.Request) -> web.StreamResponse:  # noqa: PLR0912  (the API's routes, as UpYun dispatches them)
        target = request.raw_path
        raw_path, _, query = target.partition("?")
        parts = raw_path.split("/", 2)
        bucket = unquote(parts[1]) if len(parts) > 1 else ""
        if request.method not in ("GET", "HEAD"):
            raise _Refused(405, 40500001, "method not allowed for a read-only fake")
        self._authenticate(request, target, bucket)
        try:
            key = unquote(parts[2] if len(parts) > 2 else "", errors="strict")
        except UnicodeDecodeError as exc:
            raise _Refused(400, 40001021, "invalid utf8 key") from exc
        key = key.strip("/")
        names = key.split("/") if key else []
        if any(n in ("", ".", "..") or "\x00" in n for n in names):
            raise _Refused(400, 40001000, "wrong uri")
        if query == "usage":
            return await self._usage(request)
        path = self.root.joinpath(*names) if names else self.root
        info: os.stat_result | None
        try:
            if self.synthetic is not None:
                info = self.synthetic.stat(key)
                if info is None:
                    raise FileNotFoundError(key)
            else:
                info = await asyncio.to_thread(os.stat, path)
        except (FileNotFoundError, NotADirectoryError):
            if key in self.listing_override or key in self.body_override:
                info = None
            else:
                raise _Refused(404, 40400001, "file or directory not found") from None
        is_dir = (info is None and key in self.listing_override) or (
            info is not None and stat.S_ISDIR(info.st_mode))
        if request.headers.get("x-upyun-folder", "").lower() == "false" and (
                key in self.body_override):
            is_dir = False  # an override can make one name both a folder and a file
        if request.method == "HEAD":
            return await self._head(request, key, path, info, is_dir)
        if is_dir:
            if request.headers.get("x-upyun-folder", "").lower() == "false":
                raise _Refused(403, 40300015, "path is not a file, maybe a directory")
            return await self._list(request, key, path)
        return await self._get(request, key, path, info)

    def _authenticate(self, request: web.Request, target: str, bucket: str) -> None:  # noqa: PLR0912  (one branch per refusal UpYun gives)
        auth = request.headers.get("Authorization", "")
        if not auth:
            raise _Refused(401, 40100004, "need authorization header")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise _Refused(401, 40100005, "signature error") from exc
            if user != self.operator:
                raise _Refused(401, 40100006, "user not exists")
            if password != self.password:
                raise _Refused(401, 40100009, "user password error")
        elif scheme.lower() == "upyun":
            date = request.headers.get("Date") or request.headers.get("X-Date")
            if not date:
                raise _Refused(401, 40100001, "need date header")
            try:
                when = parsedate_to_datetime(date)
            except (TypeError, ValueError) as exc:
                raise _Refused(401, 40100016, "invalid date value in header") from exc
            if when.tzinfo is None or abs(when.timestamp() - time.time()) > self.max_skew_s:
                raise _Refused(401, 40100002, "date offset error")
            operator, _, signature = value.partition(":")
            if operator != self.operator:
                raise _Refused(401, 40100006, "user not exists")
            if len(signature) == 32 and all(c in "0123456789abcdef" for c in signature):
                length = request.headers.get("Content-Length", "0")
                expected_md5 = hashlib.md5(
                    f"{request.method}&{target}&{date}&{length}&{self.password_md5}".encode()
                ).hexdigest()
                good = signature == expected_md5
            else:
                expected = sign(self.operator, self.password_md5, request.method, target, date,
                                content_md5=request.headers.get("Content-MD5"))
                good = f"{scheme} {value}".split(" ", 1)[1] == expected.split(" ", 1)[1]
            if not good:
                raise _Refused(401, 40100005, "signature error")
        else:
            raise _Refused(401, 40100003, "unknown realm")
        if bucket != self.bucket:
            raise _Refused(401, 40100012, "bucket not exist")

    def _fault(self, method: str, key: str, list_iter: str = "") -> str | None:
        """The fault for this request, decided once per (method, path, iter) and seed."""
        f = self.faults
        if not (f.rate_429 or f.rate_503 or f.rate_truncate or f.rate_drop or f.rate_random):
            return None
        ident = f"{method}|{key}|{list_iter}"
        if ident in self._seen:
            return None
        self._seen.add(ident)
        digest = hashlib.blake2b(f"{f.seed}|{ident}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2**64
        for name, share in (("429", f.rate_429), ("503", f.rate_503),
                            ("truncate", f.rate_truncate), ("drop", f.rate_drop)):
            if u < share:
                self.stats.faults[name] += 1
                return name
            u -= share
        if u < f.rate_random:
            name = ("429" if method == "LIST" else
                    "503" if method == "HEAD" or digest[-1] & 1 else "truncate")
            self.stats.faults[name] += 1
            return name
        return None

    def _simple_fault(self, fault: str | None, request: web.Request,
                      head: bool) -> web.StreamResponse | None:
        """The answer to a 429, 503 or dropped-connection fault; None to go on serving."""
        if fault == "429":
            return self._error(429, 42900003, "too many requests of the same bucket", head)
        if fault == "503":
            return self._error(503, 50300031, "read upstream timeout", head)
        if fault == "drop" and not head:
            return _drop(request)
        return None  # no fault, or truncation (handled where the body is written)

    async def _usage(self, request: web.Request) -> web.Response:
        def total() -> int:
            if self.synthetic is not None:
                return self.synthetic.total_bytes()
            return sum(os.lstat(os.path.join(d, n)).st_size
                       for d, _, names in os.walk(self.root) for n in names)

        return web.Response(text=str(await asyncio.to_thread(total)),
                            headers={"X-Request-Id": uuid.uuid4().hex})

    async def _head(self, request: web.Request, key: str, path: Path,
                    info: os.stat_result | None, is_dir: bool) -> web.StreamResponse:
        # A HEAD answer has no body to cut: only 429 and 503 apply to it.
        answer = self._simple_fault(self._fault("HEAD", key), request, True)
        if answer is not None:
            return answer
        mtime = int(info.st_mtime) if info is not None else 0
        headers = {"x-upyun-file-type": "folder" if is_dir else "file",
                   "x-upyun-file-date": str(mtime), "X-Request-Id": uuid.uuid4().hex}
        if not is_dir and info is not None:
            md5 = await self._md5(path, info)
            headers.update({
                "x-upyun-file-size": str(info.st_size), "Content-Md5": md5,
                "ETag": f'"{md5}"', "Content-Type": _content_type(path.name),
                "Last-Modified": _http_date(info.st_mtime),
            })
        return web.Response(headers=headers)

    async def _items(self, key: str, path: Path) -> list[_Item]:
        if self.synthetic is not None:  # not cached: a million-file bucket stays small here
            return [_Item(*e) for e in self.synthetic.entries(key)]
        dir_mtime = (await asyncio.to_thread(os.stat, path)).st_mtime_ns
        cached = self._listings.get(key)
        if cached is not None and cached[0] == dir_mtime:
            return cached[1]

        def scan() -> list[_Item]:
            out = []
            with os.scandir(path) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        out.append(_Item(e.name, True, 0, int(st.st_mtime)))
                    elif stat.S_ISREG(st.st_mode):
                        out.append(_Item(e.name, False, st.st_size, int(st.st_mtime)))
            return sorted(out, key=lambda i: i.order)

        items = await asyncio.to_thread(scan)
        self._listings[key] = (dir_mtime, items)
        return items

    def _iter_token(self, key: str, item: _Item) -> str:
        folders = "".join(f"/~{p}" for p in key.split("/")) if key else ""
        mark = "@~" if item.is_dir else "@#"
        raw = f"{self.bucket}{folders}/{mark}{item.name}"
        return base64.b64encode(raw.encode("utf-8", "surrogateescape")).decode()

    def _start_after(self, token: str, items: list[_Item]) -> int:
        try:
            raw = base64.b64decode(token, validate=True).decode("utf-8", "surrogateescape")
        except (binascii.Error, ValueError) as exc:
            raise _Refused(400, 40001005, "iter args invalid") from exc
        _, sep, last = raw.rpartition("/@")
        if not sep or not last or last[0] not in "#~":
            raise _Refused(400, 40001005, "iter args invalid")
        marker = (1 if last[0] == "~" else 0, last[1:].encode("utf-8", "surrogateescape"))
        lo, hi = 0, len(items)
        while lo < hi:  # first item after the marker; the marker itself may be gone
            mid = (lo + hi) // 2
            if items[mid].order <= marker:
                lo = mid + 1
            else:
                hi = mid
        return lo

    async def _list(self, request: web.Request, key: str, path: Path) -> web.StreamResponse:
        token = request.headers.get("x-list-iter") or None
        fault = self._fault("LIST", key, token or "")
        answer = self._simple_fault(fault, request, False)
        if answer is not None:
            return answer
        override = self.listing_override.get(key)
        if override is not None:
            body, next_iter = override(token)
            self.stats.list_pages += 1
            headers = {"X-Request-Id": uuid.uuid4().hex}
            if next_iter:
                headers["x-upyun-list-iter"] = next_iter
            return web.Response(body=body, content_type="application/json", headers=headers)
        try:
            limit = int(request.headers.get("x-list-limit", DEFAULT_LIMIT))
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_LIMIT:
            raise _Refused(400, 40001005, "x-list-limit must be 1 to 10000")
        order = request.headers.get("x-list-order", "asc").lower()
        if order not in ("asc", "desc"):
            raise _Refused(403, 40300014, "order must be asc or desc")
        if token == LIST_END:
            raise _Refused(400, 40001005, "iter args invalid")
        items = await self._items(key, path)
        if order == "desc":
            items = items[::-1]
        start = self._start_after(token, items) if token and order == "asc" else 0
        if token and order == "desc":
            start = len(items) - self._start_after(token, items[::-1])
        page = items[start:start + limit]
        end = start + limit >= len(items)
        next_iter = LIST_END if end or not page else self._iter_token(key, page[-1])
        self.stats.list_pages += 1
        headers = {"x-upyun-list-iter": next_iter, "X-Request-Id": uuid.uuid4().hex}
        if "json" in request.headers.get("Accept", ""):
            body = json.dumps({"files": [
                {"type": "folder" if i.is_dir else _content_type(i.name), "name": i.name,
                 "length": i.size, "last_modified": i.mtime} for i in page
            ], "iter": next_iter}, ensure_ascii=False).encode("utf-8", "surrogateescape")
            response = web.Response(body=body, content_type="application/json", headers=headers)
        else:
            text = "\n".join(f"{i.name}\t{'F' if i.is_dir else 'N'}\t{i.size}\t{i.mtime}"
                             for i in page)
            response = web.Response(body=text.encode("utf-8", "surrogateescape"),
                                    content_type="text/plain", headers=headers)
        if fault == "truncate":
            return await self._send_truncated(request, response)
        return response

    async def _send_truncated(self, request: web.Request,
                              response: web.Response) -> web.StreamResponse:
        body = bytes(response.body) if isinstance(response.body, bytes | bytearray) else b""
        stream = web.StreamResponse(status=response.status, headers=response.headers)
        stream.content_length = len(body)
        await stream.prepare(request)
        await stream.write(body[: len(body) // 2])
        _hang_up(request)
        return stream

    async def _md5(self, path: Path, info: os.stat_result) -> str:
        if self.synthetic is not None:
            return hashlib.md5(self.synthetic.content(info.st_ino)).hexdigest()
        cache_key = (str(path), info.st_size, info.st_mtime_ns)
        cached = self._md5s.get(cache_key)
        if cached is None:
            def digest() -> str:
                h = hashlib.md5()
                with path.open("rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                return h.hexdigest()

            cached = self._md5s[cache_key] = await asyncio.to_thread(digest)
        return cached

    async def _get(self, request: web.Request, key: str, path: Path,  # noqa: PLR0912  (one branch per fault it can play)
                   info: os.stat_result | None) -> web.StreamResponse:
        fault = self._fault("GET", key)
        answer = self._simple_fault(fault, request, False)
        if answer is not None:
            return answer
        override = self.body_override.get(key)
        if info is None or not stat.S_ISREG(info.st_mode):
            data = b""
            size, mtime, md5 = 0, time.time(), hashlib.md5(b"").hexdigest()
        else:
            size, mtime, md5 = info.st_size, info.st_mtime, await self._md5(path, info)
        start, end = 0, size - 1
        status = 200
        rng = request.headers.get("Range")
        if rng and size:
            start, end = _parse_range(rng, size)
            status = 206
        headers = {"Content-Type": _content_type(path.name), "ETag": f'"{md5}"',
                   "Content-Md5": md5, "Last-Modified": _http_date(mtime),
                   "X-Request-Id": uuid.uuid4().hex}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        declared = end - start + 1
        if override is not None:
            if info is not None and stat.S_ISREG(info.st_mode):
                data = (await self._read(path, info))[start:end + 1]
            else:
                data, declared = b"", -1
            data, headers = override(data, headers)
            if declared < 0 and headers.get("Content-Md5") == md5:  # describe made-up data
                made_up = hashlib.md5(data).hexdigest()
                headers.update({"Content-Md5": made_up, "ETag": f'"{made_up}"'})
            # Without its own Content-Length, an override keeps the real one (a short body
            # is then cut short); a made-up file declares what it sends.
            declared = int(headers.pop("Content-Length", len(data) if declared < 0
                                       else declared))
        stream = web.StreamResponse(status=status, headers=headers)
        stream.content_length = declared
        limit = declared // 2 if fault == "truncate" else declared
        try:
            await stream.prepare(request)
            self.stats.bodies[key] = self.stats.bodies.get(key, 0) + 1
            if override is not None:
                sent = min(len(data), limit)
                await stream.write(data[:sent])
            elif self.synthetic is not None and info is not None:
                await stream.write(self.synthetic.content(info.st_ino)[start:start + limit])
                sent = limit
            else:
                sent = await self._stream_file(stream, path, start, limit)
        except (ConnectionError, RuntimeError):
            return stream  # the client went away
        self.stats.bytes_sent += sent
        if sent < declared:
            _hang_up(request)  # the body ends short of its Content-Length
            return stream
        # Every declared byte is out: complete, even if the client, having read them all,
        # closes before the end of the response is flushed (as large downloads do).
        self.stats.complete[key] = self.stats.complete.get(key, 0) + 1
        with contextlib.suppress(ConnectionError, RuntimeError):
            await stream.write_eof()
        return stream

    async def _read(self, path: Path, info: os.stat_result) -> bytes:
        if self.synthetic is not None:
            return self.synthetic.content(info.st_ino)
        return await asyncio.to_thread(path.read_bytes)

    async def _stream_file(self, stream: web.StreamResponse, path: Path, start: int,
                           length: int) -> int:
        rate = self.faults.body_rate_bps
        step = CHUNK if rate <= 0 else max(1, min(CHUNK, int(rate / 10)))
        loop = asyncio.get_running_loop()
        sent = 0
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        try:
            began = time.monotonic()
            while sent < length:
                block = await loop.run_in_executor(None, os.pread, fd, min(step, length - sent),
                                                   start + sent)
                if not block:
                    break
                try:
                    await stream.write(block)
                except ConnectionError:
                    if sent + len(block) < length:
                        raise
                    # The last block was handed over; a client that has read every declared
                    # byte may close before the server's write returns (large downloads do).
                sent += len(block)
                if rate > 0 and sent < length:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            await asyncio.to_thread(os.close, fd)
        return sent


class _Dropped(web.Response):
    """Returned for a connection closed on purpose; nothing reaches the client."""


def _hang_up(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _drop(request: web.Request) -> web.StreamResponse:
    _hang_up(request)
    return _Dropped(status=499)


def _parse_range(value: str, size: int) -> tuple[int, int]:
    unit, _, spec = value.strip().partition("=")
    first, _, last = spec.partition("-")
    try:
        if unit.strip().lower() != "bytes" or "," in spec or not first:
            raise ValueError(value)
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError as exc:
        raise _Refused(400, 40001161, "wrong range") from exc
    if start < 0 or start >= size or end < start:
        raise _Refused(400, 40001161, "wrong range")
    return start, min(end, size - 1)


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _http_date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC), usegmt=True)


async def run_fake_server(root: Path, *, host: str, port: int, bucket: str, operator: str,  # noqa: PLR0913  (one per option of `mirror fake-upyun`)
                          password: str, faults: Faults,
                          synthetic: SyntheticBucket | None = None) -> None:
    fake = FakeUpyun(root, bucket=bucket, operator=operator, password=password, faults=faults,
                     synthetic=synthetic)
    url = await fake.start(host, port)
    what = (f"a synthetic bucket of {synthetic.files} files" if synthetic is not None
            else str(root))
    print(f"fake UpYun serving {what} as bucket {bucket!r} at {url} (operator {operator!r})",
          flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


__all__ = ["FakeStats", "FakeUpyun", "Faults", "run_fake_server"]
