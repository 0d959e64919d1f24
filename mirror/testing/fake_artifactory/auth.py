"""Artifactory's authentication as a client meets it: a bearer access token, HTTP basic (the
password may be the API key), the ``X-JFrog-Art-Api`` header, or none where anonymous reads
are allowed. A credential that is sent and wrong is refused even where anonymous reads are
allowed, as Artifactory does."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from mirror.testing.fake_artifactory.core import FakeCore, Refused

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Artifactory Realm"'}


class Auth(FakeCore):
    def _signed_in(self, request: web.Request) -> bool:
        """True for a valid credential, False for an anonymous request; refuses a bad one."""
        a = self.access
        header = request.headers.get("Authorization", "")
        api_key = request.headers.get("X-JFrog-Art-Api")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            good = a.token is not None and value.strip() == a.token
        elif scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise Refused(401, "Bad credentials", _CHALLENGE) from None
            good = a.user is not None and user == a.user and password in (
                p for p in (a.password, a.api_key) if p is not None)
        elif header:
            raise Refused(401, "Unsupported authorization scheme", _CHALLENGE)
        elif api_key is not None:
            good = a.api_key is not None and api_key == a.api_key
        else:
            if not a.anonymous:
                raise Refused(401, "Authentication is required", _CHALLENGE)
            return False
        if not good:
            raise Refused(401, "Bad credentials", _CHALLENGE)
        return True
