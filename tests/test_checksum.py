"""The checksums sources vouch for (mirror/checksum.py) and how the disk side checks them:
any of SHA-256, SHA-1 and MD5, over the whole file also when a part was resumed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mirror.checksum import Checksum, strongest
from mirror.disk import Disk
from mirror.errors import IntegrityError

DATA = os.urandom(70_000)
SHA256 = hashlib.sha256(DATA).hexdigest()
SHA1 = hashlib.sha1(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()


def test_only_well_formed_digests_are_checksums() -> None:
    assert Checksum.of("sha256", SHA256.upper()) == Checksum("sha256", SHA256)
    assert Checksum.of("sha1", f' "{SHA1}" ') == Checksum("sha1", SHA1)  # an ETag's quotes
    assert Checksum.of("md5", MD5) == Checksum("md5", MD5)
    for algorithm, value in [("sha256", SHA1), ("sha1", SHA256), ("md5", "z" * 32),
                             ("crc32", "abcd"), ("md5", None), ("md5", 5), ("sha1", "")]:
        assert Checksum.of(algorithm, value) is None, (algorithm, value)


def test_written_and_parsed_back_as_an_etag() -> None:
    checksum = Checksum("sha256", SHA256)
    assert str(checksum) == f"sha256:{SHA256}"
    assert Checksum.parse(str(checksum)) == checksum
    # A plain ETag (UpYun's MD5, an S3 multipart tag) is not read as a checksum.
    for etag in (MD5, f'"{MD5}"', "abc-2", "", None, f"sha256:{SHA1}", f"crc:{MD5}"):
        assert Checksum.parse(etag) is None, etag


def test_the_strongest_wins_and_the_first_among_equals() -> None:
    sha256, sha1, md5 = Checksum("sha256", SHA256), Checksum("sha1", SHA1), Checksum("md5", MD5)
    assert strongest(md5, None, sha1) == sha1
    assert strongest(None, sha256, md5) == sha256
    other = Checksum("sha1", "0" * 40)
    assert strongest(other, sha1) is other
    assert strongest(None, None) is None


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5"])
def test_each_algorithm_is_checked_over_a_resumed_part(tmp_path: Path, algorithm: str) -> None:
    disk = Disk(tmp_path, fsync=False)
    part = disk.begin("f.bin", len(DATA), None, 0.001)
    assert part is not None
    part.write(DATA[:30_000], None)
    part.close()  # as a crash leaves it
    again = disk.begin("f.bin", len(DATA), None, 0.001)
    assert again is not None and again.size == 30_000
    checksum = Checksum.of(algorithm, hashlib.new(algorithm, DATA).hexdigest())
    assert checksum is not None
    again.write(DATA[30_000:], checksum.algorithm)  # the digest begins with the part's bytes
    again.commit(len(DATA), None, checksum)
    assert (tmp_path / "f.bin").read_bytes() == DATA


def test_a_digest_kept_for_another_algorithm_is_not_trusted(tmp_path: Path) -> None:
    disk = Disk(tmp_path, fsync=False)
    part = disk.begin("f.bin", len(DATA), None, 0.001)
    assert part is not None
    part.write(DATA, "md5")
    part.commit(len(DATA), None, Checksum("sha256", SHA256))  # read back and hashed anew
    assert (tmp_path / "f.bin").read_bytes() == DATA


@pytest.mark.parametrize(("checksum", "label"), [
    (Checksum("sha256", "0" * 64), "SHA-256"), (Checksum("sha1", "0" * 40), "SHA-1")])
def test_a_mismatch_deletes_the_part(tmp_path: Path, checksum: Checksum, label: str) -> None:
    disk = Disk(tmp_path, fsync=False)
    part = disk.begin("bad.bin", len(DATA), None, 0.001)
    assert part is not None
    part.write(DATA, checksum.algorithm)
    with pytest.raises(IntegrityError, match=f"{label} [0-9a-f]+ does not match"):
        part.commit(len(DATA), None, checksum)
    assert list(tmp_path.iterdir()) == []
