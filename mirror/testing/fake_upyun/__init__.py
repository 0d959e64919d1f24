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
import os
import stat
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote

from aiohttp import web

from mirror.testing.fake_upyun.auth import Auth
from mirror.testing.fake_upyun.core import (
    BodyOverride,
    Dropped,
    FakeStats,
    Faults,
    ListingOverride,
    Refused,
)
from mirror.testing.fake_upyun.files import Files
from mirror.testing.fake_upyun.listing import Listing
from mirror.testing.synthetic import SyntheticBucket


class FakeUpyun(Auth, Listing, Files):
    """The server: its life cycle, the test hooks, rate limiting and the API's routes."""

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
                raise Refused(429, 42900003, "too many requests of the same bucket")
            response = await self._serve(request)
        except Refused as exc:
            response = self._error(exc.status, exc.code, exc.msg, head)
        if not isinstance(response, Dropped):
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

    async def _serve(self, request: web.Request) -> web.StreamResponse:  # noqa: PLR0912  (the API's routes, as UpYun dispatches them)
        target = request.raw_path
        raw_path, _, query = target.partition("?")
        parts = raw_path.split("/", 2)
        bucket = unquote(parts[1]) if len(parts) > 1 else ""
        if request.method not in ("GET", "HEAD"):
            raise Refused(405, 40500001, "method not allowed for a read-only fake")
        self._authenticate(request, target, bucket)
        try:
            key = unquote(parts[2] if len(parts) > 2 else "", errors="strict")
        except UnicodeDecodeError as exc:
            raise Refused(400, 40001021, "invalid utf8 key") from exc
        key = key.strip("/")
        names = key.split("/") if key else []
        if any(n in ("", ".", "..") or "\x00" in n for n in names):
            raise Refused(400, 40001000, "wrong uri")
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
                raise Refused(404, 40400001, "file or directory not found") from None
        is_dir = (info is None and key in self.listing_override) or (
            info is not None and stat.S_ISDIR(info.st_mode))
        if request.headers.get("x-upyun-folder", "").lower() == "false" and (
                key in self.body_override):
            is_dir = False  # an override can make one name both a folder and a file
        if request.method == "HEAD":
            return await self._head(request, key, path, info, is_dir)
        if is_dir:
            if request.headers.get("x-upyun-folder", "").lower() == "false":
                raise Refused(403, 40300015, "path is not a file, maybe a directory")
            return await self._list(request, key, path)
        return await self._get(request, key, path, info)


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


__all__ = ["BodyOverride", "FakeStats", "FakeUpyun", "Faults", "ListingOverride",
           "run_fake_server"]
