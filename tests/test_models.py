"""Exits and the multi-exit model against independent references (plain nn.MultiheadAttention,
the Hugging Face backbone's own hidden states)."""
import numpy as np
import pytest
import torch
from torch import nn

from acllib.models import LinearExit, MHAExit, MultiExitModel, load_backbone


def _batch(b=3, length=7, vocab=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_mha_exit_cls_only_attention_equals_full_self_attention():
    torch.manual_seed(0)
    ex = MHAExit(hidden_size=24, num_labels=3, d_e=16, heads=4, dropout=0.1).eval()
    hidden = torch.randn(3, 7, 24)
    mask = _batch()["attention_mask"]
    h, logits = ex(hidden, mask)
    # Reference: full self-attention over every position, then take [CLS], tanh, then h W^T.
    x = torch.tanh(ex.down(hidden))
    full, _ = ex.attn(x, x, x, key_padding_mask=mask == 0)
    h_ref = torch.tanh(full[:, 0])
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, h_ref @ ex.classifier.weight.T, rtol=1e-5, atol=1e-6)
    assert ex.label_embeddings.shape == (3, 16)


def test_mha_exit_ignores_padding():
    torch.manual_seed(0)
    ex = MHAExit(24, 2, 16, 4, 0.0).eval()
    hidden = torch.randn(3, 7, 24)
    mask = _batch()["attention_mask"]
    changed = hidden.clone()
    changed[mask == 0] = 100.0  # garbage in padded positions
    torch.testing.assert_close(ex(hidden, mask)[0], ex(changed, mask)[0])


def test_linear_exits_pool_as_stated():
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 24)
    mask = torch.ones(3, 7)
    mask[1, 4:] = 0
    hidden_garbage = hidden.clone()
    hidden_garbage[mask == 0] = 100.0
    pooler = {"weight": torch.randn(24, 24), "bias": torch.randn(24)}
    for pooling in ("pooler", "cls", "mean"):
        ex = LinearExit(24, 2, dropout=0.0, pooling=pooling, pooler_state=pooler).eval()
        h, logits = ex(hidden, mask)
        if pooling == "pooler":  # PABEE: tanh(W [CLS] + b), W and b the pre-trained pooler's
            want = torch.tanh(hidden[:, 0] @ pooler["weight"].T + pooler["bias"])
        elif pooling == "cls":
            want = hidden[:, 0]
        else:  # mean over the real tokens, by a loop
            want = torch.stack([hidden[i, mask[i].bool()].mean(0) for i in range(3)])
        torch.testing.assert_close(h, want)
        torch.testing.assert_close(logits, want @ ex.classifier.weight.T + ex.classifier.bias)
        torch.testing.assert_close(ex(hidden_garbage, mask)[0], h)  # padding never read
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        LinearExit(24, 2, pooling="max")


def test_linear_exits_start_from_the_pretrained_pooler():
    from safetensors import safe_open
    from acllib.models import packaged_minilm_dir
    backbone = load_backbone("minilm", dropout=0.0)
    assert backbone.pooler is None and not any("pooler" in k for k in backbone.state_dict())
    model = MultiExitModel(backbone, 2, [1, 6], "linear")
    with safe_open(str(packaged_minilm_dir() / "model.safetensors"), "pt") as f:
        weight = f.get_tensor("pooler.dense.weight")
    for m in (1, 6):
        assert torch.equal(model.exit(m).pooler.weight.detach(), weight)
    model.exit(1).pooler.weight.data.add_(1.0)  # each exit owns its copy
    assert torch.equal(model.exit(6).pooler.weight.detach(), weight)


def test_exits_read_the_backbones_hidden_states():
    backbone = load_backbone("tiny", dropout=0.0, seed=3)
    model = MultiExitModel(backbone, 2, [1, 2, 3, 4], "mha", 16, 2, 0.0).eval()
    batch = _batch()
    with torch.no_grad():
        ref = backbone(**batch, output_hidden_states=True).hidden_states
        outs = model(batch)
        for o in outs:
            torch.testing.assert_close(o.rep, model.exit(o.layer)(ref[o.layer], batch["attention_mask"])[0])
    assert [o.layer for o in outs] == [1, 2, 3, 4]


def test_direct_model_keeps_first_layers_only():
    full = load_backbone("tiny", dropout=0.0, seed=3).eval()
    with torch.no_grad():
        ref = full(**_batch(), output_hidden_states=True).hidden_states
    model = MultiExitModel(load_backbone("tiny", dropout=0.0, seed=3), 2, [2], depth=2).eval()
    with torch.no_grad():
        hs = model.hidden_states(_batch())
    assert model.num_layers == 2 and len(hs) == 3
    torch.testing.assert_close(hs[2], ref[2])


def test_parameter_report_counts():
    model = MultiExitModel(load_backbone("tiny", 0.1, 0), 2, [1, 2, 3, 4], "mha", 16, 2)
    rep = model.parameter_report()
    per_exit = sum(p.numel() for p in model.exit(1).parameters())
    # down 32*16+16, attention in/out 3*16*16+3*16 + 16*16+16, classifier 16*2 (no bias)
    assert per_exit == (32 * 16 + 16) + (3 * 16 * 16 + 48) + (16 * 16 + 16) + 32
    assert rep["params_per_exit"] == per_exit and rep["exit_params_total"] == 4 * per_exit
    # by hand, tiny BERT (vocabulary 30522, 128 positions, 2 segments, hidden 32, feed-forward 64, 4
    # layers, its pooler detached): embeddings 30522*32 + 128*32 + 2*32 + LayerNorm 2*32 = 980928;
    # a layer 4*(32*32+32) + 64 + (32*64+64) + (64*32+32) + 64 = 8544
    assert rep["backbone_params"] == 980928 + 4 * 8544


def test_unknown_exit_is_rejected():
    import pytest
    with pytest.raises(ValueError, match="unknown exit 'conv'.*mha, linear"):
        MultiExitModel(load_backbone("tiny", 0.1, 0), 2, [4], exit_kind="conv")


def test_fast_dropout_matches_inverted_dropout_statistics():
    from acllib.models import fast_dropout
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = fast_dropout(x, 0.1, True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.005  # keep rate 1 - p (sd ~0.0007)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    torch.testing.assert_close(fast_dropout(x, 0.1, False), x)  # identity when not training
    # gradient flows through the kept units only, scaled like the output
    x = torch.randn(1000, requires_grad=True)
    y = fast_dropout(x, 0.5, True)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y.detach() != 0).float() * 2.0)


def test_backbone_dropout_is_fast_everywhere():
    from acllib.models import ATTENTION, FastDropout
    backbone = load_backbone("tiny", dropout=0.1, seed=0)
    assert not [m for m in backbone.modules() if type(m) is nn.Dropout]
    assert any(isinstance(m, FastDropout) for m in backbone.modules())
    assert backbone.config._attn_implementation == ATTENTION


def test_training_attention_path_equals_sdpa_with_padding(monkeypatch):
    """The written-out training attention (taken whenever dropout > 0) against the evaluation path
    (transformers' SDPA) and against the unpadded sequences: with dropout on but every unit kept
    (the masks replaced by ones), every non-padded hidden state must agree."""
    from acllib import models
    torch.manual_seed(0)
    backbone = load_backbone("tiny", dropout=0.0, seed=1)
    monkeypatch.setattr(models, "dropout_mask", lambda x, p: torch.ones_like(x))
    for m in backbone.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.1  # the training branch runs; the patched masks keep every unit
    batch = _batch()
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        train_out = backbone.train()(**batch).last_hidden_state
        eval_out = backbone.eval()(**batch).last_hidden_state
        torch.testing.assert_close(train_out[mask], eval_out[mask], rtol=1e-4, atol=1e-5)
        n = int(mask[2].sum())  # example 2 alone, without padding
        alone = backbone.train()(**{k: v[2:, :n] for k, v in batch.items()}).last_hidden_state
        torch.testing.assert_close(train_out[2, :n], alone[0], rtol=1e-4, atol=1e-5)


def test_stacked_mha_exits_equal_each_exit_alone():
    """Stage 2's batched exits against calling each MHAExit on its own layer, in values and in the
    gradients of every exit's parameters (dropout off; with padding)."""
    from acllib.models import exits_forward, mha_exits_stacked
    torch.manual_seed(0)
    exits = [MHAExit(24, 3, 16, 4, 0.0) for _ in range(3)]
    hidden = torch.randn(3, 3, 7, 24)
    mask = _batch()["attention_mask"]
    stacked = list(zip(*mha_exits_stacked(exits, hidden, mask)))  # [(h, logits)] per exit
    alone = [ex(hidden[e], mask) for e, ex in enumerate(exits)]
    for (h, logits), (h_ref, logits_ref) in zip(stacked, alone):
        torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits, logits_ref, rtol=1e-5, atol=1e-6)
    weights = torch.randn(3, 3, 3)
    grads = []
    for outs in (stacked, alone):
        loss = sum((w * lg).sum() + h.square().sum() for w, (h, lg) in zip(weights, outs))
        grads.append(torch.autograd.grad(loss, [p for ex in exits for p in ex.parameters()]))
    for g, g_ref in zip(*grads):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    h, logits = exits_forward(exits, hidden, mask)
    assert h.shape == (3, 3, 16) and logits.shape == (3, 3, 3)
    # under bf16 autocast the stacked path stays within bf16 rounding of the per-exit one
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lo = mha_exits_stacked(exits, hidden, mask)[1][2].float()
    torch.testing.assert_close(lo, alone[2][1], rtol=0.05, atol=0.05)


def _cls_pool_inputs(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    E, B, L, d, heads = 2, 3, 5, 8, 2

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_()

    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 3:] = 0
    mask[2, 1:] = 0  # [CLS] alone
    return rand(E, B, L, d), rand(E, d, d), rand(E, d), rand(E, heads, d // heads, d), mask


def _cls_pool_reference(x, w_q, b_q, w_k, mask, keep):
    """The same function in plain autograd operations: query from [CLS], per-head scores, dropout, pool."""
    E, B, L, d = x.shape
    heads, dh = w_k.shape[1], w_k.shape[2]
    q = (x[:, :, 0] @ w_q.transpose(1, 2) + b_q[:, None]).view(E, B, heads, dh)
    keys = torch.einsum("ehkd,ebld->ebhlk", w_k, x)  # x projected to keys, head by head
    scores = torch.einsum("ebhk,ebhlk->ebhl", q, keys) / dh ** 0.5
    probs = scores.masked_fill((mask == 0)[None, :, None, :], float("-inf")).softmax(-1)
    if keep is not None:
        probs = probs * keep
    return torch.einsum("ebhl,ebld->ebhd", probs, x)


def test_cls_attention_pool_backward_against_autograd_and_finite_differences():
    from acllib.models import ClsAttentionPool, dropout_mask
    inputs = _cls_pool_inputs()
    # finite differences, no dropout
    assert torch.autograd.gradcheck(lambda *a: ClsAttentionPool.apply(*a, inputs[-1], 0.0, False), inputs[:-1])
    # with dropout: the reference draws the same mask from the same random state
    x, w_q, b_q, w_k, mask = inputs
    torch.manual_seed(5)
    out = ClsAttentionPool.apply(x, w_q, b_q, w_k, mask, 0.3, True)
    torch.manual_seed(5)
    keep = dropout_mask(torch.empty(2, 3, 2, 5, dtype=torch.float64), 0.3)
    assert 0 < int((keep == 0).sum()) < keep.numel()
    ref = _cls_pool_reference(x, w_q, b_q, w_k, mask, keep)
    torch.testing.assert_close(out, ref)
    weight = torch.randn_like(out)
    got = torch.autograd.grad((weight * out).sum(), inputs[:-1])
    want = torch.autograd.grad((weight * ref).sum(), inputs[:-1])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_a_backbone_is_a_fresh_copy_of_the_checkpoint():
    """load_backbone copies a template loaded once per process: the copy equals a plain load (with
    the pre-trained pooler kept apart), and training one copy leaves the next untouched."""
    from acllib import models
    path = str(models.packaged_minilm_dir())
    plain = models._load_pretrained(path, 0.1)
    first = load_backbone("minilm", dropout=0.1)
    ref = plain.state_dict()
    assert first.state_dict().keys() == ref.keys()
    assert all(torch.equal(v, ref[k]) for k, v in first.state_dict().items())
    assert all(torch.equal(v, plain.pretrained_pooler[k]) for k, v in first.pretrained_pooler.items())
    assert [type(m).__name__ for m in first.modules()] == [type(m).__name__ for m in plain.modules()]  # FastDropout in both
    next(first.parameters()).data.add_(1.0)
    first.pretrained_pooler["weight"].add_(1.0)
    second = load_backbone("minilm", dropout=0.1)
    assert all(torch.equal(v, ref[k]) for k, v in second.state_dict().items())
    assert torch.equal(second.pretrained_pooler["weight"], plain.pretrained_pooler["weight"])
    other = load_backbone("minilm", dropout=0.0)  # the dropout is part of the template's key
    assert all(m.p == 0.0 for m in other.modules() if hasattr(m, "p") and isinstance(m.p, float))


def test_the_shared_tokenizer_encodes_as_a_fresh_one():
    from transformers import AutoTokenizer
    from acllib import models
    shared = models.load_tokenizer("minilm")
    assert models.load_tokenizer("minilm") is shared
    fresh = AutoTokenizer.from_pretrained(str(models.packaged_minilm_dir()))
    a = ["a short premise", "a much longer premise that needs to be cut somewhere along the way"]
    b = ["its hypothesis", "another hypothesis"]
    for kwargs in (dict(truncation=True, max_length=8), dict(truncation=True, max_length=64), dict(padding=True)):
        assert shared(a, b, **kwargs)["input_ids"] == fresh(a, b, **kwargs)["input_ids"]
        assert shared(a, **kwargs)["input_ids"] == fresh(a, **kwargs)["input_ids"]


def test_cls_attention_pool_backward_in_bf16_is_as_accurate_as_autograds():
    """Issue #25: the hand-written backward was checked in float64 only. In bf16 (the fast kind's
    precision) its gradients stay as close to the exact (float64) ones as plain autograd's on the same
    bf16 operations are: within 2x autograd's own error, and a few percent at most."""
    from acllib.models import ClsAttentionPool
    for seed in range(3):
        exact_in = [t.detach().clone().requires_grad_(t.requires_grad) for t in _cls_pool_inputs(torch.float64, seed)]
        low_in = [t.detach().to(torch.bfloat16).requires_grad_() if t.is_floating_point() else t for t in exact_in]
        exact_in = [t.detach().to(torch.bfloat16).double().requires_grad_() if t.is_floating_point() else t
                    for t in exact_in]  # the exact answer for the same (bf16-rounded) inputs
        weight = torch.randn(2, 3, 2, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        exact = torch.autograd.grad((weight * _cls_pool_reference(*exact_in, None)).sum(), exact_in[:-1])
        hand = torch.autograd.grad((weight.bfloat16() * ClsAttentionPool.apply(*low_in, 0.0, False)).sum(), low_in[:-1])
        plain = torch.autograd.grad((weight.bfloat16() * _cls_pool_reference(*low_in, None)).sum(), low_in[:-1])
        for e, h, p in zip(exact, hand, plain):
            err_hand = ((h.double() - e).norm() / e.norm()).item()
            err_plain = ((p.double() - e).norm() / e.norm()).item()
            assert err_hand <= max(2 * err_plain, 0.01) and err_hand < 0.05, (err_hand, err_plain)


def test_dropout_mask_units_are_independent_and_tiny_rates_refused():
    """Issue #25: dropout_mask takes four 16-bit slices of each 64-bit draw. Neighbouring units (the
    same draw) and units four apart (the next draw) are independent: chi-square tests of their 2x2
    tables (scipy) do not reject; the keep rate is 1 - p. A rate that 16 bits cannot represent is
    refused rather than silently meaning no dropout."""
    from scipy.stats import chi2_contingency
    from acllib.models import dropout_mask
    torch.manual_seed(3)
    keep = (dropout_mask(torch.empty(400_000), 0.3) != 0).numpy()
    assert abs(keep.mean() - 0.7) < 0.005
    units = keep[: len(keep) // 8 * 8].reshape(-1, 8)  # rows: two draws, units 0-3 and 4-7
    for i, j in ((0, 1), (0, 3), (1, 2), (3, 4), (0, 4), (2, 7)):  # within one draw, across two
        a, b = units[:, i], units[:, j]
        table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
        assert chi2_contingency(table).pvalue > 0.001, (i, j, table)
    with pytest.raises(ValueError, match="1e-06.*2\\^-17"):
        dropout_mask(torch.empty(10), 1e-6)
