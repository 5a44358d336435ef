"""The plan's FLOPs against torch's own FLOP counter, and a run's cost against a naive sum."""
import numpy as np
import pytest

from acllib import analysis, cost
from acllib.config import make_config


@pytest.mark.parametrize("exit_kind", ["mha", "linear", "linear-cls"])
@pytest.mark.parametrize("backbone", ["tiny", "tiny-roberta"])
def test_forward_flops_equal_torchs_flop_counter(cache, backbone, exit_kind):
    cfg = make_config("smoke", "rte", backbone=backbone, exit=exit_kind, strategy="jt")  # exits on every layer
    for seq_len in (8, 37):
        counted = analysis.forward_flops(cfg, seq_len)  # torch.utils.flop_counter on the built model
        assert cost.forward_flops(backbone, seq_len, exit_kind=exit_kind, d_e=cfg.d_e) == pytest.approx(counted, rel=1e-9)
        half = analysis.forward_flops(cfg, seq_len, layer=2)
        assert cost.forward_flops(backbone, seq_len, layers=2, exit_kind=exit_kind, d_e=cfg.d_e) == pytest.approx(half, rel=1e-9)


def test_a_single_runs_flops_are_the_naive_sum_over_its_examples(cache):
    cfg = make_config("smoke", "rte", method="ce", eval_each_epoch=True)
    tt = cost.task_tokens(cfg)
    from acllib import train
    from acllib.models import load_tokenizer
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    lengths = td.train.lengths.numpy()
    per = np.mean([cost.forward_flops(cfg.backbone, int(n), d_e=cfg.d_e) for n in lengths])  # naive loop
    pad = 1 / (1 - tt.padding)
    expected = (3 * cfg.epochs * len(lengths) * per + cfg.epochs * tt.n_eval * per) * pad
    assert tt.n_train == len(lengths) == 48 and tt.n_eval == 40
    assert cost.run_flops(cfg)["flops"] == pytest.approx(expected, rel=1e-9)
    assert 0.0 <= tt.padding < 1.0


def test_acl_grad_costs_more_than_ce_and_stage_two_less_than_stage_one(cache):
    ce = cost.run_flops(make_config("smoke", "rte", method="ce"))["flops"]
    acl = cost.run_flops(make_config("smoke", "rte", method="acl"))["flops"]
    two = make_config("smoke", "rte", strategy="2st", method="ce", exit="mha")
    assert acl > ce
    assert cost.run_flops(two)["flops"] < cost.run_flops(two.stage1())["flops"]


def test_the_bench_measures_in_this_machines_precision(monkeypatch):
    """Issue #26, item 3: on a CPU without native bf16 every figure of `make bench` is in fp32 and the
    bf16-against-fp32 rows are skipped with the measured slow-down; with native bf16, bf16 and the rows."""
    from acllib import config
    from acllib.store import REPO
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench
    for native, precision in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(config, "native_bf16", lambda native=native: native)
        monkeypatch.setattr(bench, "native_bf16", lambda native=native: native)
        monkeypatch.setattr(bench, "bf16_slowdown", lambda: 23.4)
        monkeypatch.setattr(config, "_WARNED_BF16", [1.0])  # no warning measurement here
        plan = bench.precision_plan()
        assert plan["precision"] == precision and plan["bf16_rows"] is native
        assert ("23x slower" in plan["why"] and plan["why"].startswith("skipped")) if not native else plan["why"] == ""
