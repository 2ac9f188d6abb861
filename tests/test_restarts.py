"""restart_degenerate_runs: a degenerate attempt (forced collapse for the first seed) is re-drawn with the next seed
inside one train() call; the returned attempt is bit-identical to a first-try run with its seed; every attempt is
recorded; resume continues the current attempt; refused where it cannot apply."""

import json

import pytest
import torch
from helpers import RandomClassificationDataset, parameters_of, tiny_args
from tiny_models import tiny_model
from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, set_seed

from hf_stable_ft import StableFineTuningCallback, StableTrainer, stable_optimizer
from hf_stable_ft.restarts import RESTARTS_KEY


class _Collapse(TrainerCallback):
    """Forces a collapse: NaN in the head after update 1 for the seeds in ``seeds``."""

    def __init__(self, seeds):
        self.seeds = set(seeds)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if args.seed in self.seeds and state.global_step == 1:
            with torch.no_grad():
                model.classifier.weight.fill_(float("nan"))


def _model_init(tmp_path):
    path = tmp_path / "pretrained"
    if not path.exists():
        tiny_model("bert", tmp_path).save_pretrained(path)
    return lambda trial=None: AutoModelForSequenceClassification.from_pretrained(path)


SETTINGS = dict(max_steps=4, abort_degenerate_runs=True, reinit_layers=1, noisytune_intensity=0.15)


def _trainer(tmp_path, out, collapse=(7,), **overrides):
    settings = dict(SETTINGS, restart_degenerate_runs=2)
    settings.update(overrides)
    return StableTrainer(model_init=_model_init(tmp_path), args=tiny_args(out, **settings),
                         train_dataset=RandomClassificationDataset(), callbacks=[_Collapse(collapse)])


def test_a_collapsed_first_seed_is_restarted_and_the_healthy_attempt_returned(tmp_path):
    trainer = _trainer(tmp_path, tmp_path / "out", save_strategy="steps", save_steps=1)
    output = trainer.train()
    assert output.global_step == 4
    record = trainer.state.stateful_callbacks[RESTARTS_KEY]
    first, second = record["attempts"]
    assert (first["attempt"], first["seed"], first["data_seed"], first["degenerate"]) == (0, 7, 7, True)
    assert first["alarm"] == {"step": 2, "reason": "nonfinite"} and first["global_step"] == 2
    assert any(r.get("degenerate_alarm") for r in first["log_history"])  # the failed attempt's log is kept
    assert (second["attempt"], second["seed"], second["data_seed"], second["degenerate"]) == (1, 8, 8, False)
    assert record["restarted"] is True and record["failed_attempts"] == 1 and record["returned_attempt"] == 1
    assert record["healthy"] is True
    # the returned attempt's log says it is a restart, and has no alarm
    assert trainer.state.log_history[0] == {"restart/attempt": 1, "restart/seed": 8, "restart/failed_attempts": 1,
                                            "step": 0}
    assert not any(r.get("degenerate_alarm") for r in trainer.state.log_history)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert (trainer.args.seed, trainer.args.data_seed) == (7, 7)  # what the user gave
    # the failed attempt's checkpoints are kept aside; output_dir holds the returned attempt's
    aside = tmp_path / "out" / "degenerate-attempt-0-seed-7"
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    stored = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert stored["stateful_callbacks"][RESTARTS_KEY]["current"]["seed"] == 8

    # attempt 1 is exactly what a first-try run with seed 8 / data_seed 8 gives (head, re-init, noise, data order)
    plain = StableTrainer(model_init=_model_init(tmp_path), args=tiny_args(tmp_path / "plain", **SETTINGS, seed=8,
                                                                             data_seed=8),
                          train_dataset=RandomClassificationDataset())
    plain.train()
    for name, value in parameters_of(plain.model).items():
        assert torch.equal(parameters_of(trainer.model)[name], value), name


def test_a_healthy_first_attempt_is_not_restarted(tmp_path):
    trainer = _trainer(tmp_path, tmp_path / "out", collapse=())
    trainer.train()
    record = trainer.state.stateful_callbacks[RESTARTS_KEY]
    assert [a["seed"] for a in record["attempts"]] == [7]
    assert record["restarted"] is False and record["failed_attempts"] == 0 and record["healthy"] is True


def test_a_healthy_first_attempt_is_the_run_without_restarts(tmp_path):
    """Switching restarts on must not change a seed that never fires the alarm: attempt 0 is the run a user gets
    with ``model=`` (built after ``set_seed``) and no restarts — same dropout masks, same data order (reported:
    `zhang+restart2` and `zhang2021` differed from update 20 on although the alarm never fired)."""
    # a pretrained encoder without the task head, so building the model draws the head from the global RNG (as
    # from_pretrained of any Hub encoder does); data_seed unset, as in a script that sets only seed
    encoder = tmp_path / "encoder"
    tiny_model("bert", tmp_path).bert.save_pretrained(encoder)

    def model_init(trial=None):
        set_seed(7)  # the head drawn from the run's seed, as a user's model_init (and run_experiment's) does
        return AutoModelForSequenceClassification.from_pretrained(encoder, num_labels=2)

    settings = dict(SETTINGS, max_steps=6, restart_degenerate_runs=2)
    with_restarts = StableTrainer(model_init=model_init, args=tiny_args(tmp_path / "restarts", **settings,
                                                                        data_seed=None),
                                  train_dataset=RandomClassificationDataset())
    with_restarts.train()
    assert with_restarts.state.stateful_callbacks[RESTARTS_KEY]["restarted"] is False
    plain = StableTrainer(model=model_init(), args=tiny_args(tmp_path / "plain", **dict(SETTINGS, max_steps=6),
                                                        data_seed=None),
                          train_dataset=RandomClassificationDataset())
    plain.train()
    assert [r["loss"] for r in plain.state.log_history if "loss" in r] == \
        [r["loss"] for r in with_restarts.state.log_history if "loss" in r]
    for name, value in parameters_of(plain.model).items():
        assert torch.equal(parameters_of(with_restarts.model)[name], value), name


def test_at_most_n_restarts_and_the_last_attempt_stays_flagged(tmp_path):
    trainer = _trainer(tmp_path, tmp_path / "out", collapse=(7, 8, 9, 10), restart_degenerate_runs=2)
    output = trainer.train()
    record = trainer.state.stateful_callbacks[RESTARTS_KEY]
    assert [(a["seed"], a["degenerate"]) for a in record["attempts"]] == [(7, True), (8, True), (9, True)]
    assert record["healthy"] is False and record["restarted"] is True and record["returned_attempt"] == 2
    assert output.global_step == 2
    assert any(r.get("degenerate_alarm/aborted") for r in trainer.state.log_history)


def test_resume_continues_the_current_attempt_exactly(tmp_path):
    full = _trainer(tmp_path, tmp_path / "full", save_strategy="steps", save_steps=2)
    full.train()
    resumed = _trainer(tmp_path, tmp_path / "resumed", save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))  # attempt 1's (0's moved aside)
    record = resumed.state.stateful_callbacks[RESTARTS_KEY]
    assert [(a["seed"], a["degenerate"]) for a in record["attempts"]] == [(7, True), (8, False)]
    for name, value in parameters_of(full.model).items():
        assert torch.equal(parameters_of(resumed.model)[name], value), name


def test_without_model_init_it_is_refused(tmp_path):
    args = tiny_args(tmp_path / "out", **SETTINGS, restart_degenerate_runs=1)
    trainer = StableTrainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset())
    with pytest.raises(RuntimeError, match="restart_degenerate_runs=1 rebuilds the model.*needs model_init"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_without_the_alarm_stopping_runs_it_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"restart_degenerate_runs=2 .* allowed: .*abort_degenerate_runs=True"):
        tiny_args(tmp_path / "out", restart_degenerate_runs=2, degenerate_check_fraction=0.3)
    with pytest.raises(ValueError, match=r"^restart_degenerate_runs=-1 is invalid; allowed: an integer >= 0"):
        tiny_args(tmp_path / "out", restart_degenerate_runs=-1)


def test_stock_trainer_is_refused(tmp_path):
    args = tiny_args(tmp_path / "out", max_steps=4, abort_degenerate_runs=True, restart_degenerate_runs=1)
    trainer = Trainer(model_init=_model_init(tmp_path), args=args, train_dataset=RandomClassificationDataset(),
                      callbacks=[StableFineTuningCallback()], optimizer_cls_and_kwargs=stable_optimizer(args))
    with pytest.raises(RuntimeError, match="restart_degenerate_runs=1 are applied only by StableTrainer"):
        trainer.train()
