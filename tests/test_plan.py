"""The book's runs are defined once (acllib.plan): their shape per profile, their deduplication,
and `python -m acllib plan`. tests/test_book.py holds the smoke book's runs against this plan."""
import math

import pytest

from acllib import plan
from acllib.__main__ import main
from acllib.config import LAYER_CURVE_METHODS, make_config


def test_chapters_runs_at_smoke():
    # the smoke profile: RTE and MRPC, seeds 1 and 2 (the layer curves' variants on seed 1 only)
    p = plan.table1("smoke")
    assert len(p.runs) == 28  # 7 rows (5 of the paper's + head pruning + Theseus) x 2 tasks x 2 seeds
    compress = [c for c in p.configs() if c.strategy in ("headprune", "theseus")]
    ce = {c.hash for k, c in p.runs.items() if k[1] == "CE"}
    assert len(compress) == 8 and {c.stage1().hash for c in compress} == ce  # each compresses its CE run
    lc = plan.layer_curves("smoke")
    assert len(lc.part("curve")) == 32  # 8 methods x 2 tasks x 2 seeds
    assert len(lc.part("variant")) == 2  # 2 linear-exit variants x seed 1
    t2 = plan.table2("smoke")
    assert len(t2.part("row")) == 24  # Table 2's 6 rows x 2 tasks x 2 seeds
    gates = t2.part("gate")
    assert len(gates) == 24  # 2 stages x 3 gates x 2 tasks x 2 seeds
    # under Eq. 4 they are Table 1's ACL runs and Table 2's ACL row; a random gate's pair is one of them
    eq4 = {c.hash for k, c in gates.items() if k[1] == "angle"}
    assert eq4 == {c.hash for k, c in p.runs.items() if k[1] == "ACL"} | {c.hash for k, c in t2.part("row").items() if k[0] == "ACL"}
    assert {c.gate_pair().hash for k, c in gates.items() if k[1] == "random"} == eq4
    t3 = plan.table3("smoke", lambdas=[0.1, 1], convex_lambdas=[1])
    assert t3.extra["readings"] == {"additive": [0.1, 1.0], "convex": [1.0]}
    assert {k[0] for k in t3.part("sweep")} == {"additive", "convex"}


def test_a_run_many_chapters_share_counts_once():
    whole = plan.book_plan("smoke")
    hashes = [c.hash for cfgs in whole.values() for c in cfgs]
    assert len(hashes) == len(set(hashes))
    every = {c.hash for f in plan.CHAPTERS.values() for c in plan.with_stage1(f("smoke").configs())}
    assert set(hashes) == every
    # the early-exit chapter reuses the layer curves' models: it adds no run of its own
    assert whole["07_early_exit"] == []
    # a 2st run's stage 1 is planned before it
    for cfgs in whole.values():
        seen = set()
        for c in cfgs:
            if c.strategy in ("2st", "headprune", "theseus"):
                assert c.stage1().hash in seen or any(c.stage1().hash in {x.hash for x in o} for o in whole.values())
            if c.gate == "random":  # and a random gate's Eq. 4 pair
                assert c.gate_pair().hash in seen or any(c.gate_pair().hash in {x.hash for x in o} for o in whole.values())
            seen.add(c.hash)


def test_paper_profile_runs_the_papers_backbones_where_the_paper_does():
    t1 = plan.table1("paper")
    assert t1.backbones == ["bert-base-uncased", "roberta-base"]
    assert {c.backbone for c in t1.configs()} == set(t1.backbones)
    lc = plan.layer_curves("paper")
    assert sorted(t for b, t in lc.panels if b == "roberta-base") == sorted(["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2"])
    assert sorted(t for b, t in lc.panels if b == "bert-base-uncased") == ["mrpc", "rte"]
    for f in (plan.table2, plan.table3, plan.tsne):
        assert {c.backbone for c in f("paper").configs()} == {"roberta-base"}
    assert plan.table3("paper").tasks == ["rte"] and plan.tsne("paper").tasks == ["mrpc"]
    assert {c.backbone for c in plan.early_exit("paper").configs()} == {"bert-base-uncased"}
    with pytest.raises(ValueError, match="draws one backbone"):
        plan.table2("paper", backbones=["bert-base-uncased", "roberta-base"])


def test_plan_command_prices_the_smoke_book(cache, capsys):
    assert main(["plan", "--profile", "smoke", "--step-seconds", "0.5", "--runs"]) == 0
    out = capsys.readouterr().out
    n = sum(len(c) for c in plan.book_plan("smoke").values())
    total = next(line for line in out.splitlines() if line.strip().startswith("total"))
    assert f" {n} " in f" {total} "
    import re
    assert len(re.findall(r"  [0-9a-f]{16}  (?:done|to run)  ", out)) == n
    assert "GPU-hours: V100-16GB" in out and "assumed 30% utilisation" in out


def test_plan_command_names_bad_input(cache, capsys):
    assert main(["plan", "--profile", "smoke", "--step-seconds", "0.5", "--gpu-utilisation", "2"]) == 2
    assert "--gpu-utilisation must lie in (0, 1], got 2.0" in capsys.readouterr().err
    assert main(["plan", "--profile", "smoke", "--chapters", "99"]) == 2
    assert "unknown chapter '99'" in capsys.readouterr().err


def test_cost_table_splits_chapters_by_backbone(monkeypatch):
    from acllib import cost
    cfgs = {"02_table1": [make_config("smoke", "rte", seed=s, backbone=b) for b in ("tiny", "tiny-roberta") for s in (1, 2)]
            + [make_config("smoke", "rte", seed=3, backbone="tiny")],
            "07_early_exit": []}
    monkeypatch.setattr(plan, "book_plan", lambda profile, chapters=None: cfgs)
    table, _ = plan.cost_table("smoke", flops_per_s=1e12)
    rows = {(r.chapter, r.backbone): r for r in table.itertuples()}
    assert rows["02_table1", "tiny"].runs == 3 and rows["02_table1", "tiny-roberta"].runs == 2
    assert rows["07_early_exit", ""].runs == 0
    assert rows["total", "tiny"].runs == 3 and rows["total", "all"].runs == 5
    flops = {b: sum(cost.run_flops(c)["flops"] for c in cfgs["02_table1"] if c.backbone == b) / 1e15 for b in ("tiny", "tiny-roberta")}
    for b, f in flops.items():
        assert rows["02_table1", b].PFLOPs == pytest.approx(f) and rows["total", b].PFLOPs == pytest.approx(f)
    assert rows["total", "all"].PFLOPs == pytest.approx(sum(flops.values()))


def test_a_2st_groups_frozen_features_cost_once(monkeypatch):
    """Three 2st runs from one stage 1 share one pass of the frozen backbone: the plan's table (and
    the sweep's bar, which counts the same set_flops) add the features once, each run's own
    run_flops counts them whole."""
    from acllib import cost
    group = [make_config("smoke", "rte", seed=1, strategy="2st", stage2_epochs=e) for e in (1, 2, 3)]
    other = make_config("smoke", "rte", seed=2, strategy="2st")  # another stage 1: features of its own
    assert len({c.stage1().hash for c in group}) == 1 and other.stage1().hash != group[0].stage1().hash
    own = [cost.run_flops(c) for c in group + [other]]
    assert own[0]["features"] > 0 and own[0]["features"] == own[1]["features"] == own[2]["features"]
    by_hand = sum(x["flops"] for x in own) - 2 * own[0]["features"]
    got = cost.set_flops(group + [other])
    assert sum(x["flops"] for x in got.values()) == pytest.approx(by_hand)
    assert got[other.hash]["features"] == own[3]["features"]
    monkeypatch.setattr(plan, "book_plan", lambda profile, chapters=None: {"04_table2_ablation": group + [other]})
    table, _ = plan.cost_table("smoke", flops_per_s=1e12)
    assert table[table.chapter == "total"].PFLOPs.iloc[-1] == pytest.approx(by_hand / 1e15)


def test_the_cpu_profile_runs_some_methods_and_tasks_on_fewer_seeds():
    """The linear-exit methods (JT, ALT, 2ST-linear) on 2 seeds, the linear variants on 2, the pilot's
    RTE on 3; every other method on all; and early exiting asks for exactly the layer curves' models."""
    lc = plan.layer_curves("cpu")
    seeds_of = {}
    for (m, b, t, s) in lc.part("curve"):
        seeds_of.setdefault(m, []).append(s)
    assert seeds_of["JT"] == seeds_of["ALT"] == seeds_of["2ST-linear"] == [1, 2]
    assert all(seeds_of[m] == lc.seeds == list(range(1, 9)) for m in LAYER_CURVE_METHODS if m not in ("JT", "ALT", "2ST-linear"))
    assert lc.extra["variant_seeds"] == [1, 2]
    assert plan.method_seeds("cpu", "JT", [3, 5, 6]) == [3]  # a subset of the seeds asked for
    assert plan.method_seeds("smoke", "JT", [1, 2]) == [1, 2]
    ee = plan.early_exit("cpu")
    assert {c.hash for c in ee.configs()} <= {c.hash for c in lc.configs()}
    assert sorted(s for (m, s) in ee.part("model") if m == "JT") == [1, 2]
    p = plan.pilot("cpu")
    assert p.extra["task_seeds"] == {"sst2": [1, 2, 3, 4, 5], "rte": [1, 2, 3]}
    assert sorted({s for (m, t, s) in p.part("fine-tune") if t == "rte"}) == [1, 2, 3]
    assert sorted(s for (t, s) in p.part("acl-embed") if t == "sst2") == [1, 2, 3, 4, 5]


def test_few_shot_sizes_get_enough_updates_and_the_full_size_reuses_table1():
    fs = plan.few_shot("cpu")
    assert fs.extra["sizes"] == [20, 100] and fs.extra["small_seeds"] == list(range(1, 9))
    for (m, b, t, n, s), c in fs.part("run").items():
        if n == "full":
            continue
        # by hand: batches of min(32, n) examples, ceil(n / batch) updates an epoch, epochs raised to 20 updates
        per_epoch = math.ceil(n / min(32, n))
        assert c.epochs == max(2, math.ceil(20 / per_epoch)) and c.epochs * per_epoch >= 20
        assert c.train_size == n and c.train_subset == "balanced-per-seed" and c.seed == s
    assert {c.epochs for (m, b, t, n, s), c in fs.part("run").items() if n == 20} == {20}
    t1 = {c.hash for c in plan.table1("cpu").configs()}
    full = {m: {c.hash for (mm, b, t, n, s), c in fs.part("run").items() if n == "full" and mm == m} for m in plan.FEW_SHOT_METHODS}
    assert full["CE"] <= t1 and full["CE+SCL"] <= t1 and full["ACL"] <= t1  # Table 1's own runs
    pilot = {c.hash for c in plan.pilot("cpu").part("acl-embed").values()}
    assert len(full["ACL-Embed"] & pilot) == 5  # the pilot's logged ACL-Embed runs, seeds 1-5
    with pytest.raises(ValueError, match="not below sst2's full training size"):
        plan.few_shot("cpu", sizes=[20, 800])  # the full size itself is not few-shot
    qnli = plan.few_shot("smoke", tasks=["qnli"])  # no train split here: both halves of validation
    assert {c.train_pool for c in qnli.configs()} == {"validation-half"}


def test_new_config_fields_leave_earlier_runs_names_alone():
    # the name of a run in the cpu book's cache, written by commit bafa91f: a field added since at
    # its default (as train_subset and train_pool are left out of the hash at theirs) must not
    # rename it, or every cached run would be trained again
    cfg = make_config("cpu", "sst2", method="acl", seed=3, precision="fp32")
    assert cfg.hash == "22497877ab90cf3a"
    assert make_config("cpu", "sst2", method="acl", seed=3, train_size=20, train_subset="balanced-per-seed").hash != \
        make_config("cpu", "sst2", method="acl", seed=3, train_size=20).hash


def test_table1_runs_the_primary_rows_on_their_own_seeds():
    """cpu: Table 1's CE and ACL rows on 29 seeds (the primary family's power), the other rows on the
    chapter's 8; seeds given explicitly apply to every row."""
    t1 = plan.table1("cpu")
    seeds = lambda label: sorted(s for (l, b, t, s) in t1.part("row") if l == label)
    assert seeds("CE") == seeds("ACL") == list(range(1, 30))
    assert seeds("CE+SCL") == list(range(1, 9)) and t1.seeds == list(range(1, 9))
    given = plan.table1("cpu", seeds=[1, 2])
    assert {s for (l, b, t, s) in given.part("row")} == {1, 2}
    from acllib import claims
    power = claims.power_plan("cpu").set_index("id")
    assert power.loc["p-atleast-CE", "seeds"] == 29 and power.loc["p-atleast-CE+SCL", "seeds"] == 8
    assert (power["power at these seeds"] >= 0.8).all()  # every primary row at 80% power on its planning basis
