"""Head pruning (Michel et al. 2019) of the run's CE model, as a Table 1 compression row
(the method: acllib/head_pruning.py)."""
from __future__ import annotations

from .. import head_pruning
from ..config import RunConfig
from ..results import RunResult
from .base import Strategy, register


@register
class HeadPrune(Strategy):
    name = "headprune"
    stage = "head pruning (importance and path, no training)"
    needs_stage1 = True

    def train(self, cfg: RunConfig, progress: bool, stage1=None) -> tuple[RunResult, dict | None]:
        model, td = stage1  # the CE model (pruned here in place) and its task data
        return head_pruning.run(cfg, model, td, progress), None

    def flops(self, cfg: RunConfig, price) -> dict:
        # no training: the importances (a forward and a backward to the activations, ~2 forwards)
        # and dev passes along the path, priced unpruned (an upper bound)
        per = price.forward(price.depth, 1)
        train_f = 2.0 * min(head_pruning.IMPORTANCE_EXAMPLES, price.tt.n_train) * per * price.pad
        eval_f = (len(head_pruning.path_points(price.heads)) + 1) * price.tt.n_eval * per * price.pad
        return price.result(train_f, eval_f, 0)
