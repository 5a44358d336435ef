"""Training: one loop for every objective (fit), full fine-tuning's objective, evaluation, and
stage 2 on cached features. Which of these a run uses, and its model's shape, is its strategy's
choice (acllib/strategies/); ACL-Grad's step is acllib/acl_grad.py.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data as gdata
from . import metrics
from .config import RunConfig
from .acl_grad import Gate, Loss, backward
from .losses import acl_cross_layer_loss, acl_embed_loss, kd_loss, supcon_loss
from .models import MultiExitModel, exits_forward, reference, stack_exit_params, stackable

MAX_GRAD_NORM = 1.0  # Hugging Face Trainer's default, which the paper keeps (sec. 5.3)
EVAL_BATCH = 32  # length-grouped: on CPU larger batches only add padding (RTE dev: 25% at 128, 8% at 32)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(precision: str):
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(device().type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------- data
@dataclass
class TaskData:
    train: gdata.Encoded
    evals: dict[str, gdata.Encoded]  # eval split name -> data; the first is the headline split
    missing_eval_splits: list[str]
    pad_id: int


def load_task_data(cfg: RunConfig, tokenizer) -> TaskData:
    task = gdata.get_task(cfg.task)
    evals, missing = {}, []
    if cfg.train_pool == "validation-half":  # config.TRAIN_POOLS: train on one half, evaluate on the other
        split = task.eval_splits[0]
        whole = gdata.encode_split(cfg.task, split, tokenizer, cfg.max_length)
        pool, held_out = gdata.halves(len(whole), seed=0)
        train = whole.subset(pool)
        evals[f"{split} (held-out half)"] = gdata.subsample(whole.subset(held_out), cfg.dev_size, seed=0)
    else:
        train = gdata.encode_split(cfg.task, "train", tokenizer, cfg.max_length)
    if cfg.train_subset == "balanced-per-seed":
        train = train.subset(gdata.balanced_subset(train.labels.numpy(), cfg.train_size, cfg.seed))
    else:  # fixed (seed 0): seeds vary the initialisation and order, not the data
        train = gdata.subsample(train, cfg.train_size, seed=0)
    for i, split in enumerate(task.eval_splits if cfg.train_pool == "train" else ()):
        try:
            evals[split] = gdata.subsample(gdata.encode_split(cfg.task, split, tokenizer, cfg.max_length),
                                           cfg.dev_size, seed=0)
        except ValueError:
            if i == 0:
                raise
            missing.append(split)  # e.g. MNLI mismatched where the source lacks it
    return TaskData(train, evals, missing, tokenizer.pad_token_id or 0)


def update_batch_size(cfg: RunConfig, n_train: int) -> int:
    if cfg.batch_size is not None:
        return min(cfg.batch_size, n_train)
    return max(2, math.ceil(n_train / cfg.updates_per_epoch))


def updates_per_epoch(cfg: RunConfig, n_train: int) -> int:
    """Optimizer updates in one epoch over n_train examples (the last batch may be short)."""
    return math.ceil(n_train / update_batch_size(cfg, n_train))


# ----------------------------------------------------------------------------------- the step
@torch.no_grad()
def clip_grad_norms_(groups: list[list[torch.nn.Parameter]], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ applied to each group on its own, with one norm kernel and
    one scaling kernel for all groups (five clip_grad_norm_ calls were 3% of a stage-2 step).
    torch._foreach_norm / _foreach_mul_ are what clip_grad_norm_ itself calls.
    Plain version (models.reference_ops): clip_grad_norm_ on each group
    (tests/test_train.py::test_clip_grad_norms_equals_clip_grad_norm_per_group)."""
    if reference():
        for group in groups:
            torch.nn.utils.clip_grad_norm_(group, max_norm)
        return
    grads = [[p.grad for p in group if p.grad is not None] for group in groups]
    flat = [g for group in grads for g in group]
    if not flat:
        return
    norms = torch.stack(torch._foreach_norm(flat)).split([len(group) for group in grads])
    totals = torch.stack([n.square().sum().sqrt() if len(n) else torch.zeros((), device=n.device) for n in norms])
    coefs = (max_norm / (totals + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s rule
    torch._foreach_mul_(flat, [c for c, group in zip(coefs.tolist(), grads) for _ in group])


def make_optimizer(named_params, lr: float, weight_decay: float, total_steps: int, warmup_ratio: float):
    """AdamW without decay on biases and LayerNorm weights, linear warm-up then linear decay to 0."""
    decay = [p for n, p in named_params if p.ndim >= 2]
    no_decay = [p for n, p in named_params if p.ndim < 2]
    # fused: one kernel for all parameters; the per-tensor loop took 12% of a MiniLM step on CPU.
    # Plain version: AdamW(foreach=False, fused=False); equal on gradients laid out like their
    # parameters, which acl_grad.backward guarantees (tests/test_train.py::test_the_fused_optimizer_...)
    fused = all(p.dtype in (torch.float32, torch.float64) for _, p in named_params)
    how = {"foreach": False, "fused": False} if reference() else {"fused": fused or None}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, **how)
    warmup = int(round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class FitLog:
    epochs: list[dict] = field(default_factory=list)
    angles: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    train_examples: int = 0


def fit(cfg: RunConfig, *, named_params, n_train: int, get_batch, objective, set_train_mode,
        evaluate, epochs: int, lr: float, acl_grad: bool, log_angles: bool, desc: str,
        progress: bool, clip_groups=None, before_update=None) -> FitLog:
    """The training loop shared by every strategy and stage.

    clip_groups: parameter groups whose gradient norms are clipped separately (default: one group).
    before_update: called with the optimizer step (0, 1, ...) before that update's micro-batches.
    """
    params = [p for _, p in named_params]
    clip_groups = clip_groups or [params]
    batch_size = update_batch_size(cfg, n_train)
    lengths = get_batch.lengths
    updates = updates_per_epoch(cfg, n_train)
    opt, sched = make_optimizer(named_params, lr, cfg.weight_decay, epochs * updates, cfg.warmup_ratio)
    rng = np.random.default_rng(cfg.seed)
    gate = Gate.for_run(cfg) if acl_grad else None  # Eq. 4, or the run's control of it (config.GATES)
    log = FitLog()
    step = 0
    for epoch in range(1, epochs + 1):
        set_train_mode()
        t0 = time.perf_counter()
        losses = []
        batches = gdata.train_batches(lengths, batch_size, rng, cfg.batches, cfg.batch_window)
        bar = tqdm(batches, desc=f"{desc} epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for idx in bar:
            if before_update is not None:
                before_update(step)
            chunks = [idx[i:i + cfg.micro_batch_size] for i in range(0, len(idx), cfg.micro_batch_size)]
            for chunk in chunks:
                batch = get_batch(chunk)
                with autocast(cfg.precision):
                    loss = objective(batch, epoch)
                for d in backward(loss, params, acl_grad, cfg.angle_threshold, log_angles,
                                  scale=len(chunk) / len(idx), gate=gate):
                    log.angles.append({"epoch": epoch, "step": step, "angle": d.angle, "lam": d.lam,
                                       "norm_ratio": d.norm_ratio, **({"projected": d.projected} if cfg.gate == "project" else {})})
                losses.append(float(loss.main.detach()))
            clip_grad_norms_(clip_groups, MAX_GRAD_NORM)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
        seconds = time.perf_counter() - t0
        log.train_seconds += seconds
        log.train_examples += n_train
        t1 = time.perf_counter()
        scores = evaluate() if cfg.eval_each_epoch or epoch == epochs else None
        log.epochs.append({"epoch": epoch, "train_main_loss": float(np.mean(losses)),
                           "train_seconds": seconds, "eval_seconds": time.perf_counter() - t1,
                           "eval": scores})
    return log


# ---------------------------------------------------------------------------------- evaluation
def score(task: str, labels, preds) -> dict[str, float]:
    return metrics.compute(gdata.get_task(task).metrics, labels, preds)


def majority_score(task: str, labels) -> dict[str, float]:
    """What always predicting the most frequent label scores: the floor a trained model must clear."""
    labels = np.asarray(labels)
    return score(task, labels, np.full_like(labels, np.bincount(labels).argmax()))


def eval_batches(data: gdata.Encoded, pad_id: int, batch_size: int = EVAL_BATCH):
    """The one evaluation loop's batches: (indices, the collated batch on the device), longest
    first in groups of similar length (a fixed order: composition does not matter in evaluation).
    Every pass over a split without training goes through it (evaluation, features, measurements)."""
    dev = device()
    for idx in gdata.length_grouped_batches(data.lengths, batch_size, None):
        yield idx, {k: v.to(dev) for k, v in gdata.collate(data, idx, pad_id).items()}


@torch.no_grad()
def evaluate_model(model: MultiExitModel, evals: dict[str, gdata.Encoded], task: str, precision: str,
                   layers=None, pad_id: int = 0) -> dict:
    """Every exit on every eval split, from one backbone pass per batch: {split: {layer: metrics}}."""
    model.eval()
    out = {}
    for split, data in evals.items():
        preds = {m: np.zeros(len(data), dtype=int) for m in (layers or model.exit_layers)}
        for idx, batch in eval_batches(data, pad_id):
            with autocast(precision):
                for o in model(batch, layers):
                    preds[o.layer][idx] = o.logits.argmax(-1).cpu().numpy()
        labels = data.labels.numpy()
        out[split] = {str(m): score(task, labels, p) for m, p in preds.items()}
    return out


# ------------------------------------------------------------------------- full fine-tuning
class BatchGetter:
    """Training batches on the device; with parts > 1, as length-sorted parts for the encoder
    (gdata.length_sorted_parts), labels in the parts' order."""

    def __init__(self, data: gdata.Encoded, pad_id: int, parts: int = 1):
        self.data, self.pad_id, self.lengths, self.parts = data, pad_id, data.lengths.numpy(), parts

    def _one(self, idx):
        dev = device()
        return {k: v.to(dev) for k, v in gdata.collate(self.data, idx, self.pad_id).items()}

    def __call__(self, idx):
        if self.parts == 1:
            return self._one(idx)
        parts = [self._one(p) for p in gdata.length_sorted_parts(self.lengths, idx, self.parts)]
        return {"parts": parts, "labels": torch.cat([p["labels"] for p in parts])}


def make_model(cfg: RunConfig, backbone, num_labels: int, exit_layers: list[int], depth: int | None = None) -> MultiExitModel:
    """A multi-exit model on `backbone` (cut to `depth` layers) with exits at `exit_layers`, seeded
    by the run; its strategy chooses the shape (strategies.build_model)."""
    torch.manual_seed(cfg.seed)  # exits' initialisation depends on the seed only
    return MultiExitModel(backbone, num_labels, exit_layers, cfg.exit, cfg.d_e, cfg.heads, cfg.dropout,
                          depth=depth).to(device())


def aux_loss(kind: str, rep, label_embeddings, labels, tau: float, teacher=None):
    """The auxiliary loss of an exit (or of E stacked exits: rep [E, B, d], label_embeddings [E, K, d],
    giving E losses); teacher = (representations, label embeddings) of the last exit for ACL-CL."""
    if kind == "scl":
        return supcon_loss(rep, labels, tau)
    if kind == "acl-embed":
        return acl_embed_loss(rep, labels, label_embeddings, tau)
    if kind == "acl-cl":
        return acl_cross_layer_loss(rep, label_embeddings, *teacher, labels, tau)
    raise ValueError(f"unknown auxiliary loss {kind!r}")


def _never(epoch: int) -> bool:
    return False


def full_objective(cfg: RunConfig, model: MultiExitModel, joint=_never):
    """The loss of full fine-tuning: every exit's CE summed on epochs where joint(epoch) (JT's Eq. 6,
    ALT's Eq. 8; the strategy decides), else the last exit's CE with the run's auxiliary loss."""
    last = model.exit_layers[-1]

    def objective(batch, epoch: int) -> Loss:
        y = batch["labels"]
        if joint(epoch):  # eq. 6 / eq. 8
            return Loss(sum(F.cross_entropy(o.logits.float(), y) for o in model(batch)))
        out = model(batch, [last])[0]  # eq. 7 for alt's odd epochs; the only exit otherwise
        main = F.cross_entropy(out.logits.float(), y)
        if cfg.aux == "none":
            return Loss(main)
        return Loss(main, aux_loss(cfg.aux, out.rep, model.exit(last).label_embeddings, y, cfg.tau), cfg.lam,
                    additive=cfg.aux_weighting == "additive")

    return objective


def train_full(cfg: RunConfig, model: MultiExitModel, td: TaskData, progress: bool = True, joint=_never) -> FitLog:
    """Full fine-tuning (strategies/full.py): the backbone and its exits trained together."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    getter = BatchGetter(td.train, td.pad_id, cfg.encoder_parts)
    return fit(cfg, named_params=named, n_train=len(td.train), get_batch=getter,
               objective=full_objective(cfg, model, joint), set_train_mode=model.train,
               evaluate=lambda: evaluate_model(model, td.evals, cfg.task, cfg.precision, pad_id=td.pad_id),
               epochs=cfg.epochs, lr=cfg.lr, acl_grad=cfg.acl_grad,
               log_angles=cfg.log_angles and cfg.aux != "none",
               desc=f"{cfg.task} {cfg.strategy}/{cfg.method}", progress=progress)


# ---------------------------------------------------------------------------------- stage 2
def feature_dtype(precision: str) -> torch.dtype:
    """The dtype stage 2's frozen layer states are kept in: bf16 in bf16 runs, where every exit's
    first use of them under autocast (the down-projection, the pooler, the classifier) rounds them to
    bf16 anyway, at half the memory; fp32 otherwise, so that an fp32 run's exits see the states its
    backbone computed (before results 2st-fp32 they were kept in bf16 there too: a rounding the
    fp32 run never asked for). Tests: tests/test_train.py::test_stage2_features_are_the_backbones_states."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


class FrozenFeatures:
    """What a frozen backbone + last exit give for one split, computed once (in feature_dtype).
    Plain version: LiveFeatures (reference_ops uses it); tests/test_train.py::
    test_stage2_cached_and_live_features_agree and ::test_stage2_features_are_the_backbones_states.

    hidden: [n_layers, total_tokens, hidden] for the intermediate layers, flat like gdata.Encoded;
    the teacher's (last exit's) representation and logits per example in fp32.
    """

    def __init__(self, model: MultiExitModel, data: gdata.Encoded, layers, precision: str,
                 pad_id: int, progress: bool = False, desc: str = "caching features", parts: int = 1):
        self.data, self.layers, self.lengths = data, list(layers), data.lengths.numpy()
        self.precision, self.parts = precision, parts
        hidden_size = model.backbone.config.hidden_size
        self.hidden = torch.empty(len(self.layers), int(data.offsets[-1]), hidden_size, dtype=feature_dtype(precision))
        last = model.exit_layers[-1]
        n_labels, d = model.exit(last).label_embeddings.shape
        self.teacher_rep = torch.empty(len(data), d)
        self.teacher_logits = torch.empty(len(data), n_labels)
        model.eval()
        n_batches = math.ceil(len(data) / EVAL_BATCH)
        with torch.no_grad():
            for idx, batch in tqdm(eval_batches(data, pad_id), total=n_batches, desc=desc, disable=not progress, leave=False):
                with autocast(precision):
                    hs = model.hidden_states(batch)
                    teacher = model.run_exits(hs, batch["attention_mask"], [last])[0]
                stacked = torch.stack([hs[m] for m in self.layers]).to(self.hidden.dtype).cpu()  # [E, B, L, H]
                for row, i in enumerate(idx):
                    s, e = int(data.offsets[i]), int(data.offsets[i + 1])
                    self.hidden[:, s:e] = stacked[:, row, :e - s]
                self.teacher_rep[idx] = teacher.rep.float().cpu()
                self.teacher_logits[idx] = teacher.logits.float().cpu()

    def __call__(self, idx) -> dict:
        """The batch idx in `parts` length-sorted pieces: hidden and attention_mask are lists (one
        [E, b, L, hidden] / [b, L] per piece); labels, teacher and index follow the pieces' order."""
        return _in_parts(self, idx)

    def piece(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        idx_t, pos, mask = self.data.positions(idx)
        # padded slots hold some real token's state: exits mask them out, so they are not zeroed
        # index_select layer by layer: 4x faster than one index_select(1, ...) over all layers, and
        # that several times faster than advanced indexing (self.hidden[:, pos]) on CPU
        E, H = len(self.layers), self.hidden.shape[-1]
        hidden = torch.empty(E, pos.numel(), H, dtype=self.hidden.dtype)
        for e in range(E):
            torch.index_select(self.hidden[e], 0, pos.reshape(-1), out=hidden[e])
        hidden = hidden.view(E, *pos.shape, H)  # [E, B, L, hidden]
        return hidden.to(device()), mask.long().to(device())


def _in_parts(features, idx) -> dict:
    pieces = gdata.length_sorted_parts(features.lengths, idx, features.parts)
    order = np.concatenate(pieces)
    got = [features.piece(p) for p in pieces]
    dev = device()
    out = {"hidden": [g[0] for g in got], "attention_mask": [g[1] for g in got], "index": order,
           "labels": features.data.labels[torch.as_tensor(order)].to(dev)}
    if hasattr(features, "teacher_rep"):  # cached
        out["teacher_rep"] = features.teacher_rep[torch.as_tensor(order)].to(dev)
        out["teacher_logits"] = features.teacher_logits[torch.as_tensor(order)].to(dev)
    else:  # live: each piece computed its teacher
        out["teacher_rep"] = torch.cat([g[2] for g in got])
        out["teacher_logits"] = torch.cat([g[3] for g in got])
    return out


class LiveFeatures:
    """The same batches as FrozenFeatures, recomputed by the frozen backbone at every call."""

    def __init__(self, model: MultiExitModel, data: gdata.Encoded, layers, precision: str, pad_id: int,
                 parts: int = 1):
        self.model, self.data, self.layers, self.precision = model, data, list(layers), precision
        self.pad_id, self.lengths, self.parts = pad_id, data.lengths.numpy(), parts

    def __call__(self, idx) -> dict:
        return _in_parts(self, idx)

    @torch.no_grad()
    def piece(self, idx):
        batch = {k: v.to(device()) for k, v in gdata.collate(self.data, idx, self.pad_id).items()}
        last = self.model.exit_layers[-1]
        self.model.backbone.eval()  # frozen in stage 2: no dropout, as when caching
        self.model.exit(last).eval()
        with autocast(self.precision):
            hs = self.model.hidden_states(batch)
            teacher = self.model.run_exits(hs, batch["attention_mask"], [last])[0]
        mask = batch["attention_mask"]
        hidden = torch.stack([hs[m] for m in self.layers]).to(feature_dtype(self.precision))  # as the cache keeps them
        return hidden, mask, teacher.rep.float(), teacher.logits.float()


def stage2_objective(cfg: RunConfig, model: MultiExitModel, layers, groups):
    last = model.exit_layers[-1]

    def objective(batch, epoch: int) -> Loss:
        y, mask = batch["labels"], batch["attention_mask"]
        exits = [model.exit(m) for m in layers]
        stacked = stack_exit_params(exits) if stackable(exits) else None
        outs = [exits_forward(exits, h, m, stacked) for h, m in zip(batch["hidden"], mask)]  # per piece
        rep = torch.cat([r for r, _ in outs], 1)        # [E, B, d]
        logits = torch.cat([lg for _, lg in outs], 1)   # [E, B, K]
        # sum over exits of each exit's batch-mean cross-entropy (+ distillation)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), y.repeat(len(exits)), reduction="sum") / len(y)
        main = ce
        if cfg.stage2_kd:
            main = ce + kd_loss(logits, batch["teacher_logits"], cfg.kd_temperature).sum()
        if cfg.stage2_aux == "none":
            return Loss(main)
        teacher = (batch["teacher_rep"], model.exit(last).label_embeddings.detach())
        # [E, K, d]; from the same stacks as the forward: gradients are taken with respect to them
        embeddings = stacked["classifier.weight"] if stacked is not None else \
            torch.stack([ex.label_embeddings for ex in exits])
        aux = aux_loss(cfg.stage2_aux, rep, embeddings, y, cfg.tau, teacher).sum()
        # Exits are independent given the frozen backbone, so summing their losses trains each one
        # separately; ACL-Grad still decides per exit (one parameter group each).
        ref = ce if cfg.stage2_kd and cfg.stage2_grad_ref == "ce" else None  # Eq. 4's angle is against CE
        return Loss(main, aux, cfg.lam, groups, stacked, additive=cfg.aux_weighting == "additive", ref=ref)

    return objective


@torch.no_grad()
def evaluate_features(model: MultiExitModel, feats: dict[str, FrozenFeatures], task: str,
                      precision: str, layers) -> dict:
    model.eval()
    out = {}
    for split, f in feats.items():
        preds = {m: np.zeros(len(f.data), dtype=int) for m in layers}
        for idx in gdata.length_grouped_batches(f.lengths, EVAL_BATCH, None):
            batch = f(idx)
            with autocast(precision):
                for h, mask, piece in zip(batch["hidden"], batch["attention_mask"],
                                          _split(batch["index"], batch["attention_mask"])):
                    _, logits = exits_forward([model.exit(m) for m in layers], h, mask)
                    for m, lg in zip(layers, logits):
                        preds[m][piece] = lg.argmax(-1).cpu().numpy()
        labels = f.data.labels.numpy()
        out[split] = {str(m): score(task, labels, preds[m]) for m in layers}
    return out


def _split(index, masks) -> list[np.ndarray]:
    """The example indices of each piece of a batch from _in_parts."""
    bounds = np.cumsum([0] + [len(m) for m in masks])
    return [index[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def freeze_for_stage2(model: MultiExitModel) -> list[int]:
    """Freeze backbone and last exit; return the intermediate exits' layers that stage 2 trains."""
    last = model.exit_layers[-1]
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    for p in model.exit(last).parameters():
        p.requires_grad_(False)
    return [m for m in model.exit_layers if m != last]


def train_stage2(cfg: RunConfig, model: MultiExitModel, td: TaskData, features=None,
                 progress: bool = True) -> tuple[FitLog, dict]:
    """Stage 2 of 2st. `features` ({'train': ..., split: ...}) may be shared by stage-2 variants."""
    layers = freeze_for_stage2(model)
    if features is None:
        features = build_features(cfg, model, td, layers, progress)
    train_f = features["train"]
    eval_f = {s: features[s] for s in td.evals}

    def train_mode():
        model.eval()
        for m in layers:
            model.exit(m).train()

    named = [(f"exits.{m}.{n}", p) for m in layers for n, p in model.exit(m).named_parameters()]
    groups = [list(model.exit(m).parameters()) for m in layers]  # one per exit
    log = fit(cfg, named_params=named, n_train=len(td.train), get_batch=train_f,
              objective=stage2_objective(cfg, model, layers, groups), set_train_mode=train_mode,
              evaluate=lambda: evaluate_features(model, eval_f, cfg.task, cfg.precision, layers),
              epochs=cfg.stage2_epochs, lr=cfg.stage2_lr, acl_grad=cfg.stage2_grad,
              log_angles=cfg.log_angles and cfg.stage2_aux != "none",
              desc=f"{cfg.task} 2st stage 2 ({cfg.stage2_aux})", progress=progress,
              # per exit, so that one exit's large gradient does not shrink the others' steps
              clip_groups=groups)
    return log, features


def feature_cache_gb(model: MultiExitModel, td: TaskData, layers, precision: str) -> float:
    tokens = int(td.train.offsets[-1]) + sum(int(d.offsets[-1]) for d in td.evals.values())
    return tokens * len(layers) * model.backbone.config.hidden_size * feature_dtype(precision).itemsize / 1e9


def build_features(cfg: RunConfig, model: MultiExitModel, td: TaskData, layers, progress: bool = True,
                   cached: bool | None = None) -> dict:
    """Cached features when they fit in $ACL_FEATURE_CACHE_GB (default 8), else live ones (always
    under models.reference_ops: the cache is a speed trick, LiveFeatures its plain version)."""
    if cached is None:
        cached = not reference() and feature_cache_gb(model, td, layers, cfg.precision) <= float(os.environ.get("ACL_FEATURE_CACHE_GB", "8"))
    splits = {"train": td.train, **td.evals}
    # training batches are random, so they come in length-sorted pieces; eval batches are sorted already
    parts = {s: cfg.encoder_parts if s == "train" else 1 for s in splits}
    if not cached:
        return {s: LiveFeatures(model, d, layers, cfg.precision, td.pad_id, parts[s]) for s, d in splits.items()}
    return {s: FrozenFeatures(model, d, layers, cfg.precision, td.pad_id, progress, f"{cfg.task} {s} features",
                              parts[s]) for s, d in splits.items()}
