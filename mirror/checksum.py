"""A checksum a source vouches for: its algorithm and hex digest.

Sources differ in what they can vouch for (UpYun and single-part S3 objects an MD5,
Artifactory a SHA-256 or SHA-1 or MD5), and in where they say it: in the download's headers,
or only in the listing. A ``Body`` carries the one of its headers; a listed ``Entry`` carries
the listing's in its ``etag`` as ``"sha256:<hex>"`` (so it travels with the file's job with no
new field); the fetcher checks the strongest of the two (``strongest``) over the whole file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

Algorithm = Literal["sha256", "sha1", "md5"]
# Strongest first: where a source vouches for several, the first one it gives is checked.
ALGORITHMS: tuple[Algorithm, ...] = ("sha256", "sha1", "md5")
_HEX_LENGTH = {"sha256": 64, "sha1": 40, "md5": 32}
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Checksum:
    algorithm: Algorithm
    hex: str  # lower case, of the right length (see ``of``)

    @classmethod
    def of(cls, algorithm: str, value: Any) -> Checksum | None:
        """The checksum when ``value`` is a well-formed digest of ``algorithm``; None for
        anything else (a missing header, a placeholder, a digest of the wrong length), so
        that a garbled value is not checked and found wrong on every try."""
        known = next((a for a in ALGORITHMS if a == algorithm), None)
        if known is None or not isinstance(value, str):
            return None
        digest = value.strip().strip('"').lower()
        if len(digest) != _HEX_LENGTH[known] or not _HEX.fullmatch(digest):
            return None
        return cls(known, digest)

    @classmethod
    def parse(cls, text: str | None) -> Checksum | None:
        """A checksum written by ``str`` (``"sha256:<hex>"``); None for any other text,
        such as a bare ETag."""
        algorithm, sep, digest = (text or "").partition(":")
        return cls.of(algorithm, digest) if sep else None

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> Any:
        """A fresh hashlib object of this algorithm."""
        return hashlib.new(self.algorithm)

    @property
    def label(self) -> str:
        return {"sha256": "SHA-256", "sha1": "SHA-1", "md5": "MD5"}[self.algorithm]


def strongest(*candidates: Checksum | None) -> Checksum | None:
    """The candidate of the strongest algorithm (the first given among equals)."""
    found = [c for c in candidates if c is not None]
    return min(found, key=lambda c: ALGORITHMS.index(c.algorithm)) if found else None


__all__ = ["ALGORITHMS", "Algorithm", "Checksum", "strongest"]
