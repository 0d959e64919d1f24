"""JFrog Artifactory source (``artifactory://REPO/PATH``, ``--endpoint https://HOST/artifactory``).

Facts from JFrog's REST API documentation (``reference/more-sources.md``): a folder is listed
in one answer, without paging, by the Storage API's file list
(``GET /api/storage/REPO/PATH?list&deep=0&listFolders=1``: sizes, times, SHA-1 and SHA-256 in
one call; Artifactory Pro, signed-in users) or its folder info (``GET /api/storage/REPO/PATH``:
names only, so each file's size, time and checksums come from its file info, the same URL).
Files download from ``GET /REPO/PATH`` with Range and ``X-Checksum-*`` headers. Errors come as
``{"errors": [{"status", "message"}]}``; the message goes into the parked reason.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit

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
from mirror.sources.artifactory_parse import (
    error_message,
    has_files_list,
    header_checksum,
    parse_file_list,
    parse_folder_info,
    parse_item_info,
)
from mirror.sources.backend import Backend, SourceOptions, option
from mirror.sources.base import Entry, Page
from mirror.sources.httpclient import HttpSource, status_detail, transient_for_status, with_retries
from mirror.sources.transport import HttpBody, Reply, Request, Transport, retry_after_s

LIST_MODES = ("auto", "file-list", "folder-info")
FILE_LIST_QUERY = "?list&deep=0&listFolders=1"
CREDENTIALS = ("ARTIFACTORY_TOKEN", "ARTIFACTORY_USER", "ARTIFACTORY_PASSWORD",
               "ARTIFACTORY_API_KEY")
MAX_REDIRECTS = 5
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
_ERROR_BODY_MAX = 64 * 1024
# A folder's answer is one JSON document however many entries it has; beyond this it is
# refused rather than held in memory.
MAX_LISTING_BYTES = 256 * 1024 * 1024
# The file list is unavailable on this server, not for one folder: Artifactory OSS answers
# 400 "available only in Artifactory Pro"; a server without the API 405 or 501.
_NO_FILE_LIST = frozenset((400, 405, 501))


@dataclass(frozen=True)
class ArtifactoryOptions(SourceOptions):
    endpoint: str | None = option(
        None, "Artifactory's base URL, https://HOST/artifactory (required).", metavar="URL")
    list_mode: str = option(
        "auto", "How folders are listed: file-list (sizes and checksums in one request a "
        "folder; Artifactory Pro, signed-in users), folder-info (any edition, anonymous too; "
        "one more request per file), or auto (the file list, folder info where it is "
        "refused).", metavar="MODE")
    info_concurrency: int = option(
        16, "File info requests at once for a folder listed by folder info.", min=1, max=256)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.list_mode not in LIST_MODES:
            raise ConfigError(f"--list-mode must be one of {', '.join(LIST_MODES)}, "
                              f"not {self.list_mode!r}")


@dataclass(frozen=True)
class Credential:
    """How requests sign in; ``kind`` names it in messages, never its value."""

    kind: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def anonymous(self) -> bool:
        return not self.headers

    @classmethod
    def from_settings(cls, settings: SourceSettings) -> Credential:
        """The first set of: a token, a user and password (or API key as the password), an
        API key; anonymous when none is (where the server allows anonymous reads)."""
        token = settings.credential("ARTIFACTORY_TOKEN")
        user = settings.credential("ARTIFACTORY_USER")
        password = settings.credential("ARTIFACTORY_PASSWORD")
        api_key = settings.credential("ARTIFACTORY_API_KEY")
        if token:
            return cls("the access token (ARTIFACTORY_TOKEN)",
                       {"Authorization": f"Bearer {token}"})
        if user or password:
            if not (user and password):
                raise ConfigError("ARTIFACTORY_USER and ARTIFACTORY_PASSWORD go together: set "
                                  "both (the password may be an API key), or neither")
            pair = base64.b64encode(f"{user}:{password}".encode()).decode()
            return cls("the user and password (ARTIFACTORY_USER, ARTIFACTORY_PASSWORD)",
                       {"Authorization": f"Basic {pair}"})
        if api_key:
            return cls("the API key (ARTIFACTORY_API_KEY)", {"X-JFrog-Art-Api": api_key})
        return cls("anonymous access")


class ArtifactorySource(HttpSource):
    def __init__(self, repo: str, prefix: str, credential: Credential,
                 settings: SourceSettings, limiter: Limiter | None = None, *,
                 options: ArtifactoryOptions, transport: Transport | None = None) -> None:
        endpoint = (options.endpoint or "").rstrip("/")
        if not endpoint:
            raise ConfigError("artifactory:// needs --endpoint, the server's base URL "
                              "(https://HOST/artifactory)")
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--endpoint must be an http(s) URL, got {endpoint!r}")
        self.name = f"artifactory://{repo}/{prefix}"
        self._options = options
        self._repo = quote(repo, safe="~")
        self._prefix = prefix
        self._credential = credential
        self._endpoint = endpoint
        self._origin = (parts.scheme, parts.netloc)
        # Learnt once per process: this server has no file list for us (OSS, anonymous).
        self._file_list_refused = options.list_mode == "folder-info"
        super().__init__(settings, limiter, transport)

    @classmethod
    def from_url(cls, url: str, options: ArtifactoryOptions, settings: SourceSettings,
                 limiter: Limiter | None = None) -> ArtifactorySource:
        repo, _, prefix = url.split("://", 1)[1].partition("/")
        if not repo:
            raise ConfigError(f"no repository in {url!r}; expected artifactory://REPO/PATH")
        return cls(repo, prefix.strip("/"), Credential.from_settings(settings), settings,
                   limiter, options=options)

    def _quoted(self, path: str) -> str:
        """``REPO/KEY`` percent-encoded (``;`` and ``+`` too: Artifactory reads ``;`` as
        matrix parameters)."""
        key = "/".join(p for p in (self._prefix, path) if p)
        return f"{self._repo}/{quote(key, safe='/~')}" if key else self._repo

    def _storage_url(self, path: str) -> str:
        return f"{self._endpoint}/api/storage/{self._quoted(path)}"

    def _fail(self, reply: Reply, what: str, raw: bytes) -> MirrorError:
        """Translate an error answer (with the start of its envelope) into our tree."""
        status, detail = reply.status, status_detail(reply)
        message = error_message(raw) or reply.reason or ""
        text = f"{what}: Artifactory answered {status} {message}".rstrip()
        transient = transient_for_status(status, text, detail,
                                         retry_after_s(reply.headers.get("Retry-After")))
        if transient is not None:
            return transient
        if status == 401:
            if self._credential.anonymous:
                return CredentialsRejected(
                    f"Artifactory refused anonymous access ({message}): set ARTIFACTORY_TOKEN, "
                    "or ARTIFACTORY_USER and ARTIFACTORY_PASSWORD, or ARTIFACTORY_API_KEY",
                    detail)
            return CredentialsRejected(
                f"Artifactory rejected {self._credential.kind} ({message}): check it", detail)
        if status == 404:
            return NotFound(f"{what}: not found on the source: {message}", detail)
        if status == 403:
            return AccessDenied(f"{what}: Artifactory refused access: {message}", detail)
        return PermanentError(text, detail)

    async def _send(self, url: str, what: str, budget: Budget,
                    extra: Mapping[str, str] = {}) -> Reply:
        """One try; an open, successful answer. Redirects are followed here, not by the
        client: a download sent on to cloud storage must not carry our credential there."""
        headers = {**self._credential.headers, **extra}
        for _ in range(MAX_REDIRECTS + 1):
            reply = await self._transport.send(Request("GET", url, what, headers, budget,
                                                       follow_redirects=False))
            if reply.status < 300:
                return reply
            raw = b""
            with suppress(MirrorError):  # the status tells enough
                raw = await reply.read(_ERROR_BODY_MAX)
            reply.release()  # reused only when the body was read to its end
            location = reply.headers.get("Location")
            if reply.status not in _REDIRECTS or not location:
                raise self._fail(reply, what, raw)
            url = urljoin(url, location)
            target = urlsplit(url)
            if (target.scheme, target.netloc) != self._origin:
                headers = dict(extra)
        raise ProtocolError(f"{what}: more than {MAX_REDIRECTS} redirects")

    async def _json(self, url: str, what: str) -> bytes:
        async def fetch() -> bytes:
            reply = await self._send(url, what, "list", {"Accept": "application/json"})
            try:
                raw = await reply.read(MAX_LISTING_BYTES + 1)
            finally:
                reply.release()
            if len(raw) > MAX_LISTING_BYTES:
                raise ProtocolError(f"{what}: the answer is over {MAX_LISTING_BYTES >> 20} MB")
            return raw

        return await with_retries(self._settings, what, fetch)

    async def list_page(self, path: str, cursor: str | None) -> Page:
        what = f"list {path or '/'}"
        if not self._file_list_refused:
            try:
                raw = await self._json(self._storage_url(path) + FILE_LIST_QUERY, what)
            except MirrorError as exc:
                if not self._falls_back(exc):
                    raise
            else:
                if has_files_list(raw):
                    return Page(tuple(parse_file_list(raw, path)), None)
                self._file_list_refused = True  # a server that ignores ?list: folder info
                return Page(await self._sized(path, parse_folder_info(raw, path)), None)
        raw = await self._json(self._storage_url(path), what)
        return Page(await self._sized(path, parse_folder_info(raw, path)), None)

    def _falls_back(self, exc: MirrorError) -> bool:
        """Whether a refused file list is worth asking folder info instead (``auto``)."""
        if self._options.list_mode != "auto":
            return False
        status = exc.detail.http_status
        if status in _NO_FILE_LIST or (status == 401 and self._credential.anonymous):
            self._file_list_refused = True  # so for every folder: ask no more
            return True
        # This folder's file list only (a permission of the file list); a folder we may not
        # read is refused by folder info too, with its own reason.
        return status == 403

    async def _sized(self, folder: str, entries: list[Entry]) -> tuple[Entry, ...]:
        """Folder info gives names only: each file's info gives its size, time and checksum."""
        gate = asyncio.Semaphore(self._options.info_concurrency)
        prefix = f"{folder}/" if folder else ""

        async def info(entry: Entry) -> Entry | None:
            name = entry.path[len(prefix):]
            if entry.is_dir or name in ("", ".", "..") or "/" in name or "\x00" in name:
                return entry  # a hostile name goes to the crawler as listed, to be refused
            async with gate:
                try:
                    return await self.stat(entry.path)
                except NotFound:
                    return None  # deleted since the folder was listed

        tasks = [asyncio.ensure_future(info(e)) for e in entries]
        try:
            found = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one failed: the page fails, its other requests need not run
                task.cancel()
            raise
        return tuple(e for e in found if e is not None)

    async def stat(self, path: str) -> Entry:
        what = f"stat {path or '/'}"
        return parse_item_info(await self._json(self._storage_url(path), what), path)

    @asynccontextmanager
    async def open(self, path: str, offset: int = 0) -> AsyncIterator[HttpBody]:
        url = f"{self._endpoint}/{self._quoted(path)}"
        what = f"GET {path}"
        extra = {"Range": f"bytes={offset}-"} if offset > 0 else {}
        reply = await with_retries(self._settings, what,
                                   lambda: self._send(url, what, "fetch", extra))
        try:
            yield HttpBody.of(reply, checksum=header_checksum(reply.headers))
        finally:
            reply.release()


BACKEND = Backend(schemes=("artifactory",), form="artifactory://REPO/PATH",
                  options=ArtifactoryOptions, open=ArtifactorySource.from_url,
                  credentials=CREDENTIALS)

__all__ = ["BACKEND", "LIST_MODES", "ArtifactoryOptions", "ArtifactorySource", "Credential"]
