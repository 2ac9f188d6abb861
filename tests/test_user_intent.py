"""What the user asked for is what runs (issue 13 items 3–8) and nothing is silently changed on resume or reuse
(issue 14 items 4, 6, 8, and the argument checks): each test reproduces a reported defect through the real
parser or Trainer API, on tiny models."""

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from helpers import RandomClassificationDataset, parameters_of, tiny_args
from tiny_models import tiny_model
from transformers import HfArgumentParser, Trainer

from hf_stable_ft import (
    StableAdamW,
    StableFineTuningCallback,
    StableTrainer,
    StableTrainingArguments,
    get_fine_tuning_state,
    stable_optimizer,
)
from hf_stable_ft.settings_record import SETTINGS_KEY


def _parse(argv, tmp_path):
    parser = HfArgumentParser(StableTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path / "out"), *argv])
    return args


# -- 13.4: explicit values win over recipes, on every path


def test_cli_flags_equal_to_the_defaults_still_win_over_the_recipe(tmp_path):
    args = _parse(["--stability_recipe", "mosbach2021", "--learning_rate", "5e-05", "--num_train_epochs", "3"], tmp_path)
    assert (args.learning_rate, args.num_train_epochs) == (5e-05, 3.0)
    assert args.stability_sources["learning_rate"] == "explicit"
    assert args.stability_sources["weight_decay"] == "recipe mosbach2021"
    args = _parse(["--stability_recipe", "zhang2021", "--reinit_pooler", "False", "--min_train_steps", "0"], tmp_path)
    assert args.reinit_pooler is False and args.min_train_steps == 0
    assert args.auto_reinit_layers  # what was not given still comes from the recipe


def test_json_and_dict_configs_and_keyword_arguments_are_explicit(tmp_path):
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path / "o"), "stability_recipe": "devlin2019",
                                  "adam_bias_correction": True, "learning_rate": 5e-5}))
    (args,) = HfArgumentParser(StableTrainingArguments).parse_json_file(str(config))
    assert args.adam_bias_correction is True and args.learning_rate == 5e-5 and args.num_train_epochs == 3
    args = StableTrainingArguments(output_dir=str(tmp_path / "o"), stability_recipe="mosbach2021", num_train_epochs=3.0)
    assert args.num_train_epochs == 3.0 and args.learning_rate == 2e-5


def test_bare_boolean_flag_still_means_true(tmp_path):
    assert _parse(["--reinit_pooler"], tmp_path).reinit_pooler is True


def test_explicit_max_steps_is_not_raised_to_the_recipe_floor(tmp_path):
    args = tiny_args(tmp_path / "out", stability_recipe="zhang2021", max_steps=7, learning_rate=1e-3)
    trainer = StableTrainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset())
    assert trainer.train().global_step == 7


def test_explicit_max_steps_below_explicit_min_train_steps_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="max_steps=30 and min_train_steps=100"):
        tiny_args(tmp_path / "out", max_steps=30, min_train_steps=100)
    with pytest.raises(ValueError, match="max_steps=30 and min_train_steps=1000"):
        _parse(["--stability_recipe", "zhang2021", "--max_steps", "30", "--min_train_steps", "1000"], tmp_path)


# -- 13.3: optim is honoured, or refused with both fields named


def test_stable_trainer_honours_a_stock_optim_when_no_setting_needs_stable_adamw(tmp_path):
    from transformers.optimization import Adafactor

    for optim, expected in (("sgd", torch.optim.SGD), ("adafactor", Adafactor), ("adamw_torch", StableAdamW)):
        args = tiny_args(tmp_path / optim, optim=optim, reinit_layers=1)
        trainer = StableTrainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset())
        trainer.train()
        assert type(trainer.optimizer.optimizer) is expected, optim


def test_optimizer_setting_with_another_optim_is_refused_naming_both(tmp_path):
    with pytest.raises(ValueError, match=r"optim='sgd'.*adam_bias_correction=False"):
        tiny_args(tmp_path / "out", optim="sgd", adam_bias_correction=False)
    with pytest.raises(ValueError, match=r"optim='adafactor'.*layerwise_lr_decay=0.9"):
        tiny_args(tmp_path / "out", optim="adafactor", layerwise_lr_decay=0.9)


# -- 13.6: the library says what it did


def test_resolved_settings_are_logged_and_stored(tmp_path, caplog):
    args = tiny_args(tmp_path / "out", stability_recipe="zhang2021", learning_rate=1e-3, max_steps=4,
                     save_strategy="steps", save_steps=4)
    model = tiny_model("bert", tmp_path)  # 3 blocks: zhang2021 re-draws max(1, round(3/8)) = 1
    trainer = StableTrainer(model=model, args=args, train_dataset=RandomClassificationDataset())
    with caplog.at_level(logging.INFO, logger="hf_stable_ft"):
        trainer.train()
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hf_stable_ft:")]
    assert len(summary) == 1
    assert "bias-corrected AdamW" in summary[0] and "pooler + top 1 block" in summary[0]
    assert "learning_rate=0.001 (explicit)" in summary[0] and "weight_decay=0.0 (recipe zhang2021)" in summary[0]
    assert args.reinit_layers == 1  # what the saved and logged arguments show
    saved_args = torch.load(tmp_path / "out" / "checkpoint-4" / "training_args.bin", weights_only=False)
    assert saved_args.reinit_layers == 1 and saved_args.stability_sources["learning_rate"] == "explicit"
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    record = state["stateful_callbacks"][SETTINGS_KEY]
    assert record["settings"]["reinit_layers"] == {"value": 1, "source": "recipe zhang2021 (auto from depth)"}
    assert record["applied"]["reinitialized_blocks"] == 1 and record["applied"]["updates"] == 4


# -- 13.7: the stock Trainer with gradient accumulation never trains on a mis-scaled loss


def _train_losses(trainer):
    trainer.train()
    return [r["loss"] for r in trainer.state.log_history if "loss" in r]


def test_stock_trainer_with_gradient_accumulation_is_refused_until_fixed(tmp_path):
    dataset = RandomClassificationDataset(size=32)
    common = dict(gradient_accumulation_steps=2, per_device_train_batch_size=4, reinit_layers=1)
    args = tiny_args(tmp_path / "stock", **common)
    stock = Trainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=dataset,
                    callbacks=[StableFineTuningCallback()], optimizer_cls_and_kwargs=stable_optimizer(args))
    before = parameters_of(stock.model)
    with pytest.raises(RuntimeError, match="model.accepts_loss_kwargs = False"):
        stock.train()
    assert all(torch.equal(v, parameters_of(stock.model)[k]) for k, v in before.items())  # nothing trained
    fixed_model = tiny_model("bert", tmp_path)
    fixed_model.accepts_loss_kwargs = False  # the one-line fix the error gives
    args = tiny_args(tmp_path / "fixed", **common)
    fixed = _train_losses(Trainer(model=fixed_model, args=args, train_dataset=dataset,
                                  callbacks=[StableFineTuningCallback()], optimizer_cls_and_kwargs=stable_optimizer(args)))
    reference = _train_losses(StableTrainer(model=tiny_model("bert", tmp_path), train_dataset=dataset,
                                            args=tiny_args(tmp_path / "stable", **common)))
    assert fixed == pytest.approx(reference, rel=1e-6)
    # The logged loss is the mean over the accumulated batches, as without accumulation (1.43 vs 0.71 before).
    assert all(0.6 < loss < 0.8 for loss in fixed)


# -- 13.8: recipes as the papers ran them


def test_recipes_match_the_papers_configs(tmp_path):
    zhang = StableTrainingArguments(output_dir=str(tmp_path / "z"), stability_recipe="zhang2021")
    assert zhang.weight_decay == 0.0 and zhang.adam_epsilon == 1e-8  # revisit-bert-finetuning: --weight_decay 0
    mosbach = StableTrainingArguments(output_dir=str(tmp_path / "m"), stability_recipe="mosbach2021")
    assert mosbach.adam_epsilon == 1e-6 and mosbach.weight_decay == 0.01 and mosbach.num_train_epochs == 20
    # Both references: warmup_steps = int(warmup_ratio * t_total); 189 updates -> 18, not transformers' ceil (19).
    assert mosbach.get_warmup_steps(189) == int(0.1 * 189) == 18
    stock = StableTrainingArguments(output_dir=str(tmp_path / "s"), warmup_steps=0.1)
    assert stock.get_warmup_steps(189) == 19  # without a recipe, the stock Trainer's rounding


# -- 13.5: each hyper-parameter-search trial trains with exactly its own validated values


class _RecordPreparation(StableFineTuningCallback.__mro__[1]):  # a plain TrainerCallback
    def __init__(self, path):
        self.path = str(path)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        prepared = get_fine_tuning_state(model)
        with open(self.path, "a") as f:
            f.write(json.dumps({"reinit_layers": prepared.reinit_layers, "mixout_layers": len(prepared.mixout_layers),
                                "anchors": prepared.initial_parameters is not None,
                                "args": [args.reinit_layers, args.mixout_prob, args.pretrained_weight_decay],
                                "pooler": args.reinit_pooler, "trial": state.trial_params}) + "\n")


def _search_trainer(tmp_path, record):
    path = tmp_path / "pretrained"
    tiny_model("bert", tmp_path, num_layers=3).save_pretrained(path)

    def model_init(trial=None):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(path)

    args = tiny_args(tmp_path / "search", max_steps=2, eval_strategy="no", logging_steps=1)
    return StableTrainer(model_init=model_init, args=args, train_dataset=RandomClassificationDataset(size=16),
                         eval_dataset=RandomClassificationDataset(size=8, seed=1),
                         callbacks=[_RecordPreparation(record)])


def test_optuna_trials_train_with_their_own_values(tmp_path):
    optuna = pytest.importorskip("optuna")
    record = tmp_path / "record.jsonl"
    trainer = _search_trainer(tmp_path, record)
    # Every trial differs from the one before it in every model-changing value, so one trial late shows.
    plans = {0: (0, 0.0, 0.1), 1: (1, 0.1, 0.0), 2: (2, 0.2, 0.0)}

    def hp_space(trial):
        layers = trial.suggest_categorical("reinit_layers", [0, 1, 2])
        _, mixout, prior_wd = plans[layers]
        return {"reinit_layers": layers, "mixout_prob": mixout, "pretrained_weight_decay": prior_wd}

    trainer.hyperparameter_search(hp_space=hp_space, backend="optuna", n_trials=3, direction="minimize",
                                  sampler=optuna.samplers.GridSampler({"reinit_layers": [0, 1, 2]}, seed=0))
    rows = [json.loads(line) for line in record.read_text().splitlines()][-3:]
    assert sorted(row["trial"]["reinit_layers"] for row in rows) == [0, 1, 2]
    for row in rows:
        layers, mixout, prior_wd = plans[row["trial"]["reinit_layers"]]
        assert row["args"] == [layers, mixout, prior_wd]
        assert row["reinit_layers"] == layers
        assert (row["mixout_layers"] > 0) == (mixout > 0)
        assert row["anchors"] == (prior_wd > 0)


def test_optuna_trial_values_are_validated_and_recipes_applied(tmp_path):
    pytest.importorskip("optuna")
    record = tmp_path / "record.jsonl"
    trainer = _search_trainer(tmp_path, record)
    trainer.hyperparameter_search(hp_space=lambda t: {"stability_recipe": t.suggest_categorical("r", ["zhang2021"])},
                                  backend="optuna", n_trials=1, direction="minimize")
    # "r" is not a field; a recipe must be named by its field: nothing applied, as the Trainer does for unknown keys
    trainer.hyperparameter_search(
        hp_space=lambda t: {"stability_recipe": t.suggest_categorical("stability_recipe", ["zhang2021"])},
        backend="optuna", n_trials=1, direction="minimize")
    row = json.loads(record.read_text().splitlines()[-1])
    assert row["pooler"] is True and row["reinit_layers"] == 1  # the recipe's re-init, resolved for 3 blocks
    with pytest.raises(ValueError, match=r"mixout_prob=1.155 is invalid"):
        trainer.hyperparameter_search(hp_space=lambda t: {"mixout_prob": t.suggest_float("mixout_prob", 1.155, 1.155)},
                                      backend="optuna", n_trials=1, direction="minimize")


@pytest.mark.timeout(300)
def test_ray_tune_trials_train_with_their_own_values(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("ray.tune")
    worker = Path(__file__).parent / "ray_search_worker.py"
    subprocess.run([sys.executable, str(worker), str(tmp_path)], check=True, timeout=280,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    rows = [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]
    trial_rows = [r for r in rows if r["trial"]]
    assert sorted(r["reinit_layers"] for r in trial_rows) == [0, 2]
    for row in trial_rows:
        assert row["reinit_layers"] == row["trial"]["reinit_layers"] == row["args"][0]
        assert row["mixout_layers"] > 0 and row["args"][1] == 0.2


# -- 14.4: resume with other technique settings is refused before training


def _checkpointed_run(tmp_path, **settings):
    args = tiny_args(tmp_path / "run", max_steps=4, save_strategy="steps", save_steps=2, **settings)
    StableTrainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset()).train()
    return str(tmp_path / "run" / "checkpoint-2")


@pytest.mark.parametrize("changed", [dict(layerwise_lr_decay=0.5), dict(pretrained_weight_decay=0.1),
                                     dict(adam_bias_correction=True), dict(mixout_prob=0.1)])
def test_resume_with_other_settings_is_refused_listing_the_fields(tmp_path, changed):
    original = dict(layerwise_lr_decay=0.8, adam_bias_correction=False)
    checkpoint = _checkpointed_run(tmp_path, **original)
    args = tiny_args(tmp_path / "again", max_steps=4, **dict(original, **changed))
    trainer = StableTrainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset())
    field = next(iter(changed))
    with pytest.raises(ValueError, match=rf"cannot resume.*{field}: checkpoint"):
        trainer.train(resume_from_checkpoint=checkpoint)
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("changed", [dict(pretrained_weight_decay=0.1), dict(reinit_layers=1)])
def test_stock_trainer_resume_with_other_group_structure_is_refused_by_name(tmp_path, changed):
    # These change the optimizer's groups, which torch's load_state_dict would reject with a bare group-count
    # error before any callback runs; StableAdamW's load_state_dict names the settings instead.
    checkpoint = _checkpointed_run(tmp_path, layerwise_lr_decay=0.8)
    args = tiny_args(tmp_path / "again", max_steps=4, layerwise_lr_decay=0.8, **changed)
    trainer = Trainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset(),
                      callbacks=[StableFineTuningCallback()], optimizer_cls_and_kwargs=stable_optimizer(args))
    field = next(iter(changed))
    with pytest.raises(ValueError, match=rf"cannot resume.*{field}: checkpoint"):
        trainer.train(resume_from_checkpoint=checkpoint)


def test_stock_trainer_resume_with_other_llrd_is_refused(tmp_path):
    checkpoint = _checkpointed_run(tmp_path, layerwise_lr_decay=0.8)
    args = tiny_args(tmp_path / "again", max_steps=4, layerwise_lr_decay=0.5)
    trainer = Trainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset(),
                      callbacks=[StableFineTuningCallback()], optimizer_cls_and_kwargs=stable_optimizer(args))
    with pytest.raises(ValueError, match="layerwise_lr_decay: checkpoint 0.8, now 0.5"):
        trainer.train(resume_from_checkpoint=checkpoint)


# -- 14.6: a model prepared with other settings is refused


def test_a_model_prepared_by_one_trainer_is_refused_by_another_with_other_settings(tmp_path):
    model = tiny_model("bert", tmp_path)
    StableTrainer(model=model, args=tiny_args(tmp_path / "a", reinit_layers=1), train_dataset=RandomClassificationDataset())
    StableTrainer(model=model, args=tiny_args(tmp_path / "b", reinit_layers=1), train_dataset=RandomClassificationDataset())
    for other in (dict(reinit_layers=2), dict(reinit_layers=1, mixout_prob=0.1), dict(reinit_layers=1, seed=3),
                  dict(reinit_layers=1, pretrained_weight_decay=0.1)):
        with pytest.raises(ValueError, match="already prepared by hf_stable_ft with other settings"):
            StableTrainer(model=model, args=tiny_args(tmp_path / "c", **other), train_dataset=RandomClassificationDataset())


# -- 14.8: StableTrainingArguments in the stock Trainer without the callback


@pytest.mark.parametrize("settings", [dict(mixout_prob=0.1), dict(abort_degenerate_runs=True, learning_rate=1e30),
                                      dict(diagnostics_steps=1), dict(reinit_pooler=True)])
def test_settings_without_the_callback_are_refused_before_the_first_update(tmp_path, settings):
    model = tiny_model("bert", tmp_path)
    before = parameters_of(model)
    trainer = Trainer(model=model, args=tiny_args(tmp_path / "out", **settings), train_dataset=RandomClassificationDataset())
    with pytest.raises(RuntimeError, match=r"applied by StableFineTuningCallback.*callbacks=\[StableFineTuningCallback\(\)\]"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(v, parameters_of(model)[k]) for k, v in before.items())


def test_plain_arguments_in_the_stock_trainer_train_as_stock(tmp_path):
    trainer = Trainer(model=tiny_model("bert", tmp_path), args=tiny_args(tmp_path / "out", max_steps=2),
                      train_dataset=RandomClassificationDataset())
    assert trainer.train().global_step == 2


# -- 14: bad values refused at construction, naming the field


@pytest.mark.parametrize(
    "field, value",
    [("pretrained_weight_decay", float("inf")), ("reinit_layers", True), ("weight_decay", -0.01), ("adam_beta1", 1.0),
     ("adam_beta2", 1.5), ("adam_epsilon", 0.0), ("learning_rate", float("nan")), ("mixout_prob", float("nan")),
     ("adam_bias_correction", "false"), ("layerwise_lr_decay", float("inf"))],
)
def test_bad_values_are_refused_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"^{field}=.* is invalid; allowed: "):
        tiny_args(tmp_path / "out", **{field: value})


# -- 13.6 in sweeps: every record shows where each value came from


def test_sweep_records_show_resolved_values_and_their_sources(tmp_path):
    from scale_fixtures import save_tiny_bert_with_tokenizer, write_rte

    from hf_stable_ft.experiment import SweepConfig, read_finished_runs, run_sweep

    config = SweepConfig(task="rte", model=str(save_tiny_bert_with_tokenizer(tmp_path / "model")),
                         recipes=["zhang2021"], seeds=[0], data_dir=str(write_rte(tmp_path / "glue", 32, 16)),
                         evaluations_per_run=1,
                         training={"max_steps": 2, "per_device_train_batch_size": 8, "use_cpu": True,
                                   "learning_rate": 1e-3})
    run_sweep(config, tmp_path / "sweep", progress=False)
    settings = read_finished_runs(tmp_path / "sweep" / "runs.jsonl")["zhang2021/seed=0"]["settings"]
    applied = settings[SETTINGS_KEY]
    assert applied["settings"]["learning_rate"] == {"value": 1e-3, "source": "explicit"}
    assert applied["settings"]["weight_decay"] == {"value": 0.0, "source": "recipe zhang2021"}
    assert settings["reinit_layers"] == applied["applied"]["reinitialized_blocks"] >= 1
    assert applied["applied"]["updates"] == 2  # the explicit max_steps, not the recipe's 1000-update floor


def test_cli_flags_are_never_abbreviations_of_other_flags():
    from hf_stable_ft.cli import _build_parser, parse_training_flags

    with pytest.raises((SystemExit, ValueError)):
        parse_training_flags(["--reinit_layer", "2"])  # not silently --reinit_layers 2
    options, rest = _build_parser().parse_known_args(["sweep", "--output", "o", "--seed", "3"])
    assert options.seeds != "3" and rest == ["--seed", "3"]  # the training seed, not the sweep's --seeds


def test_recipe_variant_values_are_parsed_as_their_flags():
    from hf_stable_ft.experiment import parse_recipe

    spec = parse_recipe("v=mosbach2021:adam_bias_correction=no:learning_rate=2e-5:reinit_layers=1")
    assert dict(spec.overrides) == {"adam_bias_correction": False, "learning_rate": 2e-5, "reinit_layers": 1}
    assert dict(parse_recipe("s=none:optim=sgd:abort_degenerate_runs=1").overrides) == {
        "optim": "sgd", "abort_degenerate_runs": True}
    with pytest.raises(ValueError, match=r"recipe 'v': reinit_layers: .*expected one int value"):
        parse_recipe("v=mosbach2021:reinit_layers=1.5")
    with pytest.raises(ValueError, match=r"recipe 'v': 'reinit_layer' is not a StableTrainingArguments field "
                                         r"\(did you mean reinit_layers"):
        parse_recipe("v=mosbach2021:reinit_layer=1")
