"""Measurements on finished runs: the pilot study's gradient angles on a fixed fine-tuned model."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data as gdata
from . import measurements, runs, stats, strategies, train
from .config import RunConfig
from .results import RunResult
from .losses import acl_embed_loss, gradient_angle, supcon_loss
from .models import count_forward_flops, encoder_layers, load_tokenizer


FIXED_MODEL_AUX = ("scl", "acl-embed")


def fixed_model_angles(cfg: RunConfig, progress: bool = True, max_batches: int | None = None,
                       aux: str = "scl") -> list[float]:
    """Sec. 4.1 / Figure 2: on the fine-tuned model of `cfg` with its parameters fixed, the angle
    between the auxiliary loss's gradient (g_SCL, or with aux="acl-embed" g_ACL of sec. 4.3, the
    exit's label embeddings joining the batch) and g_CE over all parameters, for every training
    batch of one epoch (or the first `max_batches` of that epoch's shuffled batches).

    Dropout is off (eval mode) so the angles describe the model itself, not a dropout sample.
    Cached by its arguments and its code (acllib.measurements).
    """
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches!r}")
    if aux not in FIXED_MODEL_AUX:
        raise ValueError(f"aux {aux!r} is not one of {', '.join(FIXED_MODEL_AUX)}")
    if cfg.strategy != cfg.stage1().strategy:  # a plain fine-tune, the kind of run every stage 1 is
        raise ValueError(f"fixed-model angles need a {cfg.stage1().strategy!r} run, got strategy {cfg.strategy!r}")
    return measurements.cached_json(
        "angles", cfg.hash, {"max_batches": max_batches, "aux": aux},
        (fixed_model_angles, _fixed_model_angles, gradient_angle, supcon_loss, acl_embed_loss),
        lambda: _fixed_model_angles(cfg, progress, max_batches, aux), extra={"config": cfg.to_dict()})


def _fixed_model_angles(cfg: RunConfig, progress: bool, max_batches: int | None, aux: str) -> list[float]:
    model = runs.load_model(cfg, progress)
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    getter = train.BatchGetter(td.train, td.pad_id, cfg.encoder_parts)
    params = [p for p in model.parameters() if p.requires_grad]
    last = model.exit_layers[-1]
    batch_size = train.update_batch_size(cfg, len(td.train))
    # batches composed as in training (cfg.batches): the first batches of the run's own first epoch
    batches = gdata.train_batches(getter.lengths, min(batch_size, cfg.micro_batch_size),
                                  np.random.default_rng(cfg.seed), cfg.batches,
                                  cfg.batch_window)[:max_batches]
    angles = []
    for idx in tqdm(batches, desc=f"angles {cfg.task}/{cfg.method} seed {cfg.seed}", disable=not progress,
                    leave=False):
        batch = getter(idx)
        with train.autocast(cfg.precision):
            out = model(batch, [last])[0]
        ce = F.cross_entropy(out.logits.float(), batch["labels"])
        if aux == "scl":
            aux_loss = supcon_loss(out.rep, batch["labels"], cfg.tau)
        else:
            aux_loss = acl_embed_loss(out.rep, batch["labels"], model.exit(last).label_embeddings, cfg.tau)
        angles.append(gradient_angle(aux_loss, ce, params))
    return angles


_STATES: dict = {}  # the last model's layer states: the probe and the geometry read one pass


def _layer_states(cfg: RunConfig, poolings) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """The frozen model of `cfg` (a single run): its train and dev layer states per pooling
    ({pooling: [layers, n, hidden]}, "cls" or "mean" over tokens) and their labels. The last
    call's states are kept in memory, so the probe and the geometry of one model share one pass."""
    key = (cfg.hash, tuple(poolings))
    if key not in _STATES:
        _STATES.clear()
        _STATES[key] = _compute_layer_states(cfg, poolings)
    return _STATES[key]


def _compute_layer_states(cfg: RunConfig, poolings):
    model = runs.load_model(cfg)
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    split = next(iter(td.evals))

    @torch.no_grad()
    def states(data):
        out = {p: np.zeros((model.num_layers, len(data), model.backbone.config.hidden_size), np.float32) for p in poolings}
        for idx, batch in train.eval_batches(data, td.pad_id):
            with train.autocast(cfg.precision):
                hs = model.hidden_states(batch)
            m = batch["attention_mask"][..., None].float()
            for layer in range(1, model.num_layers + 1):
                h = hs[layer].float()
                if "cls" in out:
                    out["cls"][layer - 1, idx] = h[:, 0].cpu().numpy()
                if "mean" in out:
                    out["mean"][layer - 1, idx] = ((h * m).sum(1) / m.sum(1)).cpu().numpy()
        return out

    return states(td.train), states(td.evals[split]), td.train.labels.numpy(), td.evals[split].labels.numpy()


def linear_probe_scores(cfg: RunConfig, poolings=("cls", "mean"), unstandardised=("cls",)) -> list[dict]:
    """What a linear classifier can read from each layer of the fine-tuned model of `cfg` (a single
    run) with its parameters fixed: scikit-learn's logistic regression, fit on the training split's
    layer states ([CLS] or mean over tokens, standardised; for the poolings in `unstandardised` also
    as they are, which is what a linear exit sees), scored on the dev split with the task's headline
    metric. An independent reference for linear exits trained on the same frozen states. Cached by
    its arguments and its code (acllib.measurements)."""
    raw = [p for p in poolings if p in unstandardised]
    return measurements.cached_json(
        "probe", cfg.hash, {"poolings": list(poolings), "raw": raw},
        (linear_probe_scores, _linear_probe_scores, _layer_states, _compute_layer_states),
        lambda: _linear_probe_scores(cfg, poolings, raw), extra={"config": cfg.to_dict()})


def _linear_probe_scores(cfg: RunConfig, poolings, raw) -> list[dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x_train, x_dev, y_train, y_dev = _layer_states(cfg, poolings)
    scores = []
    for pooling in poolings:
        for standardised in (True, False) if pooling in raw else (True,):
            for layer in range(1, x_train[pooling].shape[0] + 1):
                clf = LogisticRegression(max_iter=2000)
                clf = make_pipeline(StandardScaler(), clf) if standardised else clf
                clf.fit(x_train[pooling][layer - 1], y_train)
                pred = clf.predict(x_dev[pooling][layer - 1])
                scores.append({"pooling": pooling, "standardised": standardised, "layer": layer,
                               "score": train.score(cfg.task, y_dev, pred)[gdata.get_task(cfg.task).metrics[0]]})
    return scores


def state_geometry(cfg: RunConfig, poolings=("cls", "mean")) -> list[dict]:
    """Per layer and pooling, how much the training examples' states differ, against their common
    part: the norm of the mean state, the mean distance of a state to that mean ("spread"), their
    ratio, the share of the mean's squared norm in its largest dimension, and the distance between
    the two class means (binary tasks) over the spread. A linear exit on states whose spread is a
    tiny share of a large common vector sees almost the same input for every example.
    Cached by its arguments and its code (acllib.measurements)."""
    return measurements.cached_json(
        "geometry", cfg.hash, {"poolings": list(poolings)}, (state_geometry, _state_geometry, _layer_states, _compute_layer_states),
        lambda: _state_geometry(cfg, poolings), extra={"config": cfg.to_dict()})


def _state_geometry(cfg: RunConfig, poolings) -> list[dict]:
    x_train, _, y_train, _ = _layer_states(cfg, poolings)
    rows = []
    for pooling in poolings:
        for layer, x in enumerate(x_train[pooling].astype(np.float64), start=1):  # x: [n, hidden]
            mu = x.mean(0)
            spread = float(np.linalg.norm(x - mu, axis=1).mean())
            gap = (float(np.linalg.norm(x[y_train == 1].mean(0) - x[y_train == 0].mean(0)))
                   if set(np.unique(y_train)) == {0, 1} else float("nan"))
            rows.append({"pooling": pooling, "layer": layer, "mean norm": float(np.linalg.norm(mu)), "spread": spread,
                         "spread / mean norm": spread / float(np.linalg.norm(mu)),
                         "largest dimension's share of the mean": float((mu ** 2).max() / (mu ** 2).sum()),
                         "class-mean gap / spread": gap / spread})
    return rows


def forward_flops(cfg: RunConfig, seq_len: int = 128, layer: int | None = None) -> float:
    """FLOPs of one forward pass of one example of length `seq_len` up to exit `layer` (default:
    the model's last exit), counted by torch.utils.flop_counter (matmuls and attention)."""
    model = strategies.build_model(cfg, gdata.get_task(cfg.task).num_labels).eval()
    layer = layer or model.exit_layers[-1]
    if layer != model.num_layers:  # count only the layers an exit at `layer` needs
        del encoder_layers(model.backbone)[layer:]
    return count_forward_flops(model, seq_len, layer)


def row_flops(cfg: RunConfig, result: RunResult, seq_len: int = 128, layer: int | None = None) -> float:
    """A Table 1 row's forward FLOPs: counted on the run's own model where its shape is the run's
    outcome (head pruning stores them), from its configuration otherwise."""
    stored = result.extras.get("forward_flops")
    if stored is not None and stored["seq_len"] == seq_len and layer is None:
        return float(stored["flops"])
    return forward_flops(cfg, seq_len, layer)


def pruning_path(results: dict[int, RunResult]) -> "pd.DataFrame":
    """Head pruning's path, one row per (seed, point): heads pruned, share of the full model's FLOPs
    and the headline dev score (results: seed -> a headprune run's result)."""
    import pandas as pd
    rows = []
    for seed, r in results.items():
        split, metric = r.eval_split, r.headline_metric
        for point in r.extras["path"]:
            scores = point["final"][split]
            rows.append({"seed": seed, "heads_pruned": point["heads_pruned"], "share_pruned": point["share_pruned"],
                         "flops_ratio": point["flops_ratio"], "score": scores[max(scores, key=int)][metric]})
    return pd.DataFrame(rows)


def score_of(result: RunResult, layer: int | str | None = None) -> float:
    """A run's headline dev score at an exit (default: its deepest)."""
    scores = result.score
    return scores[str(layer) if layer is not None else max(scores, key=int)]


def cross_layer_average(result: RunResult) -> float:
    """The mean of a multi-exit run's headline scores over all its exits (Tables 2 and 3)."""
    return float(np.mean(list(result.score.values())))


@torch.no_grad()
def exit_representations(cfg: RunConfig, layer: int, split: str | None = None) -> dict:
    """Exit `layer`'s representations h^e of a dev split, with labels, predictions and the exit's
    label embeddings (the rows of its classifier W), for the t-SNE of sec. 5.7. Cached by its
    arguments and its code (acllib.measurements), so a warm rebuild does not run the model again."""
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    split = split or next(iter(td.evals))
    t = measurements.cached_arrays("exit_reps", cfg.hash, {"layer": layer, "split": split},
                                   (exit_representations, _exit_representations),
                                   lambda: _exit_representations(cfg, layer, td, split))
    return {**t, "score": train.score(cfg.task, t["labels"], t["preds"])}


def _exit_representations(cfg: RunConfig, layer: int, td, split: str) -> dict:
    model = runs.load_model(cfg)
    data = td.evals[split]
    reps = torch.zeros(len(data), model.exit(layer).label_embeddings.shape[1])
    preds = torch.zeros(len(data), dtype=torch.long)
    for idx, batch in train.eval_batches(data, td.pad_id):
        with train.autocast(cfg.precision):
            out = model(batch, [layer])[0]
        reps[idx] = out.rep.float().cpu()
        preds[idx] = out.logits.argmax(-1).cpu()
    labels = data.labels.numpy()
    return {"reps": reps.numpy(), "labels": labels, "preds": preds.numpy(),
            "label_embeddings": model.exit(layer).label_embeddings.detach().float().cpu().numpy()}


def tsne_2d(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """t-SNE of l2-normalized points (the geometry the contrastive losses see). Cached by the
    points' bytes, the seed, scikit-learn's version and its code: a warm rebuild does not recompute it."""
    import hashlib
    import sklearn
    points = np.ascontiguousarray(points, dtype=np.float32)
    key = hashlib.sha256(points.tobytes() + repr(points.shape).encode()).hexdigest()[:20]
    return measurements.cached_arrays("tsne", key, {"seed": seed, "sklearn": sklearn.__version__}, (tsne_2d, _tsne_2d),
                                      lambda: {"xy": _tsne_2d(points, seed)})["xy"]


def _tsne_2d(points: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE
    x = points / np.linalg.norm(points, axis=1, keepdims=True).clip(min=1e-12)
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


# ------------------------------------------------------------------------- the few-shot chapter
def few_shot_per_seed(chapter, results: dict[tuple, RunResult]) -> "pd.DataFrame":
    """One row per run of the few-shot plan (plan.few_shot): its method, training-set size (the
    examples it trained on), the size's label ("smallest", "full" or the number), regime, seed,
    headline score, epochs and optimizer updates."""
    import pandas as pd
    smallest = min(chapter.extra["sizes"])
    rows = []
    for (m, b, t, n, s), r in results.items():
        cfg = chapter.runs["run", m, b, t, n, s]
        size = r.n_train
        rows.append({"backbone": b, "task": t, "method": m, "size": size,
                     "size_label": "full" if n == "full" else ("smallest" if n == smallest else str(n)),
                     "regime": "full" if n == "full" else "few-shot", "seed": s, "score": score_of(r),
                     "metric": r.headline_metric, "eval split": r.eval_split, "epochs": cfg.epochs,
                     "updates": cfg.epochs * train.updates_per_epoch(cfg, size)})
    return pd.DataFrame(rows)


def mean_intervals(per_seed, by, value: str = "score", level: float = 0.95):
    """Per group: seeds, mean, sample sd and the t interval of the mean (scipy.stats.t)."""
    from scipy import stats as st
    g = per_seed.groupby(by, observed=True)[value]  # a categorical column keeps its order, not its unseen values
    out = g.agg(seeds="count", mean="mean", sd="std").reset_index()
    half = st.t.ppf(0.5 + level / 2, (out.seeds - 1).clip(lower=1)) * out.sd / np.sqrt(out.seeds)
    out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    return out


def paired_gains(per_seed, pairs, by=("backbone", "task", "size")):
    """For each group and (a, b) in `pairs`: a - b paired by seed (stats.difference_test): pairs,
    mean difference, its 95% t interval and p."""
    import pandas as pd
    rows = []
    for key, d in per_seed.groupby(list(by)):
        wide = d.pivot_table(index="seed", columns="method", values="score")
        for a, b in pairs:
            if {a, b} <= set(wide.columns):
                both = wide[[a, b]].dropna()
                r = stats.difference_test(both[a].values, both[b].values)
                rows.append({**dict(zip(by, key)), "difference": f"{a} − {b}", "pairs": r["n"], "mean": r["diff"],
                             "lo": r["lo"], "hi": r["hi"], "p": r["p"]})
    return pd.DataFrame(rows)


def gate_telemetry(result: RunResult) -> pd.DataFrame:
    """What ACL-Grad's gate saw and did over a run (issue #27), per epoch, from its angle log: the
    angle between the aux and reference gradients (median and 10-90% band over steps and groups),
    the share of group-steps whose aux term was dropped (lam used 0) or projected, and the norm
    ratio |g_aux| / |g_ref| (median; nan in runs cached before it was logged)."""
    log = pd.DataFrame(result.angles)
    if log.empty:
        return pd.DataFrame(columns=["epoch", "angle median", "angle q10", "angle q90", "share dropped",
                                     "share projected", "norm ratio median", "steps"])
    lam = result.config["lam"]
    log["dropped"] = (log["lam"] == 0.0) & (lam != 0.0)
    log["projected"] = log["projected"].astype(bool) if "projected" in log else False
    if "norm_ratio" not in log:
        log["norm_ratio"] = np.nan
    g = log.groupby("epoch")
    return pd.DataFrame({"angle median": g["angle"].median(), "angle q10": g["angle"].quantile(0.1),
                         "angle q90": g["angle"].quantile(0.9), "share dropped": g["dropped"].mean(),
                         "share projected": g["projected"].mean(), "norm ratio median": g["norm_ratio"].median(),
                         "steps": g["step"].nunique()}).reset_index()
