"""Head pruning (Michel, Levy and Neubig 2019, "Are sixteen heads really better than one?"), Table 1's
HeadPrune row run on our own backbone.

On a fine-tuned CE model: each head's importance I_h = E_x |dL(x)/d xi_h|, xi_h a gate on head h's
output (1 = kept), on training examples; per-layer L2 normalisation (their recommended variant,
after Molchanov et al.); heads removed in order of increasing importance, computed once on the
unpruned model (their code's default), with no retraining (their setting). A layer may lose every
head. Removal is real (`prune_heads` slices the projections), so FLOPs and parameters fall. The
Table 1 row is the model at the paper's FLOPs ratio (HeadPrune 4.7G of BERT-base's 6.6G); the path
is the model every PATH_STEP of the heads.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data as gdata
from . import paper, train
from .config import COMPRESSION_SETTINGS, RunConfig
from .models import count_forward_flops, encoder_layers
from .results import make_result

_S = COMPRESSION_SETTINGS["headprune"]  # in the run's hash
IMPORTANCE_EXAMPLES = _S["importance_examples"]  # training examples the importance is estimated on (a seeded subset: the budget)
PATH_STEP = _S["path_step"]                      # the pruning path: every 20% of the heads (the paper's figure steps 10%)
SEQ_LEN = _S["flops_seq_len"]                    # FLOPs are counted for one example of this length, as Table 1's


def target_flops_ratio() -> float:
    """The paper's HeadPrune FLOPs over its BERT-base FLOPs (Table 1)."""
    return paper.table1("HeadPrune")["flops_g"] / paper.table1("BERT", "CE")["flops_g"]


def kept_heads(backbone: nn.Module) -> list[list[int]]:
    """Per layer, the original ids of the heads still there."""
    return [list(getattr(layer.attention.self, "kept_heads", range(layer.attention.self.num_attention_heads)))
            for layer in encoder_layers(backbone)]


def _slice_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    """The rows (dim 0: outputs) or columns (dim 1: inputs) `idx` of a linear layer, as a new layer."""
    w = lin.weight.detach().index_select(dim, idx).clone()
    with warnings.catch_warnings():  # a layer left with no heads: "initializing zero-element tensors"
        warnings.simplefilter("ignore", UserWarning)
        new = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=lin.bias is not None,
                                       device=w.device, dtype=w.dtype)
    new.weight.data.copy_(w)
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.detach()[idx] if dim == 0 else lin.bias.detach())
    new.weight.requires_grad_(lin.weight.requires_grad)
    return new


class NoHeads(nn.Module):
    """The self-attention of a layer whose every head was pruned: a context of width 0 (the layer's
    output projection then adds only its bias before the residual and LayerNorm)."""

    def __init__(self, head_size: int):
        super().__init__()
        self.num_attention_heads, self.attention_head_size, self.all_head_size = 0, head_size, 0
        self.kept_heads: list[int] = []

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


def prune_heads(backbone: nn.Module, drop: dict[int, list[int]]) -> None:
    """Remove heads: layer index (0-based) -> original ids of the heads to drop. Their query, key
    and value rows and their output-projection columns go, so the model is really smaller."""
    for li, heads in drop.items():
        attention = encoder_layers(backbone)[li].attention
        sa = attention.self
        current = kept_heads(backbone)[li]
        unknown = sorted(set(heads) - set(current))
        if unknown:
            raise ValueError(f"layer {li}: heads {unknown} are not there (kept: {current})")
        keep = [i for i, h in enumerate(current) if h not in set(heads)]
        d = sa.attention_head_size
        cols = torch.tensor([i * d + j for i in keep for j in range(d)], dtype=torch.long,
                            device=attention.output.dense.weight.device)
        attention.output.dense = _slice_linear(attention.output.dense, cols, dim=1)
        if not keep:
            attention.self = NoHeads(d)
            continue
        for name in ("query", "key", "value"):
            setattr(sa, name, _slice_linear(getattr(sa, name), cols, dim=0))
        sa.num_attention_heads, sa.all_head_size = len(keep), len(keep) * d
        sa.kept_heads = [current[i] for i in keep]


def set_head_mask(backbone: nn.Module, masks) -> None:
    """Put a gate on every head's output (models.acl_attention multiplies by it): one [heads] or
    [B, heads] tensor per layer, or None to remove them."""
    for i, layer in enumerate(encoder_layers(backbone)):
        layer.attention.self.head_mask = None if masks is None else masks[i]


def head_importance(model, data: gdata.Encoded, precision: str, pad_id: int, idx=None,
                    batch_size: int = 32, normalize: bool = True) -> np.ndarray:
    """I[l, h] = mean over examples x of |dL(x)/d xi_{l,h}|, L the CE of the model's last exit, in
    eval mode (no dropout). Each example gets its own gate row, and the loss is the sum of the
    examples' losses, so one backward gives every per-example derivative (examples do not interact
    in an encoder in eval mode): the plain version is one backward per example, which
    tests/test_compression.py checks it against (and against finite differences). normalize:
    divide each layer's scores by their L2 norm."""
    model.eval()
    layers = encoder_layers(model.backbone)
    n_heads = layers[0].attention.self.num_attention_heads
    if any(layer.attention.self.num_attention_heads != n_heads for layer in layers):
        raise ValueError("head_importance needs an unpruned model (every layer with all its heads)")
    idx = np.arange(len(data)) if idx is None else np.asarray(idx)
    order = idx[np.argsort(data.lengths.numpy()[idx], kind="stable")]  # length-sorted: less padding
    last = model.exit_layers[-1]
    dev = next(model.parameters()).device
    total = torch.zeros(len(layers), n_heads, dtype=torch.float64)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = {k: v.to(dev) for k, v in gdata.collate(data, chunk, pad_id).items()}
            masks = [torch.ones(len(chunk), n_heads, device=dev, requires_grad=True) for _ in layers]
            set_head_mask(model.backbone, masks)
            with train.autocast(precision):
                logits = model(batch, [last])[0].logits.float()
            loss = F.cross_entropy(logits, batch["labels"], reduction="sum")
            grads = torch.autograd.grad(loss, masks)
            total += torch.stack([g.abs().sum(0) for g in grads]).double().cpu()
    finally:
        set_head_mask(model.backbone, None)
    imp = total / len(order)
    if normalize:
        imp = imp / imp.norm(dim=1, keepdim=True).clamp_min(1e-20)
    return imp.numpy()


def pruning_order(importance: np.ndarray) -> list[tuple[int, int]]:
    """(layer, head) from the least to the most important; ties in (layer, head) order."""
    flat = np.argsort(importance.ravel(), kind="stable")
    return [(int(i // importance.shape[1]), int(i % importance.shape[1])) for i in flat]


def path_points(n_heads: int, step: float = PATH_STEP) -> list[int]:
    """Numbers of heads pruned on the path: 0, every `step` of them, and all."""
    return sorted({min(n_heads, round(k * step * n_heads)) for k in range(int(math.ceil(1 / step)) + 1)})


def run(cfg: RunConfig, model, td, progress: bool = True) -> dict:
    """A headprune run on `model`, its CE model (cfg.stage1()'s, trained; pruned here in place) and
    that run's task data `td`: the importances, the path and the model at the paper's FLOPs ratio;
    the result has the keys of every run's result."""
    t0 = time.perf_counter()
    base = cfg.stage1()
    rng = np.random.default_rng([cfg.seed, 1905])
    sub = rng.permutation(len(td.train))[:IMPORTANCE_EXAMPLES]
    importance = head_importance(model, td.train, cfg.precision, td.pad_id, sub)
    order = pruning_order(importance)
    full = _count(model)
    ratio = target_flops_ratio()
    points = set(path_points(len(order)))
    path, target = [], None

    def record(k: int, flops: float) -> dict:
        t = time.perf_counter()
        final = train.evaluate_model(model, td.evals, cfg.task, cfg.precision, pad_id=td.pad_id)
        return {"heads_pruned": k, "share_pruned": k / len(order), "flops": flops, "flops_ratio": flops / full,
                "heads_per_layer": [len(h) for h in kept_heads(model.backbone)],
                "params": model.parameter_report(), "final": final, "eval_seconds": time.perf_counter() - t}

    path.append(record(0, full))
    for k, (layer, head) in enumerate(order, start=1):
        prune_heads(model.backbone, {layer: [head]})
        flops = _count(model)
        hit = target is None and flops <= ratio * full
        if k in points or hit:
            point = record(k, flops)
            if k in points:
                path.append(point)
            if hit:
                target = point
    if target is None:
        raise RuntimeError(f"pruning every head leaves {path[-1]['flops_ratio']:.3f} of the FLOPs, above the target {ratio:.3f}")
    seconds = time.perf_counter() - t0
    log = train.FitLog(epochs=[{"epoch": 0, "train_main_loss": None, "train_seconds": 0.0,
                                "eval_seconds": target["eval_seconds"], "eval": target["final"]}])
    result = make_result(cfg, log, td, model, target["final"], seconds, stage1_hash=base.hash,
                          importance=importance.tolist(), order=order, target_flops_ratio=ratio,
                          target={k: v for k, v in target.items() if k != "final"}, path=path,
                          forward_flops={"seq_len": SEQ_LEN, "flops": target["flops"]},
                          importance_examples=int(len(sub)))
    result.params = target["params"]  # the model at the target, not the path's end
    return result


def _count(model) -> float:
    return count_forward_flops(model, SEQ_LEN)
