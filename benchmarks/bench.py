"""Speed figures, each measured side by side in one process: `name: value` lines, ratios last.

python benchmarks/bench.py [--repeats 5] [--stage2-examples 256]

Every ratio compares the same model (packaged MiniLM), data (RTE train), batch size and precision
on both sides; warm-up steps are excluded and medians of interleaved repeats are reported, because
this machine is shared and noisy. The book's build times and peak memory come from
`book/build.py`'s timings file (written by `make book`), not from this script.

It measures the machine it runs on: every figure in the precision the book trains in here
(`precision=auto`: bf16 where the CPU computes it natively, fp32 elsewhere), and the bf16-against-
fp32 rows only where bf16 is native (elsewhere PyTorch emulates it, some 15-100x slower, and a figure
of emulated bf16 is not this machine's speed: they print as skipped, with the measured slow-down).
The roofline figure: the CE step's FLOP/s over the best matrix-product FLOP/s measured in the same
run, same precision and threads.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from acllib import data as gdata
from acllib import acl_grad, make_config, strategies, train
from acllib.config import bf16_slowdown, native_bf16, resolve_precision
from acllib.models import load_tokenizer


def precision_plan() -> dict:
    """What this machine's bench measures: `precision` (the book's, resolved as `auto` resolves it),
    whether the bf16-against-fp32 rows run, and if not, the line that says why."""
    native = native_bf16()
    precision = resolve_precision("auto")
    why = "" if native else (f"skipped: this CPU has no native bf16 (a 512x512 matrix product measured "
                             f"{bf16_slowdown():.0f}x slower in bf16 than in fp32 here: emulated, not this machine's speed)")
    return {"precision": precision, "bf16_rows": native, "why": why}


GEMM_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (1984, 384, 1536), (1984, 1536, 384))


def gemm_flops_per_s(precision: str, repeats: int = 5) -> dict:
    """FLOP/s (2mnk per product) of matrix products in `precision` with this process's threads:
    two squares and the model's feed-forward products at the CE step's 32 x 62 tokens; medians."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    out = {}
    for m, k, n in GEMM_SHAPES:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        out[f"{m}x{k}x{n}"] = 2.0 * m * k * n / statistics.median(times)
    return out


def step_timer(cfg, model, batch):
    """One full update (forward, backward(s), clip, AdamW) of `cfg`'s objective; returns seconds."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    opt, _ = train.make_optimizer(named, cfg.lr, cfg.weight_decay, 1000, 0.0)
    objective = train.full_objective(cfg, model)

    def step() -> float:
        t0 = time.perf_counter()
        model.train()
        with train.autocast(cfg.precision):
            loss = objective(batch, 1)
        acl_grad.backward(loss, params, cfg.acl_grad, cfg.angle_threshold, False)
        torch.nn.utils.clip_grad_norm_(params, train.MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    return step


_OPTIMIZERS = {}


def _train_step(cfg, model, batch) -> None:
    """One CE update of `model` (its optimizer kept across calls), as train.fit makes it."""
    if id(model) not in _OPTIMIZERS:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        _OPTIMIZERS[id(model)] = (train.make_optimizer(named, cfg.lr, cfg.weight_decay, 10 ** 6, 0.0)[0],
                                  [p for _, p in named], train.full_objective(cfg, model))
    opt, params, objective = _OPTIMIZERS[id(model)]
    model.train()
    with train.autocast(cfg.precision):
        loss = objective(batch, 1)
    acl_grad.backward(loss, params, False, cfg.angle_threshold, False)
    train.clip_grad_norms_([params], train.MAX_GRAD_NORM)
    opt.step()
    opt.zero_grad(set_to_none=True)


def interleaved_medians(steps: dict, repeats: int, warmup: int = 2) -> dict:
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for k, fn in steps.items():
            times[k].append(fn())
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scheme-examples", type=int, default=256,
                        help="SST-2 training examples per epoch in the batch-composition timing (the cpu profile has 800)")
    parser.add_argument("--stage2-examples", type=int, default=256)
    parser.add_argument("--trainer-examples", type=int, default=256,
                        help="RTE examples per epoch in the Trainer comparison (3 epochs, first excluded)")
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument("--accuracy-task", default="sst2",
                        help="cpu-profile task whose CE dev accuracy is compared in bf16 and fp32 (profile seeds)")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.manual_seed(0)
    pp = precision_plan()
    P = pp["precision"]
    print(f"precision: {P} ({'native bf16' if pp['bf16_rows'] else 'this CPU has no native bf16'}); "
          f"threads: {torch.get_num_threads()}")
    base = make_config("cpu", "rte", precision=P)
    tok = load_tokenizer(base.backbone)
    td = train.load_task_data(base, tok)
    lengths = td.train.lengths.numpy()

    # Padding: length-grouped dynamic batches vs padding everything to max_length.
    grouped = gdata.length_grouped_batches(lengths, base.batch_size, np.random.default_rng(0))
    waste = gdata.padding_share(lengths, grouped)
    fixed = 1 - lengths.sum() / (base.max_length * len(lengths))
    print(f"padding_waste: {waste:.3f}")
    print(f"padding_waste_fixed_{base.max_length}: {fixed:.3f}")

    # Batch composition: the cost of random training batches (the default since they decide who a
    # contrastive loss contrasts), on the cpu profile's SST-2 subset: padding, and one epoch of CE
    # steps per scheme (the same model and data; medians over --repeats interleaved epochs).
    sst = make_config("cpu", "sst2", precision=P, train_size=args.scheme_examples)
    td_s = train.load_task_data(sst, tok)
    len_s = td_s.train.lengths.numpy()
    schemes = {"length_grouped": ("length-grouped", 1), "random_whole": ("random", 1),
               "random_parts4": ("random", 4), "length_windowed": ("length-windowed", 1)}
    rng = np.random.default_rng(0)
    for name, (order, parts) in schemes.items():
        batches = gdata.train_batches(len_s, sst.batch_size, rng, order, sst.batch_window)
        pieces = [p for bt in batches for p in gdata.length_sorted_parts(len_s, bt, parts)]
        print(f"padding_waste_sst2_{name}: {gdata.padding_share(len_s, pieces):.3f}")
    model_s = strategies.build_model(sst, 2)
    epoch_times = {k: [] for k in schemes}
    for rep in range(args.repeats + 1):  # the first round warms up
        for name, (order, parts) in schemes.items():
            getter = train.BatchGetter(td_s.train, td_s.pad_id, parts)
            t0 = time.perf_counter()
            for idx in gdata.train_batches(len_s, sst.batch_size, np.random.default_rng(rep), order, sst.batch_window):
                _train_step(sst, model_s, getter(idx))
            if rep:
                epoch_times[name].append(time.perf_counter() - t0)
    epoch_med = {k: statistics.median(v) for k, v in epoch_times.items()}
    for name, seconds in epoch_med.items():
        print(f"sst2_ce_epoch_{name}_s: {seconds:.2f}")

    # One realistic batch: 32 examples around the median length.
    order = np.argsort(lengths)
    mid = order[len(order) // 2 - 16: len(order) // 2 + 16]
    batch = train.BatchGetter(td.train, td.pad_id)(mid)
    print(f"step_batch_tokens: {batch['input_ids'].shape[0]}x{batch['input_ids'].shape[1]}")

    cfgs = {"ce": base, "acl": make_config("cpu", "rte", method="acl", precision=P)}
    if pp["bf16_rows"]:  # the other precision, for the bf16-against-fp32 row
        cfgs["ce_fp32"] = make_config("cpu", "rte", precision="fp32")
    steps = {k: step_timer(c, strategies.build_model(c, 2), batch) for k, c in cfgs.items()}
    med = interleaved_medians(steps, args.repeats)
    for k, v in med.items():
        print(f"{k}_step_s: {v:.3f}" + ("" if k == "ce_fp32" else f" ({P})"))
    print(f"ce_samples_per_s: {len(mid) / med['ce']:.1f} ({P})")

    # Roofline: the CE step's FLOP/s (cost.machine_flops_per_s: 3 forward passes of the padded batch,
    # the model's matrix products) over this machine's own best matrix product, same precision and
    # threads, measured now.
    from acllib import cost
    step_flops, what = cost.machine_flops_per_s(med["ce"])
    gemm = gemm_flops_per_s(P)
    for shape, f in gemm.items():
        print(f"gemm_{shape}_gflops: {f / 1e9:.1f} ({P})")
    print(f"ce_step_gflops: {step_flops / 1e9:.1f} ({P}; {what})")

    # Stage 2: epochs of exit training (train + dev evaluation, as logged by fit) on cached features
    # vs re-running the frozen backbone; interleaved repeats of 2-epoch runs, the first epoch of
    # each run is the warm-up, medians of the second.
    # The book's ACL stage 2 (CE + KD + ACL-CL with ACL-Grad: two backward passes through the exits)
    # is the figure; plain 2ST (CE + KD, one backward pass) is printed beside it.
    stage2 = dict(strategy="2st", stage2_kd=True, stage2_epochs=2, train_size=args.stage2_examples, dev_size=64,
                  precision=P)
    cfg2 = make_config("cpu", "rte", **stage2, stage2_aux="acl-cl", stage2_grad=True)
    cfg2_plain = make_config("cpu", "rte", **stage2, stage2_aux="none")
    td2 = train.load_task_data(cfg2, tok)
    model = strategies.build_model(cfg2, 2)
    layers = train.freeze_for_stage2(model)
    t0 = time.perf_counter()
    cached = train.build_features(cfg2, model, td2, layers, progress=False, cached=True)
    build_s = time.perf_counter() - t0
    live = train.build_features(cfg2, model, td2, layers, progress=False, cached=False)
    epoch_s = {(v, f): [] for v in ("acl", "2st") for f in ("cached", "uncached")}
    for _ in range(args.repeats):
        for variant, cfg in (("acl", cfg2), ("2st", cfg2_plain)):
            for name, feats in (("cached", cached), ("uncached", live)):
                log, _ = train.train_stage2(cfg, model, td2, feats, progress=False)
                epoch_s[variant, name].append(log.epochs[-1]["train_seconds"] + log.epochs[-1]["eval_seconds"])
    epoch_s = {k: statistics.median(v) for k, v in epoch_s.items()}
    print(f"stage2_feature_build_s: {build_s:.2f}")
    for (variant, name), seconds in epoch_s.items():
        print(f"stage2_{variant}_epoch_{name}_s: {seconds:.3f}")

    trainer = {}
    if not args.skip_trainer:
        import tempfile
        from hf_trainer import compare
        for precision in (("fp32", "bf16") if pp["bf16_rows"] else (P,)):
            # like for like: the Trainer groups by length (mega-batches of 50), so ours does too here
            cfg_t = make_config("cpu", "rte", precision=precision, epochs=3, train_size=args.trainer_examples,
                                dev_size=32, batches="length-grouped", encoder_parts=1)
            td_t = train.load_task_data(cfg_t, tok)
            with tempfile.TemporaryDirectory() as workdir:
                trainer[precision] = compare(cfg_t, td_t, tok, workdir)
            for side, seconds in trainer[precision].items():
                print(f"{side}_ce_epoch_{precision}_s: {seconds:.2f}")
        n = args.trainer_examples
        for precision in trainer:
            print(f"hf_trainer_samples_per_s_{precision}: {n / trainer[precision]['trainer']:.1f}")

    acc = None
    if not args.skip_accuracy and pp["bf16_rows"]:
        # Whole cpu-profile CE runs (cached in data_cache/runs like every run, so the book's bf16
        # runs are reused): the same seeds and data in both precisions.
        from acllib import run
        from acllib.config import get_profile
        seeds = get_profile("cpu").seeds
        score = {p: [run(make_config("cpu", args.accuracy_task, method="ce", seed=s, precision=p), progress=False)
                     .score for s in seeds] for p in ("bf16", "fp32")}
        diffs = [statistics.fmean(b.values()) - statistics.fmean(f.values())
                 for b, f in zip(score["bf16"], score["fp32"])]  # last exit: the only one
        acc = (statistics.fmean(diffs), statistics.stdev(diffs) if len(diffs) > 1 else float("nan"), len(diffs))
        print(f"ce_dev_accuracy_{args.accuracy_task}_bf16: {statistics.fmean(v for d in score['bf16'] for v in d.values()):.2f}")
        print(f"ce_dev_accuracy_{args.accuracy_task}_fp32: {statistics.fmean(v for d in score['fp32'] for v in d.values()):.2f}")

    # The book's own figures are measured by `make book` (book/build.py records every build).
    import json
    from acllib import store
    builds_path = store.cache_dir("book", "cpu") / "builds.json"
    builds = json.loads(builds_path.read_text()) if builds_path.exists() else []
    for kind in ("cold", "warm"):
        done = [b for b in builds if b["kind"] == kind and b.get("whole_book") and b["exit_code"] == 0]
        if done:
            b = done[-1]
            print(f"book_{kind}_minutes: {b['minutes']:.1f} (make book, {b['finished_at']}, commit {b['commit']}, "
                  f"{b['runs_trained']} runs trained)")
        else:
            print(f"book_{kind}_minutes: not recorded yet (run `make book` from an empty data_cache/runs, then again)")
    if builds:
        print(f"peak_rss_gb: {max(b['peak_rss_gb'] for b in builds):.2f} (largest process of any recorded cpu build)")

    lg = epoch_med["length_grouped"]
    print(f"sst2_epoch_over_length_grouped: length-windowed (the default) {epoch_med['length_windowed'] / lg:.2f}, "
          f"random {epoch_med['random_whole'] / lg:.2f}, random in 4 parts {epoch_med['random_parts4'] / lg:.2f}")
    if pp["bf16_rows"]:
        print(f"bf16_vs_fp32: {med['ce_fp32'] / med['ce']:.2f}")
    else:
        print(f"bf16_vs_fp32: {pp['why']}")
    if acc:
        print(f"bf16_minus_fp32_dev_accuracy: {acc[0]:+.2f} (sd {acc[1]:.2f} over {acc[2]} seeds, {args.accuracy_task})")
    elif not pp["bf16_rows"]:
        print(f"bf16_minus_fp32_dev_accuracy: {pp['why']}")
    print(f"ce_step_over_best_gemm: {step_flops / max(gemm.values()):.2f} (the roofline figure: {P}, "
          f"{torch.get_num_threads()} threads, both measured in this run)")
    print(f"acl_grad_step_over_ce: {med['acl'] / med['ce']:.2f}")
    print(f"stage2_2st_cached_over_uncached: {epoch_s['2st', 'uncached'] / epoch_s['2st', 'cached']:.1f}")
    print(f"stage2_cached_over_uncached: {epoch_s['acl', 'uncached'] / epoch_s['acl', 'cached']:.1f} (ACL's stage 2)")
    if trainer:
        for precision in trainer:
            print(f"ce_vs_hf_trainer_{precision}: {trainer[precision]['trainer'] / trainer[precision]['ours']:.2f}")
        if "bf16" in trainer and "fp32" in trainer:
            print(f"ce_bf16_vs_hf_trainer_fp32: {trainer['fp32']['trainer'] / trainer['bf16']['ours']:.2f}")
    print(f"bench_minutes: {(time.perf_counter() - started) / 60:.1f}")


if __name__ == "__main__":
    main()
