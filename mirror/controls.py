"""What the adaptive controllers of a worker are doing and why, in one plain reading.

A worker has two budgets (``list`` and ``fetch``), each with a request-rate controller
(``mirror.ratecontrol``) and a concurrency limit (``mirror.concurrency``). With fetch
processes, the fetch budget lives in each of them and is reported back; this module merges
those reports into one reading, which the live view, the log lines, ``mirror status`` (through
the presence reports) and the metrics all show.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mirror.concurrency import AdaptiveLimit
from mirror.ratelimit import Budget, Limiter

# When processes disagree, the reading shows the most telling state.
_SEVERITY = {"free": 0, "probing": 1, "limited": 2, "holding": 3}


@dataclass(frozen=True)
class Control:
    budget: str
    state: str  # free | probing | limited | holding
    rate: float  # requests per second allowed (inf: no limit)
    throttled: int  # 429/503 answers so far
    background: float  # share of answers that fail whatever the rate
    reason: str
    concurrency: int
    concurrency_reason: str

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))  # flat fields: asdict's deep copy is not needed
        d["rate"] = self.rate if math.isfinite(self.rate) else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Control:
        rate = d.get("rate")
        return cls(str(d.get("budget", "")), str(d.get("state", "free")),
                   math.inf if rate is None else float(rate), int(d.get("throttled", 0)),
                   float(d.get("background", 0.0)), str(d.get("reason", "")),
                   int(d.get("concurrency", 0)), str(d.get("concurrency_reason", "")))

    def line(self) -> str:
        """One line for people: ``fetch: limited at 95 req/s (…); 12 at once (…)``."""
        rate = f" at {self.rate:.0f} req/s" if math.isfinite(self.rate) else ""
        return (f"{self.budget}: {self.state}{rate} ({self.reason}); {self.concurrency} at once "
                f"({self.concurrency_reason})")


def local(budget: Budget, limiter: Limiter, slots: AdaptiveLimit) -> Control:
    r = limiter.reading(budget)
    rate = limiter.rate(budget)
    return Control(budget, r.state, rate, limiter.throttled(budget), r.background_share,
                   r.reason, slots.limit, slots.reason)


def merged(budget: Budget, reports: Iterable[Mapping[str, Any]], concurrency: int) -> Control:
    """The fetch budget of several fetch processes as one reading."""
    parts = [Control.from_dict({"budget": budget, **r}) for r in reports]
    if not parts:
        return Control(budget, "free", math.inf, 0, 0.0, "no answers yet", concurrency,
                       "starting")
    worst = max(parts, key=lambda c: _SEVERITY.get(c.state, 0))
    return Control(budget, worst.state, sum(c.rate for c in parts),
                   sum(c.throttled for c in parts), max(c.background for c in parts),
                   worst.reason, concurrency,
                   f"{len(parts)} processes: " + ", ".join(str(c.concurrency) for c in parts))


def learn_from_peers(limiter: Limiter, reports: Iterable[Mapping[str, Any]]) -> None:
    """The source is one for the whole job: what other workers found holds here too.

    A background share found by experiment need not be found again, and a worker that
    joins while the others hold a limit starts at their rate instead of at full speed
    (which would push every worker's share over the limit at once).
    """
    for budget in ("list", "fetch"):
        found = [Control.from_dict(c) for r in reports for c in r.get("controls", ())
                 if c.get("budget") == budget]
        if not found:
            continue
        ctl = limiter.controller(budget)
        ctl.adopt_background(max(c.background for c in found))
        held = [c.rate for c in found if c.state in ("limited", "holding")
                and math.isfinite(c.rate)]
        if held:
            ctl.join_at(sum(held) / len(held))


__all__ = ["Control", "learn_from_peers", "local", "merged"]
