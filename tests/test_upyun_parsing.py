"""The UpYun client's pure parts: signing, encoding, and strict listing parsing."""

from __future__ import annotations

import hashlib
import json

import pytest

from mirror.errors import ProtocolError
from mirror.sources.upyun import LIST_END, parse_listing, quote_key, sign


def test_signature_matches_the_documented_vector() -> None:
    key = hashlib.md5(b"password123").hexdigest()
    assert key == "482c811da5d5b4bc6d497ffa98491e38"
    got = sign("operator123", key, "PUT", "/upyun-temp/demo.jpg",
               "Wed, 09 Nov 2016 14:26:58 GMT", content_md5="7ac66c0f148de9519b8bd264312c4d64")
    assert got == "UPYUN operator123:YUaAZX+WNAcJdNGHS5SBlITME5A="


def test_paths_are_encoded_like_the_official_sdks() -> None:
    assert quote_key("b", "a b/c+d#e?f%g[h]{i}~j.k_l-m") == \
        "/b/a%20b/c%2Bd%23e%3Ff%25g%5Bh%5D%7Bi%7D~j.k_l-m"
    assert quote_key("b", "中") == "/b/%E4%B8%AD"
    assert quote_key("b", "") == "/b/"


def page(files: list[dict[str, object]], it: object = LIST_END) -> bytes:
    return json.dumps({"files": files, "iter": it}).encode()


def test_listing_pages() -> None:
    raw = page([{"type": "image/jpeg", "name": "a.jpg", "length": 5, "last_modified": 7},
                {"type": "folder", "name": "sub", "length": 0, "last_modified": 8}], "tok")
    p = parse_listing(raw, None, "dir", None)
    assert p.cursor == "tok"
    assert [(e.path, e.is_dir, e.size, e.mtime) for e in p.entries] == \
        [("dir/a.jpg", False, 5, 7.0), ("dir/sub", True, 0, 8.0)]
    assert parse_listing(page([]), None, "", None).cursor is None
    # the sentinel ends the listing even on a full page
    last = parse_listing(page([{"type": "x", "name": "z", "length": 1, "last_modified": 1}]),
                         None, "", "tok")
    assert last.cursor is None and len(last.entries) == 1
    # the iter may come only in the header
    assert parse_listing(b'{"files": []}', LIST_END, "", None).cursor is None


@pytest.mark.parametrize("raw, words", [
    (b"{not json", "malformed JSON"),
    (b'{"files": 3}', "'files' list"),
    (b'["files"]', "'files' list"),
    (page([{"name": 1, "type": "folder"}]), "must be strings"),
    (page([{"name": "a", "type": "x", "length": -1}]), "non-negative"),
    (page([{"name": "a", "type": "x", "length": True}]), "non-negative"),
    (page([{"name": "a", "type": "x", "length": 1, "last_modified": "yesterday"}]),
     "must be a number"),
    (page(["just a string"]), "not an object"),
    (page([{"name": "a", "type": "x", "length": 1}], it=None), "without an iter"),
    (page([], it=5), "not a string"),
])
def test_malformed_listings_are_protocol_errors(raw: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        parse_listing(raw, None, "some/dir", None)


def test_a_repeated_iter_is_not_followed() -> None:
    with pytest.raises(ProtocolError, match="same iter again"):
        parse_listing(page([], "tok"), None, "d", "tok")
