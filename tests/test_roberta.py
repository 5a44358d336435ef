"""The RoBERTa code path on a tiny random RoBERTa whose byte-level BPE tokenizer is trained here
(no RoBERTa weights load offline): tokenizer, padding and positions, and every strategy end to end."""
import pytest
import torch

from acllib import early_exit, runs
from acllib.config import TABLE2_ROWS, make_config
from acllib.models import load_backbone, load_tokenizer, tiny_roberta_dir


def test_tokenizer_is_a_roberta_folder_with_its_specials_and_pair_template(cache):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny_roberta_dir()))  # what load_tokenizer does, by hand
    assert type(tok).__name__.startswith("RobertaTokenizer")  # transformers 5: the fast one is RobertaTokenizer
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("A man is playing.", "Someone plays.")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and [2, 2] == ids[ids.index(2):ids.index(2) + 2]  # <s> A </s></s> B </s>
    assert tok.decode(tok("The cat sat.")["input_ids"], skip_special_tokens=True) == "The cat sat."
    assert "token_type_ids" not in tok("x") or set(tok("x", "y")["token_type_ids"]) == {0}


def test_padding_changes_no_real_token_state(cache):
    """RoBERTa's positions count from its padding index: an example's states must not depend on how
    much padding its batch adds (a wrong pad id or position offset would shift them)."""
    tok = load_tokenizer("tiny-roberta")
    model = load_backbone("tiny-roberta", dropout=0.0, seed=0).eval()
    assert model.pretrained_pooler is None  # nothing pre-trained: linear exits start from a fresh pooler
    short, long_ = "A short one.", "A much longer sentence that needs many more tokens than the other."
    alone = tok([short], return_tensors="pt")
    both = tok([short, long_], return_tensors="pt", padding=True)
    assert both["input_ids"][0, -1].item() == tok.pad_token_id
    n = alone["input_ids"].shape[1]
    with torch.no_grad():
        a = model(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]).last_hidden_state
        b = model(input_ids=both["input_ids"], attention_mask=both["attention_mask"]).last_hidden_state
    torch.testing.assert_close(a[0], b[0, :n], rtol=1e-4, atol=1e-5)


STRATEGIES = {
    "single CE": dict(method="ce"),
    "single ACL": dict(method="acl"),
    "single CE+SCL": dict(method="ce+scl"),
    "single ACL-Embed": dict(method="acl-embed"),
    "direct": dict(strategy="direct", depth=2),
    "2st ACL": dict(strategy="2st", **TABLE2_ROWS["ACL"]),
    "2st linear": dict(strategy="2st", method="ce", exit="linear"),
    "2st linear-cls": dict(strategy="2st", method="ce", exit="linear-cls"),
    "2st linear-mean": dict(strategy="2st", method="ce", exit="linear-mean"),
    "jt linear": dict(strategy="jt", exit="linear"),
    "alt mha": dict(strategy="alt", exit="mha"),
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_trains_and_scores_on_tiny_roberta(cache, name):
    cfg = make_config("smoke", "rte", backbone="tiny-roberta", seed=1, **STRATEGIES[name])
    result = runs.run(cfg, progress=False)
    depth = 2 if cfg.strategy == "direct" else 4
    expected = {str(depth)} if cfg.strategy in ("single", "direct") else {str(m) for m in range(1, depth + 1)}
    assert set(result.score) == expected
    assert all(0.0 <= v <= 100.0 for v in result.score.values())
    assert result.n_train == 48


def test_compression_baselines_run_on_tiny_roberta(cache):
    """Table 1's head pruning and module replacing on RoBERTa (the paper's Table 1 has RoBERTa rows)."""
    hp = runs.run(make_config("smoke", "rte", backbone="tiny-roberta", seed=1, strategy="headprune"), progress=False)
    ratios = [p["flops_ratio"] for p in hp.extras["path"]]
    assert ratios[0] == 1.0 and all(a > b for a, b in zip(ratios, ratios[1:]))
    assert hp.extras["target"]["flops_ratio"] <= hp.extras["target_flops_ratio"]
    th = runs.run(make_config("smoke", "rte", backbone="tiny-roberta", seed=1, strategy="theseus"), progress=False)
    assert set(th.score) == {"2"} and all(0.0 <= v <= 100.0 for v in th.score.values())


@pytest.mark.parametrize("kind", [dict(**TABLE2_ROWS["ACL"]), dict(method="ce", exit="linear")])
def test_early_exit_runs_on_tiny_roberta(cache, kind):
    cfg = make_config("smoke", "rte", backbone="tiny-roberta", seed=1, strategy="2st", **kind)
    rows = early_exit.evaluate_run(cfg, timing=False)
    assert {r["rule"] for r in rows} >= {"none"}
    assert all(r["flops_fraction"] > 0.0 for r in rows) and rows[0]["flops_fraction"] == 1.0
    none = rows[0]  # no early exiting: the run's own last-exit score
    assert none["rule"] == "none" and none["score"] == pytest.approx(runs.load_result(cfg).score["4"])
    # patience p exits after p + 1 agreeing exits at the earliest: its mean exit layer never below that
    assert all(r["mean_exit_layer"] >= min(r["threshold"] + 1, 4) for r in rows if r["rule"] == "patience")


@pytest.mark.parametrize("with_pooler", [False, True])
def test_a_roberta_checkpoint_folder_loads_as_from_pretrained_would(cache, tmp_path, with_pooler):
    """The hub path on a folder: AutoModel loads a saved RoBERTa (safetensors); a checkpoint without
    pooler weights (roberta-base's) leaves the linear exits no pre-trained pooler, one with them does;
    and a run trains on it."""
    from transformers import RobertaConfig, RobertaModel
    from acllib.models import TINY_ROBERTA
    tok = load_tokenizer("tiny-roberta")
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, **TINY_ROBERTA)
    saved = RobertaModel(cfg, add_pooling_layer=with_pooler)
    folder = tmp_path / "roberta-folder"
    saved.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    assert (folder / "model.safetensors").is_file()
    model = load_backbone(str(folder), dropout=0.0)
    assert (model.pretrained_pooler is not None) == with_pooler
    if with_pooler:
        torch.testing.assert_close(model.pretrained_pooler["weight"], saved.pooler.dense.weight)
    torch.testing.assert_close(model.embeddings.word_embeddings.weight, saved.embeddings.word_embeddings.weight)
    run = runs.run(make_config("smoke", "rte", backbone=str(folder), seed=1, strategy="2st", method="ce",
                               exit="linear"), progress=False)
    assert set(run.score) == {"1", "2", "3", "4"}
