"""Command line: `python -m acllib run --profile cpu --task rte --method acl` runs one config."""
from __future__ import annotations

import argparse
import sys

from .config import PROFILES, STRATEGIES, METHODS, make_config


def _print_result(result: dict) -> None:
    cfg = result["config"]
    metric = result["headline_metric"]
    print(f"run {result['hash']}: {cfg['task']} {cfg['strategy']}/{cfg['method']} exit={cfg['exit']} "
          f"backbone={cfg['backbone']} seed={cfg['seed']} precision={cfg['precision']}")
    for ep in result["epochs"]:
        split = result["eval_split"]
        if ep["eval"] is None:  # eval_each_epoch=False
            print(f"  epoch {ep['epoch']}: train loss {ep['train_main_loss']:.4f}")
            continue
        scores = "  ".join(f"exit {m}: {v[metric]:.2f}" for m, v in ep["eval"][split].items())
        print(f"  epoch {ep['epoch']}: train loss {ep['train_main_loss']:.4f}  {split} {metric}: {scores}")
    final = result["final"][result["eval_split"]]
    last = max(final, key=int)
    print("final " + ", ".join(f"{k} {v:.2f}" for k, v in final[last].items()) + f" (exit {last})")
    angles = [a["angle"] for a in result["angles"]]
    if angles:
        over = sum(a > cfg["angle_threshold"] for a in angles)
        print(f"angles: {len(angles)} measured, {100 * over / len(angles):.1f}% over {cfg['angle_threshold']} deg")
    print(f"train time {result['train_seconds']:.1f} s, {result['train_examples_per_s']:.1f} examples/s; "
          f"total {result['total_seconds']:.1f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m acllib")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run one config (cached results are reused)")
    p_run.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)}")
    p_run.add_argument("--task", default="rte")
    p_run.add_argument("--strategy", default=None, help=f"one of {', '.join(STRATEGIES)}")
    p_run.add_argument("--method", default=None, help=f"one of {', '.join(METHODS)}")
    p_run.add_argument("--seed", default=None)
    p_run.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override any RunConfig field, e.g. --set lam=0.1 --set exit=linear")
    p_run.add_argument("--force", action="store_true", help="run again even if cached")
    p_run.add_argument("--quiet", action="store_true", help="no progress bars")
    sub.add_parser("profiles", help="list the profiles")
    args = parser.parse_args(argv)

    if args.command == "profiles":
        for p in PROFILES.values():
            print(f"{p.name}: {p.about}\n  tasks {', '.join(p.tasks)}; seeds {list(p.seeds)}\n  {p.run}")
        return 0
    try:
        overrides = {}
        for item in args.set:
            if "=" not in item:
                raise ValueError(f"--set takes FIELD=VALUE, got {item!r}")
            key, value = item.split("=", 1)
            overrides[key.strip()] = value.strip()
        for key in ("strategy", "method", "seed"):
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        cfg = make_config(args.profile, args.task, **overrides)
        from .runs import run
        result = run(cfg, progress=not args.quiet, force=args.force)
    except (ValueError, OSError, RuntimeError) as err:  # OSError: e.g. an unknown hub model id
        print("error: " + str(err).strip().splitlines()[0], file=sys.stderr)
        return 2
    _print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
