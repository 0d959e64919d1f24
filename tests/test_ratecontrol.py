"""The adaptive rate against simulated sources: a rate limit, a steady share of failures, both.

The source is a model (a token bucket for the limit, a seeded draw for the background) on a
simulated clock, so that a minute of traffic takes a fraction of a second and every run is
the same. The real-server tests are in test_ratelimit.py and test_defaults.py.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from mirror.ratecontrol import RateController


@dataclass
class Outcome:
    ok_s: float  # accepted answers per second after the warm-up
    pushed: float  # pushed-back share after the warm-up
    controller: RateController


def simulate(limit: float, background: float, *, capacity: float = 1000.0,
             seconds: float = 60.0, warmup: float = 5.0, seed: int = 1,
             retry_after: float | None = None) -> Outcome:
    """Send as fast as the controller (and ``capacity``) allow for ``seconds``."""
    rng = random.Random(seed)
    now = [0.0]
    ctl = RateController(clock=lambda: now[0])
    tokens, burst = limit / 5, limit / 5
    step, credit = 0.001, 0.0
    sent = ok = pushed = 0
    while now[0] < seconds:
        now[0] += step
        if limit:
            tokens = min(burst, tokens + limit * step)
        if ctl.holding_s > 0:
            continue
        credit += min(ctl.rate, capacity) * step
        while credit >= 1:
            credit -= 1
            if limit and tokens < 1:
                good = False
            else:
                tokens -= 1 if limit else 0
                good = rng.random() >= background
            if good:
                ctl.on_success()
            else:
                ctl.on_throttle(retry_after if limit else None)
            if now[0] >= warmup:
                sent += 1
                ok += good
                pushed += not good
    return Outcome(ok / (seconds - warmup), pushed / max(1, sent), ctl)


@pytest.mark.parametrize("background", [0.02, 0.05, 0.10])
def test_a_steady_share_of_failures_does_not_slow_it_down(background: float) -> None:
    for seed in (1, 2, 3):
        out = simulate(0, background, seed=seed)
        # At most a few probes' worth below what the source gives.
        assert out.ok_s >= 0.97 * 1000 * (1 - background), (seed, out.ok_s)
        assert out.controller.background > background / 3
        assert out.controller.state == "free", out.controller.reason


@pytest.mark.parametrize("limit", [20.0, 100.0, 500.0])
def test_it_settles_just_under_a_rate_limit(limit: float) -> None:
    out = simulate(limit, 0.0)
    assert out.ok_s >= 0.9 * limit
    assert out.pushed < 0.05
    assert out.controller.state in ("limited", "probing")
    assert out.controller.limit_s is not None
    assert 0.8 * limit <= out.controller.limit_s <= 1.3 * limit


def test_a_limit_under_a_background_of_failures() -> None:
    out = simulate(100.0, 0.05)
    assert out.ok_s >= 0.8 * 100
    assert out.pushed < 0.05 + 0.03  # the background, and little above it


def test_retry_after_is_obeyed() -> None:
    now = [0.0]
    ctl = RateController(clock=lambda: now[0])
    for _ in range(100):
        now[0] += 0.001
        ctl.on_success()
    ctl.on_throttle(retry_after_s=3.0)
    assert ctl.state == "holding"
    assert 2.9 <= ctl.holding_s <= 3.0
    assert math.isfinite(ctl.rate)
    assert "Retry-After" in ctl.reason


def test_per_uri_refusals_are_not_counted_against_the_rate() -> None:
    now = [0.0]
    ctl = RateController(clock=lambda: now[0])
    for i in range(5000):
        now[0] += 0.001
        if i % 3:
            ctl.on_success()
        else:
            ctl.on_throttle(kind="uri")
    assert ctl.state == "free" and math.isinf(ctl.rate)
    assert ctl.throttled > 1000


def test_a_limit_that_goes_away_is_forgotten() -> None:
    """Limited at first (an outage answered 503 to everything), then a healthy source."""
    now = [0.0]
    ctl = RateController(clock=lambda: now[0])
    for _ in range(200):
        now[0] += 0.005
        ctl.on_throttle()
    assert ctl.state == "limited" and ctl.rate < 10
    credit = 0.0
    while now[0] < 90:
        now[0] += 0.001
        credit += min(ctl.rate, 500.0) * 0.001
        while credit >= 1:
            credit -= 1
            ctl.on_success()
    assert ctl.state == "free", ctl.reason


def test_a_few_failed_answers_over_a_quiet_spell_do_not_hold_it_down() -> None:
    """A worker that sends next to nothing for a while (waiting for listings) and sees two
    faults in two answers has learnt nothing about the source's rate."""
    now = [0.0]
    ctl = RateController(clock=lambda: now[0])
    for t in (0.5, 6.0):  # two answers, both pushed back, over six quiet seconds
        now[0] = t
        ctl.on_throttle()
    now[0] = 6.5
    ctl.on_success()
    assert math.isinf(ctl.rate) and ctl.state == "free", ctl.reason


def test_a_limit_found_at_a_low_rate_recovers_at_a_steady_pace() -> None:
    """Held near a limit of 1 request a second, the rate still grows by a fifth of a request
    each second once the source stays quiet (not 0.5% a second: minutes to double)."""
    now = [0.0]
    ctl = RateController(clock=lambda: now[0])
    for i in range(41):  # 40 answers in 4 s, all pushed back: congestion
        now[0] = i * 0.1
        ctl.on_throttle()
    assert ctl.state == "limited" and ctl.rate < 1.0, ctl.reason
    low = ctl.rate
    for i in range(100):  # ten quiet seconds of successes at what it allows
        now[0] = 4.1 + i * 0.1
        ctl.on_success()
    assert ctl.rate >= low + 1.5, ctl.reason
