"""UpYun USS REST source (``upyun://BUCKET/PREFIX``).

Facts from ``reference/upyun-api.md``: HMAC-SHA1 ``UPYUN op:sig`` auth over
``METHOD&<request-target as sent>&<Date>`` with key md5hex(password); JSON listing paged by
``x-list-iter`` until the sentinel; GET streams a file (Range honoured); errors come as a
``{"msg","code","id"}`` envelope whose code starts with the HTTP status.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlsplit

from mirror.errors import (
    AccessDenied,
    ConfigError,
    CredentialsRejected,
    MirrorError,
    NotFound,
    PermanentError,
    ProtocolError,
)
from mirror.ratelimit import Budget, Limiter
from mirror.settings import SourceSettings
from mirror.sources.backend import Backend, SourceOptions, option
from mirror.sources.base import Entry, Page
from mirror.sources.httpclient import (
    HttpSource,
    status_detail,
    transient_for_status,
    with_retries,
)
from mirror.sources.transport import HttpBody, Reply, Request, Transport, retry_after_s

LIST_END = "g2gCZAAEbmV4dGQAA2VvZg"  # base64 of the Erlang term {next, eof}
MAX_LIST_LIMIT = 10000
_MD5_HEX = re.compile(r"^[0-9a-fA-F]{32}$")
_ERROR_BODY_MAX = 64 * 1024


def sign(operator: str, password_md5: str, method: str, uri: str, date: str, *,
         content_md5: str | None = None) -> str:
    """The ``Authorization`` value for one request; ``uri`` exactly as sent on the wire."""
    parts = [method, uri, date] + ([content_md5] if content_md5 else [])
    digest = hmac.new(password_md5.encode(), "&".join(parts).encode(), hashlib.sha1).digest()
    return f"UPYUN {operator}:{base64.b64encode(digest).decode()}"


def quote_key(bucket: str, key: str) -> str:
    """Percent-encode ``/bucket/key`` as the official SDKs do (only ``A-Za-z0-9-._~/`` bare)."""
    return quote(f"/{bucket}/{key}", safe="/~")


@dataclass(frozen=True)
class UpyunOptions(SourceOptions):
    endpoint: str = option("https://v0.api.upyun.com", "UpYun API endpoint.", metavar="URL")
    list_limit: int = option(1000, "Entries per listing page (UpYun x-list-limit).", min=1,
                             max=MAX_LIST_LIMIT)


class UpyunSource(HttpSource):
    def __init__(self, bucket: str, prefix: str, operator: str,  # noqa: PLR0913  (a bucket and its credentials, then what every source takes)
                 password: str, settings: SourceSettings, limiter: Limiter | None = None, *,
                 options: UpyunOptions | None = None, transport: Transport | None = None) -> None:
        self._options = options or UpyunOptions()
        endpoint = self._options.endpoint.rstrip("/")
        if urlsplit(endpoint).scheme not in ("http", "https"):
            raise ConfigError(f"--endpoint must be an http(s) URL, got {endpoint!r}")
        self.name = f"upyun://{bucket}/{prefix}"
        self._bucket = bucket
        self._prefix = prefix
        self._operator = operator
        self._password_md5 = hashlib.md5(password.encode()).hexdigest()
        self._endpoint = endpoint
        super().__init__(settings, limiter, transport)

    @classmethod
    def from_url(cls, url: str, options: UpyunOptions, settings: SourceSettings,
                 limiter: Limiter | None = None) -> UpyunSource:
        rest = url.split("://", 1)[1]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"no bucket in {url!r}; expected upyun://BUCKET/PREFIX")
        operator = settings.credential("UPYUN_OPERATOR")
        password = settings.credential("UPYUN_PASSWORD")
        if not operator or not password:
            raise ConfigError(
                "UpYun credentials missing: set UPYUN_OPERATOR and UPYUN_PASSWORD "
                "in the environment (or the config file)"
            )
        return cls(bucket, prefix.strip("/"), operator, password, settings, limiter,
                   options=options)

    def _key(self, path: str) -> str:
        return "/".join(p for p in (self._prefix, path) if p)

    def _headers(self, method: str, uri: str, extra: Mapping[str, str] = {}) -> dict[str, str]:
        date = formatdate(usegmt=True)
        auth = sign(self._operator, self._password_md5, method, uri, date)
        return {"Date": date, "Authorization": auth, **extra}

    def _fail(self, resp: Reply, what: str, raw: bytes) -> MirrorError:
        """Translate an error response (with the start of its envelope) into our tree."""
        code = resp.headers.get("X-Error-Code")
        msg = resp.reason or ""
        if raw:
            try:
                body = json.loads(raw)
                if isinstance(body, dict):
                    msg = str(body.get("msg") or msg)
                    code = str(body.get("code") or code or "") or None
            except ValueError:
                pass
        detail = status_detail(resp, code)
        status = resp.status
        text = f"{what}: UpYun answered {status} {msg}".rstrip()
        transient = transient_for_status(status, text, detail,
                                         retry_after_s(resp.headers.get("Retry-After")))
        if transient is not None:
            return transient
        if status == 401:
            hint = {
                "40100002": "the clock of this host is off by over 30 minutes; fix it (NTP)",
                "40100012": f"bucket {self._bucket!r} does not exist",
                "40100006": f"operator {self._operator!r} does not exist",
            }.get(code or "", "check UPYUN_OPERATOR and UPYUN_PASSWORD")
            return CredentialsRejected(f"UpYun rejected the credentials ({msg}): {hint}", detail)
        if status == 404:
            return NotFound(f"{what}: not found on the source (deleted after listing?)", detail)
        if status == 403:
            return AccessDenied(f"{what}: UpYun refused access: {msg}", detail)
        return PermanentError(text, detail)

    async def _send(self, method: str, uri: str, what: str, extra: Mapping[str, str] = {},
                    budget: Budget = "fetch") -> Reply:
        """One signed try (a fresh Date each time); returns an open, successful answer."""
        reply = await self._transport.send(Request(
            method, self._endpoint + uri, what, self._headers(method, uri, extra), budget,
            follow_redirects=False))
        if reply.status < 300:
            return reply
        try:
            raw = b"" if method == "HEAD" else await reply.read(_ERROR_BODY_MAX)
        except MirrorError:
            raw = b""  # the status tells enough
        finally:
            reply.release()  # reused only when the envelope was read to its end
        raise self._fail(reply, what, raw)

    async def list_page(self, path: str, cursor: str | None) -> Page:
        key = self._key(path)
        uri = quote_key(self._bucket, key + "/" if key else "")
        what = f"list {path or '/'}"
        extra = {
            "Accept": "application/json",
            "x-list-limit": str(self._options.list_limit),
            "X-UpYun-Folder": "true",
        }
        if cursor:
            extra["x-list-iter"] = cursor

        async def fetch() -> tuple[bytes, str | None]:
            resp = await self._send("GET", uri, what, extra, "list")
            try:
                return await resp.read(), resp.headers.get("x-upyun-list-iter")
            finally:
                resp.release()

        raw, header_iter = await with_retries(self._settings, what, fetch)
        return parse_listing(raw, header_iter, path, cursor)

    async def stat(self, path: str) -> Entry:
        uri = quote_key(self._bucket, self._key(path))
        what = f"stat {path or '/'}"

        async def head() -> Entry:
            resp = await self._send("HEAD", uri, what)
            try:
                h = resp.headers
                is_dir = h.get("x-upyun-file-type", "file") == "folder"
                size = 0 if is_dir else int(h.get("x-upyun-file-size") or 0)
                date = h.get("x-upyun-file-date")
                return Entry(path, is_dir, size, float(date) if date else None, _md5_of(h))
            except ValueError as exc:
                raise ProtocolError(f"{what}: unreadable HEAD headers: {exc}") from exc
            finally:
                resp.release()

        return await with_retries(self._settings, what, head)

    @asynccontextmanager
    async def open(self, path: str, offset: int = 0) -> AsyncIterator[HttpBody]:
        uri = quote_key(self._bucket, self._key(path))
        what = f"GET {path}"
        extra = {"x-upyun-folder": "false"}
        if offset > 0:
            extra["Range"] = f"bytes={offset}-"
        resp = await with_retries(self._settings, what, lambda: self._send("GET", uri, what, extra))
        try:
            yield HttpBody.of(resp, _md5_of(resp.headers))
        finally:
            resp.release()


def _md5_of(headers: Mapping[str, str]) -> str | None:
    for value in (headers.get("Content-Md5"), (headers.get("ETag") or "").strip('"')):
        if value and _MD5_HEX.match(value):
            return value.lower()
    return None


def parse_listing(raw: bytes, header_iter: str | None, path: str, cursor: str | None) -> Page:
    """Parse one JSON listing page strictly; anything odd is a ProtocolError naming the folder."""
    where = f"listing of {path or '/'}"
    try:
        body: Any = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{where}: malformed JSON ({exc})") from exc
    if not isinstance(body, dict) or not isinstance(body.get("files"), list):
        raise ProtocolError(f"{where}: expected an object with a 'files' list")
    entries = []
    for i, item in enumerate(body["files"]):
        entries.append(_entry(item, path, f"{where}, entry {i}"))
    next_iter = body.get("iter", header_iter)
    if next_iter is not None and not isinstance(next_iter, str):
        raise ProtocolError(f"{where}: 'iter' is not a string")
    if next_iter == LIST_END:
        return Page(tuple(entries), None)
    if not next_iter:
        if entries:
            raise ProtocolError(
                f"{where}: a page of {len(entries)} entries came without an iter, so it is "
                "unknown whether more pages follow"
            )
        return Page((), None)  # an empty folder answered without the sentinel
    if next_iter == cursor:
        raise ProtocolError(f"{where}: the source returned the same iter again (endless listing)")
    return Page(tuple(entries), next_iter)


def _entry(item: Any, parent: str, where: str) -> Entry:
    if not isinstance(item, dict):
        raise ProtocolError(f"{where}: not an object")
    name, kind = item.get("name"), item.get("type")
    length, mtime = item.get("length", 0), item.get("last_modified")
    if not isinstance(name, str) or not isinstance(kind, str):
        raise ProtocolError(f"{where}: 'name' and 'type' must be strings")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ProtocolError(f"{where} ({name!r}): 'length' must be a non-negative integer")
    if mtime is not None and (isinstance(mtime, bool) or not isinstance(mtime, int | float)):
        raise ProtocolError(f"{where} ({name!r}): 'last_modified' must be a number")
    is_dir = kind == "folder"
    # The name is kept raw here; the crawler judges whether it is safe to write.
    full = f"{parent}/{name}" if parent else name
    return Entry(full, is_dir, 0 if is_dir else length,
                 float(mtime) if mtime is not None else None, None)


BACKEND = Backend(schemes=("upyun",), form="upyun://BUCKET/PREFIX", options=UpyunOptions,
                  open=UpyunSource.from_url, credentials=("UPYUN_OPERATOR", "UPYUN_PASSWORD"))

__all__ = ["BACKEND", "LIST_END", "UpyunOptions", "UpyunSource", "parse_listing", "quote_key",
           "sign"]
