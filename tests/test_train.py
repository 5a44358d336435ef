"""Training strategies on the smoke profile: ACL-Grad, stage 2, JT/ALT, determinism and the run cache."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from acllib import data as gdata
from acllib import acl_grad, make_config, runs, strategies, train
from acllib.losses import acl_embed_loss, angle_between
from acllib.models import load_tokenizer


def _setup(cfg):
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    model = strategies.build_model(cfg, 2)
    return td, model


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _one_step(cfg, model, batch, epoch=1):
    """One update exactly as train.fit makes it, on a fixed batch."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    opt, _ = train.make_optimizer(named, cfg.lr, cfg.weight_decay, 10, 0.0)
    model.train()
    torch.manual_seed(123)  # the same dropout masks for every variant
    loss = train.full_objective(cfg, model)(batch, epoch)
    measured = acl_grad.backward(loss, params, cfg.acl_grad, cfg.angle_threshold, cfg.log_angles)
    torch.nn.utils.clip_grad_norm_(params, train.MAX_GRAD_NORM)
    opt.step()
    return measured


@pytest.fixture(scope="module")
def rte_batch(cache):
    cfg = make_config("smoke", "rte", precision="fp32")
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    return train.BatchGetter(td.train, td.pad_id)(list(range(16)))


def test_acl_grad_over_threshold_equals_ce_step(rte_batch):
    ce = make_config("smoke", "rte", method="ce", precision="fp32")
    acl = make_config("smoke", "rte", method="acl", angle_threshold=0.0, precision="fp32")
    m_ce, m_acl = strategies.build_model(ce, 2), strategies.build_model(acl, 2)
    _one_step(ce, m_ce, rte_batch)
    measured = _one_step(acl, m_acl, rte_batch)
    (angle, lam, *_), = measured
    assert angle > 0.0 and lam == 0.0  # over the threshold: the ACL term is dropped
    p_ce, p_acl = _params(m_ce), _params(m_acl)
    assert all(torch.equal(p_ce[n], p_acl[n]) for n in p_ce)


def test_acl_grad_under_threshold_uses_weighted_sum(rte_batch):
    acl = make_config("smoke", "rte", method="acl", angle_threshold=180.0, precision="fp32", lam=0.3)
    model = strategies.build_model(acl, 2)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    torch.manual_seed(123)
    loss = train.full_objective(acl, model)(rte_batch, 1)
    # Reference: the gradient of the weighted loss, and the angle of separately computed gradients.
    g_ce = torch.autograd.grad(loss.main, params, retain_graph=True, allow_unused=True)
    g_acl = torch.autograd.grad(loss.aux, params, retain_graph=True, allow_unused=True)
    ref = torch.autograd.grad(0.7 * loss.main + 0.3 * loss.aux, params, retain_graph=True, allow_unused=True)
    (angle, lam, *_), = acl_grad.backward(loss, params, True, 180.0, False)
    assert lam == 0.3
    assert math.isclose(angle, angle_between(g_ce, g_acl), rel_tol=1e-9)
    for p, r in zip(params, ref):
        if r is not None:
            torch.testing.assert_close(p.grad, r, rtol=1e-4, atol=1e-5)


def test_acl_objective_is_ce_plus_acl_embed(rte_batch):
    cfg = make_config("smoke", "rte", method="acl-embed", precision="fp32")
    model = strategies.build_model(cfg, 2).eval()
    loss = train.full_objective(cfg, model)(rte_batch, 1)
    out = model(rte_batch)[-1]
    last = model.exit(model.exit_layers[-1])
    y = rte_batch["labels"]
    torch.testing.assert_close(loss.main, F.cross_entropy(out.logits, y))
    torch.testing.assert_close(loss.aux, acl_embed_loss(out.rep, y, last.classifier.weight, cfg.tau))
    # sec. 3.1's convex sum (1 - lam) CE + lam ACL-Embed, by hand at the profile's lam = 0.02
    w_main, w_aux = loss.weights(loss.lam)
    assert math.isclose(w_main, 0.98) and math.isclose(w_aux, 0.02)


def test_jt_loss_is_sum_of_exit_ces(rte_batch):
    cfg = make_config("smoke", "rte", strategy="jt", precision="fp32")
    model = strategies.build_model(cfg, 2).eval()
    loss = train.full_objective(cfg, model, strategies.get("jt").joint)(rte_batch, 1)
    y = rte_batch["labels"]
    ref = sum(F.cross_entropy(model(rte_batch, [m])[0].logits, y) for m in (1, 2, 3, 4))
    torch.testing.assert_close(loss.main, ref)
    assert loss.aux is None


def test_alt_alternates_between_eq7_and_eq8(rte_batch):
    cfg = make_config("smoke", "rte", strategy="alt", precision="fp32")
    model = strategies.build_model(cfg, 2).eval()
    y = rte_batch["labels"]
    objective = train.full_objective(cfg, model, strategies.get("alt").joint)
    last_only = F.cross_entropy(model(rte_batch, [4])[0].logits, y)
    joint = sum(F.cross_entropy(o.logits, y) for o in model(rte_batch))
    for epoch, ref in [(1, last_only), (2, joint), (3, last_only), (4, joint)]:
        torch.testing.assert_close(objective(rte_batch, epoch).main, ref)


def test_alt_odd_epoch_leaves_intermediate_exits_untouched(cache):
    cfg = make_config("smoke", "rte", strategy="alt", epochs=1)
    td, model = _setup(cfg)
    before = _params(model)
    train.train_full(cfg, model, td, progress=False)
    after = _params(model)
    for name in before:
        unchanged = torch.equal(before[name], after[name])
        if name.startswith("exits.") and not name.startswith("exits.4."):
            assert unchanged, name
    assert not torch.equal(before["exits.4.classifier.weight"], after["exits.4.classifier.weight"])


@pytest.mark.parametrize("aux,grad", [("acl-cl", True), ("scl", False)])
def test_stage2_freezes_backbone_and_last_exit(cache, aux, grad):
    cfg = make_config("smoke", "mrpc", strategy="2st", stage2_aux=aux, stage2_grad=grad, stage2_kd=True)
    td, model = _setup(cfg)
    before = _params(model)
    log, _ = train.train_stage2(cfg, model, td, progress=False)
    after = _params(model)
    for name in before:
        frozen = name.startswith("backbone.") or name.startswith("exits.4.")
        assert torch.equal(before[name], after[name]) == frozen, name
    assert len(log.epochs) == cfg.stage2_epochs
    assert set(log.epochs[-1]["eval"]["validation"]) == {"1", "2", "3"}
    if grad:  # one ACL-Grad decision per intermediate exit and step
        steps = cfg.stage2_epochs * math.ceil(len(td.train) / cfg.batch_size)
        assert len(log.angles) == 3 * steps


def test_stage2_cached_and_live_features_agree(cache):
    cfg = make_config("smoke", "mrpc", strategy="2st", precision="fp32", encoder_parts=3)
    td, model = _setup(cfg)
    layers = train.freeze_for_stage2(model)
    cached = train.build_features(cfg, model, td, layers, progress=False, cached=True)["train"]
    live = train.build_features(cfg, model, td, layers, progress=False, cached=False)["train"]
    idx = [3, 0, 7, 11, 5]
    a, b = cached(idx), live(idx)
    assert cached.parts == cfg.encoder_parts > 1 and len(a["hidden"]) == cfg.encoder_parts
    assert sorted(a["index"]) == sorted(idx) and np.array_equal(a["index"], b["index"])
    assert torch.equal(a["labels"], b["labels"])
    assert torch.equal(a["labels"], td.train.labels[torch.as_tensor(a["index"])])
    for ha, hb, ma, mb in zip(a["hidden"], b["hidden"], a["attention_mask"], b["attention_mask"]):
        assert torch.equal(ma, mb)
        real = ma.bool()  # padded slots are masked out by every exit, so may differ
        torch.testing.assert_close(ha[:, real].float(), hb[:, real].float())
    torch.testing.assert_close(a["teacher_logits"], b["teacher_logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:precision=bf16 on a CPU without native bf16")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_stage2_features_are_the_backbones_states(cache, precision):
    """fp32 runs' exits read the fp32 states their frozen backbone computes, not a bf16 rounding of
    them; bf16 runs keep bf16 states, and an MHA exit gives bitwise the logits it gives on the
    unrounded states under autocast (its down-projection rounds its input to bf16 first)."""
    cfg = make_config("smoke", "mrpc", strategy="2st", precision=precision, dropout=0.0)
    td, model = _setup(cfg)
    layers = train.freeze_for_stage2(model)
    cached = train.build_features(cfg, model, td, layers, progress=False, cached=True)["train"]
    idx = [3, 0, 7]
    batch = gdata.collate(td.train, np.array(idx), td.pad_id)
    with torch.no_grad(), train.autocast(precision):
        states = model.hidden_states(batch)
    unrounded = torch.stack([states[m] for m in layers]).float()  # [E, B, L, H], the backbone's own
    got = cached(idx)
    order, hidden, mask = list(got["index"]), got["hidden"][0], got["attention_mask"][0]
    ref = unrounded[:, [idx.index(i) for i in order]][:, :, :hidden.shape[2]]
    real = mask.bool()
    assert hidden.dtype == train.feature_dtype(precision) == {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    if precision == "fp32":
        torch.testing.assert_close(hidden[:, real], ref[:, real], rtol=1e-5, atol=1e-5)
        rounded = ref[:, real].to(torch.bfloat16).float()
        assert (hidden[:, real] != rounded).float().mean() > 0.9  # not a bf16 rounding
    else:
        torch.testing.assert_close(hidden[:, real].float(), ref[:, real].to(torch.bfloat16).float(), rtol=1e-2, atol=1e-2)
        ex = model.exit(layers[0])
        ex.eval()
        with torch.no_grad(), train.autocast(precision):
            from_cache = ex(hidden[0], mask)[1]
            from_states = ex(hidden[0].float(), mask)[1]
        assert torch.equal(from_cache, from_states)


def _comparable(result):
    return {"final": result.final, "score": result.score, "angles": result.angles,
            "epochs": [{k: v for k, v in e.items() if not k.endswith("seconds")} for e in result.epochs]}


def test_same_config_twice_gives_identical_results(cache):
    cfg = make_config("smoke", "rte", method="acl", seed=7)
    first = runs.run(cfg, progress=False, force=True)
    second = runs.run(cfg, progress=False, force=True)
    assert _comparable(first) == _comparable(second)
    assert first.angles, "ACL-Grad must log its angles"


def test_finished_runs_come_from_the_cache(cache, monkeypatch):
    cfg = make_config("smoke", "rte", method="ce", seed=11)
    first = runs.run(cfg, progress=False)
    assert runs.result_path(cfg).exists() and runs.model_path(cfg).exists()
    monkeypatch.setattr(train, "train_full", lambda *a, **k: pytest.fail("cached run was re-run"))
    assert runs.run(cfg, progress=False) == first


@pytest.mark.parametrize("damage", ["truncated", "other config"])
def test_a_damaged_results_file_is_reported_and_run_again(cache, damage, capsys):
    cfg = make_config("smoke", "rte", method="ce", seed=12)
    first = runs.run(cfg, progress=False)
    path = runs.result_path(cfg)
    if damage == "truncated":
        path.write_text(path.read_text()[: len(path.read_text()) // 2])
    else:  # a valid file whose config is not the one its name's hash stands for
        other = runs.run(make_config("smoke", "rte", method="ce", seed=13), progress=False)
        path.write_text(runs.result_path(make_config("smoke", "rte", method="ce", seed=13)).read_text())
        assert other.hash != cfg.hash
    assert runs.load_result(cfg) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and cfg.hash in err[0] and "done again" in err[0]
    again = runs.run(cfg, progress=False)
    assert _comparable(again) == _comparable(first)  # re-run, and the file replaced by a good one
    assert runs.load_result(cfg).hash == cfg.hash


def test_two_stage_shares_stage1_and_reports_every_exit(cache):
    base = dict(strategy="2st", method="ce", seed=5)
    cfgs = [make_config("smoke", "mrpc", **base, stage2_aux=a, stage2_kd=kd) for a, kd in
            [("none", False), ("acl-cl", True)]]
    results = runs.run_many(cfgs, progress=False)
    stage1 = runs.load_result(cfgs[0].stage1())
    assert stage1 is not None and all(r.extras["stage1_hash"] == cfgs[0].stage1().hash for r in results)
    for r in results:
        assert set(r.score) == {"1", "2", "3", "4"}
        assert r.score["4"] == stage1.score["4"]


def test_gradient_accumulation_equals_one_big_batch(rte_batch):
    cfg = make_config("smoke", "rte", method="ce", precision="fp32", dropout=0.0)
    big, small = strategies.build_model(cfg, 2).eval(), strategies.build_model(cfg, 2).eval()
    objective_big, objective_small = train.full_objective(cfg, big), train.full_objective(cfg, small)
    p_big = [p for p in big.parameters() if p.requires_grad]
    p_small = [p for p in small.parameters() if p.requires_grad]
    acl_grad.backward(objective_big(rte_batch, 1), p_big, False, 90.0, False)
    for half in (slice(0, 8), slice(8, 16)):  # two micro-batches of the same 16 examples
        part = {k: v[half] for k, v in rte_batch.items()}
        acl_grad.backward(objective_small(part, 1), p_small, False, 90.0, False, scale=0.5)
    for a, b in zip(p_big, p_small):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_table2_rows_chain_from_acl_to_2st():
    from acllib.config import TABLE2_ROWS
    rows = list(TABLE2_ROWS.values())
    assert rows[0] == dict(method="acl", stage2_kd=True, stage2_aux="acl-cl", stage2_grad=True)
    assert rows[-1] == dict(method="ce", stage2_kd=True, stage2_aux="none", stage2_grad=False)
    for a, b in zip(rows, rows[1:]):  # each step changes exactly one thing
        assert sum(a[k] != b[k] for k in a) == 1
    for row in rows:
        make_config("smoke", "rte", strategy="2st", **row)


def test_stage2_with_kd_acl_cl_and_acl_grad_trains_an_epoch_in_fp32(cache):
    cfg = make_config("smoke", "mrpc", strategy="2st", precision="fp32", stage2_aux="acl-cl",
                      stage2_grad=True, stage2_kd=True, stage2_epochs=1)
    td, model = _setup(cfg)
    before = _params(model)
    log, _ = train.train_stage2(cfg, model, td, progress=False)
    assert math.isfinite(log.epochs[0]["train_main_loss"])
    assert set(log.epochs[0]["eval"]["validation"]) == {"1", "2", "3"}
    after = _params(model)
    for name in before:  # the intermediate exits trained, in fp32; the backbone and last exit frozen
        assert after[name].dtype == torch.float32
        trained = name.startswith("exits.") and not name.startswith("exits.4.")
        assert torch.equal(before[name], after[name]) != trained, name
    assert len(log.angles) > 0 and all(math.isfinite(a["angle"]) or a["angle"] != a["angle"] for a in log.angles)


def test_stage2_trains_each_exit_as_if_alone(cache, monkeypatch):
    """Exits are independent given the frozen backbone: training exit 1 with exits 2 and 3 beside it
    gives exit 1 the same weights as training it alone (per-exit clipping included)."""
    from acllib.models import MultiExitModel, load_backbone
    monkeypatch.setattr(train, "MAX_GRAD_NORM", 1e-3)  # make clipping bind on every step
    cfg = make_config("smoke", "mrpc", strategy="2st", dropout=0.0, precision="fp32", stage2_epochs=2)
    td, together = _setup(cfg)
    torch.manual_seed(cfg.seed)
    alone = MultiExitModel(load_backbone(cfg.backbone, cfg.dropout, seed=cfg.seed), 2, [1, 4], cfg.exit,
                           cfg.d_e, cfg.heads, cfg.dropout)
    alone.load_state_dict({k: v for k, v in together.state_dict().items()
                           if not k.startswith(("exits.2.", "exits.3."))})
    train.train_stage2(cfg, together, td, progress=False)
    train.train_stage2(cfg, alone, td, progress=False)
    for name, p in alone.exit(1).named_parameters():  # alone it runs unstacked: fp32 sums in another order
        torch.testing.assert_close(p, dict(together.exit(1).named_parameters())[name], rtol=1e-5, atol=1e-5)


def test_stage2_acl_grad_that_never_drops_trains_like_the_weighted_loss(cache):
    """ACL-Grad with a threshold no angle exceeds keeps lam on every step, so training must follow
    the plain (1 - lam) main + lam aux backward step for step (optimizer and clipping included).
    The stacked exits' gradients come out transposed; fused AdamW misread them until .grad was
    given its parameter's layout."""
    base = dict(strategy="2st", dropout=0.0, precision="fp32", stage2_aux="acl-embed", stage2_kd=True,
                stage2_epochs=2, lam=0.3)
    weights = {}
    for grad in (False, True):
        cfg = make_config("smoke", "mrpc", **base, stage2_grad=grad, **({"angle_threshold": 180.0} if grad else {}))
        td, model = _setup(cfg)
        log, _ = train.train_stage2(cfg, model, td, progress=False)
        assert (len(log.angles) > 0) == grad and all(a["lam"] == 0.3 for a in log.angles)
        weights[grad] = {(m, n): p.detach().clone() for m in (1, 2, 3) for n, p in model.exit(m).named_parameters()}
    for (m, name), w in weights[False].items():
        got = weights[True][m, name]
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-5, msg=lambda msg: f"exit {m} {name}: {msg}")


def _stage2_step_setup(aux):
    cfg = make_config("smoke", "mrpc", strategy="2st", dropout=0.0, precision="fp32", stage2_aux=aux,
                      stage2_kd=True, stage2_grad=True, lam=0.3)
    td, model = _setup(cfg)
    layers = train.freeze_for_stage2(model)
    feats = train.build_features(cfg, model, td, layers, progress=False)
    groups = [list(model.exit(m).parameters()) for m in layers]
    return cfg, model, layers, feats["train"], groups


@pytest.mark.parametrize("aux", ["scl", "acl-embed", "acl-cl"])
def test_stage2_losses_equal_a_loop_over_the_exits(cache, aux):
    """The stacked objective against each exit's own module and the per-example losses, exit by exit."""
    from acllib.losses import acl_cross_layer_loss, kd_loss, supcon_loss
    cfg, model, layers, train_f, groups = _stage2_step_setup(aux)
    model.eval()
    batch = train_f(list(range(8)))
    loss = train.stage2_objective(cfg, model, layers, groups)(batch, 1)
    y, teacher_emb = batch["labels"], model.exit(model.exit_layers[-1]).label_embeddings
    main = aux_sum = 0.0
    for e, m in enumerate(layers):
        ex = model.exit(m)
        outs = [ex(hidden[e], mask) for hidden, mask in zip(batch["hidden"], batch["attention_mask"])]
        h, logits = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        main += F.cross_entropy(logits, y) + kd_loss(logits, batch["teacher_logits"], cfg.kd_temperature)
        if aux == "scl":
            aux_sum += supcon_loss(h, y, cfg.tau)
        elif aux == "acl-embed":
            aux_sum += acl_embed_loss(h, y, ex.label_embeddings, cfg.tau)
        else:
            aux_sum += acl_cross_layer_loss(h, ex.label_embeddings, batch["teacher_rep"], teacher_emb, y, cfg.tau)
    assert float(loss.main.detach()) == pytest.approx(float(main.detach()), rel=1e-5)
    assert float(loss.aux.detach()) == pytest.approx(float(aux_sum.detach()), rel=1e-5)


@pytest.mark.parametrize("aux", ["scl", "acl-embed", "acl-cl"])
def test_stacked_acl_grad_step_equals_the_per_parameter_one(cache, aux, monkeypatch):
    """backward() on the stacked exit parameters against the per-parameter path: a different lam per
    exit (0, 0.3, 1), two micro-batches of half weight accumulated, every .grad and every angle."""
    import dataclasses
    cfg, model, layers, train_f, groups = _stage2_step_setup(aux)
    objective = train.stage2_objective(cfg, model, layers, groups)
    params = [p for g in groups for p in g]
    batches = [train_f(list(range(0, 8))), train_f(list(range(8, 16)))]
    results = []
    for stacked in (True, False):
        lams = iter([0.0, 0.3, 1.0] * 2)
        monkeypatch.setattr(acl_grad, "acl_grad_weight", lambda angle, lam, threshold: next(lams))
        for p in params:
            p.grad = None
        measured = []
        for batch in batches:
            loss = objective(batch, 1)
            assert loss.stacked is not None  # the MHA exits run stacked
            if not stacked:
                loss = dataclasses.replace(loss, stacked=None)
            measured += acl_grad.backward(loss, params, True, cfg.angle_threshold, False, scale=0.5)
        results.append((measured, [None if p.grad is None else p.grad.clone() for p in params],
                        [p.grad is None or p.grad.stride() == p.stride() for p in params]))
    (m_stacked, g_stacked, layout), (m_plain, g_plain, _) = results
    assert [lam for _, lam, *_ in m_stacked] == [lam for _, lam, *_ in m_plain] == [0.0, 0.3, 1.0] * 2
    assert [a for a, *_ in m_stacked] == pytest.approx([a for a, *_ in m_plain], abs=1e-3)
    assert all(layout)
    names = [f"exit {m} {n}" for m in layers for n, _ in model.exit(m).named_parameters()]
    for name, a, b in zip(names, g_stacked, g_plain):
        assert (a is None) == (b is None), name  # scl at lam 1: exit 3's classifier gets no gradient
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda msg: f"{name}: {msg}")
    assert sum(g is None for g in g_plain) == (1 if aux == "scl" else 0)


def test_stage2_variant_does_not_depend_on_its_group(cache):
    """run_group reuses one model for all variants of a stage 1: a variant run after another
    must give what it gives alone (exits restored, random stream reseeded)."""
    base = dict(strategy="2st", method="ce", seed=9)
    first = make_config("smoke", "rte", **base, stage2_aux="scl", stage2_kd=True)
    second = make_config("smoke", "rte", **base, stage2_aux="acl-cl", stage2_kd=True, stage2_grad=True)
    grouped = runs.run_group([first, second], progress=False, force=True)[1]
    alone = runs.run_group([second], progress=False, force=True)[0]
    assert _comparable(grouped) == _comparable(alone)


def test_eval_after_last_epoch_only_changes_nothing_else(cache):
    every = runs.run(make_config("smoke", "rte", method="ce", seed=13), progress=False, force=True)
    last = runs.run(make_config("smoke", "rte", method="ce", seed=13, eval_each_epoch=False),
                     progress=False, force=True)
    assert [e["eval"] is None for e in last.epochs] == [True] * (len(last.epochs) - 1) + [False]
    assert last.final == every.final and last.score == every.score


def test_multi_exit_runs_keep_their_weights(cache):
    """JT (and ALT) models are reloaded for early exiting: the checkpoint must reproduce the run's
    dev scores exactly."""
    cfg = make_config("smoke", "mrpc", strategy="jt", exit="linear", seed=3, precision="fp32")
    result = runs.run(cfg, progress=False, force=True)
    model = runs.load_model(cfg)
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    again = train.evaluate_model(model, td.evals, cfg.task, cfg.precision, pad_id=td.pad_id)
    assert again == result.final


def test_clip_grad_norms_equals_clip_grad_norm_per_group():
    gen = torch.Generator().manual_seed(0)
    shapes = [[(4, 3), (5,)], [(2, 2)], [(3,), (3,)], [(2,)]]
    groups = [[torch.nn.Parameter(torch.randn(s, generator=gen)) for s in group] for group in shapes]
    for scale, group in zip((10.0, 0.01, 1.0), groups):  # clipped, untouched (norm < 1), clipped
        for p in group:
            p.grad = torch.randn(p.shape, generator=gen) * scale
    groups[2][1].grad = None  # a parameter without a gradient is skipped, as clip_grad_norm_ does
    groups[3][0].grad = None  # and a group without any
    reference = [[torch.nn.Parameter(p.detach().clone()) for p in group] for group in groups]
    for group, ref in zip(groups, reference):
        for p, r in zip(group, ref):
            r.grad = None if p.grad is None else p.grad.clone()
    for group in reference:
        torch.nn.utils.clip_grad_norm_(group, 1.0)
    train.clip_grad_norms_(groups, 1.0)
    for group, ref in zip(groups, reference):
        for p, r in zip(group, ref):
            if r.grad is None:
                assert p.grad is None
            else:
                torch.testing.assert_close(p.grad, r.grad)
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in groups[0]])) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("exit_kind", ["mha", "linear", "linear-mean"])
def test_batch_in_length_sorted_parts_gives_the_padded_batchs_outputs(cache, exit_kind):
    """Running the encoder on length-sorted parts of a batch is the same function as one padded
    batch: every exit's representation and logits, example by example."""
    cfg = make_config("smoke", "rte", strategy="jt", exit=exit_kind, precision="fp32")
    td = train.load_task_data(cfg, load_tokenizer(cfg.backbone))
    model = strategies.build_model(cfg, 2).eval()
    idx = np.random.default_rng(0).permutation(len(td.train))[:16]
    whole = train.BatchGetter(td.train, td.pad_id)(idx)
    parted = train.BatchGetter(td.train, td.pad_id, parts=4)(idx)
    assert len(parted["parts"]) == 4
    order = np.concatenate(gdata.length_sorted_parts(td.train.lengths.numpy(), idx, 4))
    where = {int(i): k for k, i in enumerate(idx)}
    perm = torch.tensor([where[int(i)] for i in order])
    assert torch.equal(parted["labels"], whole["labels"][perm])
    with torch.no_grad():
        for a, b in zip(model(whole), model(parted)):
            torch.testing.assert_close(b.rep, a.rep[perm], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(b.logits, a.logits[perm], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("grad", [False, True])
def test_additive_weighting_is_ce_plus_lam_aux(rte_batch, grad):
    """aux_weighting='additive': the gradient of CE + lam aux (not (1 - lam) CE + lam aux); with
    ACL-Grad dropping the aux term, CE keeps its full weight under both readings."""
    for threshold, lam_used in ((180.0, 1.0), (0.0, 0.0)):
        cfg = make_config("smoke", "rte", method="acl" if grad else "acl-embed", lam=1.0, aux_weighting="additive",
                          precision="fp32", **({"angle_threshold": threshold} if grad else {}))
        model = strategies.build_model(cfg, 2)
        params = [p for p in model.parameters() if p.requires_grad]
        model.train()
        torch.manual_seed(123)
        loss = train.full_objective(cfg, model)(rte_batch, 1)
        assert loss.additive and loss.weights(1.0) == (1.0, 1.0) and loss.weights(0.0) == (1.0, 0.0)
        w_aux = lam_used if grad else 1.0
        ref = torch.autograd.grad(loss.main + w_aux * loss.aux, params, retain_graph=True, allow_unused=True)
        measured = acl_grad.backward(loss, params, grad, cfg.angle_threshold, False)
        assert [lam for _, lam, *_ in measured] == ([lam_used] if grad else [])
        for p, r in zip(params, ref):
            if r is not None:
                torch.testing.assert_close(p.grad, r, rtol=1e-4, atol=1e-5)
        if not grad:
            break
    convex = make_config("smoke", "rte", method="acl-embed", lam=1.0, precision="fp32")
    assert train.full_objective(convex, strategies.build_model(convex, 2))(rte_batch, 1).weights(1.0) == (0.0, 1.0)


@pytest.mark.parametrize("ref", ["ce", "ce+kd"])
def test_stage2_acl_grad_measures_the_angle_against_ce_or_ce_plus_kd(cache, ref, monkeypatch):
    """Eq. 4's angle is between g_ACL and g_CE: with stage2_grad_ref='ce' the logged angle of each
    exit is that of the CE and aux gradients computed separately, not of CE + KD; the update still
    follows (1 - lam) (CE + KD) + lam aux."""
    from acllib.losses import angle_between
    cfg = make_config("smoke", "mrpc", strategy="2st", dropout=0.0, precision="fp32", stage2_aux="acl-embed",
                      stage2_kd=True, stage2_grad=True, lam=0.3, angle_threshold=180.0, stage2_grad_ref=ref)
    assert cfg.stage2_grad_ref == ref
    td, model = _setup(cfg)
    layers = train.freeze_for_stage2(model)
    feats = train.build_features(cfg, model, td, layers, progress=False)
    groups = [list(model.exit(m).parameters()) for m in layers]
    batch = feats["train"](list(range(12)))
    loss = train.stage2_objective(cfg, model, layers, groups)(batch, 1)
    assert (loss.ref is not None) == (ref == "ce")
    stacks = list(loss.stacked.values())
    ce = loss.ref if ref == "ce" else None
    g_ref = torch.autograd.grad(ce if ce is not None else loss.main, stacks, retain_graph=True, allow_unused=True)
    g_aux = torch.autograd.grad(loss.aux, stacks, retain_graph=True, allow_unused=True)
    want = [angle_between([g[e] for g in g_ref if g is not None], [g[e] for g in g_aux if g is not None])
            for e in range(len(layers))]
    measured = acl_grad.backward(loss, [p for g in groups for p in g], True, 180.0, False)
    assert [a for a, *_ in measured] == pytest.approx(want, rel=1e-6)


def test_few_shot_training_sets_are_balanced_per_seed_and_validation_halves_are_disjoint():
    from acllib.config import make_config
    tok = load_tokenizer("minilm")
    sets = {}
    for seed in (1, 2):
        cfg = make_config("cpu", "sst2", seed=seed, train_size=20, train_subset="balanced-per-seed")
        td = train.load_task_data(cfg, tok)
        assert len(td.train) == 20 and np.bincount(td.train.labels.numpy()).tolist() == [10, 10]
        sets[seed] = {tuple(td.train.input_ids[td.train.offsets[i]:td.train.offsets[i + 1]].tolist()) for i in range(20)}
    assert sets[1] != sets[2]  # a fresh subset per seed
    fixed = [train.load_task_data(make_config("cpu", "sst2", seed=s), tok).train.labels for s in (1, 2)]
    assert torch.equal(fixed[0], fixed[1])  # the default: one subset for every seed
    cfg = make_config("cpu", "qnli", train_pool="validation-half", train_size=30, train_subset="balanced-per-seed")
    td = train.load_task_data(cfg, tok)
    (split, held), = td.evals.items()
    assert split == "validation (held-out half)" and len(td.train) == 30
    whole = gdata.encode_split("qnli", "validation", tok, cfg.max_length)
    pool, rest = gdata.halves(len(whole), seed=0)
    assert len(pool) + len(rest) == len(whole) and not set(pool) & set(rest)
    assert torch.equal(held.input_ids, whole.subset(rest).input_ids)  # evaluated on the held-out half
    def texts(enc):
        return {tuple(enc.input_ids[enc.offsets[i]:enc.offsets[i + 1]].tolist()) for i in range(len(enc))}
    assert texts(td.train) <= texts(whole.subset(pool))  # trained on the other half


def _separable(tokenizer, n: int, seed: int) -> gdata.Encoded:
    """Sequences [CLS] x1..x8 [SEP] of random ordinary tokens; label 1 iff a marker token is among
    them (at a random place), label 0 never has it: separable by a model that attends to tokens."""
    g = torch.Generator().manual_seed(seed)
    vocab = tokenizer.vocab_size
    marker, low, high = vocab - 1, vocab // 4, vocab // 2
    labels = torch.randint(0, 2, (n,), generator=g)
    rows = []
    for y in labels.tolist():
        body = torch.randint(low, high, (8,), generator=g)
        if y:
            body[int(torch.randint(0, 8, (1,), generator=g))] = marker
        rows.append(torch.cat([torch.tensor([tokenizer.cls_token_id]), body, torch.tensor([tokenizer.sep_token_id])]))
    ids = torch.cat(rows).to(torch.int32)
    return gdata.Encoded(input_ids=ids, token_type_ids=torch.zeros(len(ids), dtype=torch.int8),
                         offsets=torch.arange(0, len(ids) + 1, 10, dtype=torch.int64), labels=labels.long())


@pytest.mark.parametrize("method", ["ce", "acl"])
def test_a_tiny_model_learns_a_separable_task_end_to_end(method):
    """Something learns: the smoke profile's tiny random BERT, trained by train_full (the loop every
    full fine-tuning run uses, ACL-Grad included), on a synthetic task a token decides, ends far
    above the majority class on held-out examples."""
    cfg = make_config("smoke", "sst2", method=method, precision="fp32", epochs=12, lr=5e-4, train_size=None)
    tok = load_tokenizer(cfg.backbone)
    td = train.TaskData(train=_separable(tok, 256, 0), evals={"validation": _separable(tok, 96, 1)},
                        missing_eval_splits=[], pad_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = strategies.build_model(cfg, 2)
    log = train.train_full(cfg, model, td, progress=False)
    accuracy = log.epochs[-1]["eval"]["validation"][str(model.exit_layers[-1])]["accuracy"]
    labels = td.evals["validation"].labels
    majority = 100 * max(labels.float().mean().item(), 1 - labels.float().mean().item())
    assert accuracy >= majority + 25.0, (accuracy, majority)  # about 91 here, the majority 54


def test_the_fused_optimizer_equals_plain_adamw_and_every_gradient_reaches_it_in_its_parameters_layout():
    """Issue #25: make_optimizer's fused AdamW (one kernel for every parameter) against torch's plain
    per-tensor AdamW (foreach and fused off), same groups and schedule: equal to float32 rounding on
    gradients laid out like their parameters. The fused kernel misreads a gradient strided unlike its
    parameter (checked here: it then differs), so acl_grad.backward copies such a gradient (autograd
    returns one for bmm(W^T, .)) into its parameter's layout before it reaches .grad."""
    g = torch.Generator().manual_seed(0)
    shapes = {"w": (6, 4), "b": (4,), "norm.weight": (4,)}
    start = {n: torch.randn(*s, generator=g) for n, s in shapes.items()}

    def optimise(layout_of_w: str, fused: bool) -> dict:
        params = {n: torch.nn.Parameter(t.clone()) for n, t in start.items()}
        if fused:
            opt, sched = train.make_optimizer(list(params.items()), 1e-2, 0.01, 6, 0.34)
            assert opt.defaults["fused"]
        else:
            opt = torch.optim.AdamW([{"params": [params["w"]], "weight_decay": 0.01},
                                     {"params": [params["b"], params["norm.weight"]], "weight_decay": 0.0}],
                                    lr=1e-2, foreach=False, fused=False)
            # by hand: warm-up over round(0.34 x 6) = 2 steps (1/3, 2/3), then linear decay to 0
            factors = [1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25, 0.0]
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factors[step])
        steps = torch.Generator().manual_seed(1)
        for _ in range(6):
            for n, p in params.items():
                grad = torch.randn(*shapes[n], generator=steps)
                p.grad = grad.t().contiguous().t() if n == "w" and layout_of_w == "transposed" else grad
            opt.step()
            sched.step()
        return {n: p.detach() for n, p in params.items()}

    plain = optimise("contiguous", fused=False)
    for n, v in optimise("contiguous", fused=True).items():
        torch.testing.assert_close(v, plain[n], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(optimise("transposed", fused=True)["w"], plain["w"], atol=1e-3)  # the hazard
    # the guard: a gradient autograd returns transposed reaches .grad in the parameter's layout
    from acllib import acl_grad
    w = torch.nn.Parameter(torch.randn(3, 6, 4, generator=g))
    x = torch.randn(3, 5, 6, generator=g)
    main = torch.bmm(w.transpose(1, 2), x.transpose(1, 2)).square().sum()
    assert torch.autograd.grad(main, [w], retain_graph=True)[0].stride() != w.stride()
    aux = torch.bmm(x, w).sum()
    acl_grad.backward(acl_grad.Loss(main, aux, lam=0.2), [w], True, 90.0, False)
    assert w.grad.stride() == w.stride()


def test_a_random_gate_runs_its_pair_first_and_matches_its_drop_share(cache):
    """Issue #27: the executor trains a random gate's Eq. 4 pair first (alone, and inside a 2st
    group), the gate's rate is the pair's logged drop share per group, and only the gate differs:
    every step up to the first whose decisions differ sees the pair's batch, parameters and dropout
    (the same angles), so the gate's draws disturb no other random stream."""

    def same_until_decisions_differ(mine, theirs, groups):
        steps = lambda log: [log[i:i + groups] for i in range(0, len(log), groups)]
        for a, b in zip(steps(mine), steps(theirs)):
            assert [e["angle"] for e in a] == [e["angle"] for e in b]
            if [e["lam"] for e in a] != [e["lam"] for e in b]:
                return True  # from here on the parameters differ
        return False

    cfg = make_config("smoke", "rte", method="acl", gate="random", seed=1)
    r = runs.run(cfg, progress=False)
    pair = runs.load_result(cfg.gate_pair())
    assert pair is not None and pair.config["gate"] == "angle"
    share = float(np.mean([a["lam"] == 0.0 for a in pair.angles]))
    assert acl_grad.Gate.for_run(cfg)._rates(1) == [share]
    differed = same_until_decisions_differ(r.angles, pair.angles, 1)
    s2 = dict(strategy="2st", method="acl", stage2_kd=True, stage2_aux="acl-cl", stage2_grad=True, seed=1)
    random2 = make_config("smoke", "rte", gate="random", **s2)
    r2 = runs.run_group([random2], progress=False)[0]
    pair2 = runs.load_result(random2.gate_pair())
    groups = len(r2.score) - 1  # every intermediate exit is a group
    by_hand = [float(np.mean([a["lam"] == 0.0 for a in pair2.angles[g::groups]])) for g in range(groups)]
    assert acl_grad.Gate.for_run(random2)._rates(groups) == by_hand
    differed |= same_until_decisions_differ(r2.angles, pair2.angles, groups)
    assert differed  # the check reached a step where the gates decided differently
