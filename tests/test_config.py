"""Configs, profiles and bad input: every mistake gets one clear line naming the bad value."""

import hashlib
import json

import pytest

from acllib import data, make_config
from acllib.config import RESULTS_VERSION, RunConfig, native_bf16


@pytest.mark.parametrize("kwargs,message", [
    (dict(task="qqqq"), "unknown task 'qqqq'; choose one of cola, sst2, mrpc, qqp, qnli, rte, mnli"),
    (dict(method="acl++"), "unknown method 'acl\\+\\+'; choose one of ce, ce\\+scl, acl-embed, acl"),
    (dict(profile="gpu"), "unknown profile 'gpu'; choose one of smoke, cpu, cpu-full, paper"),
    (dict(exit="conv"), "unknown exit 'conv'; choose one of mha, linear"),
    (dict(strategy="ee"), "unknown strategy 'ee'"),
    (dict(stage2_aux="kd"), "unknown stage2_aux 'kd'"),
    (dict(lam=1.5), "lam must lie in \\[0, 1\\], got 1.5"),
    (dict(lam=-0.1), "lam must lie in \\[0, 1\\], got -0.1"),
    (dict(tau=0.0), "tau must be > 0, got 0.0"),
    (dict(tau=-1), "tau must be > 0, got -1"),
    (dict(angle_threshold=200), "angle_threshold must lie in \\[0, 180\\], got 200"),
    (dict(strategy="jt", method="acl"), "strategy 'jt' trains with CE only; method 'acl'"),
    (dict(strategy="direct"), "strategy 'direct' needs depth >= 1"),
    (dict(colour="red"), "unknown config field 'colour'"),
    (dict(epochs="three"), "field 'epochs' takes a int, got 'three'"),
    (dict(method="acl", gate="coin"), "unknown gate 'coin'; choose one of angle, random, project"),
    (dict(method="ce+scl", gate="random"), "gate 'random' replaces ACL-Grad's rule, which this run does not use: use method 'acl'"),
    (dict(strategy="2st", method="acl", stage2_aux="acl-cl", gate="project"),
     "gate 'project' replaces ACL-Grad's rule, which this run does not use: set stage2_grad"),
])
def test_bad_config_is_one_clear_error(kwargs, message):
    kwargs = {"profile": "smoke", "task": "rte", **kwargs}
    with pytest.raises(ValueError, match=message):
        make_config(**kwargs)


def test_overrides_and_profiles():
    cfg = make_config("smoke", "rte", method="acl", lam="0.1", stage2_grad="true", train_size="none")
    assert cfg.lam == 0.1 and cfg.train_size is None
    assert cfg.stage2_grad is False  # a single run has no stage 2: normalized away
    assert make_config("cpu", "sst2").train_size == 800  # the cpu profile's SST-2 subsample
    assert make_config("paper", "rte").backbone == "bert-base-uncased"
    assert make_config("smoke", "rte").precision == ("bf16" if native_bf16() else "fp32")  # "auto" is resolved


def test_hash_is_stable_and_ignores_unused_fields():
    a = make_config("smoke", "rte", method="ce", lam=0.5)
    b = make_config("smoke", "rte", method="ce", lam=0.1)
    assert a.hash == b.hash  # CE has no auxiliary loss, so lam does not change the run
    c = make_config("smoke", "rte", method="acl", lam=0.5)
    assert c.hash != make_config("smoke", "rte", method="acl", lam=0.1).hash
    assert c.hash == make_config("smoke", "rte", method="acl", lam=0.5).hash
    two = make_config("smoke", "rte", strategy="2st", method="acl", stage2_aux="acl-cl", lam=0.5)
    assert two.stage1() == c.stage1() == c
    ce_two = make_config("smoke", "rte", strategy="2st", method="ce", stage2_aux="acl-cl", lam=0.5)
    assert ce_two.stage1() == a  # stage 1 of a CE backbone does not depend on lam


def test_missing_task_and_split_name_what_and_where(tmp_path, cache):
    src = data.glue_source()
    with pytest.raises(ValueError, match=f"task 'qqp' is missing from GLUE source '{src}'"):
        data.load_split("qqp", "train")
    with pytest.raises(ValueError, match="split 'train' of task 'qnli' is missing .* \\(it has: validation\\)"):
        data.load_split("qnli", "train")
    with pytest.raises(FileNotFoundError, match="GLUE source folder '/nonexistent/glue' does not exist"):
        data.load_split("rte", "train", source="/nonexistent/glue")


def test_missing_model_folder():
    from acllib.models import load_backbone
    with pytest.raises(FileNotFoundError, match="model folder './no-such-model' does not exist"):
        load_backbone("./no-such-model", 0.1)


def _cli(capsys, monkeypatch, *args, env_extra=None):
    """python -m acllib ARGS, in this process (main(argv) is what the module runs)."""
    from types import SimpleNamespace
    from acllib.__main__ import main
    for key, value in (env_extra or {}).items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


@pytest.mark.parametrize("args,message", [
    (["run", "--profile", "smoke", "--task", "wnli"], "error: unknown task 'wnli'"),
    (["run", "--profile", "smoke", "--set", "lam=2"], "error: lam must lie in [0, 1], got 2.0"),
    (["run", "--profile", "smoke", "--task", "qnli"], "error: split 'train' of task 'qnli' is missing"),
    (["run", "--profile", "smoke", "--set", "backbone=./nowhere"], "error: model folder './nowhere' does not exist"),
])
def test_cli_bad_input_is_one_line(args, message, cache, capsys, monkeypatch):
    proc = _cli(capsys, monkeypatch, *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr


def test_cli_missing_glue_folder(cache, capsys, monkeypatch):
    proc = _cli(capsys, monkeypatch, "run", "--profile", "smoke", "--force",
                env_extra={"ACL_GLUE_SOURCE": "/nonexistent/glue"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: GLUE source folder '/nonexistent/glue' does not exist"


def test_cli_runs_and_prints_metrics(cache, capsys, monkeypatch):
    proc = _cli(capsys, monkeypatch, "run", "--profile", "smoke", "--task", "rte", "--method", "acl", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "final accuracy" in proc.stdout and "examples/s" in proc.stdout and "angles:" in proc.stdout


def test_runconfig_defaults_are_the_papers():
    cfg = RunConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.warmup_ratio, cfg.epochs, cfg.dropout) == (2e-5, 0.01, 0.1, 15, 0.1)
    assert (cfg.tau, cfg.lam, cfg.angle_threshold, cfg.d_e, cfg.max_length) == (0.5, 0.02, 90.0, 64, 128)


def test_equal_runs_share_a_hash():
    assert make_config("smoke", "rte", method="acl", lam=1).hash == make_config("smoke", "rte", method="acl", lam=1.0).hash
    two = dict(strategy="2st", method="ce")
    assert (make_config("smoke", "rte", **two, stage2_grad=True).hash
            == make_config("smoke", "rte", **two, stage2_grad=False).hash)  # no aux: nothing to gate
    assert (make_config("smoke", "rte", **two, kd_temperature=3.0).hash
            == make_config("smoke", "rte", **two).hash)  # no KD
    logged = make_config("smoke", "rte", strategy="2st", method="acl", stage2_aux="scl", log_angles=True)
    assert logged.stage1() == make_config("smoke", "rte", method="acl")


@pytest.mark.parametrize("kwargs,message", [
    (dict(heads=0), "heads and d_e must be >= 1"),
    (dict(train_size=0), "train_size must be >= 2 or None, got 0"),
    (dict(max_length=4096), "max_length must lie in 8..512, got 4096"),
    (dict(batch_size=16.5), "field 'batch_size' takes a int, got 16.5"),
])
def test_more_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_config("smoke", "rte", **kwargs)


def test_paper_numbers_carry_their_setting_and_only_like_is_subtracted():
    from acllib import paper
    assert paper.label("tsne") == "paper (MRPC, roberta-base, exit 3)"  # sec. 5.7, Figure 6
    assert paper.label("table3") == "paper (RTE, roberta-base)"       # sec. 5.8, appendix E
    assert paper.same_setting("tsne", "mrpc", "roberta-base", 3)
    assert not paper.same_setting("tsne", "sst2", "minilm", 3)
    assert not paper.same_setting("tsne", "mrpc", "roberta-base", 2)
    assert not paper.same_setting("table3", "rte", "minilm")
    assert paper.numbers()["table2"]["backbone"] == "roberta-base"  # sec. 5.6
    assert paper.numbers()["table1"]["backbones"] == {"BERT": "bert-base-uncased", "RoBERTa": "roberta-base"}


def test_bf16_where_it_is_not_native_warns_once_with_the_measured_slowdown(monkeypatch):
    import warnings
    from acllib import config
    monkeypatch.setattr(config, "native_bf16", lambda: False)
    monkeypatch.setattr(config, "_WARNED_BF16", [])
    monkeypatch.setattr(config, "bf16_slowdown", lambda n=512, repeats=3: 93.6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert config.resolve_precision("bf16") == "bf16"  # kept: a user may want it
        config.resolve_precision("bf16")
        assert config.resolve_precision("auto") == "fp32"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "94x slower than fp32" in messages[0] and "\n" not in messages[0]
    monkeypatch.setattr(config, "native_bf16", lambda: True)
    monkeypatch.setattr(config, "_WARNED_BF16", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert config.resolve_precision("bf16") == "bf16" and config.resolve_precision("auto") == "bf16"
    assert not caught


def test_bf16_slowdown_is_measured_against_fp32(monkeypatch):
    """bf16's median time over fp32's: with a clock that reads fp32 products at 1 s (2 and 4 s in
    the other repeats) and bf16 ones at 3 s (and 9, 6), the slow-down is 3 (medians 2 and 6)."""
    import time
    from acllib import config
    ticks = iter([0, 1, 10, 12, 20, 24,      # fp32: 1, 2, 4 s -> median 2
                  30, 33, 40, 49, 50, 56])   # bf16: 3, 9, 6 s -> median 6
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
    assert config.bf16_slowdown(n=8, repeats=3) == 3.0


def test_a_gate_is_its_stages_own():
    """A 2st run's gate is its stage 2's: its stage 1 is the Eq. 4 run Table 1 and every other
    variant share; a random gate's pair is the same run under Eq. 4 (None for the other gates);
    the default gate leaves every earlier run's hash as it was (the field is omitted at its default)."""
    acl = make_config("smoke", "rte", method="acl", seed=2)
    s2 = dict(strategy="2st", method="acl", stage2_kd=True, stage2_aux="acl-cl", stage2_grad=True, seed=2)
    random2 = make_config("smoke", "rte", gate="random", **s2)
    assert random2.stage1() == acl and random2.gate_pair() == make_config("smoke", "rte", **s2)
    assert make_config("smoke", "rte", method="acl", gate="random", seed=2).gate_pair() == acl
    assert make_config("smoke", "rte", method="acl", gate="project", seed=2).gate_pair() is None
    assert len({make_config("smoke", "rte", method="acl", gate=g, seed=2).hash for g in ("angle", "random", "project")}) == 3
    legacy = {k: v for k, v in acl.to_dict().items() if k not in ("gate", "train_subset", "train_pool")}
    assert acl.hash == hashlib.sha256(json.dumps({**legacy, "results_version": RESULTS_VERSION}, sort_keys=True).encode()).hexdigest()[:16]
