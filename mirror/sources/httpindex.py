"""HTTP directory-index source (``http://host/path/``, ``https://...``).

Reads the index pages web servers generate: nginx ``autoindex`` (HTML, and JSON with
``autoindex_format json``), Apache ``mod_autoindex`` and Caddy ``file_server browse`` (HTML, and
JSON when asked with ``Accept: application/json``). A folder is one page. Sizes and mtimes are
taken from the index where it gives them exactly (nginx JSON and HTML with exact sizes, Caddy
JSON); otherwise each file gets a HEAD request. Only links to direct children of the folder
count: parent links, sort links, absolute links elsewhere and anything with a query are ignored.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

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
from mirror.sources.backend import Backend, SourceOptions
from mirror.sources.base import Entry, Page
from mirror.sources.httpclient import (
    HttpSource,
    status_detail,
    transient_for_status,
    with_retries,
)
from mirror.sources.transport import HttpBody, Reply, Request, Transport, retry_after_s

MAX_INDEX_BYTES = 256 * 1024 * 1024  # a folder of a few million entries; more is an error
HEAD_CONCURRENCY = 16
# nginx HTML: <a href="x">x</a>   21-Nov-2026 10:00    1234   (size "-" for folders)
_NGINX_ROW = re.compile(r"^\s*(\d{2}-[A-Za-z]{3}-\d{4} \d{2}:\d{2})\s+(\d+|-)\s*$")
# Pages where every link is a plain <a href="...">text</a> (nginx's autoindex) are read with a
# regular expression: HTMLParser cost 15 us a link, most of the lister's CPU for small files.
_PLAIN_LINK = re.compile(r'<a href="([^"<>]*)">[^<]*</a>([^<]*)')
_ANY_LINK = re.compile(r"<a\s", re.IGNORECASE)
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                       "Sep", "Oct", "Nov", "Dec"), start=1)}


def _links(text: str) -> list[tuple[str, str]]:
    """(href, text after the link) of every link, by the quick way where it reads them all."""
    plain = _PLAIN_LINK.findall(text)
    if len(plain) == len(_ANY_LINK.findall(text)):
        if any("&" in h for h, _ in plain):
            from html import unescape

            return [(unescape(h), after) for h, after in plain]
        return plain
    # Apache, Caddy and other pages: a real HTML parser (imported only for them: html.parser
    # and its entity tables are 4 ms of every start).
    from mirror.sources.htmllinks import links

    return links(text)


def _nginx_mtime(text: str) -> float:
    day, mon, rest = text.split("-", 2)
    year, hm = rest.split(" ")
    hour, minute = hm.split(":")
    return float(calendar.timegm((int(year), _MONTHS[mon], int(day), int(hour), int(minute), 0)))


def _http_date(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        pass
    try:  # Caddy: RFC 3339
        from datetime import datetime

        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _content_type(value: str | None) -> tuple[str, str | None]:
    """The media type (lower case) and charset of a Content-Type header."""
    if not value:
        return "", None
    message = Message()
    message["Content-Type"] = value
    charset = message.get_param("charset")
    return message.get_content_type(), charset if isinstance(charset, str) else None


def child_name(href: str, folder_url: str) -> tuple[str, bool] | None:
    """The child's raw name and whether it is a folder, or None if the link is not a child."""
    if not href or "?" in href or "#" in href:
        return None
    bare = href[:-1] if href.endswith("/") else href
    if bare and "/" not in bare and ":" not in bare and bare not in (".", ".."):
        # A plain relative name (what every index page links its children with) needs no
        # URL resolution: a quarter of the listing's CPU went to urljoin.
        return unquote(bare, errors="strict"), href.endswith("/")
    target = urljoin(folder_url, href)
    base = urlsplit(folder_url)
    parts = urlsplit(target)
    if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
        return None
    if not parts.path.startswith(base.path) or parts.path == base.path:
        return None
    rest = parts.path[len(base.path):]
    is_dir = rest.endswith("/")
    rest = rest[:-1] if is_dir else rest
    if not rest or "/" in rest:
        return None  # not a direct child (or the folder itself)
    return unquote(rest, errors="strict"), is_dir


def parse_json_index(raw: bytes, path: str) -> list[tuple[Entry, bool]]:
    """nginx (``autoindex_format json``) or Caddy JSON: entries, each with "size is exact"."""
    where = f"index of {path or '/'}"
    try:
        items = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{where}: malformed JSON ({exc})") from exc
    if not isinstance(items, list):
        raise ProtocolError(f"{where}: expected a JSON list of entries")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(f"{where}, entry {i}: expected an object with a 'name'")
        name = item["name"].rstrip("/")
        if not name or name in (".", ".."):
            continue
        is_dir = item.get("type") == "directory" or bool(item.get("is_dir"))
        if item.get("type") == "other":
            continue  # sockets, devices: nothing to mirror
        size = item.get("size", 0)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(f"{where} ({name!r}): 'size' must be a non-negative integer")
        mtime = _http_date(item.get("mtime") or item.get("mod_time"))
        full = f"{path}/{name}" if path else name
        out.append((Entry(full, is_dir, 0 if is_dir else size, mtime), True))
    return out


def parse_html_index(raw: bytes, path: str, folder_url: str,
                     charset: str | None = None) -> list[tuple[Entry, bool]]:
    """nginx, Apache or Caddy HTML. Exact only where the nginx row format gives bytes."""
    text = raw.decode(charset or "utf-8", errors="replace")
    seen: set[str] = set()
    out = []
    for href, after in _links(text):
        try:
            child = child_name(href, folder_url)
        except UnicodeDecodeError:
            raise ProtocolError(f"index of {path or '/'}: link {href!r} is not UTF-8") from None
        if child is None:
            continue
        name, is_dir = child
        if name in seen:
            continue  # Caddy and Apache link some names twice (icon and text)
        seen.add(name)
        full = f"{path}/{name}" if path else name
        row = _NGINX_ROW.match(after)
        if row is not None:
            mtime = _nginx_mtime(row.group(1))
            size = 0 if is_dir or row.group(2) == "-" else int(row.group(2))
            out.append((Entry(full, is_dir, size, mtime), True))
        else:
            out.append((Entry(full, is_dir), is_dir))
    return out


@dataclass(frozen=True)
class HttpIndexOptions(SourceOptions):
    """None yet: a folder's URL says all there is to say."""


class HttpIndexSource(HttpSource):
    def __init__(self, url: str, settings: SourceSettings,
                 limiter: Limiter | None = None, *, transport: Transport | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{url!r} is not an http(s) URL of a folder")
        if parts.query or parts.fragment:
            raise ConfigError(f"{url!r}: a folder URL takes no query or fragment")
        self._root = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/"
        self.name = self._root
        super().__init__(settings, limiter, transport)

    @classmethod
    def from_url(cls, url: str, options: HttpIndexOptions, settings: SourceSettings,
                 limiter: Limiter | None = None) -> HttpIndexSource:
        return cls(url, settings, limiter)

    def _url(self, path: str, folder: bool = False) -> str:
        quoted = quote(path, safe="/~") if path else ""
        return self._root + quoted + ("/" if folder and path else "")

    async def _send(self, method: str, url: str, what: str,
                    headers: Mapping[str, str] = {}, budget: Budget = "fetch") -> Reply:
        """One try; returns an open, successful answer (after redirects)."""
        reply = await self._transport.send(Request(method, url, what, headers, budget))
        if reply.status < 300:
            return reply
        reply.release()  # reused only when the error page was read to its end
        raise self._fail(reply, what)

    def _fail(self, resp: Reply, what: str) -> MirrorError:
        detail = status_detail(resp)
        text = f"{what}: the server answered {resp.status} {resp.reason or ''}".rstrip()
        transient = transient_for_status(resp.status, text, detail,
                                         retry_after_s(resp.headers.get("Retry-After")))
        if transient is not None:
            return transient
        if resp.status == 401:
            return CredentialsRejected(f"{text}: the server wants credentials", detail)
        if resp.status == 404:
            return NotFound(f"{what}: not found on the source (deleted after listing?)", detail)
        if resp.status == 403:
            return AccessDenied(f"{text}: access refused", detail)
        return PermanentError(text, detail)

    async def list_page(self, path: str, cursor: str | None) -> Page:
        url = self._url(path, folder=True)
        what = f"list {path or '/'}"

        async def fetch() -> tuple[bytes, str, str | None, str]:
            resp = await self._send("GET", url, what, {
                "Accept": "application/json;q=1.0, text/html;q=0.9"}, "list")
            try:
                too_big = ProtocolError(f"{what}: the index page is over "
                                        f"{MAX_INDEX_BYTES >> 20} MB")
                if resp.content_length is not None and resp.content_length > MAX_INDEX_BYTES:
                    raise too_big
                # The whole body (a line that drops before it is complete raises "cut short").
                raw = await resp.read(MAX_INDEX_BYTES + 1)
                if len(raw) > MAX_INDEX_BYTES:
                    raise too_big
                ctype, charset = _content_type(resp.headers.get("Content-Type"))
                return raw, ctype, charset, resp.url
            finally:
                resp.release()

        raw, ctype, charset, final_url = await with_retries(self._settings, what, fetch)
        if not final_url.endswith("/"):
            final_url += "/"
        if ctype == "application/json":
            found = parse_json_index(raw, path)
        elif ctype in ("text/html", "application/xhtml+xml"):
            found = parse_html_index(raw, path, final_url, charset)
        else:
            raise ProtocolError(f"{what}: {ctype or 'no content type'} is not a folder index "
                                "(expected an HTML or JSON directory listing)")
        return Page(tuple(await self._complete(found)), None)

    async def _complete(self, found: list[tuple[Entry, bool]]) -> list[Entry]:
        """HEAD the files the index gave no exact size for."""
        if all(known for _, known in found):
            return [entry for entry, _ in found]  # nginx: no task per entry
        gate = asyncio.Semaphore(HEAD_CONCURRENCY)

        async def exact(entry: Entry, known: bool) -> Entry:
            if known:
                return entry
            async with gate:
                return await self.stat(entry.path)

        return list(await asyncio.gather(*(exact(e, k) for e, k in found)))

    async def stat(self, path: str) -> Entry:
        if not path:
            return await self._probe_root()
        url = self._url(path)
        what = f"stat {path}"

        async def head() -> Entry:
            resp = await self._send("HEAD", url, what)
            try:
                if resp.url.endswith("/"):
                    return Entry(path, True)  # redirected to the folder
                size = resp.content_length
                if size is None:
                    raise ProtocolError(f"{what}: HEAD gave no Content-Length")
                return Entry(path, False, size, _http_date(resp.headers.get("Last-Modified")))
            finally:
                resp.release()

        return await with_retries(self._settings, what, head)

    async def _probe_root(self) -> Entry:
        """The folder itself answers: a wrong URL or a server that is down then fails the run
        at once (``check_source``), instead of its first listing being retried for minutes."""
        url, what = self._url(""), "open the folder's index"

        async def probe(at: str) -> Entry:
            resp = await self._send("GET", at, what, {}, "list")
            resp.close()  # the first listing reads it
            return Entry("", at.endswith("/"))

        try:
            return await with_retries(self._settings, what, lambda: probe(url))
        except NotFound:
            if url.count("/") <= 3:
                raise
            # The URL of a file (given without the slash we add): say so, not "missing".
            try:
                return await with_retries(self._settings, what, lambda: probe(url[:-1]))
            except MirrorError:
                pass
            raise

    @asynccontextmanager
    async def open(self, path: str, offset: int = 0) -> AsyncIterator[HttpBody]:
        url = self._url(path)
        what = f"GET {path}"
        headers = {"Range": f"bytes={offset}-"} if offset > 0 else {}
        resp = await with_retries(self._settings, what, lambda: self._send("GET", url, what,
                                                                          headers))
        try:
            yield HttpBody.of(resp, None)
        finally:
            resp.release()


BACKEND = Backend(schemes=("http", "https"), form="http(s)://HOST/PATH/",
                  options=HttpIndexOptions, open=HttpIndexSource.from_url)

__all__ = ["BACKEND", "HttpIndexOptions", "HttpIndexSource", "child_name", "parse_html_index",
           "parse_json_index"]
