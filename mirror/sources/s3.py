"""S3 and S3-compatible stores (``s3://BUCKET/PREFIX``): AWS, MinIO, Ceph, Aliyun OSS, Tencent
COS, Huawei OBS, UpYun's S3 endpoint.

Facts from ``reference/more-sources.md``: ListObjectsV2 pages (``delimiter=/``, continuation
tokens; ``start-after`` for flat key ranges), ``encoding-type=url`` keys, a single-part
ETag is the body's MD5 (a multipart one, ``...-N``, is not), errors as ``<Error><Code>``
bodies, 503 ``SlowDown`` when pushed. Requests are signed by botocore (``s3auth``) and go
out through the transport like every other source's; answers are read by ``s3xml``.

Keys map to paths one to one, relative to PREFIX; the crawler refuses what cannot be a path
(``..``, ``.``, empty parts from ``//`` or a leading ``/``). A zero-byte ``folder/`` key is a
folder marker: the folder is made, no file written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urlsplit

from mirror.errors import (
    AccessDenied,
    ConfigError,
    CredentialsRejected,
    ErrorDetail,
    MirrorError,
    NotFound,
    PermanentError,
    ProtocolError,
    RateLimited,
)
from mirror.ratelimit import Budget, Limiter
from mirror.settings import SourceSettings
from mirror.sources.backend import Backend, SourceOptions, option
from mirror.sources.base import Entry, Page
from mirror.sources.httpclient import HttpSource, transient_for_status, with_retries
from mirror.sources.s3auth import ENV_VARS, Signer, resolve
from mirror.sources.s3xml import Range, md5_of_etag, parse_error, parse_list
from mirror.sources.transport import HttpBody, Reply, Request, Transport, retry_after_s

MAX_KEYS = 1000  # S3 answers at most 1,000 keys a page whatever is asked
_ERROR_BODY_MAX = 64 * 1024
# Codes that say the store is pushed too hard, whatever the status they come with.
THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
                            "RequestLimitExceeded", "RequestThrottled"})
# Codes that say the credentials (not the permissions) are wrong: no request can succeed.
CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                              "InvalidToken", "TokenRefreshRequired", "InvalidSecurity",
                              "AuthorizationHeaderMalformed"})


def quote_key(key: str) -> str:
    """A key as S3 wants it in a path: every byte but ``A-Za-z0-9-._~`` and ``/`` escaped,
    the same bytes the signature covers (``+``, ``%``, ``?``, ``#``, spaces, unicode)."""
    return quote(key, safe="/~")


def quote_param(value: str) -> str:
    return quote(value, safe="-_.~")


@dataclass(frozen=True)
class S3Options(SourceOptions):
    endpoint: str | None = option(
        None, "S3 endpoint (default AWS: https://s3.amazonaws.com or its region's).",
        metavar="URL")
    region: str | None = option(
        None, "Signing region (default AWS_REGION, AWS_DEFAULT_REGION or the profile's, else "
        "us-east-1).", metavar="NAME")
    path_style: bool | None = option(
        None, "Path-style requests (ENDPOINT/BUCKET/KEY) or virtual-hosted ones "
        "(BUCKET.ENDPOINT/KEY); default path-style for a custom --endpoint, virtual-hosted "
        "on AWS.")
    flat: bool = option(False, "List without the delimiter: one listing of every key under "
                        "the prefix, split into key ranges (for one huge prefix).")
    list_limit: int = option(MAX_KEYS, "Keys per listing page (S3 max-keys).", min=1,
                             max=MAX_KEYS)
    anonymous: bool = option(False, "Send unsigned requests (a public bucket) instead of "
                             "failing when no AWS credentials are found.")


def _dns_safe(bucket: str) -> bool:
    """Whether a bucket can be a host name under TLS (no dots, no capitals)."""
    return bucket.islower() and "." not in bucket and "_" not in bucket


class S3Source(HttpSource):
    def __init__(self, bucket: str, prefix: str, settings: SourceSettings,
                 limiter: Limiter | None = None, *, options: S3Options | None = None,
                 transport: Transport | None = None) -> None:
        self._options = options or S3Options()
        endpoint = self._options.endpoint
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise ConfigError(f"--endpoint must be an http(s) URL, got {endpoint!r}")
        self.name = f"s3://{bucket}/{prefix}"
        self._bucket = bucket
        self._prefix = prefix
        self._signer: Signer | None = None
        self._resolving = asyncio.Lock()
        self._base = ""  # where keys start: ENDPOINT/BUCKET or https://BUCKET.HOST
        self._listing = ""  # where the bucket's listings are asked for
        super().__init__(settings, limiter, transport)

    @classmethod
    def from_url(cls, url: str, options: S3Options, settings: SourceSettings,
                 limiter: Limiter | None = None) -> S3Source:
        bucket, _, prefix = url.split("://", 1)[1].partition("/")
        if not bucket:
            raise ConfigError(f"no bucket in {url!r}; expected s3://BUCKET/PREFIX")
        return cls(bucket, prefix.strip("/"), settings, limiter, options=options)

    async def _ready(self) -> Signer:
        """The signer, the chain resolved at the first request (in a thread: files, maybe a
        metadata service), and where the bucket's URLs start."""
        if self._signer is None:
            async with self._resolving:
                if self._signer is None:
                    o = self._options
                    identity = await asyncio.to_thread(resolve, self._settings.env, o.region,
                                                       o.anonymous)
                    self._base, self._listing = self._urls(identity.region)
                    self._signer = Signer(identity)
        return self._signer

    def _urls(self, region: str) -> tuple[str, str]:
        o = self._options
        if o.endpoint is not None:
            endpoint = o.endpoint.rstrip("/")
            path_style = True if o.path_style is None else o.path_style
        else:
            host = "s3.amazonaws.com" if region == "us-east-1" else f"s3.{region}.amazonaws.com"
            endpoint = f"https://{host}"
            path_style = not _dns_safe(self._bucket) if o.path_style is None else o.path_style
        if path_style:
            base = f"{endpoint}/{quote_key(self._bucket)}"
            return base, base
        scheme, _, host = endpoint.partition("://")
        base = f"{scheme}://{self._bucket}.{host}"
        return base, base + "/"

    def _key(self, path: str) -> str:
        return "/".join(p for p in (self._prefix, path) if p)

    async def _send(self, method: str, url: str, what: str, extra: Mapping[str, str] = {},
                    budget: Budget = "fetch") -> Reply:
        """One signed try (a fresh date and signature each time); an open, successful
        answer, or the store's error translated."""
        signer = await self._ready()
        headers = signer.sign(await signer.current(), method, url, extra)
        reply = await self._transport.send(Request(method, url, what, headers, budget,
                                                   follow_redirects=False))
        if reply.status < 300:
            return reply
        try:
            raw = b"" if method == "HEAD" else await reply.read(_ERROR_BODY_MAX)
        except MirrorError:
            raw = b""  # the status tells enough
        finally:
            reply.release()
        raise self._fail(reply, what, raw)

    def _fail(self, resp: Reply, what: str, raw: bytes) -> MirrorError:  # noqa: PLR0911  (one answer per kind of refusal)
        """Translate an error answer (with its ``<Error>`` body) into our tree."""
        code, message = parse_error(raw)
        status = resp.status
        detail = ErrorDetail(http_status=status, code=code,
                             request_id=resp.headers.get("x-amz-request-id"))
        said = f"{code}: {message}" if code and message else code or message or resp.reason
        text = f"{what}: S3 answered {status} {said}".rstrip()
        if status == 301 or code in ("PermanentRedirect", "IncorrectEndpoint"):
            region = resp.headers.get("x-amz-bucket-region")
            hint = f"run with --region {region}" if region else "check --endpoint and --region"
            return ConfigError(f"bucket {self._bucket!r} is not served here ({said}): {hint}",
                               detail)
        if status == 401 or code in CREDENTIAL_CODES:
            hint = ("check --region" if code == "AuthorizationHeaderMalformed" else
                    "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN "
                    "(or AWS_PROFILE)")
            return CredentialsRejected(f"S3 rejected the credentials ({said}): {hint}", detail)
        retry_after = retry_after_s(resp.headers.get("Retry-After"))
        if status == 429 or code in THROTTLE_CODES:
            return RateLimited(text, detail, retry_after)
        transient = transient_for_status(status, text, detail, retry_after)
        if transient is not None:
            return transient
        if status == 404:
            gone = "no such bucket" if code == "NoSuchBucket" else "not found on the source"
            return NotFound(f"{what}: {gone} ({said})", detail)
        if status == 403:
            return AccessDenied(f"{what}: S3 refused access ({said})", detail)
        return PermanentError(text, detail)

    async def _list(self, prefix: str, what: str, *, delimiter: bool, limit: int,
                    token: str | None = None, after: str | None = None) -> bytes:
        params = {"list-type": "2", "encoding-type": "url", "max-keys": str(limit)}
        if prefix:
            params["prefix"] = prefix
        if delimiter:
            params["delimiter"] = "/"
        if token:
            params["continuation-token"] = token
        if after:
            params["start-after"] = after

        async def fetch() -> bytes:
            await self._ready()
            query = "&".join(f"{k}={quote_param(v)}" for k, v in sorted(params.items()))
            resp = await self._send("GET", f"{self._listing}?{query}", what, budget="list")
            try:
                return await resp.read()
            finally:
                resp.release()

        return await with_retries(self._settings, what, fetch)

    async def list_page(self, path: str, cursor: str | None) -> Page:
        key = self._key(path)
        prefix = f"{key}/" if key else ""
        what = f"list {path or '/'}"
        if self._options.flat:
            return await self._list_flat(path, prefix, cursor, what)
        listed = parse_list(await self._list(prefix, what, delimiter=True,
                                             limit=self._options.list_limit, token=cursor),
                            f"listing of {path or '/'}")
        # The folder's own "folder/" key is its marker, unless it holds bytes: then it is
        # a file without a name (path "folder/"), which the crawler refuses.
        entries = [_file(path, k[len(prefix):], size, mtime, etag)
                   for k, size, mtime, etag in listed.files if k != prefix or size > 0]
        entries += [_folder(path, p[len(prefix):]) for p in listed.prefixes]
        if listed.truncated and not listed.next_token:
            raise ProtocolError(f"listing of {path or '/'}: truncated without a continuation "
                                "token")
        return Page(tuple(entries), listed.next_token if listed.truncated else None)

    async def _list_flat(self, path: str, prefix: str, cursor: str | None, what: str) -> Page:
        """One page of a key range (``s3xml.Range``): keys with their paths below ``path``
        (the crawler checks each part of them); folder markers as folders to make."""
        where = f"flat listing of {path or '/'}"
        keys = Range.of(cursor, where)
        listed = parse_list(await self._list(prefix, what, delimiter=False,
                                             limit=self._options.list_limit,
                                             after=keys.after or None), where)
        inside = [f for f in listed.files if keys.holds(f[0])]
        entries = []
        for k, size, mtime, etag in inside:
            rel = k[len(prefix):]
            if rel == "" and size == 0:
                continue  # the marker of the listed folder itself
            if size == 0 and rel.endswith("/"):
                entries.append(Entry(_join(path, rel[:-1]) or "/", True, 0, mtime))
            else:
                entries.append(_file(path, rel, size, mtime, etag))
        if not listed.truncated or len(inside) < len(listed.files) or not inside:
            return Page(tuple(entries), None, flat=True)
        rest, fork = keys.split(inside[0][0], inside[-1][0])
        return Page(tuple(entries), rest.cursor(), flat=True,
                    forks=(fork.cursor(),) if fork is not None else ())

    async def stat(self, path: str) -> Entry:
        key = self._key(path)
        what = f"stat {path or '/'}"
        if key:
            try:
                return await with_retries(self._settings, what, lambda: self._head(path, key))
            except NotFound:
                pass  # no such key; maybe a folder (a prefix with keys under it)
        listed = parse_list(await self._list(f"{key}/" if key else "", what, delimiter=True,
                                             limit=1), what)
        if key and not (listed.files or listed.prefixes):
            raise NotFound(f"{what}: no such key or prefix on the source",
                           ErrorDetail(http_status=404, code="NoSuchKey"))
        return Entry(path, True)

    async def _head(self, path: str, key: str) -> Entry:
        what = f"stat {path}"
        await self._ready()
        resp = await self._send("HEAD", f"{self._base}/{quote_key(key)}", what)
        try:
            h = resp.headers
            size = int(h.get("Content-Length") or 0)
            modified = h.get("Last-Modified")
            mtime = parsedate_to_datetime(modified).timestamp() if modified else None
            return Entry(path, False, size, mtime, md5_of_etag(h.get("ETag")))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"{what}: unreadable HEAD headers: {exc}") from exc
        finally:
            resp.release()

    @asynccontextmanager
    async def open(self, path: str, offset: int = 0) -> AsyncIterator[HttpBody]:
        what = f"GET {path}"
        key = self._key(path)
        extra = {"Range": f"bytes={offset}-"} if offset > 0 else {}

        async def get() -> Reply:
            await self._ready()
            return await self._send("GET", f"{self._base}/{quote_key(key)}", what, extra)

        resp = await with_retries(self._settings, what, get)
        try:
            yield HttpBody.of(resp, md5_of_etag(resp.headers.get("ETag")))
        finally:
            resp.release()


def _join(path: str, rel: str) -> str:
    return f"{path}/{rel}" if path else rel


def _file(path: str, rel: str, size: int, mtime: float | None, etag: str | None) -> Entry:
    # A key ending in "/" with bytes in it (rel "" below its folder) keeps its empty last
    # part: the crawler refuses it by name.
    return Entry(_join(path, rel), False, size, mtime, etag)


def _folder(path: str, rel: str) -> Entry:
    """A common prefix: its path without the one delimiter that ends it. The prefix of keys
    that start with "/" (at the top: "/") keeps that "/", an absolute name the crawler
    refuses; one of "a//b" keeps an empty last part ("a/"), refused too."""
    name = rel[:-1] if rel.endswith("/") else rel
    return Entry(_join(path, name) or "/", True)


BACKEND = Backend(schemes=("s3",), form="s3://BUCKET/PREFIX", options=S3Options,
                  open=S3Source.from_url, credentials=ENV_VARS)

__all__ = ["BACKEND", "CREDENTIAL_CODES", "MAX_KEYS", "THROTTLE_CODES", "S3Options",
           "S3Source", "quote_key"]
