"""Command line: `python -m acllib run --profile cpu --task rte --method acl` runs one config."""
from __future__ import annotations

import argparse
import sys

from .config import PROFILES, STRATEGIES, METHODS, make_config


def _print_result(result) -> None:
    cfg = result.config
    metric = result.headline_metric
    print(f"run {result.hash}: {cfg['task']} {cfg['strategy']}/{cfg['method']} exit={cfg['exit']} "
          f"backbone={cfg['backbone']} seed={cfg['seed']} precision={cfg['precision']}")
    for ep in result.epochs:
        split = result.eval_split
        if ep["eval"] is None:  # eval_each_epoch=False
            print(f"  epoch {ep['epoch']}: train loss {ep['train_main_loss']:.4f}")
            continue
        scores = "  ".join(f"exit {m}: {v[metric]:.2f}" for m, v in ep["eval"][split].items())
        print(f"  epoch {ep['epoch']}: train loss {ep['train_main_loss']:.4f}  {split} {metric}: {scores}")
    final = result.final[result.eval_split]
    last = max(final, key=int)
    print("final " + ", ".join(f"{k} {v:.2f}" for k, v in final[last].items()) + f" (exit {last})")
    angles = [a["angle"] for a in result.angles]
    if angles:
        over = sum(a > cfg["angle_threshold"] for a in angles)
        print(f"angles: {len(angles)} measured, {100 * over / len(angles):.1f}% over {cfg['angle_threshold']} deg")
    print(f"train time {result.train_seconds:.1f} s, {result.train_examples_per_s:.1f} examples/s; "
          f"total {result.total_seconds:.1f} s")


def _plan(args) -> int:
    import pandas as pd
    from . import cost, plan
    from .results import load_result
    try:
        if not 0 < args.gpu_utilisation <= 1:
            raise ValueError(f"--gpu-utilisation must lie in (0, 1], got {args.gpu_utilisation!r}")
        if args.gpu not in cost.GPUS:
            raise ValueError(f"unknown GPU {args.gpu!r}; choose one of {', '.join(cost.GPUS)}")
        plan.chapter_names(args.chapters)  # fails early on an unknown chapter
        flops_per_s, how = cost.machine_flops_per_s(args.step_seconds)
        table, notes = plan.cost_table(args.profile, args.chapters, flops_per_s, args.gpu, args.gpu_utilisation)
    except (ValueError, OSError, RuntimeError) as err:
        print("error: " + str(err).strip().splitlines()[0], file=sys.stderr)
        return 2
    print(f"plan of profile {args.profile!r}: every run once, under the first chapter that needs it")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:,.3g}"))
    print(f"this machine: {flops_per_s / 1e12:.2f} TFLOP/s of training, from {how}")
    if notes["calibration_runs"]:
        print(f"hours here include an overhead of x{notes['overhead']:.2f}: the median of measured over FLOP-predicted "
              f"training time of the {notes['calibration_runs']} planned full fine-tunes already in the cache")
    else:
        print("hours here: FLOPs over that throughput alone (no planned run is in the cache to calibrate the overhead)")
    print(f"GPU-hours: {notes['gpu']}")
    print("token counts: " + "; ".join(notes["tokens"]))
    from . import claims
    power = claims.power_plan(args.profile)
    basis = power.attrs["basis"]
    print(f"seeds for the primary family (prospective power, planning basis: profile {basis['profile']}, commit "
          f"{basis['commit']}, {basis['machine']}):")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(power.drop(columns="why").to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.runs:
        for name, cfgs in plan.book_plan(args.profile, args.chapters).items():
            for c in cfgs:
                print(f"{name}  {c.hash}  {'done' if load_result(c) else 'to run'}  {c.backbone} {c.task} "
                      f"{c.strategy}/{c.method} exit={c.exit} seed={c.seed}")
    return 0


def _sweep(args) -> int:
    from . import plan
    from .config import get_profile
    try:
        get_profile(args.profile)
        plan.chapter_names(args.chapters)
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        from . import cost
        from .sweep import sweep
        estimate = plan.build_estimate(args.profile, args.chapters)
        print(cost.describe_estimate(estimate), flush=True)
        counts = sweep(args.profile, args.chapters, args.address, args.threads, args.workers, progress=not args.quiet,
                       prior_flops_per_s=estimate["flops_per_s"] / estimate["overhead"])
    except (ValueError, OSError, RuntimeError, ConnectionError) as err:
        print("error: " + str(err).strip().splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nsweep interrupted: every finished run is in the cache; the same command resumes", file=sys.stderr)
        return 130
    print(f"sweep of profile {args.profile!r}: {counts['planned_missing']} runs missing; trained {counts['trained']}, "
          f"skipped {counts['skipped']} (held by another sweep), failed {counts['failed']}")
    return 1 if counts["failed"] else 0


def _claims(args) -> int:
    import json
    from pathlib import Path
    import pandas as pd
    from . import claim_tables, claims, plan
    from .config import get_profile
    if args.plot:
        from matplotlib.figure import Figure
        kinds = Figure().canvas.get_supported_filetypes()
        if Path(args.plot).suffix.lstrip(".").lower() not in kinds:
            print(f"error: --plot {args.plot!r}: the file's suffix names its format, one of {', '.join(sorted(kinds))}",
                  file=sys.stderr)
            return 2
    try:
        get_profile(args.profile)
        tables = claim_tables.build(args.profile)
        table, missing = claims.judge(args.profile, tables)
    except (ValueError, OSError, RuntimeError) as err:
        print("error: " + str(err).strip().splitlines()[0], file=sys.stderr)
        return 2
    for line in missing:
        print(f"missing: {line}")
    print(f"claims of profile {args.profile!r}, computed from the run cache ({sum(len(set(h)) for h in tables.hashes.values())} runs)")
    cols = ["id", "task", "kind", "family", "seeds", "ours", "p (Holm)", "verdict"]
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 70):
        print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for fam in claims.FAMILIES:
        print(f"{claims.FAMILIES[fam]}: " + ", ".join(f"{k}: {v}" for k, v in claims.counts(table, family=fam).items()))
    if args.out:
        out = Path(args.out)
        table.to_csv(out, index=False)
        ledger = out.with_suffix(".json")
        ledger.write_text(json.dumps({"profile": args.profile, "rows": claims.ledger(table), "missing": missing},
                                     indent=1) + "\n")
        print(f"wrote {out} and {ledger}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        from . import forest, plotting
        plotting.setup()
        fig, undrawn = forest.forest(table, families=tuple(claims.FAMILIES))
        fig.savefig(args.plot)
        print(f"wrote {args.plot}: the forest plots of every family. {forest.caption(table, args.profile, tuple(claims.FAMILIES))}")
        if len(undrawn):
            print(forest.undrawn_text(undrawn))
    if args.planning_basis:
        from .results import cpu_model, git_commit
        claims.write_planning_basis(table, args.profile, git_commit(), cpu_model())
        print("wrote acllib/planning_basis.json")
    return 0


def main(argv=None) -> int:
    from .store import reraise_swallowed_ctrl_c
    reraise_swallowed_ctrl_c()
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
    p_plan = sub.add_parser("plan", help="list and price every run of the book at a profile (nothing runs)")
    p_plan.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)}")
    p_plan.add_argument("--chapters", nargs="*", default=None, help="chapter names or numbers (default: all)")
    p_plan.add_argument("--step-seconds", type=float, default=None,
                        help="this machine's CE step (a build record's ce_step_s) instead of timing one now")
    p_plan.add_argument("--gpu", default="V100-16GB")
    p_plan.add_argument("--gpu-utilisation", type=float, default=0.3,
                        help="the share of the GPU's peak that training sustains (an assumption; default 0.3)")
    p_plan.add_argument("--runs", action="store_true", help="also list every run")
    p_sweep = sub.add_parser("sweep", help="run the plan's missing runs on a Ray cluster")
    p_sweep.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)}")
    p_sweep.add_argument("--chapters", nargs="*", default=None, help="chapter names or numbers (default: all)")
    p_sweep.add_argument("--address", default="local",
                         help="local (start Ray here, stop it after), auto, or HOST:PORT of a running cluster")
    p_sweep.add_argument("--threads", type=int, default=1, help="CPU threads per run where the cluster has no GPU")
    p_sweep.add_argument("--workers", type=int, default=None, help="CPUs of a local Ray instance (default: all)")
    p_sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    p_claims = sub.add_parser("claims", help="judge every claim from the run cache alone (no notebook)")
    p_claims.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)}")
    p_claims.add_argument("--out", default=None, help="write the table as CSV here, and its ledger beside it (.json)")
    p_claims.add_argument("--plot", default=None, metavar="FILE",
                          help="draw every family's forest plot into FILE (.png, .pdf, .svg, ...)")
    p_claims.add_argument("--planning-basis", action="store_true",
                          help="record the rows' paired spreads as the planning basis (acllib/planning_basis.json)")
    args = parser.parse_args(argv)

    if args.command == "claims":
        return _claims(args)

    if args.command == "plan":
        return _plan(args)
    if args.command == "sweep":
        return _sweep(args)

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
    except KeyboardInterrupt:  # the run's files are written atomically at its end: nothing half-written
        print("\ninterrupted: the run was not finished and left nothing behind; runs finished before are in the cache",
              file=sys.stderr)
        return 130
    _print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
