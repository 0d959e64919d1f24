"""The only code that writes under DEST: names, part files, locks, checks, symlinks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mirror import partfile
from mirror.disk import PART_SUFFIX, Disk, check_name, part_name, split_path
from mirror.errors import Busy, IntegrityError, UnsafePath


@pytest.mark.parametrize("name, words", [
    ("", "not allowed"), (".", "not allowed"), ("..", "not allowed"),
    ("a\x00b", "NUL"), ("a/b", "contains '/'"), ("x" * 256, "256 bytes"),
    ("\udcff", "not valid UTF-8"), ("f.jpg" + PART_SUFFIX, "reserved"),
])
def test_unsafe_names_are_refused_with_a_reason(name: str, words: str) -> None:
    with pytest.raises(UnsafePath, match=words):
        check_name(name)


@pytest.mark.parametrize("name", ["-leading", ".hidden", "a b", "中文", "😀", "x" * 255,
                                  "..x", "a\\b", "c:d", "~", "%2F"])
def test_odd_but_safe_names_pass(name: str) -> None:
    check_name(name)


def test_paths() -> None:
    assert split_path("") == []
    assert split_path("a/b c/d") == ["a", "b c", "d"]
    for bad in ("/abs", "a//b", "a/./b", "a/../b", "a/"):
        with pytest.raises(UnsafePath):
            split_path(bad)
    long = "y" * 250
    assert part_name("a.jpg") == "a.jpg" + PART_SUFFIX
    assert part_name(long).endswith(PART_SUFFIX) and len(part_name(long)) < 255


def _write(disk: Disk, path: str, data: bytes, mtime: float | None = 1_500_000_000.5,
           md5: str | None = None) -> None:
    part = disk.begin(path, len(data), mtime, 0.001)
    assert part is not None
    part.write(data, md5 is not None)
    part.commit(len(data), mtime, md5)


def test_write_sets_mtime_and_skips_when_current(tmp_path: Path) -> None:
    disk = Disk(tmp_path)
    data = b"hello world"
    _write(disk, "x/y/z.txt", data, md5=hashlib.md5(data).hexdigest())
    target = tmp_path / "x/y/z.txt"
    assert target.read_bytes() == data
    assert target.stat().st_mtime == pytest.approx(1_500_000_000.5, abs=1e-6)
    assert disk.begin("x/y/z.txt", len(data), 1_500_000_000.5, 0.001) is None  # skip
    part = disk.begin("x/y/z.txt", len(data), 1_600_000_000, 0.001)  # newer remote: fetch
    assert part is not None
    part.discard()
    assert list((tmp_path / "x/y").iterdir()) == [target]


def test_part_is_resumed_and_checked(tmp_path: Path) -> None:
    disk = Disk(tmp_path)
    data = os.urandom(100_000)
    part = disk.begin("f.bin", len(data), None, 0.001)
    assert part is not None
    part.write(data[:40_000], False)
    part.close()  # crash-like: the part stays
    assert (tmp_path / ("f.bin" + PART_SUFFIX)).stat().st_size == 40_000
    again = disk.begin("f.bin", len(data), None, 0.001)
    assert again is not None and again.size == 40_000
    again.write(data[40_000:], True)  # the MD5 covers the bytes written before the crash too
    again.commit(len(data), None, hashlib.md5(data).hexdigest())
    assert (tmp_path / "f.bin").read_bytes() == data


def test_size_and_md5_mismatch_delete_the_part(tmp_path: Path) -> None:
    disk = Disk(tmp_path)
    part = disk.begin("short.bin", 10, None, 0.001)
    assert part is not None
    part.write(b"12345", False)
    with pytest.raises(IntegrityError, match="got 5 bytes, the listing says 10"):
        part.commit(10, None, None)
    part = disk.begin("bad.bin", 3, None, 0.001)
    assert part is not None
    part.write(b"abc", True)
    with pytest.raises(IntegrityError, match="MD5"):
        part.commit(3, None, "0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_symlinks_are_never_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    disk = Disk(root)
    with pytest.raises(UnsafePath, match="symlink"):
        disk.begin("link/file.txt", 1, None, 0.001)
    (root / "f.txt").symlink_to(outside / "target.txt")
    _write(disk, "f.txt", b"data")  # the link itself is replaced, the target untouched
    assert not (outside / "target.txt").exists()
    assert not (root / "f.txt").is_symlink() and (root / "f.txt").read_bytes() == b"data"
    assert list(outside.iterdir()) == []


def test_file_and_folder_of_the_same_name(tmp_path: Path) -> None:
    disk = Disk(tmp_path)
    _write(disk, "clash", b"file")
    with pytest.raises(UnsafePath, match="a file of that name exists"):
        disk.begin("clash/inner.txt", 1, None, 0.001)
    disk.make_dir("dir")
    with pytest.raises(UnsafePath, match="same name"):
        _write(disk, "dir", b"x")


def test_a_second_process_cannot_write_the_same_part(tmp_path: Path) -> None:
    holder = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from mirror.disk import Disk
        part = Disk(Path({str(tmp_path)!r})).begin("big.bin", 10, None, 0.001)
        print("locked", flush=True)
        time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(Busy, match="another process"):
            Disk(tmp_path).begin("big.bin", 10, None, 0.001)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 5
    while True:  # the lock dies with its process
        try:
            part = Disk(tmp_path).begin("big.bin", 10, None, 0.001)
            break
        except Busy:
            assert time.time() < deadline
            time.sleep(0.05)
    assert part is not None
    part.close()


def test_a_durable_large_file_is_sent_on_to_the_disk_as_it_arrives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --fsync, every WRITEBACK_EVERY bytes are handed to the kernel's writeback while
    the rest still arrives (what the kernel does with them cannot be watched here: the calls
    and their ranges can); without it, none are."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(partfile, "start_writeback",
                        lambda fd, offset, n: calls.append((offset, n)))
    step = partfile.WRITEBACK_EVERY
    chunk = b"x" * (3 << 20)
    for fsync, expected in ((True, [(0, 9 << 20), (9 << 20, 9 << 20)]), (False, [])):
        calls.clear()
        disk = Disk(tmp_path / str(fsync), fsync=fsync)
        (tmp_path / str(fsync)).mkdir()
        part = disk.begin("big.bin", 20 << 20, None, 0.001)
        assert part is not None
        for _ in range(6):  # 18 MB in 3 MB pieces: handed on at 9 and at 18 MB
            part.write(chunk, False)
        part.close()
        assert calls == expected and all(n >= step for _, n in calls)
