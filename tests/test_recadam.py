"""RecAdam (Chen et al., EMNLP 2020): StableAdamW's annealed pretrained decay against the written-out update,
through the Trainer (groups, anneal visible on the weights), resumed exactly, validated, refused without anchors."""

import math

import pytest
import torch
from helpers import RandomClassificationDataset, parameters_of, tiny_args
from tiny_models import tiny_model
from transformers import Trainer

from hf_stable_ft import (
    StableAdamW,
    StableFineTuningCallback,
    StableTrainer,
    get_fine_tuning_state,
    stable_optimizer,
)
from hf_stable_ft.optim import recadam_lambda


def test_lambda_is_the_sigmoid_and_never_overflows():
    assert recadam_lambda(250, 0.1, 250) == 0.5
    assert recadam_lambda(260, 0.1, 250) == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert recadam_lambda(240, 0.1, 250) == pytest.approx(1 / (1 + math.exp(1.0)))
    assert recadam_lambda(1, 1000.0, 10) == 0.0 and recadam_lambda(10, 1000.0, 1) == 1.0


def _reference(params, anchors, lr, gamma, k, t0, wd, betas=(0.9, 0.999), eps=1e-8, bias_correction=True):
    """The RecAdam update written out (per parameter t):
    theta <- theta - lr*(1-lam)*gamma*(theta - theta_pre); theta <- theta*(1 - lr*wd);
    theta <- theta - lr*lam*m_hat/(sqrt(v_hat)+eps)   (BERTAdam: m/(sqrt(v)+eps)),  lam = 1/(1+exp(-k(t-t0)))."""
    state = [dict(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p)) for p in params]

    class Reference:
        @torch.no_grad()
        def step(self):
            for p, anchor, s in zip(params, anchors, state):
                if p.grad is None:
                    continue
                s["t"] += 1
                t = s["t"]
                lam = 1 / (1 + math.exp(-k * (t - t0)))
                p.sub_(lr * (1 - lam) * gamma * (p - anchor))
                p.mul_(1 - lr * wd)
                s["m"].mul_(betas[0]).add_(p.grad, alpha=1 - betas[0])
                s["v"].mul_(betas[1]).addcmul_(p.grad, p.grad, value=1 - betas[1])
                if bias_correction:
                    m_hat, v_hat = s["m"] / (1 - betas[0] ** t), s["v"] / (1 - betas[1] ** t)
                else:
                    m_hat, v_hat = s["m"], s["v"]
                p.sub_(lr * lam * m_hat / (v_hat.sqrt() + eps))

    return Reference()


def _run(make, steps=40, skip=None):
    torch.manual_seed(0)
    params = [torch.randn(20, 10, dtype=torch.float64, requires_grad=True),
              torch.randn(10, dtype=torch.float64, requires_grad=True)]
    anchors = [p.detach().clone() + 0.3 for p in params]
    optimizer = make(params, anchors)
    for step in range(steps):
        generator = torch.Generator().manual_seed(100 + step)
        for i, p in enumerate(params):
            p.grad = None if skip and skip(step, i) else torch.randn(p.shape, generator=generator, dtype=torch.float64)
        optimizer.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("kernel", [dict(fused=True), dict(foreach=True), dict(foreach=False)])
def test_update_is_the_written_out_recadam(bias_correction, kernel):
    hp = dict(lr=1e-2, gamma=5.0, k=0.3, t0=15, wd=0.1)
    skip = lambda step, i: i == 1 and step % 4 == 0  # noqa: E731 - the second tensor's own t lags behind
    expected = _run(lambda ps, an: _reference(ps, an, bias_correction=bias_correction, **hp), skip=skip)
    actual = _run(lambda ps, an: StableAdamW(
        [{"params": ps, "anchors": an, "pretrained_weight_decay": hp["gamma"], "recadam_k": hp["k"],
          "recadam_t0": hp["t0"]}], lr=hp["lr"], weight_decay=hp["wd"], bias_correction=bias_correction, **kernel),
        skip=skip)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    # the anneal matters: plain pretrained WD (constant strength, full Adam step) ends elsewhere
    plain = _run(lambda ps, an: StableAdamW([{"params": ps, "anchors": an, "pretrained_weight_decay": hp["gamma"]}],
                                            lr=hp["lr"], weight_decay=hp["wd"], bias_correction=bias_correction),
                 skip=skip)
    assert not torch.allclose(plain[0], actual[0], atol=1e-3)


def test_recadam_without_anchors_is_refused():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="recadam_k=0.5 but no pretrained_weight_decay"):
        StableAdamW([{"params": [p], "recadam_k": 0.5}])


def _train(tmp_path, out, resume=None, **overrides):
    settings = dict(max_steps=4, learning_rate=1e-3, pretrained_weight_decay=1.0, recadam_k=1.0, recadam_t0=100.0)
    settings.update(overrides)
    trainer = StableTrainer(model=tiny_model("bert", tmp_path), args=tiny_args(out, **settings),
                            train_dataset=RandomClassificationDataset())
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_early_in_the_anneal_the_encoder_is_held_at_the_pretrained_weights(tmp_path):
    # t0 = 100, k = 1: lambda(t <= 4) < e^-95, so the encoder's task step vanishes and the penalty holds it at
    # theta_pre; the new head (ordinary weight decay, no anneal) trains normally.
    trainer = _train(tmp_path, tmp_path / "held")
    start = get_fine_tuning_state(trainer.model).initial_parameters
    now = parameters_of(trainer.model)
    groups = _param_groups(trainer)
    anchored = {id(p) for g in groups if g["pretrained_weight_decay"] > 0 for p in g["params"]}
    encoder = [n for n, p in trainer.model.named_parameters() if id(p) in anchored]
    # every pretrained tensor, biases and LayerNorm included, as in the paper's script (nothing re-initialised here)
    assert set(encoder) == {n for n in now if n.startswith("bert.")}
    assert any(now[n].dim() == 1 for n in encoder)
    assert all(torch.equal(now[n], start[n]) for n in encoder)
    assert not torch.equal(now["classifier.weight"], tiny_model("bert", tmp_path).classifier.weight)
    assert {g["recadam_k"] for g in groups if g["pretrained_weight_decay"] > 0} == {1.0}
    assert {g["recadam_k"] for g in groups if g["pretrained_weight_decay"] == 0} == {0.0}
    # past t0 the task step is back: with t0 = 0, lambda >= 1/2 from the first update, the encoder moves
    moved = _train(tmp_path, tmp_path / "moved", recadam_t0=0.0)
    assert any(not torch.equal(parameters_of(moved.model)[n], start[n]) for n in encoder)


def _param_groups(trainer):
    optimizer = trainer.optimizer
    return (optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer).param_groups


def test_the_groups_are_the_papers_script(tmp_path):
    """Chen et al.'s run_glue_with_RecAdam.py: every pretrained (encoder) tensor gets the anneal and the pull toward
    theta_pre, its matrices keep the ordinary weight decay too and its biases / LayerNorm weights none; the new head
    trains with plain AdamW (weight decay on its matrix). Plain pretrained weight decay (Zhang et al.'s PriorWD)
    still anchors matrices only."""
    trainer = _train(tmp_path, tmp_path / "groups", weight_decay=0.1)
    group_of = {name: g for g in _param_groups(trainer) for name in g["param_names"]}
    for name, param in trainer.model.named_parameters():
        group, matrix = group_of[name], param.dim() >= 2
        assert group["weight_decay"] == (0.1 if matrix else 0.0), name
        if name.startswith("bert."):
            assert (group["pretrained_weight_decay"], group["recadam_k"], group["recadam_t0"]) == (1.0, 1.0, 100.0), name
        else:
            assert group["pretrained_weight_decay"] == 0 and group.get("recadam_k", 0) == 0, name
    plain = StableTrainer(model=tiny_model("bert", tmp_path), train_dataset=RandomClassificationDataset(),
                          args=tiny_args(tmp_path / "plain", max_steps=1, pretrained_weight_decay=1.0, weight_decay=0.1))
    plain.train()
    anchored = {n for g in _param_groups(plain) if g["pretrained_weight_decay"] > 0 for n in g["param_names"]}
    assert anchored == {n for n, p in plain.model.named_parameters() if n.startswith("bert.") and p.dim() >= 2}
    assert {g["weight_decay"] for g in _param_groups(plain) if g["pretrained_weight_decay"] > 0} == {0.0}


def test_an_anneal_that_misses_the_run_is_named_at_train_start(tmp_path, caplog):
    from hf_stable_ft.optim import warn_if_anneal_misses_run

    with caplog.at_level("WARNING", logger="hf_stable_ft"):
        assert warn_if_anneal_misses_run(0.1, 0.0, 189)  # lambda(1) >= 1/2: never held at theta_pre
        assert "recadam_t0=0.0" in caplog.text and "never held" in caplog.text
        caplog.clear()
        assert warn_if_anneal_misses_run(0.5, 250.0, 189)  # lambda < 1/2 to the end: the task step stays damped
        assert "recadam_t0=250.0" in caplog.text and "189" in caplog.text
        caplog.clear()
        assert not warn_if_anneal_misses_run(0.1, 50.0, 189)
        assert not warn_if_anneal_misses_run(0.0, 0.0, 189)  # RecAdam off
        assert caplog.text == ""
        _train(tmp_path, tmp_path / "t0", recadam_t0=0.0)
        assert "recadam_t0=0.0" in caplog.text


def test_resume_continues_exactly_and_other_settings_are_refused(tmp_path):
    common = dict(save_strategy="steps", save_steps=2, recadam_t0=2.0)
    full = _train(tmp_path, tmp_path / "full", **common)
    resumed = _train(tmp_path, tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2"), **common)
    for name, value in parameters_of(full.model).items():
        assert torch.equal(parameters_of(resumed.model)[name], value), name
    with pytest.raises(ValueError, match="cannot resume.*recadam_t0: checkpoint 2.0, now 3.0"):
        _train(tmp_path, tmp_path / "other", resume=str(tmp_path / "full" / "checkpoint-2"),
               save_strategy="steps", save_steps=2, recadam_t0=3.0)


def test_stock_trainer_with_the_factory_applies_it(tmp_path):
    args = tiny_args(tmp_path / "stock", max_steps=4, pretrained_weight_decay=1.0, recadam_k=1.0, recadam_t0=2.0)
    stock = Trainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset(),
                    callbacks=[StableFineTuningCallback()], optimizer_cls_and_kwargs=stable_optimizer(args))
    stock.train()
    stable = _train(tmp_path, tmp_path / "stable", recadam_t0=2.0)
    for name, value in parameters_of(stable.model).items():
        assert torch.equal(parameters_of(stock.model)[name], value), name
    # and without the factory the stock optimizer would ignore it: refused
    args = tiny_args(tmp_path / "bare", max_steps=2, pretrained_weight_decay=1.0, recadam_k=1.0)
    bare = Trainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset(),
                   callbacks=[StableFineTuningCallback()])
    with pytest.raises(RuntimeError, match="need the stable optimizer"):
        bare.train()


@pytest.mark.parametrize("settings, message", [
    (dict(recadam_k=-1.0, pretrained_weight_decay=1.0), r"^recadam_k=-1.0 is invalid; allowed: a finite float >= 0"),
    (dict(recadam_t0=float("nan")), r"^recadam_t0=nan is invalid; allowed: a finite float >= 0"),
    (dict(recadam_k=0.1), r"recadam_k=0.1 anneals the pretrained weight decay, but pretrained_weight_decay=0.0"),
])
def test_bad_values_are_refused_naming_the_field(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        tiny_args(tmp_path / "out", **settings)


def test_the_settings_record_names_recadams_annealing(tmp_path):
    from hf_stable_ft.settings_record import _optimizer_description

    args = tiny_args(tmp_path, pretrained_weight_decay=0.01, recadam_k=0.1, recadam_t0=50)
    assert _optimizer_description(args) == ("StableAdamW, bias-corrected AdamW, pretrained WD 0.01, annealed by "
                                            "RecAdam (k=0.1, t0=50) on every pretrained tensor")
    plain = tiny_args(tmp_path, pretrained_weight_decay=0.01)
    assert "RecAdam" not in _optimizer_description(plain)
