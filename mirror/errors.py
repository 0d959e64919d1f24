"""One typed exception tree, raised at the boundaries (sources, disk, broker).

Handlers never see aiohttp or OSError exceptions: each boundary translates them into one of
these, so the worker decides retry / park / stop from the class alone:

- ``TransientError``: try again later (retry tier), park once attempts are exhausted.
- ``PermanentError``: trying again will not help; park at once with the reason.
- ``FatalError``: this worker cannot go on (credentials rejected, disk full); stop, requeue.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorDetail:
    """What a remote service said, kept for the parked reason and for logs."""

    http_status: int | None = None
    code: str | None = None  # the service's own error code (UpYun 8-digit code, S3 code)
    request_id: str | None = None


class MirrorError(Exception):
    """Base of every error this project raises on purpose."""

    def __init__(self, message: str, detail: ErrorDetail | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or ErrorDetail()

    @property
    def kind(self) -> str:
        return type(self).__name__

    def __str__(self) -> str:
        d = self.detail
        extra = [f"HTTP {d.http_status}" if d.http_status else "", d.code or ""]
        if d.request_id:
            extra.append(f"request id {d.request_id}")
        tail = ", ".join(x for x in extra if x)
        return f"{self.message} ({tail})" if tail else self.message


class TransientError(MirrorError):
    """Worth retrying after a delay: network trouble, 5xx, timeouts, throttling."""


class RateLimited(TransientError):
    """The source asked us to slow down (HTTP 429 or a throttling code)."""

    def __init__(
        self, message: str, detail: ErrorDetail | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, detail)
        self.retry_after_s = retry_after_s


class SourceUnavailable(TransientError):
    """Connection refused or dropped, timeout, 5xx, 499, 408, or a truncated body."""


class Stalled(TransientError):
    """A transfer delivered no bytes (or too few) for too long and was aborted."""


class IntegrityError(TransientError):
    """Downloaded bytes did not match the listed size or the source's checksum.

    Transient because a fresh download usually cures it; parked once attempts run out.
    """


class Busy(TransientError):
    """Another process on this host holds the same file; try again later."""


class BrokerError(TransientError):
    """A publish or settle could not be confirmed by the broker (connection lost mid-run)."""


class PermanentError(MirrorError):
    """Retrying cannot help; the job is parked with this reason."""


class NotFound(PermanentError):
    """The path does not exist (a listed file that vanished before it was fetched)."""


class AccessDenied(PermanentError):
    """The source refuses this path (403) although the credentials are valid."""


class ProtocolError(PermanentError):
    """The source answered something we cannot interpret (malformed listing, bad iter)."""


class UnsafePath(PermanentError):
    """A remote name that cannot be written safely under the mirror root."""


class FatalError(MirrorError):
    """The worker must stop: nothing it does next can succeed."""


class CredentialsRejected(FatalError):
    """The source rejected our credentials (HTTP 401)."""


class DiskFull(FatalError):
    """No space left on a destination disk."""


class BrokerUnavailable(FatalError):
    """The broker cannot be reached (at startup) or refused our session."""


class LedgerUnavailable(FatalError):
    """The ledger's database cannot be reached (at startup) or refused our session."""


class ConfigError(FatalError):
    """Invalid settings or arguments; reported as a usage error (exit 2)."""
