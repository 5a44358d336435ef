"""The strategy interface and its registry (see __init__.py)."""
from __future__ import annotations

from .. import train
from ..config import STRATEGIES, RunConfig
from ..results import RunResult
from ..models import MultiExitModel, encoder_layers, load_backbone

REGISTRY: dict[str, "Strategy"] = {}


class Strategy:
    name = ""
    needs_stage1 = False   # starts from cfg.stage1()'s trained model (the executor trains it first)
    shares_stage1 = False  # the runs of one stage 1 train together (the executor groups them)
    keeps_weights = False  # its whole model is saved (stage 1 of 2st; JT and ALT for early exiting)
    stage = "fine-tuning"  # what its runs' training time is spent on (the differences chapter's table)

    def shape(self, cfg: RunConfig, n_layers: int) -> tuple[int | None, list[int]]:
        """(the backbone layers kept, None for all; the layers that get an exit)."""
        return None, [n_layers]

    def train(self, cfg: RunConfig, progress: bool, stage1=None) -> tuple[RunResult, dict | None]:
        """Train a run: (its results, the weights to keep or None). stage1: what needs_stage1 gets."""
        raise NotImplementedError

    def flops(self, cfg: RunConfig, price) -> dict:
        """The run's training and evaluation FLOPs (cost.run_flops), counted from `price` (cost.Pricing)."""
        raise NotImplementedError

    def exit_budget(self, cfg: RunConfig) -> str:
        """How its intermediate exits train (the layer curves compare methods whose budgets differ)."""
        return "no intermediate exits"

    def load(self, cfg: RunConfig, model: MultiExitModel) -> None:
        """Put a finished run's kept weights into a model built for it."""
        raise ValueError(f"strategy {self.name!r} keeps no weights: its trained model cannot be loaded")


def register(cls: type[Strategy]) -> type[Strategy]:
    REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Strategy:
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return REGISTRY[name]


def prerequisites(cfg: RunConfig) -> list[RunConfig]:
    """The runs `cfg` reads, which the executor finishes before it: its stage 1 where its strategy
    starts from one, and a random gate's Eq. 4 pair (whose drop share it matches). The one statement
    of what a run needs: plan.with_stage1, runs.run and the sweep's order all ask it."""
    needed = [cfg.stage1()] if get(cfg.strategy).needs_stage1 else []
    if (pair := cfg.gate_pair()) is not None:
        needed.append(pair)
    return needed


def build_model(cfg: RunConfig, num_labels: int) -> MultiExitModel:
    """The model a run trains: its backbone (seeded), cut and given exits as its strategy shapes it."""
    backbone = load_backbone(cfg.backbone, cfg.dropout, seed=cfg.seed)
    depth, layers = get(cfg.strategy).shape(cfg, len(encoder_layers(backbone)))
    return train.make_model(cfg, backbone, num_labels, layers, depth)
