"""What JFrog Artifactory answers, read strictly: the Storage API's file list, folder info and
file info, the checksum headers of a download, and the ``{"errors": [...]}`` envelope.

The published documentation and the servers disagree on types, so both forms are read:
``folder`` is a boolean or the string ``"true"``/``"false"``, ``size`` a number or a numeric
string (``-1`` for folders), and times ISO 8601 with milliseconds and an offset (``Z``,
``+02:00`` or Java's ``+0200``). Child names are kept raw: the crawler judges whether a name
(``..``, ``../x``, empty) may be written, and parks those that may not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mirror.checksum import ALGORITHMS, Checksum, strongest
from mirror.errors import ProtocolError
from mirror.sources.base import Entry

# Where each listing and info body names a checksum, strongest first.
_LISTED = {"sha256": ("sha2", "sha256"), "sha1": ("sha1",), "md5": ("md5",)}
_HEADERS = {"sha256": "X-Checksum-Sha256", "sha1": "X-Checksum-Sha1", "md5": "X-Checksum-Md5"}


def _json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"{where}: malformed JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise ProtocolError(f"{where}: expected a JSON object")
    return body


def iso_time(value: Any, where: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 time; one without an offset is taken as UTC."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{where}: a time must be an ISO 8601 string, not {value!r}")
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ProtocolError(f"{where}: unreadable time {value!r}") from exc
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _size(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ProtocolError(f"{where}: 'size' must be a byte count, not {value!r}")
    return value


def _folder(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ProtocolError(f"{where}: 'folder' must be true or false, not {value!r}")


def _child(uri: Any, parent: str, where: str) -> str:
    """The path of a child listed as ``"/name"``; the name is not judged here."""
    if not isinstance(uri, str):
        raise ProtocolError(f"{where}: 'uri' must be a string")
    name = uri[1:] if uri.startswith("/") else uri
    return f"{parent}/{name}" if parent else name


def listed_checksum(item: Mapping[str, Any]) -> Checksum | None:
    """The strongest checksum an item of a listing or an info body gives (``sha2`` in the
    file list, ``checksums.sha256`` in file info)."""
    nested = item.get("checksums")
    places = [item, nested] if isinstance(nested, dict) else [item]
    return strongest(*(Checksum.of(algorithm, place.get(key))
                       for algorithm in ALGORITHMS for key in _LISTED[algorithm]
                       for place in places))


def header_checksum(headers: Mapping[str, str]) -> Checksum | None:
    """The strongest ``X-Checksum-*`` header of a download (SHA-256 only where the server
    has computed it for that file)."""
    return strongest(*(Checksum.of(a, headers.get(_HEADERS[a])) for a in ALGORITHMS))


def _etag(checksum: Checksum | None) -> str | None:
    return str(checksum) if checksum is not None else None


def parse_file_list(raw: bytes, path: str) -> list[Entry]:
    """``?list&deep=0&listFolders=1``: one folder's entries with sizes, times and checksums."""
    where = f"file list of {path or '/'}"
    files = _json(raw, where).get("files")
    if not isinstance(files, list):
        raise ProtocolError(f"{where}: expected an object with a 'files' list")
    entries = []
    for i, item in enumerate(files):
        at = f"{where}, entry {i}"
        if not isinstance(item, dict):
            raise ProtocolError(f"{at}: not an object")
        full = _child(item.get("uri"), path, at)
        size = _size(item.get("size", -1), at)
        is_dir = _folder(item["folder"], at) if "folder" in item else size < 0
        mtime = iso_time(item.get("lastModified"), at)
        if is_dir:
            entries.append(Entry(full, True, 0, mtime))
        elif size < 0:
            raise ProtocolError(f"{at}: a file of size {size}")
        else:
            entries.append(Entry(full, False, size, mtime, _etag(listed_checksum(item))))
    return entries


def parse_folder_info(raw: bytes, path: str) -> list[Entry]:
    """Folder info's ``children``: names and kinds only (each file's size needs its info)."""
    where = f"folder info of {path or '/'}"
    children = _json(raw, where).get("children")
    if not isinstance(children, list):
        raise ProtocolError(f"{where}: expected an object with a 'children' list")
    entries = []
    for i, item in enumerate(children):
        at = f"{where}, child {i}"
        if not isinstance(item, dict):
            raise ProtocolError(f"{at}: not an object")
        entries.append(Entry(_child(item.get("uri"), path, at),
                             _folder(item.get("folder"), at)))
    return entries


def parse_item_info(raw: bytes, path: str) -> Entry:
    """Folder info or file info of ``path``: a folder has ``children``, a file a ``size``."""
    where = f"info of {path or '/'}"
    body = _json(raw, where)
    mtime = iso_time(body.get("lastModified"), where)
    if isinstance(body.get("children"), list):
        return Entry(path, True, 0, mtime)
    if "size" not in body:
        raise ProtocolError(f"{where}: neither folder info ('children') nor file info ('size')")
    size = _size(body["size"], where)
    if size < 0:
        raise ProtocolError(f"{where}: a file of size {size}")
    return Entry(path, False, size, mtime, _etag(listed_checksum(body)))


def has_files_list(raw: bytes) -> bool:
    """Whether a file-list request was answered with a file list (an old server that does
    not know ``?list`` answers folder info instead)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return True  # malformed: let the file list's parser say so
    return not (isinstance(body, dict) and "files" not in body and "children" in body)


def error_message(raw: bytes) -> str | None:
    """The messages of an error envelope, ``{"errors": [{"status", "message"}]}``, joined."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        # A proxy in front may answer in plain text (kept) or an HTML page (not worth it).
        text = " ".join(raw.decode("utf-8", "replace").split())
        return None if not text or text.startswith("<") else text[:200]
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return None
    messages = [" ".join(str(e["message"]).split()) for e in errors
                if isinstance(e, dict) and e.get("message")]
    return "; ".join(messages)[:500] or None


__all__ = ["error_message", "has_files_list", "header_checksum", "iso_time", "listed_checksum",
           "parse_file_list", "parse_folder_info", "parse_item_info"]
