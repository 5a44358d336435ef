"""The same runs trained two ways, each into a fresh cache: sequentially in this process (as
`make book` executes chapters: 1 process x all threads), and by `acllib.sweep` on a local Ray
instance (W workers x T threads). Prints minutes of each and their ratio (one `name: value` line
each), for the cpu book's runs of the chapters given.

    .venv/bin/python benchmarks/ray_vs_sequential.py --profile cpu --chapters 02 [--seeds 1 2] [--workers 2 --threads 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--profile", default="cpu")
    p.add_argument("--chapters", nargs="*", default=["02"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="*", help="only these seeds' runs (a smaller sample)")
    p.add_argument("--order", choices=["sequential-first", "ray-first"], default="sequential-first")
    args = p.parse_args(argv)
    import torch
    from acllib import plan, runs
    from acllib.sweep import sweep

    cfgs = [c for group in plan.book_plan(args.profile, args.chapters).values() for c in group]
    if args.seeds:
        cfgs = [c for c in cfgs if c.seed in args.seeds]
    print(f"runs: {len(cfgs)} (profile {args.profile}, chapters {' '.join(args.chapters)})")
    minutes = {}

    def sequential():
        t0 = time.perf_counter()
        runs.run_many([c for c in cfgs], progress=True)
        minutes["sequential"] = (time.perf_counter() - t0) / 60

    def on_ray():
        t0 = time.perf_counter()
        counts = sweep(args.profile, args.chapters, "local", args.threads, args.workers, progress=True,
                       configs=cfgs)
        assert counts["trained"] == len(cfgs), counts
        minutes["ray"] = (time.perf_counter() - t0) / 60

    steps = [sequential, on_ray] if args.order == "sequential-first" else [on_ray, sequential]
    for step in steps:
        with tempfile.TemporaryDirectory(prefix="acl-bench-") as cache:
            os.environ["ACL_CACHE"] = cache
            step()
    print(f"sequential_minutes: {minutes['sequential']:.2f} (1 process x {torch.get_num_threads()} threads)")
    print(f"ray_minutes: {minutes['ray']:.2f} ({args.workers} workers x {args.threads} threads, Ray start and stop included)")
    print(f"ray_over_sequential: {minutes['ray'] / minutes['sequential']:.3f}")


if __name__ == "__main__":
    main()
