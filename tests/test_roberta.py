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
    "direct": dict(strategy="direct", depth=2),
    "2st ACL": dict(strategy="2st", **TABLE2_ROWS["ACL"]),
    "2st linear": dict(strategy="2st", method="ce", exit="linear"),
    "jt linear": dict(strategy="jt", exit="linear"),
    "alt mha": dict(strategy="alt", exit="mha"),
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_trains_and_scores_on_tiny_roberta(cache, name):
    cfg = make_config("smoke", "rte", backbone="tiny-roberta", seed=1, **STRATEGIES[name])
    result = runs.run(cfg, progress=False)
    depth = 2 if cfg.strategy == "direct" else 4
    expected = {str(depth)} if cfg.strategy in ("single", "direct") else {str(m) for m in range(1, depth + 1)}
    assert set(result["score"]) == expected
    assert all(0.0 <= v <= 100.0 for v in result["score"].values())
    assert result["n_train"] == 48


def test_early_exit_runs_on_tiny_roberta(cache):
    cfg = make_config("smoke", "rte", backbone="tiny-roberta", seed=1, strategy="2st", **TABLE2_ROWS["ACL"])
    rows = early_exit.evaluate_run(cfg, timing=False)
    assert {r["rule"] for r in rows} >= {"none"}
    assert all(r["flops_fraction"] > 0.0 for r in rows) and rows[0]["flops_fraction"] == 1.0
