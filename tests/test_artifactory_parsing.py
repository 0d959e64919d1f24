"""Reading what Artifactory answers (mirror/sources/artifactory_parse.py): both forms of
``folder`` and of sizes, ISO 8601 times, checksums of listings and headers, error envelopes;
anything else is a ProtocolError naming the folder."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from mirror.checksum import Checksum
from mirror.errors import ProtocolError
from mirror.sources.artifactory_parse import (
    error_message,
    has_files_list,
    header_checksum,
    iso_time,
    parse_file_list,
    parse_folder_info,
    parse_item_info,
)

SHA1 = "a" * 40
SHA256 = "b" * 64
MD5 = "c" * 32
T = datetime(2019, 6, 6, 13, 19, 14, 514000, tzinfo=UTC).timestamp()


def raw(body: object) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize(("text", "expected"), [
    ("2019-06-06T13:19:14.514Z", T),
    ("2019-06-06T15:19:14.514+02:00", T),
    ("2019-06-06T15:19:14.514+0200", T),  # Java's yyyy-MM-dd'T'HH:mm:ss.SSSZ
    ("2019-06-06T08:19:14.514-05:00", T),
    ("2019-06-06T13:19:14.514", T),  # no offset: UTC
    ("2019-06-06T13:19:14Z", T - 0.514),
    (None, None), ("", None),
])
def test_iso_times_with_millis_and_offsets(text: str | None, expected: float | None) -> None:
    got = iso_time(text, "here")
    assert got == expected if expected is None else got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("bad", ["yesterday", "2019-13-45T00:00:00Z", 1559827154, True])
def test_unreadable_times(bad: object) -> None:
    with pytest.raises(ProtocolError, match="here"):
        iso_time(bad, "here")


def test_file_list_in_both_forms() -> None:
    """Servers send booleans and numbers; the documentation's examples strings."""
    numbers = raw({"uri": "http://h/artifactory/api/storage/r/d", "created": "x", "files": [
        {"uri": "/sub", "size": -1, "lastModified": "2019-06-06T13:19:14.514Z",
         "folder": True},
        {"uri": "/a b.jar", "size": 1024, "lastModified": "2019-06-06T13:19:14.514Z",
         "folder": False, "sha1": SHA1, "sha2": SHA256},
        {"uri": "/old.jar", "size": 7, "lastModified": "2019-06-06T13:19:14.514Z",
         "folder": False, "sha1": SHA1}]})
    strings = raw({"files": [
        {"uri": "/sub", "size": "-1", "lastModified": "2019-06-06T13:19:14.514Z",
         "folder": "true"},
        {"uri": "/a b.jar", "size": "1024", "lastModified": "2019-06-06T13:19:14.514Z",
         "folder": "false", "sha1": SHA1, "sha2": SHA256},
        {"uri": "/old.jar", "size": "7", "lastModified": "2019-06-06T13:19:14.514Z",
         "folder": "FALSE", "sha1": SHA1}]})
    for body in (numbers, strings):
        sub, jar, old = parse_file_list(body, "d")
        assert (sub.path, sub.is_dir, sub.size) == ("d/sub", True, 0)
        assert (jar.path, jar.is_dir, jar.size) == ("d/a b.jar", False, 1024)
        assert jar.mtime == pytest.approx(T) and jar.etag == f"sha256:{SHA256}"
        assert old.etag == f"sha1:{SHA1}"  # no SHA-256 known: the SHA-1


def test_file_list_without_folder_flags_reads_the_size() -> None:
    entries = parse_file_list(raw({"files": [{"uri": "/f", "size": -1},
                                             {"uri": "/g", "size": 0}]}), "")
    assert [(e.path, e.is_dir, e.size) for e in entries] == [("f", True, 0), ("g", False, 0)]


def test_hostile_child_names_are_kept_raw_for_the_crawler() -> None:
    body = raw({"files": [{"uri": u, "size": 3, "folder": False} for u in
                          ("/../x", "/..", "/", "/a/b", "/.")]})
    assert [e.path for e in parse_file_list(body, "top")] == [
        "top/../x", "top/..", "top/", "top/a/b", "top/."]
    info = raw({"children": [{"uri": "/../x", "folder": False}, {"uri": "/..", "folder": True}]})
    assert [(e.path, e.is_dir) for e in parse_folder_info(info, "")] == [("../x", False),
                                                                        ("..", True)]


@pytest.mark.parametrize(("body", "words"), [
    (b"{not json", "malformed JSON"),
    (b"[]", "JSON object"),
    (raw({"uri": "x"}), "'files' list"),
    (raw({"files": ["a"]}), "not an object"),
    (raw({"files": [{"uri": 5, "size": 1, "folder": False}]}), "'uri'"),
    (raw({"files": [{"uri": "/a", "size": "big", "folder": False}]}), "'size'"),
    (raw({"files": [{"uri": "/a", "size": -1, "folder": False}]}), "size -1"),
    (raw({"files": [{"uri": "/a", "size": 1, "folder": "maybe"}]}), "'folder'"),
    (raw({"files": [{"uri": "/a", "size": True, "folder": False}]}), "'size'"),
])
def test_malformed_file_lists(body: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words) as caught:
        parse_file_list(body, "some/dir")
    assert "some/dir" in str(caught.value)


def test_folder_info_in_both_forms() -> None:
    for t, f in ((True, False), ("true", "false")):
        body = raw({"repo": "r", "path": "/d", "created": "2019-06-06T13:19:14.514Z",
                    "lastModified": "2019-06-06T13:19:14.514Z",
                    "children": [{"uri": "/x", "folder": t}, {"uri": "/y.txt", "folder": f}]})
        assert [(e.path, e.is_dir) for e in parse_folder_info(body, "d")] == [
            ("d/x", True), ("d/y.txt", False)]
    with pytest.raises(ProtocolError, match="'children' list"):
        parse_folder_info(raw({"files": []}), "d")
    with pytest.raises(ProtocolError, match="'folder'"):
        parse_folder_info(raw({"children": [{"uri": "/x"}]}), "d")


def test_item_info_of_a_folder_and_of_a_file() -> None:
    folder = parse_item_info(raw({"repo": "r", "path": "/", "children": [],
                                  "lastModified": "2019-06-06T15:19:14.514+02:00"}), "")
    assert folder.is_dir and folder.mtime == pytest.approx(T)
    info = {"repo": "r", "path": "/d/f.pom", "lastModified": "2019-06-06T13:19:14.514Z",
            "size": "1024", "mimeType": "application/pom+xml",
            "checksums": {"sha1": SHA1, "md5": MD5, "sha256": SHA256},
            "originalChecksums": {"sha1": SHA1, "md5": MD5}}
    f = parse_item_info(raw(info), "d/f.pom")
    assert (f.is_dir, f.size, f.etag) == (False, 1024, f"sha256:{SHA256}")
    info["checksums"] = {"sha1": SHA1, "md5": MD5}
    assert parse_item_info(raw(info), "d/f.pom").etag == f"sha1:{SHA1}"
    info["checksums"] = {"md5": MD5, "sha256": "not-a-digest"}
    assert parse_item_info(raw(info), "d/f.pom").etag == f"md5:{MD5}"
    with pytest.raises(ProtocolError, match="neither folder info"):
        parse_item_info(raw({"repo": "r"}), "d/f.pom")


def test_download_checksum_headers_strongest_first() -> None:
    assert header_checksum({"X-Checksum-Sha1": SHA1, "X-Checksum-Sha256": SHA256,
                            "X-Checksum-Md5": MD5}) == Checksum("sha256", SHA256)
    assert header_checksum({"X-Checksum-Sha1": SHA1, "X-Checksum-Md5": MD5}) == Checksum(
        "sha1", SHA1)
    assert header_checksum({"X-Checksum-Md5": MD5.upper()}) == Checksum("md5", MD5)
    assert header_checksum({"X-Checksum-Sha256": "", "ETag": SHA1}) is None


def test_error_envelopes() -> None:
    assert error_message(raw({"errors": [{"status": 404, "message": "Unable to find item"}]})
                         ) == "Unable to find item"
    pro = "This REST API is available only in Artifactory Pro.\n  Activate it.\n"
    assert error_message(raw({"errors": [{"status": 400, "message": pro}]})) == (
        "This REST API is available only in Artifactory Pro. Activate it.")
    two = raw({"errors": [{"status": 403, "message": "a"}, {"status": 403, "message": "b"}]})
    assert error_message(two) == "a; b"
    assert error_message(b"Bad Gateway from the proxy\n") == "Bad Gateway from the proxy"
    assert error_message(b"<html><body>502</body></html>") is None
    assert error_message(b"") is None
    assert error_message(raw({"message": "other shape"})) is None


def test_a_server_ignoring_the_file_list_query_is_noticed() -> None:
    assert has_files_list(raw({"files": []}))
    assert not has_files_list(raw({"repo": "r", "children": []}))
    assert has_files_list(b"{broken")  # left to the file list's parser to refuse
