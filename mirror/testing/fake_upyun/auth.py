"""UpYun's authentication, as the real service checks it: basic auth, and the ``UPYUN``
signature (HMAC-SHA1, or the legacy MD5 form) over the raw request-target and a fresh date."""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from email.utils import parsedate_to_datetime

from aiohttp import web

from mirror.sources.upyun import sign
from mirror.testing.fake_upyun.core import FakeCore, Refused


class Auth(FakeCore):
    def _authenticate(self, request: web.Request, target: str, bucket: str) -> None:  # noqa: PLR0912  (one branch per refusal UpYun gives)
        auth = request.headers.get("Authorization", "")
        if not auth:
            raise Refused(401, 40100004, "need authorization header")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise Refused(401, 40100005, "signature error") from exc
            if user != self.operator:
                raise Refused(401, 40100006, "user not exists")
            if password != self.password:
                raise Refused(401, 40100009, "user password error")
        elif scheme.lower() == "upyun":
            date = request.headers.get("Date") or request.headers.get("X-Date")
            if not date:
                raise Refused(401, 40100001, "need date header")
            try:
                when = parsedate_to_datetime(date)
            except (TypeError, ValueError) as exc:
                raise Refused(401, 40100016, "invalid date value in header") from exc
            if when.tzinfo is None or abs(when.timestamp() - time.time()) > self.max_skew_s:
                raise Refused(401, 40100002, "date offset error")
            operator, _, signature = value.partition(":")
            if operator != self.operator:
                raise Refused(401, 40100006, "user not exists")
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
                raise Refused(401, 40100005, "signature error")
        else:
            raise Refused(401, 40100003, "unknown realm")
        if bucket != self.bucket:
            raise Refused(401, 40100012, "bucket not exist")
