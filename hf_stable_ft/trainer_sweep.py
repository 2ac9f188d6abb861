"""Seed studies of a user's own Trainer script: :func:`run_trainer_sweep` takes a function that builds a Trainer.

A user who already has a ``run_glue.py``-style script — their model, data pipeline, collator and
``compute_metrics`` — turns it into ``make_trainer(args) -> Trainer`` and gets the same sweep as
``hf-stable-ft sweep``: every (recipe, seed) pair run once, one record per run in ``DIR/runs.jsonl`` (the
:class:`~hf_stable_ft.records.RunRecord` schema), the same statistics and report (``hf-stable-ft report DIR``),
the same directory lock, resume, retries and backends (:mod:`hf_stable_ft.sweep_backends`: local, or Ray).

What a run's ``args`` hold (built by the sweep, validated for every recipe before any run): the shared
``training`` fields, the recipe's fields (``StableTrainingArguments``; plain ``TrainingArguments`` for the
``stock`` recipe), the run's ``seed``, its own ``output_dir`` and the evaluation schedule of Zhang et al.
(2021, §3): ``evaluations_per_run`` evaluations on the Trainer's ``eval_dataset``, whose ``validation`` split
selects the run's best checkpoint and whose ``test`` split (optional) is reported at it. ``make_trainer`` must
build the Trainer with exactly these arguments; ``transformers.set_seed(args.seed)`` is called just before it, so
a task head drawn inside it (``from_pretrained``) is drawn from the run's seed, as in the CLI's sweeps.

What ``make_trainer`` must return (checked on a first call per kind of arguments, before any run starts, with
an error that names what is wrong): a ``transformers.Trainer`` built with ``args``; for ``StableTrainingArguments``
a :class:`~hf_stable_ft.StableTrainer` (or a Trainer holding :class:`~hf_stable_ft.StableFineTuningCallback`);
a ``train_dataset``; an ``eval_dataset`` that is one dataset (the validation split) or a dict with the key
``validation`` and optionally ``test`` (no other keys); and a ``compute_metrics`` whose result has ``metric``.
:func:`trainer_class_for` gives the class for a run's arguments.

The majority/constant baseline (what "degenerate" is tested against) is computed, unless given, by the user's
own ``compute_metrics`` on a constant prediction: the training split's majority class (classification) or mean
label (regression, ``num_labels == 1``), read from the ``label``/``labels`` column of ``train_dataset``. A metric
undefined on a constant (a correlation) is recorded as ``None`` and counted as 0, as
:func:`hf_stable_ft.stats.degenerate_record` does.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import EvalPrediction, set_seed

from .args import StableTrainingArguments
from .callback import StableFineTuningCallback
from .experiment import (
    _check_seeds,
    _is_int,
    _LOWER_IS_BETTER_SWEEP,
    _run_arguments,
    _training_constant,
    _validate_recipes,
    execute_sweep,
    failed_record,
    SweepPlan,
    sweep_plan,
    train_and_record,
)
from .records import json_safe
from .restarts import model_init_refusal, requested_restarts
from .stats import constant_prediction_loss
from .tasks import CLASSIFICATION, REGRESSION, Task
from .trainer import StableTrainer

__all__ = ["TrainerSweepConfig", "TrainerFactoryTask", "run_trainer_sweep", "plan_trainer_sweep", "trainer_class_for"]

#: Label columns looked for in ``train_dataset`` / the eval splits, in this order.
LABEL_COLUMNS = ("label", "labels", "label_ids")
EVAL_SPLITS = ("validation", "test")


def trainer_class_for(args: TrainingArguments) -> type[Trainer]:
    """The Trainer class a run's arguments need: :class:`StableTrainer` for ``StableTrainingArguments``, the stock
    ``Trainer`` for plain ``TrainingArguments`` (the ``stock`` recipe)."""
    return StableTrainer if isinstance(args, StableTrainingArguments) else Trainer


def _factory_name(make_trainer: Callable) -> str:
    module = getattr(make_trainer, "__module__", None) or "?"
    name = getattr(make_trainer, "__qualname__", None) or type(make_trainer).__qualname__
    return f"{module}.{name}"


@dataclasses.dataclass
class TrainerSweepConfig:
    """What defines a Trainer-factory sweep (stored in ``DIR/sweep.json``; a directory holding another is refused
    without ``resume``): the task's name in records, the primary metric, the recipes, the seeds, the shared
    ``training`` fields, the evaluations per run and the factory's qualified name."""

    task: str
    metric: str
    recipes: list[str]
    seeds: list[int]
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    evaluations_per_run: int = 10
    factory: str = ""

    def __post_init__(self):
        if not isinstance(self.task, str) or not self.task.strip():
            raise ValueError(f"name={self.task!r} is invalid; allowed: a non-empty string (the task's name in records)")
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"metric={self.metric!r} is invalid; allowed: the key of compute_metrics' result to "
                             "select and report by (e.g. 'accuracy', 'matthews_correlation')")
        if self.metric.startswith("eval_"):
            raise ValueError(f"metric={self.metric!r}: give the key compute_metrics returns, without the 'eval_' "
                             f"prefix the Trainer adds ({self.metric[5:]!r})")
        _check_seeds(self.seeds)
        self.seeds = list(self.seeds)
        if isinstance(self.recipes, str) or not isinstance(self.recipes, Iterable) or not list(self.recipes):
            raise ValueError(f"recipes={self.recipes!r} is invalid; allowed: a non-empty list of recipe names")
        self.recipes = list(self.recipes)
        if not isinstance(self.training, Mapping):
            raise ValueError(f"training={self.training!r} is invalid; allowed: a dict of TrainingArguments fields")
        self.training = dict(self.training)
        for reserved in ("seed", "output_dir", "eval_strategy", "eval_steps"):
            if reserved in self.training:
                raise ValueError(f"training[{reserved!r}]: set by the sweep for each run (seeds=, the run's directory, "
                                 "evaluations_per_run=); leave it out")
        if not _is_int(self.evaluations_per_run) or self.evaluations_per_run < 1:
            raise ValueError(f"evaluations_per_run={self.evaluations_per_run!r} is invalid; allowed: an integer >= 1")

    def identity(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.pop("seeds")  # seeds may grow
        return json_safe(values)

    def shared_settings(self) -> dict[str, Any]:
        values = self.identity()
        values.pop("recipes")
        return values


@dataclasses.dataclass
class TrainerFactoryTask:
    """What every run of a Trainer-factory sweep shares (the ``prepared`` object the backends hand to each run; on
    Ray it goes into the object store once, with the data ``make_trainer`` holds)."""

    make_trainer: Callable[[TrainingArguments], Trainer]
    task: Task
    eval_splits: tuple[str, ...]
    majority: dict[str, float | None]
    constant_loss: float | None
    #: none: the factory holds its own data (what the Ray backend would copy into memory)
    datasets: dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- checks


def _eval_datasets(trainer: Trainer) -> dict[str, Any]:
    """The Trainer's evaluation splits as ``{"validation": ..., ["test": ...]}`` (one dataset = validation); set
    back on the Trainer in that form, so its metrics are logged as ``eval_validation_*`` / ``eval_test_*``."""
    data = trainer.eval_dataset
    if data is None:
        raise ValueError("make_trainer's Trainer has no eval_dataset: give it the validation split (one dataset) or "
                         "{'validation': ..., 'test': ...}; the sweep selects each run's best checkpoint on validation")
    if not isinstance(data, Mapping):
        data = {"validation": data}
    keys = list(data)
    if "validation" not in keys or set(keys) - set(EVAL_SPLITS):
        raise ValueError(f"make_trainer's Trainer has eval_dataset keys {keys}; allowed: 'validation' and optionally "
                         "'test' (the best-on-validation checkpoint's test score is reported)")
    splits = {split: data[split] for split in EVAL_SPLITS if split in data}
    trainer.eval_dataset = splits
    return splits


def _checked_trainer(make_trainer: Callable, args: TrainingArguments, metric: str) -> Trainer:
    """``make_trainer(args)`` after ``set_seed(args.seed)``, refused (ValueError/TypeError naming the fix) unless it
    is a Trainer built with ``args`` that the sweep can run and score."""
    set_seed(args.seed)
    trainer = make_trainer(args)
    if not isinstance(trainer, Trainer):
        raise TypeError(f"make_trainer must return a transformers.Trainer; it returned {type(trainer).__name__}")
    if trainer.args is not args:
        raise ValueError("make_trainer must build the Trainer with the arguments it is given (Trainer(args=args, ...)):"
                         " they hold the run's seed, the recipe's fields and the evaluation schedule")
    if isinstance(args, StableTrainingArguments) and not isinstance(trainer, StableTrainer) and not any(
            isinstance(c, StableFineTuningCallback) for c in trainer.callback_handler.callbacks):
        raise ValueError(f"make_trainer returned a {type(trainer).__name__} without StableFineTuningCallback for a "
                         "stabilised recipe: build hf_stable_ft.trainer_class_for(args)(...) (StableTrainer here), or "
                         "pass callbacks=[StableFineTuningCallback()] and the optimizer of stable_optimizer(args)")
    refusal = model_init_refusal(args, trainer.model_init)
    if refusal:
        raise ValueError(f"make_trainer's Trainer: {refusal}")
    if trainer.train_dataset is None:
        raise ValueError("make_trainer's Trainer has no train_dataset")
    if trainer.compute_metrics is None:
        raise ValueError(f"make_trainer's Trainer has no compute_metrics; give it one whose result has {metric!r}")
    _eval_datasets(trainer)
    return trainer


def _labels(data: Any, where: str) -> np.ndarray:
    names = list(getattr(data, "column_names", None) or [])
    column = next((c for c in LABEL_COLUMNS if c in names), None)
    if column is None:
        raise ValueError(f"the {where} has no label column ({', '.join(LABEL_COLUMNS)}; its columns: {names or 'none'}"
                         "): the constant baseline is read from it; add one, or pass majority_baseline= and "
                         "constant_loss=")
    labels = np.asarray(data[column][:])
    if len(labels) == 0:
        raise ValueError(f"the {where} is empty")
    return labels


def _task_of(trainer: Trainer, name: str, metric: str) -> Task:
    config = getattr(trainer.model, "config", None)
    num_labels = getattr(config, "num_labels", None)
    regression = getattr(config, "problem_type", None) == "regression" or num_labels == 1
    if regression:
        return Task(name=name, hub_config=None, label_names=(), primary_metric=metric, metric_names=(metric,),
                    text_columns=(), kind=REGRESSION, kind_source="the model's config (num_labels == 1 or "
                    "problem_type 'regression')")
    id2label = getattr(config, "id2label", None) or {}
    labels = tuple(str(id2label.get(i, i)) for i in range(num_labels or 0))
    if len(labels) < 2:
        raise ValueError(f"the model of make_trainer's Trainer has num_labels={num_labels!r}; a classification sweep "
                         "needs at least 2 classes (num_labels=1 is regression)")
    return Task(name=name, hub_config=None, label_names=labels, primary_metric=metric, metric_names=(metric,),
                text_columns=(), kind=CLASSIFICATION, kind_source="the model's config")


def _constant_scores(trainer: Trainer, task: Task, splits: dict[str, Any]) -> tuple[dict[str, float | None], float]:
    """The metric of the constant predictor (training majority class / mean) on each eval split, by the user's
    ``compute_metrics``, and the training loss of the best constant (:func:`constant_prediction_loss`)."""
    train = _labels(trainer.train_dataset, "train_dataset")
    if not task.is_regression:
        classes = train.astype(np.int64)
        if classes.min() < 0 or classes.max() >= task.num_labels:
            raise ValueError(f"train_dataset's labels lie in [{classes.min()}, {classes.max()}] but the model has "
                             f"{task.num_labels} classes")
        if len(np.unique(classes)) < 2:
            raise ValueError(f"train_dataset's labels are all class {classes[0]}: a sweep needs at least 2 classes in "
                             "the training data (every run would be its own majority baseline)")
    constant = _training_constant(task, train.tolist())  # what a collapsed run predicts, as in the CLI's sweeps
    scores: dict[str, float | None] = {}
    for split, data in splits.items():
        references = _labels(data, f"eval_dataset[{split!r}]")
        if task.is_regression:
            predictions = np.full((len(references), 1), constant, dtype=np.float32)
        else:
            predictions = np.zeros((len(references), task.num_labels), dtype=np.float32)
            predictions[:, constant] = 1.0
        result = trainer.compute_metrics(EvalPrediction(predictions=predictions, label_ids=references))
        if task.primary_metric not in (result or {}):
            raise ValueError(f"metric={task.primary_metric!r} is not in compute_metrics' result (keys: "
                             f"{sorted(result or {})}); pass one of those")
        value = result[task.primary_metric]
        value = float(value) if isinstance(value, (int, float, np.number)) else None
        scores[split] = value if value is not None and math.isfinite(value) else None
    loss = constant_prediction_loss(train, task.num_labels)
    return scores, loss


def _prepare(make_trainer: Callable, config: TrainerSweepConfig, recipes, majority_baseline, constant_loss,
             probe_dir: str) -> TrainerFactoryTask:
    """Call ``make_trainer`` once per kind of arguments (stock / stabilised / with restarts) and check what it
    returns; compute the task, the splits and the baseline from the first Trainer. Nothing of these probe Trainers
    is trained."""
    first = None
    kinds_seen = set()
    for spec in recipes:  # one probe per kind of Trainer the factory must build
        args = _run_arguments(spec, config.seeds[0], probe_dir, config.training, config.evaluations_per_run,
                              config.metric)
        kind = "stock" if spec.is_stock else (
            "restarts" if requested_restarts(args) else "stable")  # needs model_init
        if kind in kinds_seen:
            continue
        kinds_seen.add(kind)
        try:
            trainer = _checked_trainer(make_trainer, args, config.metric)
        except TypeError as error:
            raise TypeError(f"make_trainer for recipe {spec.label!r} ({type(args).__name__}): {error}") from error
        except ValueError as error:
            raise ValueError(f"make_trainer for recipe {spec.label!r} ({type(args).__name__}): {error}") from error
        if first is None:
            first = trainer
        else:
            del trainer
    task = _task_of(first, config.task, config.metric)
    splits = first.eval_dataset  # normalised to {"validation": ...[, "test": ...]} by _checked_trainer
    if majority_baseline is None:
        majority, loss = _constant_scores(first, task, splits)
    else:
        missing = [s for s in splits if s not in majority_baseline]
        if missing:
            raise ValueError(f"majority_baseline={majority_baseline!r} has no value for {missing}; give one per eval "
                             f"split ({list(splits)})")
        majority = {s: float(majority_baseline[s]) for s in splits}
        loss = None
    if constant_loss is not None:
        loss = float(constant_loss)
    return TrainerFactoryTask(make_trainer=make_trainer, task=task, eval_splits=tuple(splits), majority=majority,
                              constant_loss=loss)


def run_factory_single(prepared: TrainerFactoryTask, recipe, seed: int, output_dir: str | os.PathLike,
                       training: dict[str, Any] | None = None, evaluations_per_run: int = 10) -> dict[str, Any]:
    """One run of a Trainer-factory sweep (the backends' ``run_fn``): build the run's arguments, the user's
    Trainer from them, train, and return its record (:func:`hf_stable_ft.experiment.train_and_record`)."""
    args = _run_arguments(recipe, seed, output_dir, training, evaluations_per_run, prepared.task.primary_metric)
    started = time.time()
    try:
        trainer = _checked_trainer(prepared.make_trainer, args, prepared.task.primary_metric)
    except Exception as exc:  # noqa: BLE001 - the user's factory failed for this run: recorded, the sweep goes on
        return failed_record(prepared, recipe, seed, f"make_trainer: {type(exc).__name__}: {exc}\n"
                             f"{traceback.format_exc(limit=5)}", wall_time_s=round(time.time() - started, 2))
    return train_and_record(trainer, recipe, seed, prepared)


def _sweep_config(make_trainer: Callable, metric: str, recipes: Iterable[str], seeds: Iterable[int],
                  training: Mapping[str, Any] | None, name: str, evaluations_per_run: int,
                  greater_is_better: bool) -> tuple[TrainerSweepConfig, list]:
    """The sweep's config and its validated recipes (every recipe's arguments built with ``training``)."""
    if not callable(make_trainer):
        raise TypeError(f"make_trainer must be a function args -> Trainer; got {type(make_trainer).__name__}")
    if greater_is_better is not True:
        raise ValueError(_LOWER_IS_BETTER_SWEEP.replace("--metric-direction lower", "greater_is_better=False"))
    config = TrainerSweepConfig(task=name, metric=metric, recipes=list(recipes), seeds=list(seeds),
                                training=dict(training or {}), evaluations_per_run=evaluations_per_run,
                                factory=_factory_name(make_trainer))
    return config, _validate_recipes(config, primary=metric)


def plan_trainer_sweep(
    make_trainer: Callable[[TrainingArguments], Trainer],
    output: str | os.PathLike,
    *,
    metric: str,
    recipes: Iterable[str] = ("devlin2019", "mosbach2021", "zhang2021"),
    seeds: Iterable[int] = range(5),
    training: Mapping[str, Any] | None = None,
    name: str = "custom",
    evaluations_per_run: int = 10,
    greater_is_better: bool = True,
    resume: bool = False,
    overwrite: bool = False,
) -> SweepPlan:
    """A dry run of :func:`run_trainer_sweep` with the same arguments: the :class:`~hf_stable_ft.experiment.SweepPlan`
    it would follow (the run ids left, those retrying a failed record, those recorded), or the ``ValueError`` /
    ``TypeError`` it would raise from its arguments and the directory's records (a bad argument or recipe, a
    directory holding a different sweep without ``resume``, a label whose recorded runs had other settings).

    ``make_trainer`` is named (a sweep directory belongs to one factory), not called: the probe calls that check
    what it returns, the baseline and every training happen only when :func:`run_trainer_sweep` starts. Nothing is
    created or written."""
    config, specs = _sweep_config(make_trainer, metric, recipes, seeds, training, name, evaluations_per_run,
                                  greater_is_better)
    return sweep_plan(config, output, specs, resume=resume, overwrite=overwrite)


def run_trainer_sweep(
    make_trainer: Callable[[TrainingArguments], Trainer],
    output: str | os.PathLike,
    *,
    metric: str,
    recipes: Iterable[str] = ("devlin2019", "mosbach2021", "zhang2021"),
    seeds: Iterable[int] = range(5),
    training: Mapping[str, Any] | None = None,
    name: str = "custom",
    evaluations_per_run: int = 10,
    majority_baseline: Mapping[str, float] | None = None,
    constant_loss: float | None = None,
    greater_is_better: bool = True,
    backend: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_at: float | None = None,
) -> Path:
    """Run every (recipe, seed) pair with the Trainer ``make_trainer(args)`` builds; return ``output/runs.jsonl``.

    Args:
        make_trainer: ``args -> Trainer`` (see the module docstring for what it must return).
        output: the sweep directory (``runs.jsonl``, ``sweep.json``; then ``hf-stable-ft report output``).
        metric: the key of ``compute_metrics``' result that selects each run's best checkpoint and is reported
            (higher is better).
        recipes: names of :data:`hf_stable_ft.RECIPES`, ``stock``, or variants ``label=base:field=value:...``.
        seeds: distinct integers >= 0; one run per recipe and seed.
        training: ``TrainingArguments`` fields every run shares (batch size, learning rate, ...); a recipe's own
            values win. ``seed``, ``output_dir`` and the evaluation schedule are the sweep's.
        name: the task's name in records and the report.
        evaluations_per_run: evaluations per run (Zhang et al.'s protocol: 10).
        majority_baseline: ``{"validation": x[, "test": y]}`` instead of the computed constant baseline.
        constant_loss: the training loss of a constant predictor, instead of the computed one.
        greater_is_better: must be True (a sweep selects, tests and reports by higher-is-better scores).
        backend: :class:`~hf_stable_ft.sweep_backends.LocalBackend` (default) or ``RayBackend(...)``; ``make_trainer``
            and what it holds are pickled (cloudpickle) into Ray's object store once.
        resume / overwrite / progress / stop_at: as :func:`hf_stable_ft.experiment.run_sweep`. With
            ``ProcessBackend``, ``make_trainer`` must be picklable (a module-level function or class instance).

    Everything is validated before any run: the config, every recipe's arguments with ``training``, and what
    ``make_trainer`` returns (one probe call per kind of arguments, untrained).
    """
    import tempfile

    config, specs = _sweep_config(make_trainer, metric, recipes, seeds, training, name, evaluations_per_run,
                                  greater_is_better)

    def prepare() -> TrainerFactoryTask:
        with tempfile.TemporaryDirectory(prefix="hf_stable_ft_probe_") as probe:
            return _prepare(make_trainer, config, specs, majority_baseline, constant_loss, probe)

    return execute_sweep(config, output, specs, prepare=prepare, run_fn=run_factory_single, resume=resume,
                         overwrite=overwrite, progress=progress, backend=backend, stop_at=stop_at)
