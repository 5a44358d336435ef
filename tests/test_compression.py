"""Head pruning and BERT-of-Theseus against independent references: pruning against masking, counted
parameters and FLOPs against hand formulas, head importance against a per-example loop and finite
differences, the replacement schedule against its formula and a binomial test, the successor against
a directly built half-depth model."""
import numpy as np
import pytest
import torch
from scipy import stats

from acllib import head_pruning, models, runs, strategies, theseus, train
from acllib.config import make_config
from acllib.models import encoder_layers


def _model(strategy="single", seed=0, **kw):
    cfg = make_config("smoke", "rte", strategy=strategy, precision="fp32", dropout=0.0, seed=seed, **kw)
    return cfg, strategies.build_model(cfg, 2).eval()


def _batch(b=4, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[1, 5:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.tensor([0, 1, 1, 0][:b])}


def _logits(model, batch):
    with torch.no_grad():
        return model(batch, [model.exit_layers[-1]])[0].logits


def test_pruning_equals_masking_and_nothing_pruned_changes_nothing():
    _, model = _model()
    batch = _batch()
    before = _logits(model, batch)
    head_pruning.prune_heads(model.backbone, {})
    torch.testing.assert_close(_logits(model, batch), before, rtol=0, atol=0)
    n_layers, n_heads = len(encoder_layers(model.backbone)), 2
    drop = {0: [1], 2: [0, 1]}  # layer 2 loses every head
    masks = [torch.tensor([0.0 if h in drop.get(li, []) else 1.0 for h in range(n_heads)]) for li in range(n_layers)]
    head_pruning.set_head_mask(model.backbone, masks)
    masked = _logits(model, batch)
    head_pruning.set_head_mask(model.backbone, None)
    assert not torch.allclose(masked, before)
    head_pruning.prune_heads(model.backbone, drop)
    torch.testing.assert_close(_logits(model, batch), masked, rtol=1e-5, atol=1e-6)
    assert head_pruning.kept_heads(model.backbone) == [[0], [0, 1], [], [0, 1]]
    head_pruning.prune_heads(model.backbone, {0: [0]})  # ids stay the original ones after a first cut
    assert head_pruning.kept_heads(model.backbone)[0] == []
    with pytest.raises(ValueError, match="not there"):
        head_pruning.prune_heads(model.backbone, {1: [5]})


def test_pruned_parameters_and_flops_fall_as_computed():
    _, model = _model()
    hidden, d, seq = 32, 16, 128  # tiny: hidden 32, 2 heads of 16
    params0 = sum(p.numel() for p in model.parameters())
    flops0 = models.count_forward_flops(model, seq)
    head_pruning.prune_heads(model.backbone, {0: [0], 1: [0, 1], 3: [1]})
    k = 4
    # per head: query, key, value rows (d x hidden weights, d biases) and d output-projection columns
    assert params0 - sum(p.numel() for p in model.parameters()) == k * (3 * (d * hidden + d) + hidden * d)
    # per head and example: q, k, v and output projections 4 x 2 L hidden d; scores and context 2 x 2 L^2 d
    assert flops0 - models.count_forward_flops(model, seq) == k * (8 * seq * hidden * d + 4 * seq * seq * d)


def test_head_importance_equals_a_per_example_loop_and_finite_differences():
    cfg, model = _model()
    model = model.double()
    td = train.load_task_data(cfg, runs.load_tokenizer(cfg.backbone))
    idx = np.arange(10)
    got = head_pruning.head_importance(model, td.train, "fp32", td.pad_id, idx, batch_size=4, normalize=False)
    layers = len(encoder_layers(model.backbone))
    per_example = []
    for i in idx:  # the plain version: one backward per example
        batch = train.BatchGetter(td.train, td.pad_id)(np.array([i]))
        masks = [torch.ones(2, dtype=torch.float64, requires_grad=True) for _ in range(layers)]
        head_pruning.set_head_mask(model.backbone, masks)
        loss = torch.nn.functional.cross_entropy(model(batch, [model.exit_layers[-1]])[0].logits, batch["labels"])
        per_example.append(torch.stack(torch.autograd.grad(loss, masks)).abs().numpy())
        head_pruning.set_head_mask(model.backbone, None)
    np.testing.assert_allclose(got, np.mean(per_example, axis=0), rtol=1e-7)
    # finite differences for one example and two heads
    batch = train.BatchGetter(td.train, td.pad_id)(np.array([0]))

    def loss_at(li, h, value):
        masks = [torch.ones(2, dtype=torch.float64) for _ in range(layers)]
        masks[li][h] = value
        head_pruning.set_head_mask(model.backbone, masks)
        with torch.no_grad():
            out = torch.nn.functional.cross_entropy(model(batch, [model.exit_layers[-1]])[0].logits, batch["labels"])
        head_pruning.set_head_mask(model.backbone, None)
        return float(out)

    for li, h in [(0, 1), (3, 0)]:
        eps = 1e-5
        fd = abs(loss_at(li, h, 1 + eps) - loss_at(li, h, 1 - eps)) / (2 * eps)
        np.testing.assert_allclose(per_example[0][li, h], fd, rtol=1e-5, atol=1e-9)
    normed = head_pruning.head_importance(model, td.train, "fp32", td.pad_id, idx, batch_size=4)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0)


def test_pruning_order_and_path_points():
    imp = np.array([[0.3, 0.1], [0.1, 0.9]])
    assert head_pruning.pruning_order(imp) == [(0, 1), (1, 0), (0, 0), (1, 1)]
    assert head_pruning.path_points(72) == [0, 14, 29, 43, 58, 72]
    assert head_pruning.path_points(8) == [0, 2, 3, 5, 6, 8]


def test_replacement_rate_follows_the_linear_curriculum():
    # BERT-of-Theseus' curriculum with base rate 0.3 reaching 1 at half the steps (of 100), by hand
    total = 100
    assert (theseus.INITIAL_RATE, theseus.REPLACING_SHARE) == (0.3, 0.5)  # the numbers below assume them
    for t, p in ((0, 0.3), (10, 0.44), (25, 0.65), (40, 0.86), (50, 1.0)):
        assert theseus.replacement_rate(t, total) == pytest.approx(p)
    assert theseus.replacement_rate(99, total) == 1.0
    rng = np.random.default_rng(0)
    draws = np.array([theseus.draw(rng, 0.3, 3) for _ in range(4000)])
    assert stats.binomtest(int(draws.sum()), draws.size, 0.3).pvalue > 1e-3
    assert stats.binomtest(int(draws[:, 2].sum()), len(draws), 0.3).pvalue > 1e-3  # per module too


def test_successor_at_rate_one_runs_only_its_own_layers():
    _, model = _model()
    batch = _batch()
    t = theseus.Theseus(model)
    with torch.no_grad():  # make the successor differ from the predecessor's first layers
        for p in t.successor.parameters():
            p.add_(0.05 * torch.randn_like(p))
    calls = []
    hooks = [layer.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, layer in enumerate(t.predecessor)]
    with torch.no_grad():
        got = t.logits(batch, [True, True])
    assert calls == []
    t.logits(batch, [False, True])
    assert calls == [0, 1]
    for h in hooks:
        h.remove()
    # reference: a half-depth direct model holding the same embeddings, successor layers and exit
    _, direct = _model("direct", depth=2)
    state = {k: v for k, v in model.backbone.state_dict().items() if not k.startswith("encoder.")}
    direct.backbone.load_state_dict(state, strict=False)
    for mine, theirs in zip(encoder_layers(direct.backbone), t.successor):
        mine.load_state_dict(theirs.state_dict())
    direct.exit(2).load_state_dict(model.exit(4).state_dict())
    torch.testing.assert_close(got, _logits(direct, batch), rtol=1e-5, atol=1e-6)
    successor = t.successor_model()
    torch.testing.assert_close(_logits(successor, batch), got, rtol=1e-5, atol=1e-6)
    assert successor.exit_layers == [2] and len(encoder_layers(successor.backbone)) == 2


def test_theseus_trains_the_successor_only_and_its_run(cache, monkeypatch):
    # micro-batches of 4: several forward passes per update, which must share one draw
    cfg = make_config("smoke", "rte", strategy="theseus", seed=1, micro_batch_size=4)
    model = runs.load_model(cfg.stage1())
    assert not model.training  # load_model gives eval mode: compress must switch training on itself
    before = {k: v.clone() for k, v in model.state_dict().items()}
    td = train.load_task_data(cfg.stage1(), runs.load_tokenizer(cfg.backbone))
    events, real_draw, real_logits = [], theseus.draw, theseus.Theseus.logits

    def draw(rng, p, n):
        events.append(("draw", real_draw(rng, p, n)))
        return events[-1][1]

    def logits(self, batch, replaced):
        events.append(("call", list(replaced), all(m.training for m in self.modules())))
        return real_logits(self, batch, replaced)

    monkeypatch.setattr(theseus, "draw", draw)
    monkeypatch.setattr(theseus.Theseus, "logits", logits)
    t, log, schedule, total = theseus.compress(cfg, model, td, progress=False)
    monkeypatch.undo()
    assert (len(td.train), cfg.batch_size, cfg.epochs) == (48, 16, 2)  # the smoke profile's
    assert total == 6 and [s["step"] for s in schedule] == list(range(total))  # 2 epochs x 48 / 16 updates
    draws = [e for e in events if e[0] == "draw"]
    calls = [e for e in events if e[0] == "call"]
    assert len(draws) == total and len(calls) > total
    last = None
    for e in events:  # every forward pass uses its update's draw, in train mode (dropout on)
        if e[0] == "draw":
            last = e[1]
        else:
            assert e[1] == last and e[2]
    # each update's rate is the curriculum's at that step (its values checked by hand above)
    assert [s["p"] for s in schedule] == [theseus.replacement_rate(t_, total) for t_ in range(total)]
    assert schedule[0]["p"] == pytest.approx(0.3) and schedule[-1]["p"] == 1.0
    assert [s["replaced"] for s in schedule] == [sum(d[1]) for d in draws]
    frozen = {k: v for k, v in t.model.state_dict().items() if k in before and not k.startswith("backbone.encoder.")}
    assert frozen and all(torch.equal(v, before[k]) for k, v in frozen.items())  # embeddings, exit
    for i, layer in enumerate(t.predecessor):
        assert all(torch.equal(v, before[f"backbone.encoder.layer.{i}.{k}"]) for k, v in layer.state_dict().items())
    moved = [not torch.equal(v, before[f"backbone.encoder.layer.{i}.{k}"])
             for i, layer in enumerate(t.successor) for k, v in layer.state_dict().items()]
    assert any(moved)
    assert schedule[-1]["p"] == 1.0 and all(s["replaced"] == 2 for s in schedule if s["p"] == 1.0)
    r = runs.run(cfg, progress=False)
    assert set(r.score) == {"2"} and r.extras["stage1_hash"] == cfg.stage1().hash


def test_compression_settings_enter_only_their_runs_hashes(monkeypatch):
    import dataclasses
    from acllib import config
    cfgs = {s: make_config("smoke", "rte", strategy=s, seed=1) for s in ("single", "2st", "headprune", "theseus")}
    hashes = {s: c.hash for s, c in cfgs.items()}
    for strategy, setting, value in (("theseus", "initial_rate", 0.1), ("headprune", "importance_examples", 64)):
        with monkeypatch.context() as m:
            schema = config.STRATEGY_SCHEMAS[strategy]
            m.setitem(config.STRATEGY_SCHEMAS, strategy, dataclasses.replace(schema, settings={**schema.settings, setting: value}))
            now = {s: c.hash for s, c in cfgs.items()}
        assert now[strategy] != hashes[strategy]
        assert {s: h for s, h in now.items() if s != strategy} == {s: h for s, h in hashes.items() if s != strategy}


def test_headprune_run(cache):
    cfg = make_config("smoke", "rte", strategy="headprune", seed=1)
    hp = runs.run(cfg, progress=False)
    ratios = [p["flops_ratio"] for p in hp.extras["path"]]
    assert ratios[0] == 1.0 and all(a > b for a, b in zip(ratios, ratios[1:]))
    # the unpruned point is the CE model it starts from
    assert hp.extras["path"][0]["final"] == runs.load_result(cfg.stage1()).final
    target = hp.extras["target"]
    assert target["flops_ratio"] <= hp.extras["target_flops_ratio"] == pytest.approx(4.7 / 6.6, abs=0.01)
    assert sum(target["heads_per_layer"]) == 8 - target["heads_pruned"]
    # re-prune a fresh copy of the CE model along the stored order: the target is the first model
    # at or under the ratio, and it has the stored FLOPs
    model = runs.load_model(cfg.stage1())
    full = models.count_forward_flops(model, head_pruning.SEQ_LEN)
    k = target["heads_pruned"]
    for layer, head in hp.extras["order"][:k - 1]:
        head_pruning.prune_heads(model.backbone, {layer: [head]})
    assert models.count_forward_flops(model, head_pruning.SEQ_LEN) > hp.extras["target_flops_ratio"] * full
    head_pruning.prune_heads(model.backbone, {hp.extras["order"][k - 1][0]: [hp.extras["order"][k - 1][1]]})
    assert models.count_forward_flops(model, head_pruning.SEQ_LEN) == pytest.approx(target["flops"])
    assert runs.load_result(cfg) is not None
