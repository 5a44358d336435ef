"""BERT-of-Theseus (Xu et al. 2020, "Compressing BERT by progressive module replacing"), Table 1's
row run on our own backbone.

The predecessor is the fine-tuned CE model; the successor has half its layers. Successor module i
stands for predecessor layers 2i and 2i+1 and starts as a copy of predecessor layer i (the first n
layers, as the authors' code does; their paper found the top or interleaved layers worse). In every
update each module is replaced by its successor with probability p, drawn once per optimizer step
and module (all micro-batches of one update share the draw). The whole Theseus trains in train
mode (dropout on), predecessor layers included, as the authors' model.train() does. Only the
successor layers train: the embeddings, the predecessor's layers and its exit stay frozen (the paper's sec. 3.1; the authors' optimizer holds the successor layers only, also after
p reaches 1). p follows their linear curriculum p(t) = min(1, b + k t), with k set so that p reaches 1
after REPLACING_SHARE of the run's steps; the rest of the run trains the successor alone, as their
scheduler merges the two stages. Evaluation, FLOPs and the result are the successor alone.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data as gdata
from . import acl_grad, train
from .config import COMPRESSION_SETTINGS, RunConfig
from .models import MultiExitModel, encoder_layers, set_encoder_layers
from .results import make_result

_S = COMPRESSION_SETTINGS["theseus"]  # in the run's hash
INITIAL_RATE = _S["initial_rate"]        # b: Xu et al.'s GLUE grid is {0.1, 0.3}
REPLACING_SHARE = _S["replacing_share"]  # p reaches 1 after this share of the steps (their grid: 1,000-30,000 steps)


def replacement_rate(step: int, total_steps: int, b: float = INITIAL_RATE, share: float = REPLACING_SHARE) -> float:
    """p(t) = min(1, b + k t), k = (1 - b) / (share * total_steps)."""
    k = (1.0 - b) / max(1.0, share * total_steps)
    return min(1.0, b + k * step)


class Theseus(nn.Module):
    """A predecessor's layers and its successor's, in one backbone whose layer list `route` sets."""

    def __init__(self, model: MultiExitModel):
        super().__init__()
        layers = list(encoder_layers(model.backbone))
        if len(layers) % 2:
            raise ValueError(f"BERT-of-Theseus halves the depth: {len(layers)} layers is odd")
        self.model = model
        self.predecessor = nn.ModuleList(layers)
        # transformers records hidden states through hooks it puts on the layers at the backbone's
        # first forward pass, on the layers it holds then: one pass before copying, so the successor
        # layers (copies) carry those hooks too, whatever the routing
        dev = next(model.parameters()).device
        with torch.no_grad():
            model.hidden_states({"input_ids": torch.ones(1, 2, dtype=torch.long, device=dev),
                                 "attention_mask": torch.ones(1, 2, dtype=torch.long, device=dev)})
        self.successor = nn.ModuleList(copy.deepcopy(layers[i]) for i in range(len(layers) // 2))
        self.last = model.exit_layers[-1]
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.successor.parameters():
            p.requires_grad_(True)

    def route(self, replaced) -> None:
        """Module i runs successor layer i where replaced[i], predecessor layers 2i, 2i+1 elsewhere."""
        modules = []
        for i, r in enumerate(replaced):
            modules += [self.successor[i]] if r else [self.predecessor[2 * i], self.predecessor[2 * i + 1]]
        set_encoder_layers(self.model.backbone, modules)

    def logits(self, batch, replaced) -> torch.Tensor:
        self.route(replaced)
        hidden = self.model.hidden_states(batch)[-1]  # [B, L, hidden]: the last routed layer's
        return self.model.exit(self.last)(hidden, batch["attention_mask"])[1]

    def successor_model(self) -> MultiExitModel:
        """The successor alone as a multi-exit model with one exit (the predecessor's) on its last
        layer. The Theseus can no longer route after this (see `successor_view` for a passing look)."""
        self.route([True] * len(self.successor))
        m = self.model
        m.num_layers = len(self.successor)
        m.exits = nn.ModuleDict({str(m.num_layers): m.exit(self.last)})
        m.exit_layers = [m.num_layers]
        return m

    @contextlib.contextmanager
    def successor_view(self):
        """successor_model() for the duration of a with-block (evaluation during training), then
        the Theseus as it was."""
        m = self.model
        saved = (m.num_layers, m.exits, m.exit_layers)
        try:
            yield self.successor_model()
        finally:
            m.num_layers, m.exits, m.exit_layers = saved


def draw(rng: np.random.Generator, p: float, n: int) -> list[bool]:
    """Which of n modules are replaced in one batch: independent Bernoulli(p)."""
    return [bool(x) for x in rng.random(n) < p]


def compress(cfg: RunConfig, model: MultiExitModel, td: train.TaskData, progress: bool = True):
    """Module replacing on a fine-tuned model: (the Theseus, its FitLog, the per-step schedule)."""
    theseus = Theseus(model)
    n = len(theseus.successor)
    batch_size = train.update_batch_size(cfg, len(td.train))
    total_steps = cfg.epochs * math.ceil(len(td.train) / batch_size)
    rng = np.random.default_rng([cfg.seed, 2020])
    schedule, replaced = [], []

    def before_update(step: int) -> None:  # one draw per optimizer step, shared by its micro-batches
        p = replacement_rate(step, total_steps)
        replaced[:] = draw(rng, p, n)
        schedule.append({"step": step, "p": p, "replaced": int(sum(replaced))})

    def objective(batch, epoch: int) -> acl_grad.Loss:
        return acl_grad.Loss(F.cross_entropy(theseus.logits(batch, replaced).float(), batch["labels"]))

    def evaluate():
        with theseus.successor_view() as successor:
            return train.evaluate_model(successor, td.evals, cfg.task, cfg.precision, pad_id=td.pad_id)

    named = [(f"successor.{k}", p) for k, p in theseus.successor.named_parameters()]
    torch.manual_seed(cfg.seed)
    log = train.fit(cfg, named_params=named, n_train=len(td.train), get_batch=train.BatchGetter(td.train, td.pad_id),
                    objective=objective, set_train_mode=theseus.train, evaluate=evaluate, epochs=cfg.epochs,
                    lr=cfg.lr, acl_grad=False, log_angles=False, desc=f"{cfg.task} theseus", progress=progress,
                    before_update=before_update)
    return theseus, log, schedule, total_steps


def run(cfg: RunConfig, model, td, progress: bool = True) -> dict:
    """A theseus run from `model`, its predecessor (cfg.stage1()'s CE model, trained) and that run's
    task data `td`: module replacing, the successor's dev scores; the result has the keys of every
    run's result."""
    t0 = time.perf_counter()
    base = cfg.stage1()
    theseus, log, schedule, total_steps = compress(cfg, model, td, progress)
    successor = theseus.successor_model()
    return make_result(cfg, log, td, successor, log.epochs[-1]["eval"], time.perf_counter() - t0,
                        stage1_hash=base.hash, schedule=schedule,
                        theseus={"initial_rate": INITIAL_RATE, "replacing_share": REPLACING_SHARE,
                                 "successor_layers": len(theseus.successor), "total_steps": total_steps})
