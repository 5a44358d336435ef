"""2ST: stage 1 is the run's `single` fine-tune (cfg.stage1(), shared by every stage-2 variant);
stage 2 freezes its backbone and last exit and trains the intermediate exits on the frozen
backbone's hidden states, computed once for all the variants of one stage 1 (train.train_stage2)."""
from __future__ import annotations

import time

import torch

from .. import data as gdata
from .. import store, train
from ..config import RunConfig
from ..models import MultiExitModel, load_tokenizer
from ..results import RunResult, make_result, model_path
from .base import Strategy, build_model, register


def load_stage1(model: MultiExitModel, stage1: RunConfig) -> None:
    """Put a finished stage-1 run's backbone and last exit into a multi-exit model."""
    state = store.load_tensors(model_path(stage1))
    missing, unexpected = model.load_state_dict(state, strict=False)
    last = str(model.exit_layers[-1])
    wrong = [k for k in missing if not k.startswith("exits.") or k.split(".")[1] == last]
    if unexpected or wrong:
        raise RuntimeError(f"stage-1 checkpoint {model_path(stage1)} does not fit: "
                           f"missing {wrong[:3]}, unexpected {unexpected[:3]}")


@register
class TwoStage(Strategy):
    name = "2st"
    stage = "stage 2"
    needs_stage1 = True
    shares_stage1 = True

    def shape(self, cfg: RunConfig, n_layers: int) -> tuple[int | None, list[int]]:
        return None, list(range(1, n_layers + 1))

    def train_group(self, cfgs: list[RunConfig], progress: bool, stage1_result: RunResult):
        """Stage 2 of runs sharing one finished stage 1 (its results `stage1_result`): the frozen
        backbone's features once, then each run's exits; yields (config, results, weights: the
        intermediate exits only, ~1% of the model) as each finishes."""
        stage1 = cfgs[0].stage1()
        td = train.load_task_data(stage1, load_tokenizer(stage1.backbone))
        t_feat = time.perf_counter()
        model = build_model(cfgs[0], gdata.get_task(stage1.task).num_labels)  # variants share its shape
        load_stage1(model, stage1)
        layers = train.freeze_for_stage2(model)
        features = train.build_features(cfgs[0], model, td, layers, progress)
        feature_seconds = time.perf_counter() - t_feat
        # Every variant starts from these exits (the seed's initialisation, stage 1's last exit)
        # and the seed's random stream, so its result does not depend on which variants ran before.
        start = {k: v.clone() for k, v in model.exits.state_dict().items()}
        for cfg in cfgs:
            t0 = time.perf_counter()
            model.exits.load_state_dict(start)
            torch.manual_seed(cfg.seed)
            log, features = train.train_stage2(cfg, model, td, features, progress)
            last = str(model.exit_layers[-1])
            for epoch in log.epochs:  # the last exit is stage 1's, unchanged by stage 2
                for split, scores in (epoch["eval"] or {}).items():
                    scores[last] = stage1_result.final[split][last]
            final = log.epochs[-1]["eval"]
            result = make_result(cfg, log, td, model, final, time.perf_counter() - t0,
                                 stage1_hash=stage1.hash, feature_seconds=feature_seconds,
                                 stage1_train_seconds=stage1_result.train_seconds)
            weights = {k: v for k, v in model.state_dict().items()
                       if k.startswith("exits.") and k.split(".")[1] != last}
            yield cfg, result, weights

    def exit_budget(self, cfg: RunConfig) -> str:
        return f"exits alone {cfg.stage2_epochs} epochs at lr {cfg.stage2_lr:g}, per-exit clipping"

    def flops(self, cfg: RunConfig, price) -> dict:
        tt, pad = price.tt, price.pad
        features = (tt.n_train + tt.n_eval) * price.forward(price.depth, 0) * pad  # shared by the group
        exits_only = price.forward(0, price.depth - 1)
        factor = 5.0 if (cfg.stage2_grad or cfg.log_angles) else 3.0
        train_f = factor * cfg.stage2_epochs * tt.n_train * exits_only * pad
        eval_f = tt.n_eval * exits_only * pad
        return price.result(train_f, eval_f, tt.n_train * cfg.stage2_epochs, features)

    def load(self, cfg: RunConfig, model: MultiExitModel) -> None:
        load_stage1(model, cfg.stage1())
        model.load_state_dict(store.load_tensors(model_path(cfg)), strict=False)
