"""run_trainer_sweep: a seed study of a user's own Trainer-building function (issue #16, part 1).

The reference is the CLI's sweep: a factory that builds the very Trainer ``run_single`` builds must give the same
records, score for score; everything a factory can get wrong is refused before the directory is touched.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sweep_fixtures import fast_training, make_tiny, sweep_config
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from hf_stable_ft import experiment, plan_trainer_sweep, run_trainer_sweep, trainer_class_for
from hf_stable_ft.experiment import prepare_task, read_finished_runs, run_sweep
from hf_stable_ft.metrics import compute_metrics_for
from hf_stable_ft.report import write_report

SCORES = ("status", "eval_history", "best_validation", "best_step", "test_at_best_validation", "final_validation",
          "final_test", "train_loss", "global_step", "degenerate", "majority_baseline", "constant_prediction_loss")
RECIPES = ["stock", "devlin2019", "reinit1=devlin2019:adam_bias_correction=true:reinit_layers=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def prepared(tiny):
    return prepare_task(sweep_config(tiny, ["stock"], [0], evaluations=2, steps=4))


def factory(prepared, *, trainer_cls=None, eval_dataset="both", train_dataset=None, own_args=False, metrics=None,
            model_init=False):
    """A user's Trainer script as a function: the Trainer ``run_single`` builds, with knobs to get it wrong."""
    def make_trainer(args):
        splits = {"validation": prepared.datasets["validation"], "test": prepared.datasets["test"]}
        evaluation = {"both": splits, "validation-only": splits["validation"], "none": None,
                      "other-keys": {"dev": splits["validation"]}}[eval_dataset]
        cls = trainer_cls or trainer_class_for(args)
        build = {"model_init": lambda trial=None: experiment._fresh_model(prepared, args.seed)} if model_init else {
            "model": experiment._fresh_model(prepared, args.seed)}
        return cls(
            **build,
            args=TrainingArguments(output_dir=args.output_dir) if own_args else args,
            train_dataset=prepared.datasets["train"] if train_dataset is None else train_dataset,
            eval_dataset=evaluation,
            data_collator=DataCollatorWithPadding(prepared.tokenizer),
            processing_class=prepared.tokenizer,
            compute_metrics=metrics or compute_metrics_for(prepared.task),
        )
    return make_trainer


def _sweep(prepared, output, recipes=("stock",), seeds=(0,), **kwargs):
    make_trainer = kwargs.pop("make_trainer", None) or factory(prepared)
    return run_trainer_sweep(make_trainer, output, metric="accuracy", recipes=list(recipes), seeds=list(seeds),
                             training=fast_training(4), evaluations_per_run=2, name="RTE", progress=False, **kwargs)


def test_a_factory_building_the_cli_trainer_gives_the_cli_sweeps_records(tiny, prepared, tmp_path):
    cli = read_finished_runs(run_sweep(sweep_config(tiny, RECIPES, [0, 1], evaluations=2, steps=4),
                                       tmp_path / "cli", progress=False))
    path = _sweep(prepared, tmp_path / "python", recipes=RECIPES, seeds=(0, 1))
    mine = read_finished_runs(path)
    assert sorted(mine) == sorted(cli) and len(mine) == 6
    for run_id, record in cli.items():
        assert record["status"] == "finished", record.get("error")
        for key in SCORES:
            assert mine[run_id].get(key) == record.get(key), (run_id, key)
        # the run's seed and the recipe's fields reached the user's Trainer through args
        assert mine[run_id]["settings"]["seed"] == record["settings"]["seed"]
        assert mine[run_id]["settings"].get("adam_bias_correction") == record["settings"].get("adam_bias_correction")
    assert mine["reinit1/seed=0"]["settings"]["resolved_reinit_layers"] == 1
    assert cli["stock/seed=0"]["train_loss"] != cli["stock/seed=1"]["train_loss"]  # the seeds really differ
    assert mine["stock/seed=0"]["primary_metric_greater_is_better"] is True
    sweep = json.loads((tmp_path / "python" / "sweep.json").read_text())
    assert sweep["config"]["factory"].endswith("factory.<locals>.make_trainer")
    assert sweep["config"]["metric"] == "accuracy"
    summary = write_report(tmp_path / "python")  # the same report
    assert "reinit1" in (tmp_path / "python" / "report.md").read_text() and summary is not None


def test_the_baseline_is_the_training_majority_class_scored_by_the_users_metric(prepared, tmp_path):
    record = next(iter(read_finished_runs(_sweep(prepared, tmp_path / "s")).values()))
    train = np.asarray(prepared.datasets["train"]["label"][:])
    majority = int(np.bincount(train).argmax())
    for split in ("validation", "test"):
        labels = np.asarray(prepared.datasets[split]["label"][:])
        assert record["majority_baseline"][split] == pytest.approx(float(np.mean(labels == majority)))
    p = np.bincount(train) / len(train)
    assert record["constant_prediction_loss"] == pytest.approx(float(-(p * np.log(p)).sum()))


def test_one_eval_dataset_is_the_validation_split_and_resume_runs_only_the_new_seeds(prepared, tmp_path):
    make_trainer = factory(prepared, eval_dataset="validation-only")
    path = _sweep(prepared, tmp_path / "s", make_trainer=make_trainer)
    first = read_finished_runs(path)["stock/seed=0"]
    assert set(first["majority_baseline"]) == {"validation"} and first["test_at_best_validation"] is None
    assert first["best_validation"] is not None
    _sweep(prepared, tmp_path / "s", make_trainer=make_trainer)  # nothing left to do
    _sweep(prepared, tmp_path / "s", seeds=(0, 1), make_trainer=make_trainer)  # only seed 1 is new
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["run_id"] for r in lines] == ["stock/seed=0", "stock/seed=1"]


def test_plan_trainer_sweep_says_what_the_sweep_would_run_without_calling_the_factory(prepared, tmp_path):
    """The dry run of ``run_trainer_sweep``: the runs left (seed-major), a failed record marked as a retry, and the
    sweep's own refusals, without one call of ``make_trainer`` and without touching the directory."""
    calls = []
    make_trainer = factory(prepared)

    def counting(args):
        calls.append(args.seed)
        return make_trainer(args)

    kwargs = dict(metric="accuracy", recipes=["stock", "devlin2019"], training=fast_training(4),
                  evaluations_per_run=2, name="RTE")
    out = tmp_path / "s"
    plan = plan_trainer_sweep(counting, out, seeds=[0, 1], **kwargs)
    assert plan.to_run == ["stock/seed=0", "devlin2019/seed=0", "stock/seed=1", "devlin2019/seed=1"]
    assert plan.recorded == [] and plan.retries == [] and calls == [] and not out.exists()

    run_trainer_sweep(counting, out, seeds=[0], progress=False, **kwargs)
    runs = out / "runs.jsonl"
    lines = runs.read_text().splitlines()
    failed = {**json.loads(lines[1]), "status": "failed", "error": "killed"}
    runs.write_text(lines[0] + "\n" + json.dumps(failed) + "\n")
    before, ran = runs.read_bytes(), len(calls)
    plan = plan_trainer_sweep(counting, out, seeds=[0, 1], **kwargs)
    assert plan.to_run == ["devlin2019/seed=0", "stock/seed=1", "devlin2019/seed=1"]
    assert plan.retries == ["devlin2019/seed=0"] and plan.recorded == ["stock/seed=0"]
    assert "3 run(s) to run (1 retrying a failed record), 1 recorded" in str(plan)
    with pytest.raises(ValueError, match="different sweep"):  # another factory's directory
        plan_trainer_sweep(factory(prepared), out, seeds=[0, 1], **kwargs)
    with pytest.raises(ValueError, match="other settings"):
        plan_trainer_sweep(counting, out, seeds=[0, 1], **{**kwargs, "training": {**fast_training(4),
                                                                                   "learning_rate": 1e-3}},
                           resume=True)
    with pytest.raises(ValueError, match="metric='eval_accuracy'"):
        plan_trainer_sweep(counting, out, seeds=[0], **{**kwargs, "metric": "eval_accuracy"})
    assert runs.read_bytes() == before and len(calls) == ran and not (out / "sweep.json.partial").exists()


@pytest.mark.parametrize("knobs, error, message", [
    ({"own_args": True, "trainer_cls": Trainer}, ValueError, "with the arguments it is given"),
    ({"trainer_cls": Trainer}, ValueError, "without StableFineTuningCallback"),
    ({"eval_dataset": "none"}, ValueError, "eval_dataset"),  # the Trainer's own refusal, named by recipe
    ({"eval_dataset": "other-keys"}, ValueError, "eval_dataset keys ['dev']"),
])
def test_a_factory_that_gets_it_wrong_is_refused_before_anything_is_written(prepared, tmp_path, knobs, error, message):
    with pytest.raises(error) as raised:
        _sweep(prepared, tmp_path / "out", recipes=("devlin2019",), make_trainer=factory(prepared, **knobs))
    assert message in str(raised.value) and "make_trainer for recipe 'devlin2019'" in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_a_restart_recipe_with_a_factory_that_passes_model_is_refused_before_anything_is_written(prepared, tmp_path):
    """restart_degenerate_runs rebuilds the model for each attempt, so it needs model_init; a factory that passes
    model= used to fail each run of that recipe at train time (recorded failed) after the others had run. The probe
    Trainer is now built for a restart recipe too, and refused naming the recipe and the fix."""
    restart = "restart1=devlin2019:abort_degenerate_runs=true:restart_degenerate_runs=1"
    with pytest.raises(ValueError) as raised:
        _sweep(prepared, tmp_path / "out", recipes=("devlin2019", restart))
    message = str(raised.value)
    assert "make_trainer for recipe 'restart1'" in message and "restart_degenerate_runs=1" in message
    assert "model_init" in message
    assert not (tmp_path / "out").exists()

    runs = read_finished_runs(_sweep(prepared, tmp_path / "ok", recipes=(restart,),  # the fix the message names
                                     make_trainer=factory(prepared, model_init=True)))
    assert runs["restart1/seed=0"]["status"] == "finished"
    assert runs["restart1/seed=0"]["settings"]["hf_stable_ft_restarts"]["attempts"][0]["seed"] == 0


def test_a_metric_missing_from_compute_metrics_is_refused_listing_the_keys(prepared, tmp_path):
    with pytest.raises(ValueError, match=r"metric='accuracy' is not in compute_metrics' result \(keys: \['f1'\]\)"):
        _sweep(prepared, tmp_path / "out", make_trainer=factory(prepared, metrics=lambda p: {"f1": 0.5}))
    assert not (tmp_path / "out").exists()


def test_a_factory_that_returns_no_trainer_or_one_class_of_labels_is_refused(prepared, tmp_path):
    with pytest.raises(TypeError, match="must return a transformers.Trainer; it returned dict"):
        _sweep(prepared, tmp_path / "out", make_trainer=lambda args: {"args": args})
    single = prepared.datasets["train"].filter(lambda e: e["label"] == 0)
    with pytest.raises(ValueError, match="labels are all class 0"):
        _sweep(prepared, tmp_path / "out", make_trainer=factory(prepared, train_dataset=single))
    no_labels = prepared.datasets["train"].remove_columns(["label"])
    with pytest.raises(ValueError, match=r"train_dataset has no label column .*input_ids"):
        _sweep(prepared, tmp_path / "out", make_trainer=factory(prepared, train_dataset=no_labels))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"metric": "eval_accuracy"}, "without the 'eval_' prefix"),
    ({"training": {"seed": 3}}, "training['seed']: set by the sweep"),
    ({"greater_is_better": False}, "greater_is_better=False"),
    ({"seeds": [0, 0]}, "given more than once"),
    ({"recipes": ["nope"]}, "unknown recipe 'nope'"),
    ({"recipes": ["devlin2019"], "training": {"learning_rate": -1.0}}, "recipe 'devlin2019' with the shared training"),
    ({"name": ""}, "name='' is invalid"),
])
def test_bad_sweep_arguments_are_refused_naming_the_argument(prepared, tmp_path, kwargs, message):
    calls = []

    def make_trainer(args):
        calls.append(args)
        return factory(prepared)(args)

    arguments = {"metric": "accuracy", "recipes": ["stock"], "seeds": [0], "training": fast_training(4),
                 "progress": False, **kwargs}
    with pytest.raises(ValueError) as raised:
        run_trainer_sweep(make_trainer, tmp_path / "out", **arguments)
    assert message in str(raised.value)
    assert calls == [] and not (tmp_path / "out").exists()  # refused before the factory was called


def test_a_custom_baseline_is_recorded_and_a_run_that_raises_is_recorded_failed(prepared, tmp_path):
    calls = {"n": 0}
    base = factory(prepared)

    def make_trainer(args):
        calls["n"] += 1
        if calls["n"] == 3:  # probe, seed 0 fine; seed 1's Trainer cannot be built
            raise RuntimeError("out of GPU memory (simulated)")
        return base(args)

    path = _sweep(prepared, tmp_path / "s", seeds=(0, 1), make_trainer=make_trainer,
                  majority_baseline={"validation": 0.5, "test": 0.25})
    runs = read_finished_runs(path)
    assert runs["stock/seed=0"]["majority_baseline"] == {"validation": 0.5, "test": 0.25}
    assert runs["stock/seed=1"]["status"] == "failed" and "simulated" in runs["stock/seed=1"]["error"]


def test_worker_processes_run_a_picklable_factory_and_refuse_a_local_function_before_any_run(prepared, tmp_path):
    from sweep_fixtures import CliTrainerFactory

    from hf_stable_ft.sweep_backends import ProcessBackend

    kwargs = dict(metric="accuracy", recipes=["stock"], seeds=[0, 1], training=fast_training(4),
                  evaluations_per_run=2, name="RTE", progress=False)
    local = read_finished_runs(run_trainer_sweep(CliTrainerFactory(prepared), tmp_path / "local", **kwargs))
    remote = read_finished_runs(run_trainer_sweep(CliTrainerFactory(prepared), tmp_path / "processes",
                                                  backend=ProcessBackend(2), **kwargs))
    for run_id, record in local.items():
        for key in SCORES:
            assert remote[run_id].get(key) == record.get(key), (run_id, key)
    with pytest.raises(TypeError, match="Define make_trainer at module level"):
        run_trainer_sweep(factory(prepared), tmp_path / "closure", backend=ProcessBackend(2), **kwargs)
    assert not (tmp_path / "closure" / "runs.jsonl").exists()
