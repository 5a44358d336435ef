"""Measurements on finished runs: the pilot study's gradient angles on a fixed fine-tuned model."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data as gdata
from . import runs, store, train
from .config import RunConfig
from .losses import gradient_angle, supcon_loss
from .models import load_tokenizer


def fixed_model_angles(cfg: RunConfig, progress: bool = True) -> list[float]:
    """Sec. 4.1 / Figure 2: on the fine-tuned model of `cfg` with its parameters fixed, the angle
    between g_SCL and g_CE over all parameters, for every training batch of one epoch.

    Dropout is off (eval mode) so the angles describe the model itself, not a dropout sample.
    Cached in data_cache/analysis/<hash>-angles.json.
    """
    if cfg.strategy != "single":
        raise ValueError(f"fixed-model angles need a 'single' run, got strategy {cfg.strategy!r}")
    path = store.cache_dir("analysis") / f"{cfg.hash}-angles.json"
    if path.exists():
        return store.read_json(path)["angles"]
    runs.run(cfg, progress)
    model = train.build_model(cfg, gdata.get_task(cfg.task).num_labels)
    model.load_state_dict(store.load_tensors(runs.model_path(cfg)))
    model.eval()
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    getter = train.BatchGetter(td.train, td.pad_id)
    params = [p for p in model.parameters() if p.requires_grad]
    last = model.exit_layers[-1]
    batch_size = train.update_batch_size(cfg, len(td.train))
    batches = gdata.length_grouped_batches(getter.lengths, min(batch_size, cfg.micro_batch_size),
                                           np.random.default_rng(cfg.seed))
    angles = []
    for idx in tqdm(batches, desc=f"angles {cfg.task}/{cfg.method} seed {cfg.seed}", disable=not progress,
                    leave=False):
        batch = getter(idx)
        with train.autocast(cfg.precision):
            out = model(batch, [last])[0]
        ce = F.cross_entropy(out.logits.float(), batch["labels"])
        scl = supcon_loss(out.rep, batch["labels"], cfg.tau)
        angles.append(gradient_angle(scl, ce, params))
    store.write_json(path, {"config": cfg.to_dict(), "angles": angles})
    return angles
