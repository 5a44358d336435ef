"""What runs cost before they run: FLOPs from the model's shape and the tasks' token counts, hours on
this machine from a measured training step, GPU-hours on a named GPU from its datasheet.

FLOPs count multiply-adds as 2, as torch.utils.flop_counter does (tests/test_cost.py checks the
forward count against it). A training step is taken as 3 forward passes (forward + a backward of
twice its cost); ACL-Grad and logged angles take the CE and auxiliary gradients apart, 5.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import acl_grad, strategies, train
from . import data as gdata
from .config import RunConfig, make_config
from .data import get_task
from .models import backbone_arch, load_tokenizer
from .train import update_batch_size

# GLUE training-set sizes (the GLUE paper's Table 1; the hub's nyu-mll/glue), for tasks whose train
# split is not on this machine.
GLUE_TRAIN_SIZE = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "qqp": 363846, "mnli": 392702,
                   "qnli": 104743, "rte": 2490}
# Datasheet peaks (NVIDIA V100 PCIe 16 GB, the paper's GPU: 14 TFLOP/s FP32, 112 TFLOP/s tensor-core
# mixed precision). Sustained training reaches a fraction of the peak: `gpu_utilisation` is that
# fraction, an assumption the plan prints beside its GPU-hours.
GPUS = {"V100-16GB": dict(fp32=14e12, mixed=112e12, source="NVIDIA V100 PCIe datasheet")}


def arch(backbone: str) -> dict:
    return backbone_arch(backbone)


def layer_flops(hidden: int, intermediate: int, seq_len: int) -> float:
    """One transformer layer on one example of seq_len tokens: Q, K, V, O projections (4 h^2 per
    token), the feed-forward block (2 h i), the attention scores and weighted sum (2 L h)."""
    return 2.0 * seq_len * (4 * hidden * hidden + 2 * hidden * intermediate + 2 * seq_len * hidden)


def exit_flops(kind: str, hidden: int, seq_len: int, num_labels: int, d_e: int = 64) -> float:
    """One exit on one example, as our modules compute it (MHAExit through nn.MultiheadAttention
    with [CLS] as the only query; LinearExit on one pooled vector)."""
    if kind == "mha":
        return 2.0 * (seq_len * hidden * d_e            # down-projection of every token
                      + d_e * d_e + 2 * seq_len * d_e * d_e  # q for [CLS]; k, v for every token
                      + 2 * seq_len * d_e                 # scores and weighted sum
                      + d_e * d_e + d_e * num_labels)     # out-projection, classifier
    pooler = hidden * hidden if kind == "linear" else 0
    return 2.0 * (pooler + hidden * num_labels)


def forward_flops(backbone: str, seq_len: int, layers: int | None = None, exit_kind: str = "mha",
                  exits: int = 1, num_labels: int = 2, d_e: int = 64) -> float:
    """Backbone layers 1..layers (default: all) and `exits` exits, one example of seq_len tokens."""
    a = arch(backbone)
    n = a["num_hidden_layers"] if layers is None else layers
    return (n * layer_flops(a["hidden_size"], a["intermediate_size"], seq_len)
            + exits * exit_flops(exit_kind, a["hidden_size"], seq_len, num_labels, d_e))


@dataclass(frozen=True)
class TaskTokens:
    n_train: int
    n_eval: int
    mean_len: float        # tokens per training example
    mean_len2: float       # mean of the squared length (attention is quadratic)
    padding: float         # share of padded tokens in the profile's training batches
    source: str            # where the counts come from


def task_tokens(cfg: RunConfig) -> TaskTokens:
    """Token counts of a run's training data (see _task_tokens)."""
    n = min(GLUE_TRAIN_SIZE[cfg.task], cfg.train_size or GLUE_TRAIN_SIZE[cfg.task])  # the examples the batch rule sees
    return _task_tokens(cfg.backbone, cfg.task, cfg.max_length, cfg.train_size, cfg.dev_size,
                        update_batch_size(cfg, n), cfg.batches, cfg.batch_window, cfg.micro_batch_size)


@lru_cache(maxsize=None)
def _task_tokens(backbone: str, task_name: str, max_length: int, train_size, dev_size, b: int,
                 batches: str, batch_window: int, micro: int) -> TaskTokens:
    """Token counts of a run's training data, tokenized as the run would (MiniLM's tokenizer, the
    vocabulary of bert-base-uncased, where the run's own does not load: approximate for RoBERTa's
    BPE). Tasks without a local train split take its validation lengths and GLUE's train size;
    without any local split, every example at max_length (an upper bound)."""
    try:
        if backbone in ("minilm", "tiny", "tiny-roberta") or backbone.startswith((".", "/", "~")):
            tok, tok_note = load_tokenizer(backbone), ""
        else:  # a hub id: only what is already downloaded (a plan must not wait on the network)
            from transformers import AutoTokenizer
            tok, tok_note = AutoTokenizer.from_pretrained(backbone, local_files_only=True), ""
    except (OSError, ValueError, RuntimeError):
        tok, tok_note = load_tokenizer("minilm"), ", MiniLM's tokenizer"
    task = gdata.get_task(task_name)
    try:
        train = gdata.subsample(gdata.encode_split(task_name, "train", tok, max_length), train_size, seed=0)
        lengths, n_train, source = train.lengths.numpy(), len(train), "train split" + tok_note
    except (ValueError, OSError):
        n_train = min(GLUE_TRAIN_SIZE[task_name], train_size or math.inf)
        try:
            lengths = gdata.encode_split(task_name, task.eval_splits[0], tok, max_length).lengths.numpy()
            source = f"validation lengths{tok_note}, GLUE's train size {GLUE_TRAIN_SIZE[task_name]:,}"
        except (ValueError, OSError):
            lengths = np.array([max_length])
            source = f"no local split: every example at max_length {max_length} (an upper bound)"
    try:
        n_eval = len(gdata.subsample(gdata.encode_split(task_name, task.eval_splits[0], tok, max_length), dev_size, seed=0))
    except (ValueError, OSError):
        n_eval = dev_size or 0
    order = gdata.train_batches(lengths, min(b, len(lengths)), np.random.default_rng(0), batches, batch_window) if len(lengths) > 1 else [[0]]
    chunks = [b_[i:i + micro] for b_ in order for i in range(0, len(b_), micro)]  # forward passes, as train.fit cuts them
    pad = gdata.padding_share(lengths, chunks)
    return TaskTokens(int(n_train), int(n_eval), float(lengths.mean()), float((lengths.astype(float) ** 2).mean()),
                      float(pad), source)


def _forward_per_example(cfg: RunConfig, tt: TaskTokens, layers=None, exits=1, exit_kind=None) -> float:
    """Forward FLOPs per example at the data's length distribution: forward_flops is c + a L + b L^2
    in the length, so its mean is exact from the mean and the mean square of the length."""
    k = get_task(cfg.task).num_labels
    kind = exit_kind or cfg.exit
    f0, f1, f2 = (forward_flops(cfg.backbone, n, layers, kind, exits, k, cfg.d_e) for n in (0, 1, 2))
    b = (f2 - 2 * f1 + f0) / 2
    a = f1 - f0 - b
    return f0 + a * tt.mean_len + b * tt.mean_len2


@dataclass
class Pricing:
    """What a strategy counts its run's FLOPs from (Strategy.flops): the run, its data's token
    statistics, its backbone's depth and attention heads, and its batches' padding (1 / (1 - share))."""
    cfg: RunConfig
    tt: TaskTokens
    depth: int
    heads: int
    pad: float

    def forward(self, layers=None, exits=1) -> float:
        """Forward FLOPs per example through `layers` layers and `exits` exits (unpadded)."""
        return _forward_per_example(self.cfg, self.tt, layers, exits)

    def result(self, train_f: float, eval_f: float, examples: int, features: float = 0.0) -> dict:
        return {"flops": train_f + eval_f + features, "train": train_f, "eval": eval_f, "features": features,
                "examples_x_epochs": examples, "tokens_source": self.tt.source}


def run_flops(cfg: RunConfig) -> dict:
    """FLOPs of one run (a 2st run: its stage 2 only; its stage 1 is a run of its own), padded as
    the profile's batches pad: "train" (the training steps), "eval" (dev passes) and, for 2st,
    "features" (the frozen backbone once over train and dev, shared by every 2st run of one stage 1).
    Each strategy counts its own (strategies/*.py, flops) from this run's Pricing."""
    tt = task_tokens(cfg)
    a = arch(cfg.backbone)
    depth = a["num_hidden_layers"] if cfg.depth is None else cfg.depth
    pad = 1.0 / max(1e-9, 1.0 - tt.padding)
    return strategies.get(cfg.strategy).flops(cfg, Pricing(cfg, tt, depth, a["num_hidden_layers"] * a["num_attention_heads"], pad))


def set_flops(cfgs) -> dict[str, dict]:
    """run_flops of each run of a set, by hash, with a 2st group's frozen-backbone features counted
    once (under its first run here): what training the set costs, as the plan's table and the sweep's
    bar count it (a run's own run_flops counts its features whole)."""
    out, groups = {}, set()
    for c in cfgs:
        x = dict(run_flops(c))
        if strategies.get(c.strategy).shares_stage1:
            if c.stage1().hash in groups:
                x["flops"] -= x["features"]
                x["features"] = 0.0
            groups.add(c.stage1().hash)
        out[c.hash] = x
    return out


def training_examples(cfg: RunConfig) -> int:
    """Training examples x epochs a row of results took, its stage 1 included (2st, headprune,
    theseus start from a finished full fine-tune): what a table shows beside each row's score."""
    own = run_flops(cfg)["examples_x_epochs"]
    return own + (run_flops(cfg.stage1())["examples_x_epochs"] if strategies.get(cfg.strategy).needs_stage1 else 0)


def ce_step_seconds(repeats: int = 5) -> float:
    """Seconds per CE training step of the cpu profile's model on one median-length RTE batch of 32
    (bench.py's ce_bf16_step_s, fewer repeats): this machine's speed varies by up to 2x between days,
    so each build records it, and builds are compared by their minutes over it."""
    import torch
    cfg, td, idx = _probe_batch()
    batch = train.BatchGetter(td.train, td.pad_id)(idx)
    torch.manual_seed(0)
    model = strategies.build_model(cfg, 2)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt, _ = train.make_optimizer(named, cfg.lr, cfg.weight_decay, 1000, 0.0)
    objective = train.full_objective(cfg, model)
    times = []
    for i in range(repeats + 2):  # two warm-up steps
        t0 = time.perf_counter()
        model.train()
        with train.autocast(cfg.precision):
            loss = objective(batch, 1)
        acl_grad.backward(loss, [p for _, p in named], False, 90.0, False)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _probe_batch():
    """The batch ce_step_seconds times: the 32 RTE training examples around the median length."""
    cfg = make_config("cpu", "rte")
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    order = np.argsort(td.train.lengths.numpy())
    return cfg, td, order[len(order) // 2 - 16: len(order) // 2 + 16]


def machine_flops_per_s(step_s: float | None = None) -> tuple[float, str]:
    """Training FLOP/s of this machine, from a timed CE step of the cpu profile's model (the padded
    tokens of its batch, 3 forward passes per step)."""
    step_s = ce_step_seconds() if step_s is None else step_s
    cfg, td, idx = _probe_batch()
    seq = int(td.train.lengths[idx].max())  # the batch is padded to its longest example
    flops = 3.0 * len(idx) * forward_flops(cfg.backbone, seq, None, cfg.exit, 1, 2, cfg.d_e)
    return flops / step_s, f"a CE step of {cfg.backbone} on {len(idx)} RTE examples padded to {seq} tokens: {step_s:.3f} s"


def describe_estimate(e: dict) -> str:
    """The estimate as the lines `make book` and `python -m acllib sweep` print before training."""
    native = "bf16, native on this CPU" if e["precision"] == "bf16" else "fp32 (this CPU has no native bf16)"
    hours = e["hours"]
    when = f"{hours * 60:.0f} minutes" if hours < 1.5 else f"{hours:.1f} hours"
    lines = [f"estimate: {e['to_run']} of the {e['runs']} runs of profile {e['profile']!r} to train, "
             f"{e['flops_to_run'] / 1e15:.3g} PFLOPs: about {when} of training here",
             f"  this machine: {e['cpu']}, {native}; {e['flops_per_s'] / 1e12:.2f} TFLOP/s from {e['how']}"
             + (f", x{e['overhead']:.2f} for the cached runs' overhead" if e["overhead"] != 1.0 else "")]
    if hours > 1.0:
        lines.append("  too long? `make book PROFILE=smoke` checks the machinery in minutes; a Ray cluster "
                     "(`make book RAY_ADDRESS=HOST:PORT`) or a GPU trains faster; `make notebook NB=02_table1` "
                     "builds one chapter; Ctrl-C stops, keeping every finished run, and `make book` resumes")
    return "\n".join(lines)
