"""The same runs trained two ways, each into a fresh cache: sequentially in this process (as
`make book` executes chapters: 1 process x all threads), and by `acllib.sweep` on a local Ray
instance (W workers x T threads). Prints minutes of each and their ratio (one `name: value` line
each), for the cpu book's runs of the chapters given (all of them without --chapters). The machine's
CE step (acllib.cost.ce_step_seconds) is timed before each half, since its speed drifts within a day.
--record appends the figures, with the commit, to a JSON list (the differences chapter shows
benchmarks/records/ray_vs_sequential.json).

    .venv/bin/python benchmarks/ray_vs_sequential.py --profile smoke --chapters 02 --seeds 1   # a dry run, ~1 minute
    .venv/bin/python benchmarks/ray_vs_sequential.py --profile cpu [--chapters 02] [--seeds 1 2] [--workers 2 --threads 1] [--record PATH]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--profile", default="cpu")
    p.add_argument("--chapters", nargs="*", help="chapter numbers or names (default: the whole book)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="*", help="only these seeds' runs (a smaller sample)")
    p.add_argument("--order", choices=["sequential-first", "ray-first"], default="sequential-first")
    p.add_argument("--record", help="append this measurement to a JSON list in this file")
    args = p.parse_args(argv)
    import torch
    from acllib import cost, plan, runs
    from acllib.sweep import sweep

    cfgs = [c for group in plan.book_plan(args.profile, args.chapters).values() for c in group]
    if args.seeds:
        cfgs = [c for c in cfgs if c.seed in args.seeds]
    chapters = plan.chapter_names(args.chapters)
    print(f"runs: {len(cfgs)} (profile {args.profile}, chapters {' '.join(c.split('_')[0] for c in chapters)})")
    minutes, ce_step = {}, {}
    seq_threads = torch.get_num_threads()

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
        name = step.__name__.replace("on_", "")
        ce_step[name] = cost.ce_step_seconds()
        print(f"ce_step_s_before_{name}: {ce_step[name]:.3f}", flush=True)
        with tempfile.TemporaryDirectory(prefix="acl-bench-") as cache:
            os.environ["ACL_CACHE"] = cache
            step()
    ratio = minutes["ray"] / minutes["sequential"]
    print(f"sequential_minutes: {minutes['sequential']:.2f} (1 process x {seq_threads} threads)")
    print(f"ray_minutes: {minutes['ray']:.2f} ({args.workers} workers x {args.threads} threads, Ray start and stop included)")
    print(f"ray_over_sequential: {ratio:.3f}")
    if args.record:
        root = os.path.join(os.path.dirname(__file__), "..")
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True).stdout.strip()
        entry = {"date": datetime.date.today().isoformat(), "commit": commit, "profile": args.profile,
                 "chapters": [c.split("_")[0] for c in chapters], "seeds": args.seeds, "runs": len(cfgs),
                 "order": args.order, "sequential_minutes": round(minutes["sequential"], 2),
                 "sequential_threads": seq_threads, "ray_minutes": round(minutes["ray"], 2),
                 "ray_workers": args.workers, "ray_threads": args.threads,
                 "ray_over_sequential": round(ratio, 3),
                 "ce_step_s": {k: round(v, 3) for k, v in ce_step.items()}}
        old = json.loads(open(args.record).read()) if os.path.exists(args.record) else []
        tmp = args.record + ".tmp"
        with open(tmp, "w") as f:
            json.dump(old + [entry], f, indent=1)
        os.replace(tmp, args.record)  # never a half-written record
        print(f"recorded in {args.record}")


if __name__ == "__main__":
    main()
