"""bucket-mirror against rclone's S3 backend, both reading the same bucket from the same moto
server on loopback, in one run.

    python bench/s3.py [--small 20000] [--transfers 16,32,64] [--repeat 1] [--write-results]

Builds (or reuses, under --out) bench/compare.py's small data set (log-normal sizes, median
about 15 KB, folders of 20), uploads it to a bucket of a private moto server (its mtimes set
back from the store's LastModified), then mirrors it with `mirror run s3://BUCKET/ DEST
--endpoint URL` (no other flag: the headline row) and with `rclone copy :s3:BUCKET DEST
--s3-provider Other ...` at a few --transfers. Every output is verified against the tree.
moto is a Python server that closes its connection after every answer: it, not either
client, sets the pace, so the table compares two clients on one slow store. Nothing here
asserts a timing; --write-results adds the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench/compare.py's helpers

from compare import (  # noqa: E402  (after the path above)
    Result,
    build_small,
    mirror_cmd,
    render,
    run_procs,
    tree_size,
    verify,
)

from mirror.testing.moto import ACCESS_KEY, S3_ENV, SECRET_KEY, MotoServer, upload_tree  # noqa: E402

BUCKET = "bench-small"


def ensure_small(out: Path, files: int) -> Path:
    """compare.py's small set (the same folder, so either script reuses it)."""
    data = out / f"data-small-{files}"
    if not (data / ".complete").exists():
        print(f"building the small data set in {data} ...", flush=True)
        shutil.rmtree(data, ignore_errors=True)
        build_small(data, files)
        (data / ".complete").write_text("")
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=20_000, help="small files (default 20000)")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--transfers", default="16,32,64", help="rclone --transfers to try")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    data = ensure_small(args.out, args.small)
    rclone = shutil.which("rclone")
    work = args.out / "s3-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files, size = tree_size(data)
    env = {**os.environ, **S3_ENV, "MIRROR_STATE_DIR": str(work / "state")}
    # rclone's AWS SDK refuses to start with any AWS_CA_BUNDLE ("unsupported transport"); the
    # endpoint is plain HTTP, so no bundle matters to either client.
    env.pop("AWS_CA_BUNDLE", None)
    results: list[Result] = []
    moto = MotoServer()
    moto.start()
    try:
        source = work / "uploaded"  # the set without its marker file, mtimes as the store's
        shutil.copytree(data, source, ignore=shutil.ignore_patterns(".complete"))
        started = time.monotonic()
        keys = upload_tree(moto.url, BUCKET, source)
        print(f"uploaded {keys} keys to moto in {time.monotonic() - started:.0f} s", flush=True)
        runs: list[tuple[str, list[str]]] = [
            ("bucket-mirror (no flags)", mirror_cmd(
                "run", f"s3://{BUCKET}/", "{dest}", "--endpoint", moto.url))]
        if rclone:
            for n in args.transfers.split(","):
                runs.append((f"rclone --transfers {n}", [
                    rclone, "copy", f":s3:{BUCKET}", "{dest}", "--s3-provider", "Other",
                    "--s3-endpoint", moto.url, "--s3-access-key-id", ACCESS_KEY,
                    "--s3-secret-access-key", SECRET_KEY, "--transfers", n, "--checkers", n]))
        for name, command in runs:
            walls, cpus, rss, ok, note = [], [], [], True, ""
            for i in range(args.repeat):
                dest = work / f"dest-{len(results)}-{i}"
                wall, cpu, peaks, codes = run_procs(
                    [[str(dest) if a == "{dest}" else a for a in command]], env,
                    work / "runs.log")
                problems = verify(source, dest, mtimes=True)
                ok = ok and codes == [0] and not problems
                note = note or (f"exit {codes}" if codes != [0] else problems)
                walls.append(wall)
                cpus.append(cpu)
                rss = peaks
                shutil.rmtree(dest, ignore_errors=True)
                print(f"{name}: {wall:.1f} s, {'ok' if ok else 'NOT OK: ' + note}", flush=True)
            walls.sort()
            results.append(Result("small", name, walls[len(walls) // 2], files, size,
                                  sorted(cpus)[len(cpus) // 2], rss, ok, note, walls))
    finally:
        moto.stop()
    table = render(results)
    print("\n" + table)
    if args.write_results:
        write_results(table)
    return 0 if all(r.ok for r in results) else 1


def write_results(table: str) -> None:
    """This run's section of bench/RESULTS.md, kept before compare.py's (which rewrites
    everything after its own marker)."""
    text = (HERE / "RESULTS.md").read_text()
    head, _, rest = text.partition("<!-- s3.py -->")
    text = head.rstrip() + "\n\n" + rest.partition("<!-- /s3.py -->")[2].lstrip() if rest else text
    section = (f"<!-- s3.py -->\n## bench/s3.py (moto on loopback), "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{table}\n"
               "<!-- /s3.py -->\n\n")
    before, marker, after = text.partition("<!-- compare.py -->")
    text = (before.rstrip() + "\n\n" + section + marker + after if marker
            else text.rstrip() + "\n\n" + section)
    (HERE / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
