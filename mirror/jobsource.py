"""The source a job's spec names, opened with its options and this host's settings.

Its own module because both the worker's side (``mirror.runner``) and a fetch process
(``mirror.fetchpool``) open it, and the runner imports the fetch pool.
"""

from __future__ import annotations

from mirror.jobs import JobSpec
from mirror.ratelimit import Limiter
from mirror.settings import SourceSettings
from mirror.sources.backend import SourceOptions
from mirror.sources.base import Source
from mirror.sources.registry import open_source, options_for


def source_for(spec: JobSpec, settings: SourceSettings, limiter: Limiter | None = None) -> Source:
    return open_source(spec.source, settings, limiter, spec.source_options)


def options_of(spec: JobSpec) -> SourceOptions:
    """The job's backend options, checked, with the backend's defaults for those not stored
    (a job seeded by an older version stored only some)."""
    return options_for(spec.source, spec.source_options)


__all__ = ["options_of", "source_for"]
