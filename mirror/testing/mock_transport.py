"""A wire without sockets for unit tests of a source (httpx's MockTransport): every request
is recorded and answered by a function, under the transport's real pacing and metering.

    wire = MockTransport(lambda r: MockResponse(200, {"Content-Type": "text/html"}, b"..."))
    source = HttpIndexSource(url, settings, transport=Transport(settings, limiter, wire))

End-to-end behaviour (connections, cut bodies, the splice) stays with the fake servers.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from multidict import CIMultiDict

from mirror.sources.direct import DirectBody
from mirror.sources.transport import Request, WireResponse


@dataclass
class MockResponse:
    """A canned answer for ``MockTransport``. ``url`` defaults to the request's."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    reason: str = "OK"
    url: str | None = None


Handler = Callable[[Request], MockResponse | Awaitable[MockResponse]]


class MockTransport:
    """A wire that answers every request from ``handler`` without sockets (httpx's
    MockTransport): unit tests of a source's request building and answer parsing.
    ``Transport(settings, limiter, MockTransport(handler))`` keeps pacing and metering."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[Request] = []  # as sent, for the test to look at

    async def send(self, request: Request) -> WireResponse:
        self.requests.append(request)
        answer = self._handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return _MockReply(answer, request)

    async def close(self) -> None:
        pass


class _MockReply:
    def __init__(self, answer: MockResponse, request: Request) -> None:
        self.status = answer.status
        self.reason = answer.reason
        self.url = answer.url or request.url
        self.headers: Mapping[str, str] = CIMultiDict(answer.headers)
        length = self.headers.get("Content-Length")
        self.content_length: int | None = int(length) if length else len(answer.body)
        # A HEAD's answer has no body on the line whatever the handler gave.
        self._body = b"" if request.method == "HEAD" else answer.body

    async def readany(self) -> bytes:
        body, self._body = self._body, b""
        return body

    def direct(self, timeout_s: float, what: str) -> DirectBody | None:
        return None

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


__all__ = ["MockResponse", "MockTransport"]
