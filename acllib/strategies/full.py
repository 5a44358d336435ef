"""Full fine-tuning: the backbone and its exits trained together (train.train_full).

  single  the backbone and its last-layer exit, with the run's `method` (CE, CE+SCL, ACL-Embed,
          ACL): Table 1, and the stage 1 that 2ST, head pruning and Theseus start from
  direct  the first `depth` layers and one exit on top, trained like single (Table 1's BERT-6L)
  jt      every layer's exit, loss the sum of every exit's CE (Eq. 6)
  alt     BERxiT: odd epochs the last exit's CE (Eq. 7), even epochs the joint sum (Eq. 8)
"""
from __future__ import annotations

import time

from .. import data as gdata
from .. import store, train
from ..config import RunConfig
from ..models import MultiExitModel, load_tokenizer
from ..results import RunResult, make_result, model_path
from .base import Strategy, build_model, register


class FullFineTuning(Strategy):
    keeps_weights = True

    def joint(self, epoch: int) -> bool:
        """Whether an epoch's loss is the sum of every exit's CE (else the last exit's objective)."""
        return False

    def train(self, cfg: RunConfig, progress: bool, stage1=None) -> tuple[RunResult, dict | None]:
        t0 = time.perf_counter()
        td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
        model = build_model(cfg, gdata.get_task(cfg.task).num_labels)
        log = train.train_full(cfg, model, td, progress, joint=self.joint)
        weights = model.state_dict() if self.keeps_weights else None
        return make_result(cfg, log, td, model, log.epochs[-1]["eval"], time.perf_counter() - t0), weights

    def flops(self, cfg: RunConfig, price) -> dict:
        per = price.forward(price.depth, len(self.shape(cfg, price.depth)[1]))  # every exit it trains
        factor = 5.0 if (cfg.acl_grad or cfg.log_angles) else 3.0  # forward + backward (+ ACL-Grad's second)
        train_f = factor * cfg.epochs * price.tt.n_train * per * price.pad
        eval_f = (cfg.epochs if cfg.eval_each_epoch else 1) * price.tt.n_eval * per * price.pad
        return price.result(train_f, eval_f, price.tt.n_train * cfg.epochs)

    def load(self, cfg: RunConfig, model: MultiExitModel) -> None:
        if not self.keeps_weights:
            super().load(cfg, model)
        model.load_state_dict(store.load_tensors(model_path(cfg)))


@register
class Single(FullFineTuning):
    name = "single"


@register
class Direct(FullFineTuning):
    name = "direct"
    keeps_weights = False

    def shape(self, cfg: RunConfig, n_layers: int) -> tuple[int | None, list[int]]:
        return cfg.depth, [cfg.depth]


class MultiExit(FullFineTuning):
    def shape(self, cfg: RunConfig, n_layers: int) -> tuple[int | None, list[int]]:
        return None, list(range(1, n_layers + 1))


@register
class JointTraining(MultiExit):
    name = "jt"

    def joint(self, epoch: int) -> bool:
        return True  # Eq. 6

    def exit_budget(self, cfg: RunConfig) -> str:
        return f"exits with the backbone, {cfg.epochs} joint epochs at lr {cfg.lr:g}, one global clip"


@register
class Alternating(MultiExit):
    name = "alt"

    def joint(self, epoch: int) -> bool:
        return epoch % 2 == 0  # Eq. 8 on even epochs, Eq. 7 on odd ones

    def exit_budget(self, cfg: RunConfig) -> str:
        return f"exits with the backbone, {cfg.epochs // 2} joint of {cfg.epochs} epochs at lr {cfg.lr:g}, one global clip"
