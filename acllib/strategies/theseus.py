"""BERT-of-Theseus (Xu et al. 2020) compressing the run's CE model to half its depth, as a Table 1
compression row (the method: acllib/theseus.py)."""
from __future__ import annotations

from .. import theseus as method
from ..config import RunConfig
from ..results import RunResult
from .base import Strategy, register


@register
class Theseus(Strategy):
    name = "theseus"
    stage = "module replacing"
    needs_stage1 = True

    def shape(self, cfg: RunConfig, n_layers: int) -> tuple[int | None, list[int]]:
        return n_layers // 2, [n_layers // 2]  # the successor's shape (theseus.Theseus)

    def train(self, cfg: RunConfig, progress: bool, stage1=None) -> tuple[RunResult, dict | None]:
        model, td = stage1  # the predecessor and its task data
        return method.run(cfg, model, td, progress), None

    def flops(self, cfg: RunConfig, price) -> dict:
        # training priced at the predecessor's depth (an upper bound), evaluation at half
        tt = price.tt
        train_f = 3.0 * cfg.epochs * tt.n_train * price.forward(price.depth, 1) * price.pad
        eval_f = (cfg.epochs if cfg.eval_each_epoch else 1) * tt.n_eval * price.forward(price.depth // 2, 1) * price.pad
        return price.result(train_f, eval_f, tt.n_train * cfg.epochs)
