"""The t-SNE chapter's two computations are cached, and the cache gives back what was computed."""
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
