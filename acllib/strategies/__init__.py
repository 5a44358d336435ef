"""Training strategies, one file each, registered by name: full.py (single, direct, JT, ALT),
two_stage.py (2ST), headprune.py, theseus.py.

A strategy says what it needs (`needs_stage1`: it starts from cfg.stage1()'s trained model, which
`prerequisites` lists with a random gate's pair;
`shares_stage1`: its runs of one stage 1 train together on one set of frozen features), how its
model is shaped, how it trains (returning its results and the weights to keep) and how its trained
weights load back. runs.py executes them (cache, needs, strategy, save); sweep.py and plan.py ask
them what to group and order. Outside these files no strategy name is compared, except by the run
schema (config.py), which validates the fields each strategy uses.
"""
from __future__ import annotations

from .base import REGISTRY, Strategy, build_model, get, prerequisites, register
from . import full, headprune, theseus, two_stage  # noqa: E402,F401  (each registers itself)

__all__ = ["REGISTRY", "Strategy", "build_model", "get", "prerequisites", "register"]
