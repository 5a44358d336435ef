"""Early-exit inference for a trained MultiExitModel, and what it buys in time and FLOPs.

Each example stops at the first exit whose rule fires and leaves the batch there: the layers above
its exit are not computed for it. Rules (the usual ones):
  entropy   exit when the normalized entropy of the exit's softmax is < threshold (DeeBERT)
  max_prob  exit when the largest softmax probability is >= threshold
  patience  exit when the argmax has stayed the same over `threshold` consecutive exits (PABEE)
The last exit always fires.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import data as gdata
from . import measurements, results, runs, train
from .models import MultiExitModel, counted_flops, encoder_layers, load_tokenizer
from .stats import median_interval
from .train import autocast, device, eval_batches, score

RULES = ("entropy", "max_prob", "patience")


@dataclass(frozen=True)
class ExitRule:
    kind: str
    threshold: float

    def __post_init__(self):
        if self.kind not in RULES:
            raise ValueError(f"unknown exit rule {self.kind!r}; choose one of {', '.join(RULES)}")
        ok = {"entropy": 0.0 <= self.threshold <= 1.0, "max_prob": 0.0 <= self.threshold <= 1.0 + 1e-9,
              "patience": self.threshold >= 1 and float(self.threshold).is_integer()}[self.kind]
        if not ok:
            allowed = {"entropy": "a normalized entropy in [0, 1]", "max_prob": "a probability in [0, 1]",
                       "patience": "a whole number of exits >= 1"}[self.kind]
            raise ValueError(f"threshold {self.threshold!r} for rule {self.kind!r} must be {allowed}")

    def start(self, n: int) -> dict[str, torch.Tensor]:
        """Per-example state carried from exit to exit (patience only)."""
        return {"prev": torch.full((n,), -1, dtype=torch.long), "count": torch.zeros(n, dtype=torch.long)}

    def fires(self, logits: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B] bool: which examples exit here; updates `state` in place."""
        logits = logits.float()
        if self.kind == "entropy":
            p = logits.softmax(-1)
            entropy = -(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(logits.shape[-1])
            return entropy < self.threshold
        if self.kind == "max_prob":
            return logits.softmax(-1).max(-1).values >= self.threshold
        pred = logits.argmax(-1).cpu()
        state["count"] = torch.where(pred == state["prev"], state["count"] + 1, torch.zeros_like(pred))
        state["prev"] = pred
        return (state["count"] >= int(self.threshold)).to(logits.device)


def simulate(exit_logits: list[torch.Tensor], rule: ExitRule) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, index of the exit taken) from every exit's logits ([B, K] each, in exit
    order), with the same rule code as the real loop: what early exiting would decide."""
    n = exit_logits[0].shape[0]
    state = rule.start(n)
    preds = np.zeros(n, dtype=int)
    taken = np.full(n, len(exit_logits) - 1)
    open_ = np.ones(n, dtype=bool)
    for j, logits in enumerate(exit_logits):
        fired = rule.fires(logits, state).cpu().numpy() | (j == len(exit_logits) - 1)
        now = open_ & fired
        preds[now] = logits.argmax(-1).cpu().numpy()[now]
        taken[now] = j
        open_ &= ~now
    return preds, taken


@torch.no_grad()
def early_exit_forward(model: MultiExitModel, batch: dict, rule: ExitRule,
                       precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(predictions [B], exit layer taken [B], logits of that exit [B, K]): layer by layer, examples that exit leave the batch
    and the layers above their exit are never run for them. Padding columns no remaining example
    needs are dropped as the batch shrinks."""
    from transformers.masking_utils import create_bidirectional_mask
    model.eval()
    backbone = model.backbone
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n = ids.shape[0]
    preds = torch.zeros(n, dtype=torch.long)
    taken = torch.zeros(n, dtype=torch.long)
    out_logits = None
    active = torch.arange(n)
    state = rule.start(n)
    last = model.exit_layers[-1]
    with autocast(precision):
        kwargs = {"input_ids": ids}
        if "token_type_ids" in batch and getattr(backbone.config, "type_vocab_size", 2) > 1:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        hidden = backbone.embeddings(**kwargs)  # [B, L, hidden]
        for m, layer in enumerate(encoder_layers(backbone), start=1):
            full_mask = create_bidirectional_mask(config=backbone.config, inputs_embeds=hidden, attention_mask=mask)
            hidden = layer(hidden, attention_mask=full_mask)
            if isinstance(hidden, tuple):  # older layer APIs return (hidden, ...)
                hidden = hidden[0]
            if m not in model.exit_layers:
                continue
            _, logits = model.exit(m)(hidden, mask)
            done = rule.fires(logits, state).cpu() | (m == last)
            preds[active[done]] = logits.argmax(-1).cpu()[done]
            taken[active[done]] = m
            if out_logits is None:
                out_logits = torch.zeros(n, logits.shape[-1])
            out_logits[active[done]] = logits.float().cpu()[done]
            if bool(done.all()):
                break
            keep = ~done
            active, state = active[keep], {k: v[keep] for k, v in state.items()}
            keep = keep.to(hidden.device)
            width = int(mask[keep].sum(-1).max())
            hidden, mask = hidden[keep, :width], mask[keep, :width]
    return preds, taken, out_logits


@torch.no_grad()
def all_exit_logits(model: MultiExitModel, data: gdata.Encoded, precision: str, pad_id: int,
                    batch_size: int = 64) -> list[torch.Tensor]:
    """Every exit's logits on every example ([n, K] per exit, exit order), from one full pass."""
    model.eval()
    chunks = {m: [] for m in model.exit_layers}
    order = []
    for idx, batch in eval_batches(data, pad_id, batch_size):
        with autocast(precision):
            for o in model(batch):
                chunks[o.layer].append(o.logits.float().cpu())
        order.extend(idx)
    inverse = np.argsort(np.asarray(order))
    return [torch.cat(chunks[m])[inverse] for m in model.exit_layers]


def flop_table(model: MultiExitModel, lengths) -> dict[int, tuple[float, float]]:
    """{length: (FLOPs of one layer, FLOPs of one exit)} for one example of that length, counted by
    models.counted_flops (layers are alike, and so are exits)."""
    from transformers.masking_utils import create_bidirectional_mask
    layer = encoder_layers(model.backbone)[0]
    exit_ = model.exit(model.exit_layers[0])
    table = {}
    for length in sorted({int(n) for n in lengths}):
        x = torch.zeros(1, length, model.backbone.config.hidden_size, device=device())
        mask = torch.ones(1, length, dtype=torch.long, device=device())
        full_mask = create_bidirectional_mask(config=model.backbone.config, inputs_embeds=x, attention_mask=mask)
        table[length] = (counted_flops(lambda: layer(x, attention_mask=full_mask)), counted_flops(lambda: exit_(x, mask)))
    return table


def early_exit_flops(model: MultiExitModel, table, lengths, taken_index) -> np.ndarray:
    """Per example: the layers up to the exit it took plus every exit it passed through."""
    layers = np.asarray(model.exit_layers)[np.asarray(taken_index)]
    per = np.array([table[int(n)] for n in lengths])  # [n, 2]
    return layers * per[:, 0] + (np.asarray(taken_index) + 1) * per[:, 1]


def full_model_flops(model: MultiExitModel, table, lengths) -> np.ndarray:
    """Per example, without early exiting: every layer and the last exit only."""
    per = np.array([table[int(n)] for n in lengths])
    return model.num_layers * per[:, 0] + per[:, 1]


def time_settings(settings: dict, batches: list[dict], repeats: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per example of each setting's fn(batch) over `batches`, `repeats` times: one warm-up
    of each, then every repeat runs every setting once, in a fresh random order. Interleaved, a
    slow spell of the machine falls on all settings alike, and repeat r of two settings is a pair."""
    n = sum(b["input_ids"].shape[0] for b in batches)
    for fn in settings.values():
        fn(batches[0])
    names = list(settings)
    times = {k: [] for k in names}
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        for i in rng.permutation(len(names)):
            t0 = time.perf_counter()
            for b in batches:
                settings[names[i]](b)
            times[names[i]].append((time.perf_counter() - t0) / n)
    return times


def timing_summary(times: dict[str, list[float]], reference: str, level: float = 0.95) -> dict[str, dict]:
    """Per setting: median ms per example and the speed-up over `reference` (median of the per-repeat
    ratios reference / setting, paired by repeat), each with its distribution-free interval
    (stats.median_interval) and that interval's coverage."""
    out = {}
    ref = np.asarray(times[reference])
    for k, t in times.items():
        t = np.asarray(t)
        ms, ms_lo, ms_hi, cover = median_interval(1e3 * t, level)
        sp, sp_lo, sp_hi, _ = median_interval(ref / t, level)
        out[k] = {"ms": ms, "ms_lo": ms_lo, "ms_hi": ms_hi, "speedup": sp, "speedup_lo": sp_lo,
                  "speedup_hi": sp_hi, "coverage": cover, "repeats": len(t)}
    return out


# Thresholds from "exit almost never" to "exit early"; patience counts agreeing exits.
DEFAULT_GRID = {"entropy": (0.05, 0.15, 0.3, 0.5), "max_prob": (0.99, 0.95, 0.9, 0.8),
                "patience": (4, 3, 2, 1)}


def evaluate_rules(model: MultiExitModel, data: gdata.Encoded, task: str, precision: str, pad_id: int,
                   grid: dict | None = None, timing: bool = True, latency_examples: int = 64,
                   batch_size: int = 32, repeats: int = 3) -> list[dict]:
    """One row per (rule, threshold), plus the full model without early exiting (rule 'none'):
    dev score and mean exit layer (from every exit's logits, simulated with the rule), FLOPs per
    example (flop_table), and when `timing`: measured seconds per example of real early-exit
    inference at batch 1 and at `batch_size` on the first `latency_examples` dev examples, and the
    share of those examples whose real prediction equals the simulated one."""
    grid = DEFAULT_GRID if grid is None else grid
    logits = all_exit_logits(model, data, precision, pad_id)
    labels, lengths = data.labels.numpy(), data.lengths.numpy()
    table = flop_table(model, lengths)
    full_flops = full_model_flops(model, table, lengths).mean()
    headline = gdata.get_task(task).metrics[0]
    sub = np.arange(min(latency_examples, len(data)))
    dev = device()

    def batches(size):
        return [{k: v.to(dev) for k, v in gdata.collate(data, sub[i:i + size], pad_id).items()}
                for i in range(0, len(sub), size)]

    one, many = (batches(1), batches(batch_size)) if timing else ([], [])

    def full_forward(b):
        with torch.no_grad(), autocast(precision):
            return model(b, [model.exit_layers[-1]])

    full_preds = logits[-1].argmax(-1).numpy()
    rows = [{"rule": "none", "threshold": float("nan"), "score": score(task, labels, full_preds)[headline],
             "mean_exit_layer": float(model.num_layers), "flops_per_example": full_flops,
             "flops_fraction": 1.0, "real_equals_simulated": float("nan")}]  # nothing simulated
    settings = {"none": full_forward}
    for kind, thresholds in grid.items():
        for t in thresholds:
            rule = ExitRule(kind, float(t))
            preds, taken = simulate(logits, rule)
            flops = early_exit_flops(model, table, lengths, taken).mean()
            row = {"rule": kind, "threshold": float(t), "score": score(task, labels, preds)[headline],
                   "mean_exit_layer": float(np.asarray(model.exit_layers)[taken].mean()),
                   "flops_per_example": flops, "flops_fraction": flops / full_flops}
            if timing:
                real = torch.cat([early_exit_forward(model, b, rule, precision)[0] for b in many]).numpy()
                row["real_equals_simulated"] = float((real == preds[sub]).mean())
                settings[f"{kind}:{float(t)}"] = lambda b, rule=rule: early_exit_forward(model, b, rule, precision)
            rows.append(row)
    if timing:  # every setting timed in the same interleaved repeats, the full model among them
        model.eval()
        for tag, batches_ in (("b1", one), ("batch", many)):
            summary = timing_summary(time_settings(settings, batches_, repeats), "none")
            for row in rows:
                t = summary["none" if row["rule"] == "none" else f"{row['rule']}:{row['threshold']}"]
                row.update({f"latency_{tag}_ms": t["ms"], f"latency_{tag}_ms_lo": t["ms_lo"], f"latency_{tag}_ms_hi": t["ms_hi"],
                            f"speedup_{tag}": t["speedup"], f"speedup_{tag}_lo": t["speedup_lo"],
                            f"speedup_{tag}_hi": t["speedup_hi"], "timing_coverage": t["coverage"],
                            "timing_repeats": t["repeats"]})
    return rows


def evaluate_run(cfg, grid: dict | None = None, timing: bool = True, latency_examples: int = 64,
                 batch_size: int = 32, repeats: int = 3, threads: int | None = None) -> list[dict]:
    """evaluate_rules on the dev split of a finished run's model, cached by the run, every argument
    and the code that measures (acllib.measurements): a warm book rebuild reuses the measured
    latencies instead of timing again. Timed with `threads` torch threads (default: the current
    number), set for the timing and recorded."""
    grid = DEFAULT_GRID if grid is None else grid
    threads = threads or torch.get_num_threads()
    args = {"grid": {k: [float(t) for t in v] for k, v in grid.items()}, "timing": timing,
            "latency_examples": latency_examples, "batch_size": batch_size, "repeats": repeats, "threads": threads}
    return measurements.cached_json("early_exit", cfg.hash, args, MEASURING_CODE,
                                    lambda: _evaluate_run(cfg, grid, timing, latency_examples, batch_size, repeats, threads),
                                    extra={"config": cfg.to_dict(), "hardware": results.provenance(cfg)["device_name"]})


def _evaluate_run(cfg, grid, timing, latency_examples, batch_size, repeats, threads) -> list[dict]:
    model = runs.load_model(cfg)
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    dev = td.evals[next(iter(td.evals))]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # pinned for the timing
    try:
        return evaluate_rules(model, dev, cfg.task, cfg.precision, td.pad_id, grid, timing, latency_examples,
                              batch_size, repeats)
    finally:
        torch.set_num_threads(before)


def quality_rows(cfg) -> list[dict]:
    """The default grid's score and FLOPs fraction per setting of a finished run's model, without
    latencies: read from any cached evaluate_run of that grid by the current code (timed or not: its
    scores and FLOPs are the same), else evaluated untimed (and cached). What the claims'
    quality-speed trade-offs use."""
    grid = {k: [float(t) for t in v] for k, v in DEFAULT_GRID.items()}
    keep = ("rule", "threshold", "score", "flops_fraction")
    for record in measurements.stored_json("early_exit", cfg.hash, MEASURING_CODE):
        if record["args"]["grid"] == grid:
            return [{k: r[k] for k in keep} for r in record["value"]]
    return [{k: r[k] for k in keep} for r in evaluate_run(cfg, timing=False)]


# The code an early-exit measurement depends on: an edit to any of it invalidates the cached sweeps
MEASURING_CODE = (evaluate_run, _evaluate_run, evaluate_rules, simulate, ExitRule, early_exit_forward, all_exit_logits,
                  flop_table, early_exit_flops, full_model_flops, time_settings, timing_summary)
