"""What a task is: one :class:`Task` object, built once and passed down to data loading, metrics, baselines and
records; and the GLUE tasks as one table, one row per task (:data:`GLUE_TASKS`).

A :class:`Task` holds the columns of its loaded dataset (``text_columns``, the label always in ``label``), the
class names or a regression kind, the primary metric and its direction, and the metric keys computed for it (or
an ``evaluate``-style module that replaces them). :func:`hf_stable_ft.data.load_task` builds one for any dataset;
:func:`get_glue_task` returns the row of a GLUE task.

Experiment layer: imports nothing from the package.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CLASSIFICATION",
    "GLUE_HUB_DATASET",
    "GLUE_TASKS",
    "REGRESSION",
    "TASK_KINDS",
    "FileFormat",
    "GlueTask",
    "Task",
    "get_glue_task",
    "glue_task_key",
    "glue_task_names",
    "normalise_task_name",
]

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASK_KINDS = (CLASSIFICATION, REGRESSION)
GLUE_HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class Task:
    """What a model, a metric, a data loader, the majority baseline and a run record need to know about a task.

    Attributes:
        name: the task's name in records (``"RTE"``, ``"SST-2"``, or a user dataset's name).
        hub_config: GLUE only: the configuration name in the Hub dataset ``nyu-mll/glue`` (``None`` otherwise).
        label_names: class names, index = label id; empty for regression.
        primary_metric: key of the headline score (``metric_for_best_model``; the score records hold).
        metric_names: every built-in metric key the task's ``compute_metrics`` returns (primary included).
        text_columns: the text columns of the loaded dataset: one (single texts) or two (pairs, tokenised as
            pairs); none for a Trainer-factory sweep (:mod:`hf_stable_ft.trainer_sweep`), whose data the user's own
            pipeline prepares. GLUE tasks are normalised to ``sentence1`` [``sentence2``].
        small: under the ``zhang2021`` protocol, the validation split is halved per class into validation and
            test (``True``: RTE, MRPC, STS-B, CoLA and every user dataset without a test split); otherwise a
            validation split is carved out of train (the large GLUE tasks).
        kind: ``"classification"`` or ``"regression"``.
        label_column: the label column of the *source* data (the loaded dataset always calls it ``label``).
        greater_is_better: direction of the primary metric.
        metric: an object with ``compute(predictions=, references=)`` (an ``evaluate`` module) that replaces the
            built-in metrics, or ``None``. Not part of equality.
        metric_source: what ``--metric`` named (a built-in name, a folder, a Hub name); ``None`` = the default.
        score_bins: regression only: the inner edges of the score bins used to stratify (halving the
            validation split per bin, sampling training examples per bin). STS-B: ``(1, 2, 3, 4)``, i.e. bins
            ``min(floor(score), 4)``.
        kind_source: how the kind was decided (``"inferred from label column 'y' (floats) ..."``), for messages.
    """

    name: str
    hub_config: str | None
    label_names: tuple[str, ...]
    primary_metric: str
    metric_names: tuple[str, ...]
    text_columns: tuple[str, ...]
    small: bool = True
    kind: str = CLASSIFICATION
    label_column: str = "label"
    greater_is_better: bool = True
    metric: Any = field(default=None, compare=False, repr=False)
    metric_source: str | None = None
    score_bins: tuple[float, ...] | None = None
    kind_source: str | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task kind {self.kind!r} is invalid; allowed: {', '.join(TASK_KINDS)}")
        if len(self.text_columns) > 2:  # none: a Trainer-factory sweep, whose own pipeline tokenises
            raise ValueError(f"a task has one or two text columns (a text or a text pair); got {list(self.text_columns)}")
        if self.kind == CLASSIFICATION and len(self.label_names) < 2:
            raise ValueError(f"a classification task needs at least 2 classes; got {list(self.label_names)}")
        if self.kind == REGRESSION and self.label_names:
            raise ValueError("a regression task has no label names")
        if self.metric is None and self.primary_metric not in self.metric_names:
            raise ValueError(f"primary metric {self.primary_metric!r} is not among the task's metrics "
                             f"{list(self.metric_names)}")

    # -- derived facts -------------------------------------------------------------------------------

    @property
    def is_regression(self) -> bool:
        return self.kind == REGRESSION

    @property
    def is_glue(self) -> bool:
        return self.hub_config is not None and glue_task_key(self.name, missing_ok=True) is not None

    @property
    def direction(self) -> str:
        """``"higher"`` or ``"lower"`` (is better), as records and messages say it."""
        return "higher" if self.greater_is_better else "lower"

    @property
    def num_labels(self) -> int:
        """Model outputs: the number of classes, 1 for regression."""
        return len(self.label_names) if self.label_names else 1

    @property
    def id2label(self) -> dict[int, str]:
        return {i: name for i, name in enumerate(self.label_names)} if self.label_names else {0: "score"}

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AutoModelForSequenceClassification.from_pretrained`` of this task."""
        kwargs: dict[str, Any] = {"num_labels": self.num_labels, "id2label": self.id2label, "label2id": self.label2id}
        if self.is_regression:
            kwargs["problem_type"] = "regression"
        return kwargs

    def features(self):
        """The ``datasets.Features`` of a normalised split of this task."""
        import datasets

        columns = {column: datasets.Value("string") for column in self.text_columns}
        label = datasets.Value("float32") if self.is_regression else datasets.ClassLabel(names=list(self.label_names))
        return datasets.Features({**columns, "label": label, "idx": datasets.Value("int64")})

    def stratification_keys(self, labels) -> np.ndarray:
        """Strata of ``labels`` for stratified sampling and per-class halving: the class id, or the score bin."""
        values = np.asarray(labels)
        if not self.is_regression:
            return values.astype(np.int64)
        edges = self.score_bins if self.score_bins is not None else ()
        return np.digitize(values.astype(np.float64), np.asarray(edges, dtype=np.float64)).astype(np.int64)

    def with_metric(self, **changes) -> Task:
        """A copy with other metric fields (``primary_metric``, ``metric_names``, ``greater_is_better``, ...)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line: kind, classes or bins, metric and direction."""
        if self.is_regression:
            what = "regression (one output, MSE loss)"
        else:
            shown = ", ".join(self.label_names[:8]) + (", ..." if len(self.label_names) > 8 else "")
            what = f"classification with {self.num_labels} classes ({shown})"
        columns = " + ".join(self.text_columns)
        origin = f" ({self.kind_source})" if self.kind_source else ""
        return (f"task {self.name}: {what}{origin}; text {columns}; primary metric {self.primary_metric} "
                f"({self.direction} is better)")


#: Compatibility alias (one release): the GLUE rows are :class:`Task` objects.
GlueTaskInfo = Task


@dataclass(frozen=True)
class FileFormat:
    """Where a GLUE task's fields are in its files.

    ``columns`` is the fixed column list of header-less files (CoLA); otherwise the first row is a header
    that must contain every named field. ``idx`` names the column holding the example id, if any (the
    0-based data-row number is used otherwise, as on the Hub).
    """

    text: tuple[str, ...]
    label: str
    idx: str | None = None
    columns: tuple[str, ...] | None = None
    jsonl: bool = False

    def describe(self) -> str:
        if self.jsonl:
            return "JSON lines with keys " + ", ".join(self.text + (self.label,) + ((self.idx,) if self.idx else ()))
        if self.columns:
            return "TSV without header row, columns: " + " ".join(self.columns)
        fields = self.text + (self.label,) + ((self.idx,) if self.idx else ())
        return "TSV with a header row naming (at least) " + ", ".join(repr(f) for f in fields)


@dataclass(frozen=True)
class GlueTask:
    """One row of the GLUE table: the task, its folder and files in the GLUE layout, and its Hub columns.

    ``files`` maps ``"train"`` / ``"dev"`` to file names in ``<GLUE_DIR>/<folder>/``; ``extra_dev`` maps further
    ``DatasetDict`` keys to files loaded when present (MNLI's mismatched dev). ``hub_text_columns`` are the text
    columns of the Hub's ``nyu-mll/glue`` configuration (``None``: not on the Hub).
    """

    task: Task
    folder: str
    files: dict[str, str]
    format: FileFormat
    hub_text_columns: tuple[str, ...] | None
    extra_dev: dict[str, str] = field(default_factory=dict)


_PAIR = ("sentence1", "sentence2")
_SINGLE = ("sentence1",)
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
_TSV = {"train": "train.tsv", "dev": "dev.tsv"}


def _glue(name, config, labels, primary, metrics, columns, small, **extra) -> Task:
    kind = REGRESSION if not labels else CLASSIFICATION
    return Task(name, config, labels, primary, metrics, columns, small=small, kind=kind, **extra)


_RTE = _glue("RTE", "rte", _NLI2, "accuracy", ("accuracy",), _PAIR, True)
_MNLI = _glue("MNLI", "mnli", _NLI3, "accuracy", ("accuracy",), _PAIR, False)

#: The GLUE tasks, one row each: key (lower case, no ``-``/``_``) -> task, GLUE-layout folder and files, Hub columns.
#: ``mnlisubset`` is a local layout of MNLI (JSON lines), not a task of its own.
GLUE_TASKS: dict[str, GlueTask] = {
    "rte": GlueTask(_RTE, "RTE", _TSV, FileFormat(_PAIR, "label", idx="index"), ("sentence1", "sentence2")),
    "mrpc": GlueTask(
        _glue("MRPC", "mrpc", ("not_equivalent", "equivalent"), "f1", ("accuracy", "f1"), _PAIR, True),
        "MRPC", _TSV, FileFormat(("#1 String", "#2 String"), "Quality"), ("sentence1", "sentence2")),
    "stsb": GlueTask(
        _glue("STS-B", "stsb", (), "spearmanr", ("pearson", "spearmanr"), _PAIR, True, score_bins=(1.0, 2.0, 3.0, 4.0)),
        "STS-B", _TSV, FileFormat(_PAIR, "score", idx="index"), ("sentence1", "sentence2")),
    "cola": GlueTask(
        _glue("CoLA", "cola", ("unacceptable", "acceptable"), "matthews_correlation", ("matthews_correlation",),
              _SINGLE, True),
        "CoLA", _TSV, FileFormat(("sentence",), "label", columns=("source", "label", "original_label", "sentence")),
        ("sentence",)),
    "sst2": GlueTask(
        _glue("SST-2", "sst2", ("negative", "positive"), "accuracy", ("accuracy",), _SINGLE, False),
        "SST-2", _TSV, FileFormat(("sentence",), "label"), ("sentence",)),
    "qnli": GlueTask(
        _glue("QNLI", "qnli", _NLI2, "accuracy", ("accuracy",), _PAIR, False),
        "QNLI", _TSV, FileFormat(("question", "sentence"), "label", idx="index"), ("question", "sentence")),
    "qqp": GlueTask(
        _glue("QQP", "qqp", ("not_duplicate", "duplicate"), "accuracy", ("accuracy", "f1"), _PAIR, False),
        "QQP", _TSV, FileFormat(("question1", "question2"), "is_duplicate", idx="id"), ("question1", "question2")),
    "mnli": GlueTask(
        _MNLI, "MNLI", {"train": "train.tsv", "dev": "dev_matched.tsv"},
        FileFormat(("sentence1", "sentence2"), "gold_label", idx="index"), ("premise", "hypothesis"),
        extra_dev={"validation_mismatched": "dev_mismatched.tsv"}),
    "mnlisubset": GlueTask(
        _MNLI, "MNLI_subset", {"train": "train.jsonl", "dev": "dev.jsonl"},
        FileFormat(("premise", "hypothesis"), "label", idx="idx", jsonl=True), None),
}


def normalise_task_name(task: str) -> str:
    return str(task).lower().replace("-", "").replace("_", "").replace(" ", "")


def glue_task_names() -> list[str]:
    """Accepted task names (case, ``-`` and ``_`` are ignored: ``"SST-2"`` = ``"sst2"``)."""
    return [row.task.name for key, row in GLUE_TASKS.items() if key != "mnlisubset"] + ["MNLI_subset"]


def glue_task_key(task: str, *, missing_ok: bool = False) -> str | None:
    """The table key of a GLUE task name; an unknown name raises a ValueError listing the known ones."""
    key = normalise_task_name(task)
    if key not in GLUE_TASKS:
        if missing_ok:
            return None
        raise ValueError(f"unknown GLUE task {task!r}; known tasks: {', '.join(glue_task_names())}")
    return key


def get_glue_task(task: str | Task) -> Task:
    """The :class:`Task` of a GLUE task name (``"mnli_subset"`` gives MNLI's); a :class:`Task` is returned as is."""
    if isinstance(task, Task):
        return task
    return GLUE_TASKS[glue_task_key(task)].task
