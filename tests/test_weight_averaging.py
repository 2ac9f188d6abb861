"""Weight averaging (EMA with Adam-style bias correction; SWA): against the written-out averages on tiny models,
used for evaluation and the saved model, stored in checkpoints and resumed exactly, refused where it cannot apply."""

import pytest
import torch
from helpers import RandomClassificationDataset, parameters_of, tiny_args
from tiny_models import tiny_model
from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback

from hf_stable_ft import StableFineTuningCallback, StableTrainer, stable_optimizer
from hf_stable_ft.weight_averaging import (
    WEIGHT_AVERAGE_FILE,
    averaged_parameters,
    ema_weight,
    load_weight_average,
    swa_start_step,
)


class _Recorder(TrainerCallback):
    """The training weights after every update."""

    def __init__(self):
        self.snapshots = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.snapshots.append({n: p.detach().clone() for n, p in averaged_parameters(model)})


def _train(tmp_path, out, resume=None, recorder=None, **overrides):
    settings = dict(max_steps=6, learning_rate=1e-3)
    settings.update(overrides)
    trainer = StableTrainer(model=tiny_model("bert", tmp_path), args=tiny_args(out, **settings),
                            train_dataset=RandomClassificationDataset(),
                            eval_dataset=RandomClassificationDataset(size=8, seed=1),
                            callbacks=[recorder] if recorder is not None else None)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _ema_reference(snapshots, beta):
    """e_t = beta*e_(t-1) + (1-beta)*theta_t from e_0 = 0, divided by (1 - beta^t): written out, in float64."""
    e = {n: torch.zeros_like(v, dtype=torch.float64) for n, v in snapshots[0].items()}
    for theta in snapshots:
        e = {n: beta * e[n] + (1 - beta) * theta[n].double() for n in e}
    t = len(snapshots)
    return {n: v / (1 - beta**t) for n, v in e.items()}


def _assert_params_close(model, reference, **tol):
    params = dict(averaged_parameters(model))
    assert set(params) == set(reference)
    for name, value in reference.items():
        torch.testing.assert_close(params[name].detach().double(), value.double(), msg=name, **tol)


def test_ema_weight_is_the_bias_corrected_recursion():
    assert ema_weight(0.9, 1) == 1.0  # the first average is the first weights, not 0.1 of them
    assert ema_weight(0.9, 2) == pytest.approx(0.1 / 0.19)
    beta, t = 0.95, 7
    # the weights (1-beta)*beta^(t-s)/(1-beta^t) of updates s = 1..t sum to 1
    assert sum((1 - beta) * beta ** (t - s) / (1 - beta**t) for s in range(1, t + 1)) == pytest.approx(1.0)
    assert swa_start_step(0.75, 8) == 7 and swa_start_step(0.0, 8) == 1 and swa_start_step(0.5, 7) == 4


def test_ema_is_the_written_out_average_and_training_is_unchanged(tmp_path):
    recorder = _Recorder()
    trainer = _train(tmp_path, tmp_path / "ema", recorder=recorder, weight_averaging="ema", ema_decay=0.9)
    assert len(recorder.snapshots) == 6
    _assert_params_close(trainer.model, _ema_reference(recorder.snapshots, 0.9), rtol=1e-5, atol=1e-7)
    # the average differs from the last training weights (the test would pass trivially otherwise)
    last = recorder.snapshots[-1]
    assert any(not torch.allclose(p, last[n]) for n, p in averaged_parameters(trainer.model))
    # averaging never touches training: the same trajectory as without it
    plain = _train(tmp_path, tmp_path / "plain")
    for name, value in parameters_of(plain.model).items():
        if name in last:
            assert torch.equal(last[name], value), name
    record = trainer.state.stateful_callbacks["hf_stable_ft_weight_averaging"]
    assert record == {"mode": "ema", "ema_decay": 0.9, "first_averaged_update": 1, "averaged_updates": 6}


def test_swa_is_the_mean_of_the_last_fraction(tmp_path):
    recorder = _Recorder()
    trainer = _train(tmp_path, tmp_path / "swa", recorder=recorder, max_steps=8, weight_averaging="swa",
                     swa_start_fraction=0.5)
    last = recorder.snapshots[4:]  # updates 5..8: floor(0.5 * 8) + 1 = 5
    reference = {n: sum(s[n].double() for s in last) / len(last) for n in last[0]}
    _assert_params_close(trainer.model, reference, rtol=1e-5, atol=1e-7)
    assert trainer.weight_averaging_callback.count == 4


def test_evaluation_during_training_scores_the_average(tmp_path):
    recorder = _Recorder()
    trainer = _train(tmp_path, tmp_path / "eval", recorder=recorder, weight_averaging="ema", ema_decay=0.8,
                     eval_strategy="steps", eval_steps=3, max_steps=3)
    logged = next(r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r and r["step"] == 3)
    model = tiny_model("bert", tmp_path)
    with torch.no_grad():
        named = dict(model.named_parameters())
        for name, value in _ema_reference(recorder.snapshots[:3], 0.8).items():
            named[name].copy_(value)
    eval_set = RandomClassificationDataset(size=8, seed=1)
    batch = {k: torch.stack([eval_set[i][k] for i in range(8)]) for k in ("input_ids", "attention_mask", "labels")}
    model.eval()
    with torch.no_grad():
        expected = model(**batch).loss.item()
    assert logged == pytest.approx(expected, rel=1e-5)
    # ... and the training weights were restored after the evaluation (the recorder saw them after update 3)
    last_training = recorder.snapshots[-1]
    assert any(not torch.allclose(p, last_training[n]) for n, p in averaged_parameters(trainer.model))


def test_save_model_writes_the_average(tmp_path):
    trainer = _train(tmp_path, tmp_path / "save", weight_averaging="ema", ema_decay=0.9)
    trainer.save_model(str(tmp_path / "saved"))
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    averaged = dict(averaged_parameters(trainer.model))
    for name, value in saved.named_parameters():
        assert torch.equal(value, averaged[name].detach()), name


@pytest.mark.parametrize("settings", [dict(weight_averaging="ema", ema_decay=0.9),
                                      dict(weight_averaging="swa", swa_start_fraction=0.2)])
def test_resume_continues_exactly(tmp_path, settings):
    common = dict(save_strategy="steps", save_steps=2, **settings)
    full = _train(tmp_path, tmp_path / "full", **common)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    stored = load_weight_average(checkpoint)
    # SWA from update floor(0.2*6)+1 = 2: one update averaged at checkpoint-2; EMA: two
    assert stored["count"] == (2 if settings["weight_averaging"] == "ema" else 1)
    resumed = _train(tmp_path, tmp_path / "resumed", resume=str(checkpoint), **common)
    for name, value in parameters_of(full.model).items():  # the averages
        assert torch.equal(parameters_of(resumed.model)[name], value), name
    # the training weights, as the last checkpoints hold them
    a = AutoModelForSequenceClassification.from_pretrained(tmp_path / "full" / "checkpoint-6")
    b = AutoModelForSequenceClassification.from_pretrained(tmp_path / "resumed" / "checkpoint-6")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert (tmp_path / "resumed" / "checkpoint-6" / WEIGHT_AVERAGE_FILE).is_file()


def test_resume_with_other_averaging_settings_is_refused(tmp_path):
    _train(tmp_path, tmp_path / "full", save_strategy="steps", save_steps=2, weight_averaging="ema", ema_decay=0.9)
    with pytest.raises(ValueError, match="cannot resume.*ema_decay: checkpoint 0.9, now 0.8"):
        _train(tmp_path, tmp_path / "again", resume=str(tmp_path / "full" / "checkpoint-2"),
               weight_averaging="ema", ema_decay=0.8)
    (tmp_path / "full" / "checkpoint-2" / WEIGHT_AVERAGE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="weight_average.pt not found"):
        _train(tmp_path, tmp_path / "again2", resume=str(tmp_path / "full" / "checkpoint-2"),
               weight_averaging="ema", ema_decay=0.9)


def test_stock_trainer_is_refused(tmp_path):
    args = tiny_args(tmp_path / "out", max_steps=2, weight_averaging="ema")
    trainer = Trainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset(),
                      callbacks=[StableFineTuningCallback()], optimizer_cls_and_kwargs=stable_optimizer(args))
    with pytest.raises(RuntimeError, match="weight_averaging='ema' are applied only by StableTrainer"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("field, value", [("weight_averaging", "mean"), ("ema_decay", 1.0), ("ema_decay", 0.0),
                                          ("swa_start_fraction", 1.0), ("swa_start_fraction", -0.1)])
def test_bad_values_are_refused_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"^{field}=.* is invalid; allowed: "):
        tiny_args(tmp_path / "out", **{field: value})


def test_load_best_model_at_end_is_refused(tmp_path):
    with pytest.raises(ValueError, match="weight_averaging='swa' with load_best_model_at_end=True is refused"):
        tiny_args(tmp_path / "out", weight_averaging="swa", load_best_model_at_end=True, eval_strategy="steps",
                  save_strategy="steps")


@pytest.mark.parametrize("mode", ["ema", "swa"])
def test_composes_with_every_switch(tmp_path, mode):
    recorder = _Recorder()
    trainer = _train(
        tmp_path, tmp_path / mode, recorder=recorder, weight_averaging=mode, ema_decay=0.9, swa_start_fraction=0.5,
        max_steps=4, adam_bias_correction=False, reinit_pooler=True, reinit_layers=1, layerwise_lr_decay=0.9,
        pretrained_weight_decay=0.01, recadam_k=0.5, recadam_t0=2, mixout_prob=0.1, noisytune_intensity=0.15,
        child_tuning_mode="F", r3f_lambda=1.0, diagnostics_steps=2, degenerate_check_fraction=0.5,
        gradient_accumulation_steps=2, per_device_train_batch_size=4,
    )
    snapshots = recorder.snapshots
    reference = _ema_reference(snapshots, 0.9) if mode == "ema" else {
        n: sum(s[n].double() for s in snapshots[2:]) / 2 for n in snapshots[0]}
    _assert_params_close(trainer.model, reference, rtol=1e-5, atol=1e-7)


def test_an_ema_window_longer_than_half_the_run_is_warned_about_and_kept(tmp_path, caplog):
    from hf_stable_ft.weight_averaging import ema_window, warn_if_window_too_long

    assert ema_window(0.99) == pytest.approx(100.0) and ema_window(0.5) == pytest.approx(2.0)
    with caplog.at_level("WARNING", logger="hf_stable_ft"):
        assert warn_if_window_too_long(0.99, 189)  # the measured collapse: a 100-update window in 189 updates
        assert not warn_if_window_too_long(0.99, 200)  # exactly half: no warning
        assert not warn_if_window_too_long(0.999, 5000)
    assert "ema_decay=0.99 averages over about 100 updates" in caplog.text and "189" in caplog.text

    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_stable_ft"):
        trainer = _train(tmp_path, tmp_path / "long", weight_averaging="ema", ema_decay=0.9)  # window 10 > 6 / 2
    assert "ema_decay=0.9 averages over about 10 updates" in caplog.text and "run's 6" in caplog.text
    assert trainer.weight_averaging_callback.ema_decay == 0.9  # warned, not changed
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_stable_ft"):
        _train(tmp_path, tmp_path / "short", weight_averaging="ema", ema_decay=0.5)  # window 2 <= 3
    assert "averages over about" not in caplog.text
