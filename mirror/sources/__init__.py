"""Storage sources: one module per backend, each exporting a ``BACKEND``
(``mirror.sources.backend``), opened from its URL by ``mirror.sources.registry``.

The interface every backend implements is ``mirror.sources.base``, re-exported here; a
source lists one page of one folder at a time and streams one file from an offset.
"""

from mirror.sources.base import Body, Entry, Page, Source

__all__ = ["Body", "Entry", "Page", "Source"]
