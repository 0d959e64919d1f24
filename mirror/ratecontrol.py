"""The adaptive request rate: slow down when the source pushes back *because of the rate*.

Sources push back in two ways that look alike answer by answer. A rate limit (UpYun's
per-bucket 429s, S3's 503 SlowDown, a proxy's 429) refuses a share of requests that grows
with the rate: 1 - limit/rate above the limit, nothing below. A flaky backend (UpYun's 503
"read upstream timeout", cut connections) fails a steady share whatever the rate, and the
retries absorb it. Cutting the rate on every 429/503, as plain AIMD does, answers a steady 5%
of failures by sinking to a few requests a second.

So the controller tells them apart by experiment. It counts answers in epochs (at least half
a second and a few dozen answers). Two epochs in a row whose pushed-back share is
significantly above the background known so far make it suspicious: the next epoch runs at
90% of the rate the source accepted, and its share is compared with the second one's (the
first was picked for reading high, so it reads high by chance too). If the share fell with
the rate, the source limits the rate: the controller stays below it, creeps up near the rate
where the pushback began and grows faster the longer the source stays quiet (the limit may
rise). If the share stayed where it was, it is background: it is remembered as such and the
old rate comes back. A share above one half is congestion without an experiment, pushback
above a limit already found needs none either, and a Retry-After is obeyed at once.

Per-URI refusals (UpYun ``42900002``, "too many requests of the same uri") say nothing about
the rate of the whole bucket: they are retried, not counted here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

State = Literal["free", "probing", "limited", "holding"]
Pushback = Literal["rate", "uri"]

BACKOFF = 0.9  # after pushback: this share of the rate the source accepted
MIN_RATE = 0.5  # requests per second: never stop entirely
HARD_SHARE = 0.5  # a pushed-back share this high is congestion without an experiment
EPOCH_MIN_S = 0.5
EPOCH_MAX_S = 5.0
EPOCH_MIN_ANSWERS = 40
# Answers an epoch needs for any decision; an epoch short of them after EPOCH_MAX_S goes on
# gathering up to EPOCH_GIVE_UP_S, then is dropped. A worker that had sent next to nothing
# for five seconds (waiting for listings, at the end of a job) read 2 faults in 2 answers as
# "100% pushed back at 0 req/s" and held itself at half a request a second.
DECISION_ANSWERS = 10
EPOCH_GIVE_UP_S = 30.0
Z = 2.5  # standard errors a share must rise above the background to be suspect
MIN_EXCESS = 0.02  # ... and at least this much
GROWTH_FIRST = 0.02  # growth per second right after congestion, as a share of the rate
GROWTH_MAX = 0.5  # growth per second once the source has been quiet for a while
GROWTH_DOUBLING_S = 5.0  # the growth doubles every this many quiet seconds
PLATEAU = 0.05  # within this share of the last limit seen, the rate grows by only
GROWTH_PLATEAU = 0.005  # ... this much per second
GROWTH_MIN_S = 0.2  # requests per second added per second at least (a limit found at 1 req/s
# would otherwise take minutes to double)
FREE_AFTER_S = 10.0  # quiet this long with the rate far above what is sent: no limit at all


def _excess_is_real(share: float, base: float, n: int) -> bool:
    """Is ``share`` (of ``n`` answers) above the background ``base`` by more than chance?"""
    p = min(max(base, 0.005), 0.995)
    return share - base > max(MIN_EXCESS, Z * math.sqrt(p * (1 - p) / max(1, n)))


def _fell(hi: float, n_hi: int, lo: float, n_lo: int) -> bool:
    """Did the share fall from ``hi`` to ``lo`` by more than chance (two proportions)?"""
    pooled = (hi * n_hi + lo * n_lo) / max(1, n_hi + n_lo)
    p = min(max(pooled, 0.005), 0.995)
    spread = math.sqrt(p * (1 - p) * (1 / max(1, n_hi) + 1 / max(1, n_lo)))
    return hi - lo > max(MIN_EXCESS, 2.0 * spread)


@dataclass(frozen=True)
class _Probe:
    share: float
    answers: int
    accepted_s: float  # accepted answers per second in the suspect epoch
    sent_s: float
    rate_before: float
    state_before: State


@dataclass(frozen=True)
class Reading:
    """What the controller is doing and why, for progress, status and metrics."""

    state: State
    rate: float  # requests per second it allows (inf: no limit)
    pushed_share: float  # pushed-back share of the last epoch
    background_share: float  # the share known to come whatever the rate
    limit_s: float | None  # the rate at which the source was last seen to push back
    reason: str


class RateController:
    """The request rate of one budget of one worker; ``rate`` is inf until it must not be."""

    def __init__(self, ceiling: float = math.inf,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._now = clock
        self.ceiling = ceiling  # a fixed limit the rate never exceeds (--rps)
        self.rate = ceiling
        self.state: State = "free"
        self.throttled = 0  # pushed-back answers in all (rate-wide and per-URI)
        self.background = 0.0
        self.limit_s: float | None = None
        self.reason = "no pushback from the source"
        self.last_share = 0.0
        self._probe: _Probe | None = None
        self._suspect = False  # the last epoch's share was above the background
        self._hold_until = 0.0
        self._quiet_since = self._now()
        self._epoch_start = self._now()
        self._ok = 0
        self._pushed = 0
        self._last_grow = self._now()

    # -- what the limiter tells it ------------------------------------------------------

    def on_success(self) -> None:
        self._ok += 1
        self._tick()

    def on_throttle(self, retry_after_s: float | None = None, kind: Pushback = "rate") -> None:
        self.throttled += 1
        now = self._now()
        if retry_after_s:
            # The source said how long to wait: no experiment, and no more than it accepted.
            self._hold_until = max(self._hold_until, now + retry_after_s)
            accepted = self._accepted_s(now)
            self._lower(BACKOFF * accepted if accepted > 0 else self.rate, now)
            self.state = "holding"
            self.reason = f"the source asked to wait {retry_after_s:.0f} s (Retry-After)"
            self._probe = None
        if kind == "rate":
            self._pushed += 1
        self._tick()

    # -- reading ------------------------------------------------------------------------

    @property
    def holding_s(self) -> float:
        return max(0.0, self._hold_until - self._now())

    def reading(self) -> Reading:
        return Reading(self.state, self.rate, self.last_share, self.background, self.limit_s,
                       self.reason)

    def adopt_background(self, share: float) -> None:
        """A peer found this background share by experiment: no need to find it again."""
        self.background = max(self.background, share)

    def join_at(self, rate: float) -> None:
        """Other workers hold the source's limit at ``rate`` each: start there, not free."""
        if self.state != "free" or math.isfinite(self.rate) or self._probe is not None:
            return
        now = self._now()
        self._lower(rate, now)
        self.limit_s = max(MIN_RATE, rate)
        self.state = "limited"
        self.reason = f"the job's other workers hold the source at about {rate:.0f} req/s each"

    # -- the epochs -----------------------------------------------------------------------

    def _accepted_s(self, now: float) -> float:
        return self._ok / max(1e-3, now - self._epoch_start)

    def _lower(self, rate: float, now: float) -> None:
        self.rate = min(self.ceiling, self.rate, max(MIN_RATE, rate))
        self._quiet_since = now
        self._last_grow = now

    def _tick(self) -> None:
        now = self._now()
        span = now - self._epoch_start
        answers = self._ok + self._pushed
        enough = max(EPOCH_MIN_ANSWERS, self._probe.answers // 2 if self._probe else 0)
        if span < EPOCH_MIN_S or (answers < enough and span < EPOCH_MAX_S) or (
                answers < DECISION_ANSWERS and span < EPOCH_GIVE_UP_S):
            self._grow(now)
            return
        if answers < DECISION_ANSWERS:  # too few to tell anything: start afresh
            self._epoch_start, self._ok, self._pushed = now, 0, 0
            self._grow(now)
            return
        share = self._pushed / answers
        accepted, sent = self._ok / span, answers / span
        self.last_share = share
        self._epoch_start, self._ok, self._pushed = now, 0, 0
        if self.state == "holding" and now < self._hold_until:
            return
        if self._probe is not None:
            self._judge(self._probe, share, answers, sent, now)
        elif share >= HARD_SHARE and share - self.background >= HARD_SHARE / 2:
            self._lower(BACKOFF * accepted, now)
            self.limit_s = max(MIN_RATE, accepted)
            self.state = "limited"
            self.reason = (f"{share:.0%} of answers pushed back at {sent:.0f} req/s: holding "
                           f"under {accepted:.0f} req/s")
        elif _excess_is_real(share, self.background, answers):
            if self.limit_s is not None and sent > self.limit_s * (1 + PLATEAU):
                # Above the limit found before, and pushed back again: no experiment needed.
                self._suspect = False
                self._lower(BACKOFF * accepted, now)
                self.limit_s = max(MIN_RATE, accepted)
                self.state = "limited"
                self.reason = (f"{share:.0%} pushed back at {sent:.0f} req/s, above the limit "
                               f"found before: holding near {accepted:.0f} req/s")
                return
            if not self._suspect:
                # Once could be chance, and an epoch picked for being high reads high: the
                # next one at the same rate is the fair reading to compare with.
                self._suspect = True
                self._grow(now)
                return
            self._suspect = False
            self._probe = _Probe(share, answers, accepted, sent, self.rate, self.state)
            self._lower(BACKOFF * accepted, now)
            self.state = "probing"
            self.reason = (f"{share:.0%} of answers pushed back at {sent:.0f} req/s; trying "
                           f"{self.rate:.0f} req/s to see whether the rate is the cause")
        else:
            self._suspect = False
            if share < self.background:  # the background fades: be sensitive again
                self.background = 0.8 * self.background + 0.2 * share
            if self.state == "holding":
                self.state = "limited"
            self._grow(now)
            if (self.state == "limited" and now - self._quiet_since > FREE_AFTER_S
                    and self.rate > 2 * sent and math.isinf(self.ceiling)):
                # Far above what is sent, and quiet for long: the limit is gone (or was
                # never there: a probe can be fooled by chance).
                self.rate = math.inf
                self.state = "free"
                self.reason = (f"no pushback above the background for "
                               f"{now - self._quiet_since:.0f} s: no rate limit")

    def _judge(self, probe: _Probe, share: float, answers: int, sent: float,
               now: float) -> None:
        self._probe = None
        if _fell(probe.share, probe.answers, share, answers):
            self.limit_s = max(MIN_RATE, probe.accepted_s)
            self.state = "limited"
            self.reason = (f"{probe.share:.0%} pushed back at {probe.sent_s:.0f} req/s, "
                           f"{share:.0%} at {sent:.0f} req/s: the source limits the rate; "
                           f"holding near {probe.accepted_s:.0f} req/s")
            return
        # The share did not follow the rate: a background of failures the retries absorb.
        # The lower of the two readings, smoothed: taking the higher (or the mean) let a
        # real excess near the limit, and chance, ratchet the background up probe by probe.
        seen = min(share, probe.share)
        self.background = seen if not self.background else (self.background + seen) / 2
        self.rate = min(self.ceiling, probe.rate_before)
        self.state = probe.state_before if probe.state_before != "probing" else "free"
        self.reason = (f"a steady {share:.0%} of answers pushed back ({probe.share:.0%} at "
                       f"{probe.sent_s:.0f} req/s, {share:.0%} at {sent:.0f} req/s): "
                       "retried, not a reason to slow down")
        self._last_grow = now

    def _grow(self, now: float) -> None:
        elapsed = min(1.0, now - self._last_grow)
        if elapsed <= 0.05:
            return
        self._last_grow = now
        if math.isinf(self.rate) or self.state == "probing" or now < self._hold_until:
            return
        if self.limit_s is not None and abs(self.rate / self.limit_s - 1) < PLATEAU:
            # Near where the source pushed back last: creep (as CUBIC does near its last
            # maximum), so that the source is pushed into refusing rarely.
            self.rate = min(self.ceiling, max(self.rate * (1 + GROWTH_PLATEAU * elapsed),
                                              self.rate + GROWTH_MIN_S * elapsed))
            return
        quiet = now - self._quiet_since
        growth = min(GROWTH_MAX, GROWTH_FIRST * 2 ** (quiet / GROWTH_DOUBLING_S))
        self.rate = min(self.ceiling, self.rate * (1 + growth * elapsed) + elapsed)


__all__ = ["Pushback", "RateController", "Reading", "State"]
