"""A small S3 front for tests: checks each request's signature as S3 does, then forwards it to
a real S3 API server (moto), failing a share of first attempts on purpose.

moto accepts any signature and never fails, so what S3 would refuse or do when pushed is done
here:

- the SigV4 signature is checked from the request as received, with the canonical path and
  query S3 computes (each segment decoded and encoded again): a key sent with other bytes
  than those signed (a bare ``+``, a ``%`` left as is) is refused as S3 refuses it, with
  ``SignatureDoesNotMatch``; an unknown access key gets ``InvalidAccessKeyId``, a request
  without a signature ``AccessDenied``;
- ``S3Faults``: shares of first attempts (per method, path and query, decided by a hash of the
  seed: the same ones every run) answered 503 ``SlowDown``, 500 ``InternalError`` or 429, or
  whose body is cut half-way under a full Content-Length;
- ``forced``: a key (``bucket/key``) answered with a given status and code, every time.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import quote, unquote

import aiohttp
from aiohttp import web
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from yarl import URL

from mirror.testing.moto import ACCESS_KEY, SECRET_KEY

_FORWARDED = ("range", "content-length", "content-type", "content-md5")
_RETURNED = ("content-type", "etag", "last-modified", "content-range", "accept-ranges")


@dataclass(frozen=True)
class S3Faults:
    rate_503: float = 0.0  # SlowDown
    rate_500: float = 0.0  # InternalError
    rate_429: float = 0.0  # what some compatible stores answer when pushed
    rate_cut: float = 0.0  # object bodies cut half-way, then the connection closes
    seed: int = 0


@dataclass
class ProxyStats:
    requests: int = 0
    faults: dict[str, int] = field(
        default_factory=lambda: {"503": 0, "500": 0, "429": 0, "cut": 0})
    rejected: int = 0  # bad signatures and keys


def error_body(code: str, message: str) -> bytes:
    request_id = uuid.uuid4().hex[:16].upper()
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>{request_id}</RequestId></Error>").encode()


def _canonical(raw_path: str) -> str:
    """The URL S3 signs for a request line: path and query decoded and encoded again."""
    path, _, query = raw_path.partition("?")
    canon = quote(unquote(path), safe="/~")
    pairs = [p.partition("=") for p in query.split("&") if p] if query else []
    canon_query = "&".join(f"{quote(unquote(k), safe='-_.~')}={quote(unquote(v), safe='-_.~')}"
                           for k, _, v in pairs)
    return canon + ("?" + canon_query if canon_query else "")


def signature_problem(request: web.Request, secrets: dict[str, str]) -> tuple[str, str] | None:
    """Why S3 would refuse this request's signature (code, message); None when it is good."""
    auth = request.headers.get("Authorization", "")
    if not auth:
        return "AccessDenied", "Access Denied"
    try:
        fields = dict(part.strip().split("=", 1)
                      for part in auth.removeprefix("AWS4-HMAC-SHA256 ").split(","))
        access, date, region, service, _ = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        given = fields["Signature"]
    except (KeyError, ValueError):
        return "AuthorizationHeaderMalformed", "The authorization header is malformed"
    secret = secrets.get(access)
    if secret is None:
        return "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist"
    headers = {name: request.headers.get(name, "") for name in signed}
    url = f"http://{request.host}{_canonical(request.raw_path)}"
    aws = AWSRequest(method=request.method, url=url, headers=headers)
    aws.context["timestamp"] = request.headers.get("X-Amz-Date", "")
    auth_v4 = S3SigV4Auth(Credentials(access, secret), service, region)
    wanted = auth_v4.signature(auth_v4.string_to_sign(aws, auth_v4.canonical_request(aws)), aws)
    if not aws.context["timestamp"].startswith(date) or not hmac.compare_digest(wanted, given):
        return "SignatureDoesNotMatch", ("The request signature we calculated does not match "
                                         "the signature you provided")
    return None


class S3FaultProxy:
    def __init__(self, upstream: str, *, faults: S3Faults = S3Faults(),
                 secrets: dict[str, str] | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = faults
        self.secrets = {ACCESS_KEY: SECRET_KEY} if secrets is None else secrets
        self.forced: dict[str, tuple[int, str]] = {}  # "bucket/key" -> (status, code)
        self.stats = ProxyStats()
        self._seen: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the S3 proxy is not started")
        return self._url

    async def start(self) -> str:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self._url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        self._client = aiohttp.ClientSession(auto_decompress=False)
        return self._url

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._client = self._runner = None

    async def __aenter__(self) -> S3FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def rearm(self) -> None:
        """Forget which requests were tried: the same first attempts fail again."""
        self._seen.clear()

    def _fault(self, request: web.Request) -> str | None:
        f = self.faults
        ident = f"{request.method}|{request.raw_path}"
        if ident in self._seen:
            return None
        self._seen.add(ident)
        digest = hashlib.blake2b(f"{f.seed}|{ident}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2**64
        for name, share in (("503", f.rate_503), ("500", f.rate_500), ("429", f.rate_429),
                            ("cut", f.rate_cut)):
            if u < share:
                return name
            u -= share
        return None

    def _error(self, request: web.Request, status: int, code: str, message: str
               ) -> web.Response:
        body = b"" if request.method == "HEAD" else error_body(code, message)
        return web.Response(status=status, body=body, content_type="application/xml")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        problem = signature_problem(request, self.secrets) if self.secrets else None
        if problem is not None:
            self.stats.rejected += 1
            return self._error(request, 403, *problem)
        forced = self.forced.get(unquote(request.path).lstrip("/"))
        if forced is not None:
            return self._error(request, forced[0], forced[1], "forced by the test")
        fault = self._fault(request)
        if fault == "cut" and not (request.method == "GET" and "list-type" not in
                                   request.query_string):
            fault = None  # only object bodies are cut
        if fault in ("503", "500", "429"):
            self.stats.faults[fault] += 1
            code, message = {"503": ("SlowDown", "Please reduce your request rate."),
                             "500": ("InternalError", "We encountered an internal error."),
                             "429": ("TooManyRequests", "Too many requests")}[fault]
            return self._error(request, int(fault), code, message)
        return await self._forward(request, fault == "cut")

    async def _forward(self, request: web.Request, cut: bool) -> web.StreamResponse:
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in _FORWARDED or k.lower() == "authorization"
                   or k.lower().startswith("x-amz-")}
        body = await request.read()
        async with self._client.request(
                request.method, URL(self.upstream + request.raw_path, encoded=True),
                headers=headers, data=body or None, allow_redirects=False) as upstream:
            out = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items()
                if k.lower() in _RETURNED or k.lower().startswith("x-amz-")})
            length = upstream.headers.get("Content-Length")
            if length is not None:
                out.content_length = int(length)
            cut = cut and upstream.status in (200, 206) and int(length or 0) > 1
            try:
                await out.prepare(request)
                if request.method == "HEAD":
                    return out
                data = await upstream.read()
                if cut:
                    self.stats.faults["cut"] += 1
                    await out.write(data[: len(data) // 2])
                    if request.transport is not None:
                        request.transport.close()
                    return out
                await out.write(data)
                await out.write_eof()
            except (ConnectionError, RuntimeError):
                pass  # the client went away
            return out


__all__ = ["ProxyStats", "S3FaultProxy", "S3Faults", "error_body", "signature_problem"]
