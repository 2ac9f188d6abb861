"""The run record: one JSON object per line of a sweep's ``DIR/runs.jsonl``, its one reader and its one writer.

:class:`RunRecord` is the schema (typed, documented fields; :meth:`RunRecord.to_json` / :meth:`RunRecord.from_json`).
A sweep (:mod:`hf_stable_ft.experiment`) builds one per run and appends it with :func:`append_record` (the whole
line, then ``fsync``, so a killed driver leaves at most a torn last line); the report (:mod:`hf_stable_ft.report`)
and a resumed sweep read the file with :func:`read_records`, whose ``on_corrupt=`` says what a bad line does.
:func:`json_safe` is the one JSON sanitiser of the experiment layer.

Records stay readable from older files: a key a record lacks takes its field's default, a key the schema does
not know is kept (``extra``) and written back unchanged. ``degenerate`` is decided once, when a record is built
or read without a boolean flag, by :func:`hf_stable_ft.stats.degenerate_record`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .stats import degenerate_record

__all__ = ["RUNS_FILE", "SWEEP_FILE", "RunRecord", "CorruptPolicy", "read_records", "latest_by_run_id", "append_record",
           "json_safe", "run_environment", "ENVIRONMENT_PACKAGES"]

logger = logging.getLogger(__name__)

#: The file of a sweep directory that holds its run records, one JSON object per line.
RUNS_FILE = "runs.jsonl"

#: The file of a sweep directory that holds its config and the history of the sweeps run into it
#: (written by :mod:`hf_stable_ft.experiment`, read by the report for its provenance).
SWEEP_FILE = "sweep.json"

#: What :func:`read_records` does with a line that is not a run record.
CorruptPolicy = Literal["raise", "skip", "truncate_torn_tail"]
_POLICIES = ("raise", "skip", "truncate_torn_tail")


def json_safe(value: Any) -> Any:
    """A JSON-ready copy of ``value``: NaN/inf -> None, numpy scalars and arrays -> Python, tuples -> lists, mapping
    keys -> str, any other object -> ``str(object)``."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (str, int)) or value is None:
        return value
    return str(value)


# Written only when set: a run without a finite evaluation has no best step, and a record that no sweep wrote (a
# transfer's stage 1, ``intermediate.json``) carries no sweep settings.
_OMITTED_WHEN_NONE = ("best_step", "sweep_settings", "environment")

#: The packages whose versions a record keeps (``environment``), in the order a report lists them.
ENVIRONMENT_PACKAGES = ("hf_stable_ft", "torch", "transformers", "python")


def run_environment() -> dict[str, str]:
    """When and with what a run was trained: ``{"finished_at": "<UTC, ISO 8601>", "hf_stable_ft", "torch",
    "transformers", "python"}`` (versions as the packages report them, e.g. ``"2.13.0+cpu"``)."""
    import datetime
    import platform

    import torch
    import transformers

    from .version import __version__

    return {"finished_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "hf_stable_ft": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


@dataclasses.dataclass
class RunRecord:
    """One fine-tuning run of a sweep, as one line of ``runs.jsonl`` (written with sorted keys).

    Scores are in the units of the task's primary metric (fractions for accuracy, F1 and MCC). Every field but
    ``run_id`` and ``recipe`` is optional in a file: a record read from an older file takes the defaults.
    """

    #: ``"<recipe>/seed=<seed>"``; a sweep runs each once (a retried run is appended again: the last line wins).
    run_id: str
    #: The recipe's label in the sweep (a preset name or the ``label`` of ``label=base:field=value``).
    recipe: str
    #: The run's seed (model head, data order, dropout, re-init).
    seed: int | None = None
    #: The GLUE task's name (``"CoLA"``, ``"RTE"``, …).
    task: str | None = None
    #: ``"finished"``, ``"aborted"`` (stopped by the degenerate-run alarm) or ``"failed"`` (an exception).
    status: str = "finished"
    #: The metric the scores are of (``"matthews_correlation"``, ``"accuracy"``, …).
    primary_metric: str | None = None
    #: The majority-class score per evaluated split (``{"validation": …, "test": …}``).
    majority_baseline: dict[str, float | None] | None = None
    #: The training loss of the best constant predictor (what a collapsed run sits at).
    constant_prediction_loss: float | None = None
    #: The run's training arguments (``to_dict()``) with ``trainer_class``, ``recipe_fields`` and, when the
    #: model was prepared, ``resolved_reinit_layers``.
    settings: dict[str, Any] | None = None
    #: One point per evaluation: ``{"step", "epoch", "validation", "test"}`` (primary metric per split).
    eval_history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: The best validation score and its step (the checkpoint Zhang et al.'s protocol keeps).
    best_validation: float | None = None
    best_step: int | None = None
    #: The test score at the best validation checkpoint.
    test_at_best_validation: float | None = None
    #: The scores of the last evaluation.
    final_validation: float | None = None
    final_test: float | None = None
    #: ``[[step, loss], ...]``; a non-finite loss is the string ``"nan"``, ``"inf"`` or ``"-inf"``.
    train_loss: list[list[Any]] = dataclasses.field(default_factory=list)
    #: The first logged step whose training loss is NaN or infinite.
    nonfinite_loss_step: int | None = None
    #: :func:`hf_stable_ft.diagnostics.summarize_diagnostics` without ``abort_reason``: ``grad_norm`` and
    #: ``l2_from_init`` (``{group: [[step, value], ...]}``) and ``degenerate_alarm``.
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Why the degenerate-run alarm stopped the run (``status == "aborted"``).
    abort_reason: str | None = None
    #: Optimizer updates done.
    global_step: int | None = None
    wall_time_s: float | None = None
    #: ``"cpu (<machine>, <n> cores)"`` or the CUDA device's name.
    device: str | None = None
    #: The exception and a short traceback of a failed run.
    error: str | None = None
    #: :func:`hf_stable_ft.stats.degenerate_record` of this record (None for a failed run); set when the record is
    #: built, or read without a boolean flag.
    degenerate: bool | None = None
    #: :func:`run_environment` when the record was made: the UTC time and the versions of hf_stable_ft, torch,
    #: transformers and Python (absent from records written before it existed).
    environment: dict[str, str] | None = None
    #: What the sweep trained the run with: ``{"shared": …, "recipe": {"label", "preset", "overrides"}}``; a
    #: resumed sweep refuses a recipe label whose recorded settings differ.
    sweep_settings: dict[str, Any] | None = None
    #: Keys of the line that are no field of the schema, kept as they were.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not isinstance(self.degenerate, bool):
            self.degenerate = degenerate_record(self._fields())

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}

    def to_dict(self) -> dict[str, Any]:
        """The record as the JSON object of its line (JSON-safe: NaN/inf as null)."""
        values = {**self.extra, **self._fields()}
        for key in _OMITTED_WHEN_NONE:
            if values[key] is None:
                del values[key]
        return json_safe(values)

    def to_json(self) -> str:
        """The record's line, without the newline (keys sorted)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> RunRecord:
        """The record of a parsed JSON line; ValueError saying what is wrong when it is no run record.

        A record needs a ``run_id`` and a ``recipe``; a record without ``recipe`` whose ``run_id`` has the form
        ``"<recipe>/seed=<seed>"`` takes the recipe from it. A missing ``status`` means ``"finished"``.
        """
        problem = _problem(data)
        if problem is not None:
            raise ValueError(problem)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        values["recipe"] = _recipe_of(data)
        if not values.get("status"):
            values["status"] = "finished"
        for name in ("eval_history", "train_loss", "diagnostics"):
            if values.get(name) is None:
                values.pop(name, None)
        return cls(**values, extra=extra)

    @classmethod
    def from_json(cls, line: str) -> RunRecord:
        """The record of one line of ``runs.jsonl``; ValueError when the line is not a run record."""
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"invalid JSON ({error.msg} at column {error.colno})") from error
        return cls.from_dict(data)


def _recipe_of(data: Mapping) -> str | None:
    recipe = data.get("recipe")
    if isinstance(recipe, str) and recipe:
        return recipe
    run_id = data.get("run_id")
    if isinstance(run_id, str) and "/seed=" in run_id and run_id.split("/seed=", 1)[0]:
        return run_id.split("/seed=", 1)[0]
    return None


def _problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    if not isinstance(data.get("run_id"), str) or not data["run_id"]:
        if not isinstance(data.get("recipe"), str) or not data["recipe"]:
            return "no 'recipe' name"
        return "no 'run_id'; add \"run_id\": \"<recipe>/seed=<seed>\" or remove the line"
    if _recipe_of(data) is None:
        return "no 'recipe' name"
    return None


def read_records(path: str | os.PathLike, *, on_corrupt: CorruptPolicy = "raise",
                 fix_file: bool = True) -> list[RunRecord]:
    """The run records of a ``runs.jsonl`` file (or of the sweep directory holding one), in file order.

    Blank lines are ignored. A line that is not a run record (:meth:`RunRecord.from_dict`) is corrupt, and
    ``on_corrupt`` says what happens:

    * ``"raise"``: ValueError naming the file, the line number and what is wrong;
    * ``"skip"``: corrupt lines are left out, with one warning listing their line numbers;
    * ``"truncate_torn_tail"`` (a sweep resuming): a last line without its newline is a write the killed driver
      never finished; it is cut off the file (with a warning) — only ignored with ``fix_file=False``, which
      leaves the file as it is. Any other corrupt line raises as with ``"raise"``.

    FileNotFoundError when there is no such file.
    """
    if on_corrupt not in _POLICIES:
        raise ValueError(f"on_corrupt={on_corrupt!r} is invalid; allowed: {', '.join(map(repr, _POLICIES))}")
    path = Path(path)
    if path.is_dir():
        path = path / RUNS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no run records at {path}")
    data = path.read_bytes()
    if on_corrupt == "truncate_torn_tail" and data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        if fix_file:
            logger.warning("%s ends with a partial line (a run killed while writing); removing it", path)
            with open(path, "r+b") as handle:
                handle.truncate(cut)
        data = data[:cut]
    records, corrupt = [], []
    for number, line in enumerate(data.decode("utf-8").split("\n"), 1):  # not splitlines: U+2028 is no newline
        if not line.strip():
            continue
        try:
            records.append(RunRecord.from_json(line))
        except ValueError as error:
            if on_corrupt != "skip":
                raise ValueError(f"{path}, line {number}: corrupt run record: {error}") from None
            corrupt.append(number)
    if corrupt:
        warnings.warn(f"{path}: skipped corrupt run records on lines {corrupt}", stacklevel=3)
    return records


def latest_by_run_id(records: Iterable[RunRecord]) -> dict[str, RunRecord]:
    """The last record of each ``run_id`` (a resumed sweep appends a retried run again), in the order of those
    last records."""
    latest: dict[str, RunRecord] = {}
    for record in records:
        latest.pop(record.run_id, None)  # re-insert: the position is the last occurrence
        latest[record.run_id] = record
    return latest


def append_record(path: str | os.PathLike, record: RunRecord) -> None:
    """Append ``record`` to ``path`` as one whole line and ``fsync`` it (a killed writer tears at most the last
    line, which :func:`read_records` with ``on_corrupt="truncate_torn_tail"`` removes)."""
    line = record.to_json() + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
