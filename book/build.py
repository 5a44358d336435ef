"""Execute every notebook with papermill into book/executed/, then build the book with -W.

python book/build.py [--profile cpu] [--only NAME ...] [--no-build]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import papermill

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def execute(name: str, profile: str, executed: Path) -> float:
    """Run one notebook; the executed copy replaces the old one only when the run succeeded."""
    executed.mkdir(exist_ok=True)
    out = executed / f"{name}.ipynb"
    tmp = executed / f".{name}.partial.ipynb"
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(tmp), kernel_name="acl-repro",
                                   parameters={"profile": profile, "progress": False},
                                   cwd=str(NOTEBOOKS), progress_bar=True)
    except BaseException:
        print(f"notebook {name} failed; its partial output is in {tmp}", file=sys.stderr)
        raise
    os.replace(tmp, out)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--only", nargs="*", default=None, help="notebook names (default: all)")
    parser.add_argument("--no-build", action="store_true", help="execute only, do not build the book")
    parser.add_argument("--book-dir", default=str(ROOT / "book"), help="the book's sources (tests use a copy)")
    args = parser.parse_args(argv)
    book = Path(args.book_dir).resolve()
    executed = book / "executed"
    names = args.only or sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    from acllib import store  # timings live beside the chapters' results, per profile
    timings_path = store.cache_dir("book", args.profile) / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    t_start = time.perf_counter()
    for name in names:
        print(f"== {name} (profile {args.profile})", flush=True)
        seconds = execute(name, args.profile, executed)
        # The largest resident set of any finished child so far (the kernels are our children):
        # when it grows during a notebook, it is that notebook's peak.
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
        timings[name] = {"profile": args.profile, "seconds": seconds, "max_child_rss_gb_so_far": round(peak_gb, 2)}
        timings_path.write_text(json.dumps(timings, indent=1))
        print(f"   done in {seconds / 60:.1f} min", flush=True)
    code = 0
    if not args.no_build:
        jb = Path(sys.executable).with_name("jupyter-book")
        code = subprocess.call([str(jb), "build", str(book), "-W", "-n", "--keep-going"])
    print(f"book_minutes: {(time.perf_counter() - t_start) / 60:.1f} ({len(names)} notebooks"
          f"{'' if args.no_build else ' and the HTML build'})")
    print(f"peak_rss_gb: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2:.2f} (largest process)")
    return code


if __name__ == "__main__":
    sys.exit(main())
