"""Early-exit inference: layers past an example's exit are not run, the rules decide as written,
and with rules that never fire the predictions are the full model's."""
import math

import numpy as np
import pytest
import torch

from acllib import cost
from acllib.early_exit import (ExitRule, all_exit_logits, early_exit_flops, early_exit_forward,
                               evaluate_rules, flop_table, full_model_flops, simulate)
from acllib.models import MultiExitModel, encoder_layers, load_backbone


def _model(seed=0, exit_kind="mha"):
    torch.manual_seed(seed)
    backbone = load_backbone("tiny", dropout=0.1, seed=seed)
    return MultiExitModel(backbone, 3, [1, 2, 3, 4], exit_kind, 16, 2, 0.1).eval()


def _batch(n=12, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (n, length), generator=g)
    lengths = torch.randint(3, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _count_layer_calls(model):
    calls = {i: [] for i in range(1, model.num_layers + 1)}
    for i, layer in enumerate(encoder_layers(model.backbone), start=1):
        layer.register_forward_hook(lambda mod, args, out, i=i: calls[i].append(args[0].shape[0]))
    return calls


def test_layers_past_the_exit_are_not_run():
    model = _model()
    calls = _count_layer_calls(model)
    preds, taken, _ = early_exit_forward(model, _batch(), ExitRule("max_prob", 0.0))  # fires at once
    assert taken.tolist() == [1] * 12
    assert calls[1] == [12] and all(calls[i] == [] for i in (2, 3, 4))


def test_exited_examples_leave_the_batch_and_match_the_simulation():
    """Per example: the real loop takes the exit the rule picks from the full pass's logits, runs
    each layer only for the examples still in, and predicts that exit's argmax."""
    model = _model(seed=1)
    batch = _batch(n=40, seed=2)
    with torch.no_grad():
        full = [o.logits for o in model(batch)]
    # thresholds at quantiles of what the exits give, so that examples leave at different layers
    maxp = torch.cat([lg.softmax(-1).max(-1).values for lg in full[:3]])
    p = full[1].softmax(-1)
    entropy = -(p * p.log()).sum(-1) / math.log(3)
    rules = (ExitRule("entropy", float(entropy.quantile(0.5))), ExitRule("max_prob", float(maxp.quantile(0.6))),
             ExitRule("patience", 1))
    spread = set()
    for rule in rules:
        calls = _count_layer_calls(model)
        preds, taken, logits = early_exit_forward(model, batch, rule)
        sim_preds, sim_taken = simulate(full, rule)
        assert np.array_equal(taken.numpy(), np.asarray(model.exit_layers)[sim_taken])
        assert np.array_equal(preds.numpy(), sim_preds)
        # the exit's logits themselves: padding masked and dropped columns change nothing
        torch.testing.assert_close(logits, torch.stack([full[j][i] for i, j in enumerate(sim_taken)]),
                                   rtol=1e-4, atol=1e-5)
        # layer m ran for exactly the examples that had not exited below it
        for m in range(1, 5):
            still_in = int((taken >= m).sum())
            assert calls[m] == ([still_in] if still_in else [])
        assert calls[1] == [40]
        spread.add(len(set(taken.tolist())))
        for layer in encoder_layers(model.backbone):
            layer._forward_hooks.clear()
    assert max(spread) >= 3, "the test needs rules under which examples exit at different layers"


@pytest.mark.parametrize("rule", [ExitRule("entropy", 0.0), ExitRule("max_prob", 1.0 + 1e-9),
                                  ExitRule("patience", 10)])
def test_rules_that_never_fire_give_the_full_models_predictions(rule):
    model = _model(seed=3, exit_kind="linear")
    batch = _batch(n=16, seed=4)
    preds, taken, logits = early_exit_forward(model, batch, rule)
    with torch.no_grad():
        ref = model(batch, [4])[0].logits
    assert taken.tolist() == [4] * 16
    assert torch.equal(preds, ref.argmax(-1))
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-5)


def test_rules_against_hand_computed_cases():
    logits = [torch.tensor([[4.0, 0.0], [0.1, 0.0], [0.0, 3.0]]),
              torch.tensor([[3.0, 0.0], [0.0, 0.2], [0.0, 3.0]]),
              torch.tensor([[0.0, 1.0], [0.0, 5.0], [0.0, 3.0]])]
    # max_prob 0.9: softmax(4, 0) = 0.982 fires; (0.1, 0) = 0.525 no; (0, 3) = 0.953 fires
    preds, taken = simulate(logits, ExitRule("max_prob", 0.9))
    assert preds.tolist() == [0, 1, 1] and taken.tolist() == [0, 2, 0]
    # entropy: H(0.982, 0.018)/ln2 = 0.130; H(0.953, 0.047)/ln2 = 0.273
    assert simulate(logits, ExitRule("entropy", 0.2))[1].tolist() == [0, 2, 2]
    # patience 1: exit at the first exit whose argmax equals the previous exit's
    preds, taken = simulate(logits, ExitRule("patience", 1))
    assert taken.tolist() == [1, 2, 1] and preds.tolist() == [0, 1, 1]


@pytest.mark.parametrize("kind,threshold", [("entropy", 1.5), ("max_prob", -0.1), ("patience", 0),
                                            ("patience", 1.5), ("confidence", 0.5)])
def test_bad_rules_are_rejected_with_one_line(kind, threshold):
    with pytest.raises(ValueError) as err:
        ExitRule(kind, threshold)
    assert "\n" not in str(err.value) and (repr(threshold) in str(err.value) or repr(kind) in str(err.value))


def test_flops_count_layers_and_exits():
    """The table torch's FLOP counter measures on the model equals the analytic counts (cost.layer_flops,
    cost.exit_flops: matrix products by hand), and an example's cost is its layers and the exits it
    passed, by hand: taken exits 1, 4, 2 at lengths 4, 7, 7."""
    model = _model(seed=5)
    hidden, inter = model.backbone.config.hidden_size, model.backbone.config.intermediate_size
    lengths = np.array([4, 7, 7])
    table = flop_table(model, lengths)
    for n in (4, 7):  # 3 labels, d_e 16
        assert table[n] == (cost.layer_flops(hidden, inter, n), cost.exit_flops("mha", hidden, n, 3, 16))
    (l4, e4), (l7, e7) = table[4], table[7]
    flops = early_exit_flops(model, table, lengths, np.array([0, 3, 1]))
    assert flops.tolist() == [1 * l4 + 1 * e4, 4 * l7 + 4 * e7, 2 * l7 + 2 * e7]
    assert full_model_flops(model, table, lengths).tolist() == [4 * l4 + e4, 4 * l7 + e7, 4 * l7 + e7]


def test_evaluate_rules_on_a_smoke_run(cache):
    from acllib import make_config, strategies, train
    from acllib.models import load_tokenizer
    cfg = make_config("smoke", "rte", strategy="jt", exit="linear", precision="fp32")
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    model = strategies.build_model(cfg, 2).eval()
    dev = next(iter(td.evals.values()))
    rows = evaluate_rules(model, dev, "rte", "fp32", td.pad_id, grid={"max_prob": (1.0 + 1e-9, 0.0)},
                          latency_examples=8, batch_size=4, repeats=1)
    full, never, always = rows
    assert full["rule"] == "none" and never["score"] == full["score"]
    assert never["mean_exit_layer"] == model.num_layers and always["mean_exit_layer"] == 1
    assert always["flops_fraction"] < 0.5 and never["real_equals_simulated"] == 1.0
    assert always["real_equals_simulated"] == 1.0
    assert all(r["latency_b1_ms"] > 0 and r["latency_batch_ms"] > 0 for r in rows)
    logits = all_exit_logits(model, dev, "fp32", td.pad_id)
    assert len(logits) == 4 and logits[0].shape == (len(dev), 2)


def test_evaluate_run_measures_once_then_reads_the_cache(cache, monkeypatch):
    from acllib import early_exit, make_config, runs
    cfg = make_config("smoke", "rte", strategy="jt", exit="linear", seed=4)
    runs.run(cfg, progress=False)
    kwargs = dict(grid={"max_prob": (0.9,)}, latency_examples=4, batch_size=2, repeats=1)
    first = early_exit.evaluate_run(cfg, **kwargs)
    def measure(*a, **k):
        raise RuntimeError("measured again")
    monkeypatch.setattr(early_exit, "evaluate_rules", measure)
    import pandas as pd  # NaN-aware: the full model's row has no threshold
    pd.testing.assert_frame_equal(pd.DataFrame(early_exit.evaluate_run(cfg, **kwargs)), pd.DataFrame(first),
                                  check_like=True)
    with pytest.raises(RuntimeError, match="measured again"):
        early_exit.evaluate_run(cfg, **{**kwargs, "repeats": 2})  # other settings: a new measurement


def test_time_settings_interleaves_and_pairs_repeats(monkeypatch):
    from acllib import early_exit
    order = []
    clock = iter(range(10_000))
    monkeypatch.setattr(early_exit.time, "perf_counter", lambda: float(next(clock)))
    settings = {k: (lambda b, k=k: order.append(k)) for k in ("a", "b", "c")}
    batches = [{"input_ids": np.zeros((2, 3))}]
    times = early_exit.time_settings(settings, batches, repeats=4, seed=1)
    assert order[:3] == ["a", "b", "c"]  # one warm-up each
    rounds = [order[3 + 3 * r: 6 + 3 * r] for r in range(4)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # every repeat times every setting once
    assert len({tuple(r) for r in rounds}) > 1  # in fresh random orders
    assert all(len(v) == 4 and all(t == 0.5 for t in v) for v in times.values())  # 1 tick over 2 examples


def test_timing_summary_pairs_speed_ups_by_repeat():
    from acllib import early_exit
    times = {"none": [2.0, 4.0, 2.0, 4.0, 2.0], "fast": [1.0, 2.0, 1.0, 2.0, 1.0]}  # a slow spell hits both
    s = early_exit.timing_summary(times, "none")
    assert s["fast"]["speedup"] == 2.0 and s["fast"]["speedup_lo"] == s["fast"]["speedup_hi"] == 2.0
    assert s["none"]["speedup"] == 1.0 and s["none"]["ms"] == 2000.0
