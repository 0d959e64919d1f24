"""The fake Artifactory answers as JFrog's REST documentation says the real one does, driven
with raw requests: a disagreement between the fake and our client shows up here rather than
as a mystery in the end-to-end tests."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from mirror.testing.fake_artifactory import Access, FakeArtifactory, Faults, Flavour

TOKEN, USER, PASSWORD, KEY = "tok-1", "reader", "pw-2", "key-3"
BIG = os.urandom(100_000)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    (r / "org" / "acme").mkdir(parents=True)
    (r / "org" / "acme" / "lib 1.0.jar").write_bytes(b"jar" * 10)
    (r / "org" / "acme" / "a;b+c.txt").write_bytes(b"matrix")
    (r / "org" / "empty").mkdir()
    (r / "big.bin").write_bytes(BIG)
    os.utime(r / "big.bin", (1_600_000_000.25, 1_600_000_000.25))
    return r


@pytest.fixture
async def fake(root: Path) -> AsyncIterator[FakeArtifactory]:
    access = Access(token=TOKEN, user=USER, password=PASSWORD, api_key=KEY, anonymous=True)
    async with FakeArtifactory(root, repo="libs", access=access) as f:
        yield f


async def get(url: str, headers: dict[str, str] | None = None, method: str = "GET"
              ) -> tuple[int, CIMultiDict[str], bytes]:
    # encoded: sent as written (yarl would decode %3B)
    async with aiohttp.ClientSession() as s, s.request(method, URL(url, encoded=True),
                                                       headers=headers or {},
                                                       allow_redirects=False) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def errors(body: bytes) -> list[dict[str, Any]]:
    found = json.loads(body)["errors"]
    assert isinstance(found, list)
    return found


async def test_every_way_to_sign_in(fake: FakeArtifactory) -> None:
    url = f"{fake.url}/api/storage/libs"
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    key_as_password = base64.b64encode(f"{USER}:{KEY}".encode()).decode()
    for headers in (bearer(), {"Authorization": f"Basic {basic}"},
                    {"Authorization": f"Basic {key_as_password}"}, {"X-JFrog-Art-Api": KEY},
                    {}):
        status, _, _ = await get(url, headers)
        assert status == 200, headers
    for headers in (bearer("wrong"), {"X-JFrog-Art-Api": "wrong"},
                    {"Authorization": "Basic " + base64.b64encode(b"reader:no").decode()}):
        status, h, body = await get(url, headers)
        assert status == 401 and errors(body) == [{"status": 401, "message": "Bad credentials"}]
        assert "Artifactory Realm" in h["WWW-Authenticate"]


async def test_anonymous_reads_can_be_closed(root: Path) -> None:
    async with FakeArtifactory(root, repo="libs", access=Access(token=TOKEN,
                                                                anonymous=False)) as fake:
        status, _, body = await get(f"{fake.url}/api/storage/libs")
        assert status == 401 and errors(body)[0]["status"] == 401
        assert (await get(f"{fake.url}/api/storage/libs", bearer()))[0] == 200


async def test_folder_info_and_file_info(fake: FakeArtifactory) -> None:
    status, h, body = await get(f"{fake.url}/api/storage/libs/org/acme")
    assert status == 200 and "FolderInfo" in h["Content-Type"]
    info = json.loads(body)
    assert info["repo"] == "libs" and info["path"] == "/org/acme"
    assert info["children"] == [{"uri": "/a;b+c.txt", "folder": False},
                                {"uri": "/lib 1.0.jar", "folder": False}]
    assert info["lastModified"].endswith("Z") and "." in info["lastModified"]
    status, h, body = await get(f"{fake.url}/api/storage/libs/big.bin")
    file_info = json.loads(body)
    assert "FileInfo" in h["Content-Type"] and file_info["size"] == str(len(BIG))
    assert file_info["checksums"] == {"md5": hashlib.md5(BIG).hexdigest(),
                                      "sha1": hashlib.sha1(BIG).hexdigest(),
                                      "sha256": hashlib.sha256(BIG).hexdigest()}
    assert file_info["lastModified"] == "2020-09-13T12:26:40.250Z"
    assert file_info["downloadUri"].endswith("/artifactory/libs/big.bin")
    status, _, body = await get(f"{fake.url}/api/storage/libs/nothing/here")
    assert status == 404 and errors(body) == [{"status": 404, "message": "Unable to find item"}]


async def test_file_list_flat_deep_and_with_folders(fake: FakeArtifactory) -> None:
    base = f"{fake.url}/api/storage/libs"
    _, h, body = await get(f"{base}?list&deep=0&listFolders=1", bearer())
    assert "FileList" in h["Content-Type"]
    flat = {f["uri"]: f for f in json.loads(body)["files"]}
    assert set(flat) == {"/org", "/big.bin"}
    assert flat["/org"]["folder"] is True and flat["/org"]["size"] == -1
    assert flat["/big.bin"]["size"] == len(BIG) and flat["/big.bin"]["folder"] is False
    assert flat["/big.bin"]["sha2"] == hashlib.sha256(BIG).hexdigest()
    _, _, body = await get(f"{base}?list&deep=1", bearer())
    assert sorted(f["uri"] for f in json.loads(body)["files"]) == [
        "/big.bin", "/org/acme/a;b+c.txt", "/org/acme/lib 1.0.jar"]
    _, _, body = await get(f"{base}?list&deep=1&depth=2&listFolders=1", bearer())
    assert sorted(f["uri"] for f in json.loads(body)["files"]) == [
        "/big.bin", "/org", "/org/acme", "/org/empty"]
    _, _, body = await get(f"{base}/org/empty?list&deep=0&listFolders=1", bearer())
    assert json.loads(body)["files"] == []
    status, _, body = await get(f"{base}/big.bin?list", bearer())
    assert status == 400 and errors(body)[0]["status"] == 400


async def test_file_list_needs_pro_and_a_user(root: Path, fake: FakeArtifactory) -> None:
    status, _, _ = await get(f"{fake.url}/api/storage/libs?list")
    assert status == 401  # anonymous
    async with FakeArtifactory(root, repo="libs", flavour=Flavour(pro=False),
                               access=Access(token=TOKEN)) as oss:
        status, _, body = await get(f"{oss.url}/api/storage/libs?list", bearer())
        assert status == 400 and "only in Artifactory Pro" in errors(body)[0]["message"]


async def test_the_documentations_string_values(root: Path) -> None:
    async with FakeArtifactory(root, repo="libs", access=Access(token=TOKEN),
                               flavour=Flavour(strings=True, sha256=False,
                                               utc_offset_min=120)) as fake:
        _, _, body = await get(f"{fake.url}/api/storage/libs?list&listFolders=1", bearer())
        flat = {f["uri"]: f for f in json.loads(body)["files"]}
        assert flat["/org"]["folder"] == "true" and flat["/org"]["size"] == "-1"
        assert flat["/big.bin"]["size"] == str(len(BIG)) and "sha2" not in flat["/big.bin"]
        _, _, body = await get(f"{fake.url}/api/storage/libs/big.bin")
        assert json.loads(body)["lastModified"] == "2020-09-13T14:26:40.250+02:00"
        _, h, _ = await get(f"{fake.url}/libs/big.bin")
        assert "X-Checksum-Sha256" not in h and h["X-Checksum-Sha1"]


async def test_downloads_with_checksums_and_ranges(fake: FakeArtifactory) -> None:
    status, h, body = await get(f"{fake.url}/libs/big.bin")
    assert status == 200 and body == BIG and h["Content-Length"] == str(len(BIG))
    assert h["X-Checksum-Sha256"] == hashlib.sha256(BIG).hexdigest()
    assert h["X-Checksum-Sha1"] == h["ETag"] == hashlib.sha1(BIG).hexdigest()
    assert h["X-Checksum-Md5"] == hashlib.md5(BIG).hexdigest()
    assert h["Last-Modified"] == "Sun, 13 Sep 2020 12:26:40 GMT"
    status, h, body = await get(f"{fake.url}/libs/big.bin", {"Range": "bytes=99000-"})
    assert status == 206 and body == BIG[99000:]
    assert h["Content-Range"] == f"bytes 99000-{len(BIG) - 1}/{len(BIG)}"
    status, _, body = await get(f"{fake.url}/libs/big.bin", {"Range": "bytes=-10"})
    assert status == 206 and body == BIG[-10:]
    status, h, _ = await get(f"{fake.url}/libs/big.bin", {"Range": "bytes=200000-"})
    assert status == 416 and h["Content-Range"] == f"bytes */{len(BIG)}"
    status, h, body = await get(f"{fake.url}/libs/big.bin", method="HEAD")
    assert status == 200 and body == b"" and h["Content-Length"] == str(len(BIG))


async def test_names_are_percent_decoded_and_a_bare_semicolon_starts_matrix_params(
        fake: FakeArtifactory) -> None:
    status, _, body = await get(f"{fake.url}/libs/org/acme/lib%201.0.jar")
    assert status == 200 and body == b"jar" * 10
    status, _, body = await get(f"{fake.url}/libs/org/acme/a%3Bb%2Bc.txt")
    assert status == 200 and body == b"matrix"
    status, _, _ = await get(f"{fake.url}/libs/org/acme/a;b+c.txt")
    assert status == 404  # "a" with the matrix parameter "b+c.txt"


async def test_injected_statuses_children_and_corruption(fake: FakeArtifactory) -> None:
    fake.inject("big.bin", 403, "no read permission on big.bin", on="download")
    status, _, body = await get(f"{fake.url}/libs/big.bin")
    assert status == 403 and errors(body)[0]["message"] == "no read permission on big.bin"
    assert (await get(f"{fake.url}/api/storage/libs/big.bin"))[0] == 200  # storage: as ever
    fake.inject("org", 503, times=1)
    assert (await get(f"{fake.url}/api/storage/libs/org"))[0] == 503
    assert (await get(f"{fake.url}/api/storage/libs/org"))[0] == 200
    fake.extra_children[""] = [("../x", False), ("..", True)]
    _, _, body = await get(f"{fake.url}/api/storage/libs")
    assert {"uri": "/../x", "folder": False} in json.loads(body)["children"]
    _, _, body = await get(f"{fake.url}/api/storage/libs?list&listFolders=1", bearer())
    uris = [f["uri"] for f in json.loads(body)["files"]]
    assert "/../x" in uris and "/.." in uris
    fake.injected.clear()
    fake.corrupt.add("big.bin")
    _, h, body = await get(f"{fake.url}/libs/big.bin")
    assert len(body) == len(BIG) and body != BIG
    assert h["X-Checksum-Sha256"] == hashlib.sha256(BIG).hexdigest()


async def test_faults_hit_first_attempts_only_and_deterministically(root: Path) -> None:
    faults = Faults(rate_429=0.25, rate_503=0.25, rate_truncate=0.25, rate_drop=0.25, seed=4)
    async with FakeArtifactory(root, repo="libs", faults=faults) as fake:
        first = []
        for path in ("big.bin", "org/acme/lib%201.0.jar", "org/acme/a%3Bb%2Bc.txt"):
            try:
                first.append((await get(f"{fake.url}/libs/{path}"))[0])
            except aiohttp.ClientError:
                first.append(0)  # dropped or cut short
            status, _, body = await get(f"{fake.url}/libs/{path}")
            assert status == 200 and body  # the second attempt is served
        injected = fake.stats.faults
        assert sum(injected.values()) == 3  # every first attempt (the shares add up to 1)
        # aiohttp sends a request again by itself once when its connection drops unanswered
        assert sum(s != 200 for s in first) == 3 - injected["drop"]
        before = sum(injected.values())
        fake.rearm()  # the same first attempts fail again
        with contextlib.suppress(aiohttp.ClientError):
            await get(f"{fake.url}/libs/big.bin")
        assert sum(fake.stats.faults.values()) == before + 1
