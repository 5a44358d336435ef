"""Every speed trick against the plain PyTorch it replaces (models.reference_ops): each strategy
trained both ways on the tiny model agrees to rounding where dropout draws nothing, and the tricks
that draw dropout agree in distribution."""
import numpy as np
import pytest
import torch
from scipy import stats as sstats

from acllib import data as gdata
from acllib import make_config, runs, train
from acllib.config import TABLE2_ROWS
from acllib.models import (MHAExit, fast_dropout, load_backbone, load_tokenizer, mha_exits_stacked, reference,
                           reference_ops, stackable)

# dropout 0: the two ways then draw no random numbers, so they differ by rounding only
STRATEGIES = {
    "single ACL (ACL-Grad in full fine-tuning)": dict(method="acl"),
    "single CE+SCL": dict(method="ce+scl"),
    "jt mha": dict(strategy="jt", exit="mha"),
    "alt mha": dict(strategy="alt", exit="mha"),
    "2st ACL (stacked exits, ACL-Grad per exit, KD)": dict(strategy="2st", **TABLE2_ROWS["ACL"]),
    "2st linear": dict(strategy="2st", method="ce", exit="linear"),
    "theseus": dict(strategy="theseus"),
    "headprune (importances through the attention's head gates)": dict(strategy="headprune"),
    "direct": dict(strategy="direct", depth=2),
}


def _state(cfg):
    """The trained model's weights, where the run keeps them (Theseus keeps its scores only)."""
    if not runs.model_path(cfg).exists():
        return {}
    return {k: v.detach().clone() for k, v in runs.load_model(cfg).state_dict().items()}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_trains_the_same_with_its_speed_tricks_replaced(cache, name):
    cfg = make_config("smoke", "rte", seed=3, dropout=0.0, precision="fp32", **STRATEGIES[name])
    fast = runs.run(cfg, progress=False, force=True)
    fast_state = _state(cfg)
    with reference_ops():
        assert reference()
        plain = runs.run(cfg, progress=False, force=True)
        plain_state = _state(cfg)
    assert not reference()
    assert fast.hash == plain.hash
    assert set(fast_state) == set(plain_state)
    losses = lambda r: [e["train_main_loss"] for e in r.epochs if e["train_main_loss"] is not None]
    np.testing.assert_allclose(losses(plain), losses(fast), rtol=1e-4)  # every epoch's mean training loss
    if "importance" in fast.extras:  # head pruning: the heads' importances and the order they go in
        np.testing.assert_allclose(plain.extras["importance"], fast.extras["importance"], rtol=1e-4, atol=1e-7)
        assert plain.extras["order"] == fast.extras["order"]
    for key in fast_state:  # after every update of two epochs: rounding, not a different computation
        a, b = fast_state[key], plain_state[key]
        if key.endswith("attn.in_proj_bias"):
            # an MHA exit's key bias adds one constant to every score of a query, which the softmax
            # cancels: its gradient is 0 but for rounding, which Adam turns into tiny steps of either
            # sign; the query and value biases must agree as everything else does
            d = len(a) // 3
            assert a[d:2 * d].abs().max() < 1e-3 and b[d:2 * d].abs().max() < 1e-3, key
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        torch.testing.assert_close(b, a, rtol=1e-4, atol=2e-5, msg=key)
    # the scores: the same predictions but for an example on the decision boundary
    for layer, s in fast.score.items():
        assert abs(s - plain.score[layer]) <= 100 / 40 + 1e-9, (layer, s, plain.score[layer])
    if fast.angles:  # ACL-Grad's decisions: the same angles, the same lam on every step
        a = np.array([x["angle"] for x in fast.angles])
        b = np.array([x["angle"] for x in plain.angles])
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
        assert [x["lam"] for x in fast.angles] == [x["lam"] for x in plain.angles]


def test_reference_ops_switches_each_trick_and_restores():
    exits = [MHAExit(16, 2, d_e=8, heads=2, dropout=0.1) for _ in range(3)]
    assert stackable(exits)
    with reference_ops():
        assert not stackable(exits)
        with reference_ops():
            pass
        assert reference()  # nested: still on until the outer one ends
    assert not reference() and stackable(exits)


def test_fast_dropout_and_f_dropout_are_one_distribution():
    """fast_dropout's 16-bit masks against F.dropout's (reference_ops): the share of units kept and
    the kept value, over 200k units, by a two-sample test of the kept indicator."""
    torch.manual_seed(0)
    x = torch.ones(200_000)
    fast = fast_dropout(x, 0.1, True)
    with reference_ops():
        plain = fast_dropout(x, 0.1, True)
    for y in (fast, plain):  # inverted dropout: 0, or the unit scaled by 1 / (1 - p)
        kept = y[y != 0]
        torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.9), rtol=1e-6, atol=0)
    table = [[int((fast == 0).sum()), int((fast != 0).sum())], [int((plain == 0).sum()), int((plain != 0).sum())]]
    assert sstats.chi2_contingency(table).pvalue > 1e-3


def test_stacked_exits_under_dropout_match_single_exits_in_distribution():
    """Stacked MHA exits draw their attention dropout with dropout_mask inside ClsAttentionPool;
    a single MHAExit (and every exit under reference_ops) with nn.MultiheadAttention's own dropout.
    Two ways of drawing one dropout: over 3000 forward passes each, every logit's distribution is
    the same (two-sample Kolmogorov-Smirnov, Bonferroni over the logits)."""
    torch.manual_seed(1)
    exits = [MHAExit(16, 2, d_e=8, heads=2, dropout=0.3) for _ in range(2)]
    for ex in exits:
        ex.train()
    hidden = torch.randn(2, 3, 5, 16)  # [E, B, L, hidden]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    draws = 3000
    with torch.no_grad():
        stacked = torch.stack([mha_exits_stacked(exits, hidden, mask)[1] for _ in range(draws)])   # [n, E, B, K]
        single = torch.stack([torch.stack([ex(hidden[e], mask)[1] for e, ex in enumerate(exits)])
                              for _ in range(draws)])
    a, b = stacked.reshape(draws, -1).numpy(), single.reshape(draws, -1).numpy()
    p = [sstats.ks_2samp(a[:, j], b[:, j]).pvalue for j in range(a.shape[1])]
    assert min(p) > 0.01 / len(p), min(p)
    assert a.std(0).min() > 0  # dropout drew something: the test compared distributions, not constants
    # and the test can fail: exits at another dropout rate are told apart
    exits_lo = [MHAExit(16, 2, d_e=8, heads=2, dropout=0.1) for _ in range(2)]
    for ex, hi in zip(exits_lo, exits):
        ex.load_state_dict(hi.state_dict())
        ex.train()
    with torch.no_grad():
        other = torch.stack([torch.stack([ex(hidden[e], mask)[1] for e, ex in enumerate(exits_lo)])
                             for _ in range(draws)]).reshape(draws, -1).numpy()
    assert min(sstats.ks_2samp(a[:, j], other[:, j]).pvalue for j in range(a.shape[1])) < 0.01 / len(p)


def test_written_out_attention_equals_sdpa_in_inference():
    """acl_attention's inference path is transformers' SDPA; under reference_ops the product written
    out (the path training takes): equal to rounding, padding masked the same way."""
    cfg = make_config("smoke", "rte", seed=2, precision="fp32")
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    model = load_backbone(cfg.backbone, 0.1, seed=2).eval()
    batch = gdata.collate(td.train, np.arange(6), td.pad_id)
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        fast = model(**inputs).last_hidden_state
        with reference_ops():
            plain = model(**inputs).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(plain[real], fast[real], rtol=1e-5, atol=1e-5)
