"""S3's answers read strictly: a ListObjectsV2 page, an error body, and the key ranges a flat
listing is split into (see ``Range``).

Compatible stores differ in small ways (a namespace or none, ``encoding-type`` honoured or
not), so elements are matched by local name and keys are decoded only where the answer says
they were encoded.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote_plus
from xml.etree import ElementTree

from mirror.errors import ProtocolError

_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
# Entity declarations are how XML bombs work; S3 never sends them.
_DECLARATIONS = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


@dataclass(frozen=True)
class Listed:
    """One ListObjectsV2 page: keys (with size, mtime and ETag) and common prefixes, each as
    the store gave it (decoded)."""

    files: tuple[tuple[str, int, float | None, str | None], ...]
    prefixes: tuple[str, ...]
    truncated: bool
    next_token: str | None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _xml(raw: bytes, where: str) -> ElementTree.Element:
    if _DECLARATIONS.search(raw[:4096]):
        raise ProtocolError(f"{where}: XML with declarations, refused")
    try:
        return ElementTree.fromstring(raw)
    except ElementTree.ParseError as exc:
        raise ProtocolError(f"{where}: malformed XML ({exc})") from exc


def _text(element: ElementTree.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def _time(value: str | None, where: str) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise ProtocolError(f"{where}: unreadable LastModified {value!r}") from exc


def parse_list(raw: bytes, where: str) -> Listed:
    """A ListObjectsV2 answer; anything odd is a ProtocolError naming ``where``."""
    root = _xml(raw, where)
    if _local(root.tag) != "ListBucketResult":
        raise ProtocolError(f"{where}: expected a ListBucketResult, got {_local(root.tag)}")
    encoded = (_text(root, "EncodingType") or "").lower() == "url"

    def key(value: str) -> str:
        try:
            return unquote_plus(value, errors="strict") if encoded else value
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{where}: a key that is not UTF-8 once decoded") from exc

    files, prefixes = [], []
    for child in root:
        name = _local(child.tag)
        if name == "Contents":
            raw_key, size = _text(child, "Key"), _text(child, "Size")
            if raw_key is None or size is None or not size.isdigit():
                raise ProtocolError(f"{where}: an entry without a Key or a numeric Size")
            etag = (_text(child, "ETag") or "").strip().strip('"').lower() or None
            files.append((key(raw_key), int(size), _time(_text(child, "LastModified"), where),
                          etag))
        elif name == "CommonPrefixes":
            prefix = _text(child, "Prefix")
            if prefix is None:
                raise ProtocolError(f"{where}: a CommonPrefixes without a Prefix")
            prefixes.append(key(prefix))
    truncated = (_text(root, "IsTruncated") or "false").lower() == "true"
    token = _text(root, "NextContinuationToken") or None
    return Listed(tuple(files), tuple(prefixes), truncated, token)


def parse_error(raw: bytes) -> tuple[str | None, str | None]:
    """The ``<Code>`` and ``<Message>`` of an S3 error body, where there is one."""
    if not raw.lstrip().startswith(b"<"):
        return None, None
    try:
        root = _xml(raw, "error")
    except ProtocolError:
        return None, None
    return _text(root, "Code"), _text(root, "Message")


def md5_of_etag(etag: str | None) -> str | None:
    """A single-part upload's ETag is the MD5 of its bytes; a multipart one (``...-N``) and
    an SSE-KMS one are not, and are not checked."""
    value = (etag or "").strip().strip('"').lower()
    return value if _MD5_HEX.match(value) else None


# -- flat listings -------------------------------------------------------------------------

# How many pages' worth of keys past a full page a flat listing forks off the rest of its
# range: the page's reach at the first character where its first and last keys differ, this
# many times over (see ``split_point``).
SPREAD = 8
_LAST = 0x10FFFF
_CLASSES = ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A))  # digits, upper and lower case


def _class_end(code: int) -> int | None:
    return next((high for low, high in _CLASSES if low <= code <= high), None)


@dataclass(frozen=True)
class Range:
    """The keys after ``after`` up to ``upto`` (inclusive; None: no bound) of a flat listing,
    listed page by page with ``start-after``. The cursor of a flat page is its range, so each
    page is a job of its own that resumes exactly; a full page forks the far part of its
    range into a second job (``split``), so one huge prefix is listed by ranges in parallel.
    """

    after: str | None = None
    upto: str | None = None

    def cursor(self) -> str:
        text = json.dumps([self.after, self.upto], ensure_ascii=False)
        return "r:" + base64.urlsafe_b64encode(text.encode()).decode()

    @classmethod
    def of(cls, cursor: str | None, where: str) -> Range:
        if cursor is None:
            return cls()
        try:
            if not cursor.startswith("r:"):
                raise ValueError(cursor)
            after, upto = json.loads(base64.urlsafe_b64decode(cursor[2:]))
            if not all(v is None or isinstance(v, str) for v in (after, upto)):
                raise ValueError(cursor)
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
            raise ProtocolError(f"{where}: not a flat listing's cursor: {cursor[:80]!r}") from exc
        return cls(after, upto)

    def holds(self, key: str) -> bool:
        return self.upto is None or key <= self.upto

    def split(self, first: str, last: str) -> tuple[Range, Range | None]:
        """After a full page from ``first`` to ``last``: the rest of this range, and the far
        part forked off it (None when no split point lies between). Keys are compared by code
        point, which is S3's UTF-8 byte order."""
        point = split_point(first, last, self.upto)
        if point is None:
            return Range(last, self.upto), None
        return Range(last, point), Range(point, self.upto)


def split_point(first: str, last: str, upto: str | None) -> str | None:
    """A key about ``SPREAD`` pages past ``last``, below ``upto``; None when there is none.

    Keys are guessed to go on as the page went: at the first character where its first and
    last keys differ, it advanced by some steps; the point lies that many steps times SPREAD
    further, kept within the character's class (digits, letters), so that a split does not
    leap past all the keys that follow. A page that spanned its whole class there (img-000000
    to img-000999) carries: the point is SPREAD steps on at the character before (img-008).
    The guess only decides how the work is spread; any point between ``last`` and ``upto``
    keeps every key listed exactly once.
    """
    i = 0
    while i < min(len(first), len(last)) and first[i] == last[i]:
        i += 1
    if i >= len(last):
        return None
    low = ord(first[i]) if i < len(first) else 0
    step = max(1, ord(last[i]) - low)
    end = _class_end(ord(last[i]))
    if end is not None and ord(last[i]) + step > end:
        if i == 0:
            return None
        i, step = i - 1, 1  # the page spanned its class: the next keys carry
        end = _class_end(ord(last[i]))
    mark = ord(last[i]) + step * SPREAD
    if end is not None:
        mark = min(mark, end + 1)
    if 0xD800 <= mark <= 0xDFFF:
        mark = 0xE000  # surrogates are no characters of a key
    if mark > _LAST:
        return None
    point = last[:i] + chr(mark)
    return point if point > last and (upto is None or point < upto) else None


__all__ = ["SPREAD", "Listed", "Range", "md5_of_etag", "parse_error", "parse_list",
           "split_point"]
