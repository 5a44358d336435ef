"""The t-SNE chapter's two computations are cached, and the cache gives back what was computed; the
layer curves' probe and state geometry against states taken one example at a time from the
backbone itself."""
import numpy as np
import pytest

from acllib import analysis, make_config, runs


def test_exit_representations_compute_once_then_read_the_cache(cache, monkeypatch):
    cfg = make_config("smoke", "mrpc", strategy="2st", seed=5)
    runs.run(cfg, progress=False)
    first = analysis.exit_representations(cfg, 1)
    # the exit's representations are its own: the exit's classifier rows are the label embeddings
    assert first["reps"].shape == (len(first["labels"]), first["label_embeddings"].shape[1])
    def load(*a, **k):
        raise RuntimeError("ran the model again")
    monkeypatch.setattr(runs, "load_model", load)
    again = analysis.exit_representations(cfg, 1)
    for k in ("reps", "labels", "preds", "label_embeddings"):
        assert np.array_equal(again[k], first[k]) and again[k].dtype == first[k].dtype
    assert again["score"] == first["score"]
    with pytest.raises(RuntimeError, match="ran the model again"):
        analysis.exit_representations(cfg, 2)  # another exit: computed, not read


def test_tsne_is_cached_by_its_input(cache, monkeypatch):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 8)).astype(np.float32)
    xy = analysis.tsne_2d(points, seed=3)
    import sklearn.manifold
    class NoTSNE:
        def __init__(self, *a, **k):
            raise RuntimeError("recomputed")
    monkeypatch.setattr(sklearn.manifold, "TSNE", NoTSNE)
    assert np.array_equal(analysis.tsne_2d(points, seed=3), xy)
    with pytest.raises(RuntimeError, match="recomputed"):
        analysis.tsne_2d(points + 1e-3, seed=3)  # other points: computed, not read
    with pytest.raises(RuntimeError, match="recomputed"):
        analysis.tsne_2d(points, seed=4)


def _states_one_by_one(cfg):
    """[CLS] and mean-pooled states of every layer, one unpadded example at a time, read from the
    Hugging Face backbone's own output_hidden_states (not acllib's batched path)."""
    import torch
    from acllib import train
    from acllib.models import load_tokenizer
    model = runs.load_model(cfg)
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    out = {}
    for name, data in (("train", td.train), ("dev", td.evals[next(iter(td.evals))])):
        cls, mean = [], []
        for i in range(len(data)):
            a, b = int(data.offsets[i]), int(data.offsets[i + 1])  # Encoded is flat
            ids = data.input_ids[a:b].long()[None]
            kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": data.token_type_ids[a:b].long()[None]}
            with torch.no_grad():
                hs = model.backbone(**kw, output_hidden_states=True).hidden_states[1:]
            cls.append([h[0, 0].double().numpy() for h in hs])
            mean.append([h[0].double().mean(0).numpy() for h in hs])
        out[name] = {"cls": np.array(cls).transpose(1, 0, 2), "mean": np.array(mean).transpose(1, 0, 2)}
    return out, td.train.labels.numpy(), td.evals[next(iter(td.evals))].labels.numpy()


def test_state_geometry_and_probe_against_states_taken_one_by_one(cache):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.preprocessing import StandardScaler
    cfg = make_config("smoke", "rte", seed=2, precision="fp32")
    runs.run(cfg, progress=False)
    states, y_train, y_dev = _states_one_by_one(cfg)
    rows = analysis.state_geometry(cfg)
    assert {(r["pooling"], r["layer"]) for r in rows} == {(p, l) for p in ("cls", "mean") for l in range(1, states["train"]["cls"].shape[0] + 1)}
    for r in rows:
        x = states["train"][r["pooling"]][r["layer"] - 1]
        mu = sum(x) / len(x)  # a plain loop's mean and distances
        spread = sum(np.sqrt(((v - mu) ** 2).sum()) for v in x) / len(x)
        gap = np.sqrt(((x[y_train == 1].mean(0) - x[y_train == 0].mean(0)) ** 2).sum())
        assert r["mean norm"] == pytest.approx(np.sqrt((mu ** 2).sum()), rel=1e-4)
        assert r["spread"] == pytest.approx(spread, rel=1e-3)
        assert r["largest dimension's share of the mean"] == pytest.approx(max(mu ** 2) / (mu ** 2).sum(), rel=1e-3)
        assert r["class-mean gap / spread"] == pytest.approx(gap / spread, rel=1e-3)
    scores = analysis.linear_probe_scores(cfg)
    assert {(s["pooling"], s["standardised"]) for s in scores} == {("cls", True), ("cls", False), ("mean", True)}
    for s in scores:
        x_tr = states["train"][s["pooling"]][s["layer"] - 1]
        x_dv = states["dev"][s["pooling"]][s["layer"] - 1]
        if s["standardised"]:
            scaler = StandardScaler().fit(x_tr)
            x_tr, x_dv = scaler.transform(x_tr), scaler.transform(x_dv)
        pred = LogisticRegression(max_iter=2000).fit(x_tr, y_train).predict(x_dv)
        # float32 batched states against float64 one-by-one: a few predictions near the boundary may differ
        assert abs(s["score"] - 100 * accuracy_score(y_dev, pred)) <= 100 * 3 / len(y_dev)


def test_the_probe_and_the_geometry_of_one_model_share_one_pass(cache, monkeypatch):
    cfg = make_config("smoke", "rte", seed=3, precision="fp32")
    runs.run(cfg, progress=False)
    passes = []
    real = analysis._compute_layer_states
    monkeypatch.setattr(analysis, "_compute_layer_states", lambda *a: passes.append(a) or real(*a))
    analysis.linear_probe_scores(cfg)
    analysis.state_geometry(cfg)
    assert len(passes) == 1


def test_mean_intervals_and_paired_gains_match_scipy():
    import pandas as pd
    from scipy import stats as st
    from acllib import analysis
    rng = np.random.default_rng(0)
    rows = [{"backbone": "m", "task": "sst2", "size": n, "method": m, "seed": s, "score": 60 + rng.normal(0, 3)}
            for n in (20, 100) for m in ("CE", "CE+SCL") for s in range(1, 11)]
    df = pd.DataFrame(rows).query("not (size == 100 and method == 'CE' and seed == 10)")  # one run missing
    t = analysis.mean_intervals(df, ["size", "method"]).set_index(["size", "method"])
    x = df[(df["size"] == 100) & (df.method == "CE")]["score"]
    lo, hi = st.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=st.sem(x))
    assert t.loc[(100, "CE"), "seeds"] == 9 and t.loc[(100, "CE"), ["lo", "hi"]].tolist() == pytest.approx([lo, hi])
    g = analysis.paired_gains(df, [("CE+SCL", "CE")]).set_index("size")
    a = df[(df["size"] == 100) & (df.method == "CE+SCL") & (df.seed < 10)].sort_values("seed")["score"].values
    b = df[(df["size"] == 100) & (df.method == "CE")].sort_values("seed")["score"].values
    ref = st.ttest_rel(a, b)
    assert g.loc[100, "pairs"] == 9 and g.loc[100, "p"] == pytest.approx(ref.pvalue)
    assert g.loc[100, "mean"] == pytest.approx((a - b).mean())
