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


def test_a_single_runs_flops_are_the_naive_sum_over_its_padded_batches(cache):
    """The plan prices a run from its data's mean length and padding share; a simulation of the run
    itself (each epoch's batches as train.fit draws them, each micro-batch padded to its longest
    example, forward + backward = 3 forwards; every evaluation batch padded the same way) sums the
    FLOPs batch by batch. The two agree within 2% (the plan's padding is an average)."""
    from acllib import data as gdata
    from acllib import train
    from acllib.models import load_tokenizer
    cfg = make_config("smoke", "rte", method="ce", eval_each_epoch=True)
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    lengths, dev = td.train.lengths.numpy(), td.evals["validation"].lengths.numpy()
    assert (len(lengths), len(dev)) == (48, 40)
    f = lambda n: cost.forward_flops(cfg.backbone, int(n), d_e=cfg.d_e)  # one example padded to n tokens
    rng = np.random.default_rng(cfg.seed)
    simulated = 0.0
    for _ in range(cfg.epochs):
        for idx in gdata.train_batches(lengths, train.update_batch_size(cfg, len(lengths)), rng, cfg.batches, cfg.batch_window):
            for i in range(0, len(idx), cfg.micro_batch_size):
                chunk = idx[i:i + cfg.micro_batch_size]
                simulated += 3 * len(chunk) * f(lengths[chunk].max())
        for idx in gdata.length_grouped_batches(dev, train.EVAL_BATCH, None):  # eval after every epoch
            simulated += len(idx) * f(dev[idx].max())
    assert cost.run_flops(cfg)["flops"] == pytest.approx(simulated, rel=0.02)  # 0.1% apart here


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
