"""The source a job's spec names, opened with this host's settings.

Its own module because both the worker's side (``mirror.runner``) and a fetch process
(``mirror.fetchpool``) open it, and the runner imports the fetch pool.
"""

from __future__ import annotations

from dataclasses import replace

from mirror.jobs import JobSpec
from mirror.ratelimit import Limiter
from mirror.settings import SourceSettings
from mirror.sources import Source, open_source


def source_for(spec: JobSpec, settings: SourceSettings, limiter: Limiter | None = None) -> Source:
    return open_source(spec.source, replace(settings, endpoint=spec.endpoint,
                                            list_limit=spec.list_limit), limiter)


__all__ = ["source_for"]
