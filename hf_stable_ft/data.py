"""GLUE tasks for few-sample fine-tuning: task facts, file readers and the evaluation protocols.

:func:`load_glue_task` returns a :class:`datasets.DatasetDict` whose columns are normalised to
``sentence1`` (and ``sentence2`` for pair tasks), ``label`` and ``idx``, with a ``ClassLabel`` ``label``
feature for classification tasks (label order of the Hub's ``nyu-mll/glue``) and ``float32`` scores for
STS-B. Data come from a local directory in the standard GLUE layout (argument ``data_dir`` or the
``GLUE_DIR`` environment variable) or, when no directory is given, from the Hub dataset ``nyu-mll/glue``.

Two protocols decide which examples form the splits:

``"glue"``
    ``train`` = GLUE train, ``validation`` = GLUE dev (MNLI: ``dev_matched``, plus
    ``validation_mismatched`` when available).

``"zhang2021"`` (Zhang et al., *Revisiting Few-sample BERT Fine-tuning*, ICLR 2021, Sec. 3)
    GLUE test labels are not public, so the paper evaluates on held-out halves of GLUE dev:

    * small tasks (RTE, MRPC, STS-B, CoLA): ``train`` = GLUE train; GLUE dev is split 50/50 *per class*
      into ``validation`` (``n_c // 2`` examples of class ``c``) and ``test`` (the other ``n_c - n_c // 2``).
      STS-B has no classes; it is split per score bin ``min(floor(score), 4)`` (bins [0,1), ..., [4,5]), so
      both halves keep the score distribution.
    * large tasks (SST-2, QNLI, QQP, MNLI): ``validation`` = 1,000 class-stratified examples carved out of
      GLUE train, ``test`` = GLUE dev, ``train`` = the rest of GLUE train. The paper's "1k-downsampled"
      setting is ``train_size=1000``.

    The evaluation splits are drawn with ``split_seed`` (fixed, default 0) and the training sample with
    ``seed``, so every training sample of a study is scored on the same validation and test examples.

``train_size`` (both protocols) keeps a class-stratified random sample of the training split: class ``c``
gets ``round(train_size * n_c / n)`` examples by the largest-remainder rule, so the sample has exactly
``train_size`` examples and the training label distribution. Every selection is deterministic for its
seed and returned in file order.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GLUE_HUB_DATASET",
    "PROTOCOLS",
    "ZHANG2021_VALIDATION_SIZE",
    "GlueFormatError",
    "GlueTaskInfo",
    "get_task_info",
    "glue_task_names",
    "load_glue_split",
    "load_glue_task",
    "tokenize_glue",
    "stratification_keys",
    "stratified_sample",
    "split_per_class",
]

GLUE_HUB_DATASET = "nyu-mll/glue"
PROTOCOLS = ("glue", "zhang2021")
ZHANG2021_VALIDATION_SIZE = 1000
STSB_SCORE_BINS = 5  # STS-B scores in [0, 5] -> bins [0,1), [1,2), [2,3), [3,4), [4,5]


class GlueFormatError(ValueError):
    """A GLUE data file whose content does not match its task's format; names the file and line."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        self.path = Path(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")


# --------------------------------------------------------------------------------------------------
# Task facts
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlueTaskInfo:
    """What a model, a metric and a data loader need to know about one GLUE task.

    Attributes:
        name: canonical GLUE name (``"RTE"``, ``"SST-2"``, ``"STS-B"`` ...).
        hub_config: configuration name in the Hub dataset ``nyu-mll/glue``.
        label_names: class names in the Hub's label order (index = label id); empty for STS-B.
        primary_metric: key of the score Zhang et al. (2021) report (RTE accuracy, MRPC F1,
            STS-B Spearman, CoLA Matthews correlation, accuracy elsewhere); use it as
            ``metric_for_best_model``.
        metric_names: every key :func:`hf_stable_ft.metrics.glue_compute_metrics` returns for the task.
        text_columns: ``("sentence1",)`` for single-sentence tasks, ``("sentence1", "sentence2")`` for pairs.
        small: one of the four small tasks whose GLUE dev is split into validation and test under the
            ``zhang2021`` protocol (otherwise validation is carved out of train).
    """

    name: str
    hub_config: str
    label_names: tuple[str, ...]
    primary_metric: str
    metric_names: tuple[str, ...]
    text_columns: tuple[str, ...]
    small: bool

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        """Model outputs: the number of classes, 1 for regression (STS-B)."""
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


_PAIR = ("sentence1", "sentence2")
_SINGLE = ("sentence1",)
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")

_TASKS: dict[str, GlueTaskInfo] = {
    "rte": GlueTaskInfo("RTE", "rte", _NLI2, "accuracy", ("accuracy",), _PAIR, small=True),
    "mrpc": GlueTaskInfo("MRPC", "mrpc", ("not_equivalent", "equivalent"), "f1", ("accuracy", "f1"), _PAIR, small=True),
    "stsb": GlueTaskInfo("STS-B", "stsb", (), "spearmanr", ("pearson", "spearmanr"), _PAIR, small=True),
    "cola": GlueTaskInfo(
        "CoLA",
        "cola",
        ("unacceptable", "acceptable"),
        "matthews_correlation",
        ("matthews_correlation",),
        _SINGLE,
        small=True,
    ),
    "sst2": GlueTaskInfo("SST-2", "sst2", ("negative", "positive"), "accuracy", ("accuracy",), _SINGLE, small=False),
    "qnli": GlueTaskInfo("QNLI", "qnli", _NLI2, "accuracy", ("accuracy",), _PAIR, small=False),
    "qqp": GlueTaskInfo(
        "QQP", "qqp", ("not_duplicate", "duplicate"), "accuracy", ("accuracy", "f1"), _PAIR, small=False
    ),
    "mnli": GlueTaskInfo("MNLI", "mnli", _NLI3, "accuracy", ("accuracy",), _PAIR, small=False),
}
# Local layouts that are not GLUE tasks of their own: key -> task key.
_ALIASES = {"mnlisubset": "mnli"}


def _normalise_name(task: str) -> str:
    return str(task).lower().replace("-", "").replace("_", "").replace(" ", "")


def glue_task_names() -> list[str]:
    """Accepted task names (case, ``-`` and ``_`` are ignored: ``"SST-2"`` = ``"sst2"``)."""
    return [info.name for info in _TASKS.values()] + ["MNLI_subset"]


def _task_key(task: str) -> str:
    key = _normalise_name(task)
    if key not in _TASKS and key not in _ALIASES:
        raise ValueError(f"unknown GLUE task {task!r}; known tasks: {', '.join(glue_task_names())}")
    return key


def get_task_info(task: str) -> GlueTaskInfo:
    """The :class:`GlueTaskInfo` of ``task`` (``"mnli_subset"`` gives MNLI's)."""
    key = _task_key(task)
    return _TASKS[_ALIASES.get(key, key)]


# --------------------------------------------------------------------------------------------------
# File formats
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FileFormat:
    """Where a task's fields are in its files.

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
class _Layout:
    """A task folder of the GLUE layout: ``<data_dir>/<folder>/<file>``."""

    folder: str
    files: dict[str, str]  # "train" / "dev" -> file name
    format: _FileFormat
    extra_dev: dict[str, str] = field(default_factory=dict)  # DatasetDict key -> file, loaded when present


_MNLI_TSV = _FileFormat(("sentence1", "sentence2"), "gold_label", idx="index")
_LAYOUTS: dict[str, _Layout] = {
    "rte": _Layout("RTE", {"train": "train.tsv", "dev": "dev.tsv"}, _FileFormat(_PAIR, "label", idx="index")),
    "mrpc": _Layout(
        "MRPC", {"train": "train.tsv", "dev": "dev.tsv"}, _FileFormat(("#1 String", "#2 String"), "Quality")
    ),
    "stsb": _Layout("STS-B", {"train": "train.tsv", "dev": "dev.tsv"}, _FileFormat(_PAIR, "score", idx="index")),
    "cola": _Layout(
        "CoLA",
        {"train": "train.tsv", "dev": "dev.tsv"},
        _FileFormat(("sentence",), "label", columns=("source", "label", "original_label", "sentence")),
    ),
    "sst2": _Layout("SST-2", {"train": "train.tsv", "dev": "dev.tsv"}, _FileFormat(("sentence",), "label")),
    "qnli": _Layout(
        "QNLI", {"train": "train.tsv", "dev": "dev.tsv"}, _FileFormat(("question", "sentence"), "label", idx="index")
    ),
    "qqp": _Layout(
        "QQP",
        {"train": "train.tsv", "dev": "dev.tsv"},
        _FileFormat(("question1", "question2"), "is_duplicate", idx="id"),
    ),
    "mnli": _Layout(
        "MNLI",
        {"train": "train.tsv", "dev": "dev_matched.tsv"},
        _MNLI_TSV,
        extra_dev={"validation_mismatched": "dev_mismatched.tsv"},
    ),
    "mnlisubset": _Layout(
        "MNLI_subset",
        {"train": "train.jsonl", "dev": "dev.jsonl"},
        _FileFormat(("premise", "hypothesis"), "label", idx="idx", jsonl=True),
    ),
}


def _layout_help(key: str) -> str:
    layout = _LAYOUTS[key]
    files = " and ".join(f"<GLUE_DIR>/{layout.folder}/{name}" for name in layout.files.values())
    return f"GLUE layout for {layout.folder}: {files} ({layout.format.describe()})"


def _parse_label(value: Any, info: GlueTaskInfo, path: Path, line: int) -> int | float:
    """A raw label -> label id (classification: the label name or its id) or float score (STS-B)."""
    if info.is_regression:
        try:
            score = float(value)
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            raise GlueFormatError(path, line, f"{info.name} score {value!r} is not a finite number")
        return score
    if isinstance(value, str) and value.strip() in info.label2id:
        return info.label2id[value.strip()]
    text = str(value).strip()
    if text.isdigit() and int(text) < info.num_labels:
        return int(text)
    allowed = ", ".join(f"{i}/{name}" for i, name in info.id2label.items())
    raise GlueFormatError(path, line, f"unknown {info.name} label {value!r}; expected one of {allowed}")


def _parse_idx(value: Any, path: Path, line: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise GlueFormatError(path, line, f"example id {value!r} is not an integer") from None


def _empty_columns(info: GlueTaskInfo) -> dict[str, list]:
    return {column: [] for column in (*info.text_columns, "label", "idx")}


def _read_text(path: Path, encoding: str = "utf-8-sig") -> str:
    """The whole file as text; a file that is not UTF-8 is a :class:`GlueFormatError` naming its line."""
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise GlueFormatError(
            path, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at byte offset {exc.start}); GLUE files are "
            f"UTF-8: re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 {path.name} > {path.name}.utf8)"
        ) from None


@contextlib.contextmanager
def _no_csv_field_limit():
    """Lift ``csv``'s process-wide 128 KiB field limit while a GLUE file is read (a long text is read whole and
    truncated by the tokenizer like any other), then put the caller's limit back."""
    previous = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_tsv(path: Path, fmt: _FileFormat, info: GlueTaskInfo) -> dict[str, list]:
    """Read one GLUE TSV file (``csv`` with ``QUOTE_NONE``: GLUE sentences contain bare quotes)."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        with _no_csv_field_limit():
            return _read_tsv_rows(reader, path, fmt, info)
    except csv.Error as exc:
        raise GlueFormatError(path, reader.line_num, f"cannot read the TSV row ({exc}); expected {fmt.describe()}") from None


def _read_tsv_rows(reader, path: Path, fmt: _FileFormat, info: GlueTaskInfo) -> dict[str, list]:
    out = _empty_columns(info)
    header = fmt.columns
    if header is None:
        header = tuple(next(reader, ()))
        if not header:
            raise GlueFormatError(path, None, f"no examples: the file is empty; expected {fmt.describe()}")
        missing = [name for name in (*fmt.text, fmt.label, *((fmt.idx,) if fmt.idx else ())) if name not in header]
        if missing:
            raise GlueFormatError(
                path, 1, f"header {list(header)} lacks column(s) {missing}; expected {fmt.describe()}"
            )
    position = {name: i for i, name in enumerate(header)}
    for row in reader:
        if not row:  # blank line (e.g. a trailing newline)
            continue
        line = reader.line_num
        if len(row) != len(header):
            raise GlueFormatError(
                path, line, f"expected {len(header)} tab-separated columns ({' | '.join(header)}), found {len(row)}"
            )
        for column, name in zip(info.text_columns, fmt.text, strict=True):
            out[column].append(row[position[name]])
        out["label"].append(_parse_label(row[position[fmt.label]], info, path, line))
        out["idx"].append(_parse_idx(row[position[fmt.idx]], path, line) if fmt.idx else len(out["idx"]))
    return out


def _read_jsonl(path: Path, fmt: _FileFormat, info: GlueTaskInfo) -> dict[str, list]:
    """Read JSON lines ``{idx, premise, hypothesis, label}`` (the ``MNLI_subset`` layout)."""
    out = _empty_columns(info)
    with io.StringIO(_read_text(path)) as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise GlueFormatError(path, line, f"not valid JSON ({exc.msg})") from None
            missing = [key for key in (*fmt.text, fmt.label) if not isinstance(record, dict) or key not in record]
            if missing:
                raise GlueFormatError(path, line, f"record lacks key(s) {missing}; expected {fmt.describe()}")
            for column, key in zip(info.text_columns, fmt.text, strict=True):
                out[column].append(str(record[key]))
            out["label"].append(_parse_label(record[fmt.label], info, path, line))
            has_idx = fmt.idx is not None and fmt.idx in record
            out["idx"].append(_parse_idx(record[fmt.idx], path, line) if has_idx else len(out["idx"]))
    return out


def _to_dataset(columns: dict[str, list], info: GlueTaskInfo):
    import datasets

    return datasets.Dataset.from_dict(columns, features=info.features())


# --------------------------------------------------------------------------------------------------
# Sources: local directory or Hub
# --------------------------------------------------------------------------------------------------


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    if data_dir is None:
        data_dir = os.environ.get("GLUE_DIR") or None
    return None if data_dir is None else Path(data_dir).expanduser()


def _task_folder(root: Path, key: str) -> Path:
    """``<root>/<TASK>`` (folder name matched ignoring case, ``-`` and ``_``), or ``root`` itself when it
    already holds the task's files (e.g. a k-shot folder)."""
    layout = _LAYOUTS[key]
    if not root.is_dir():
        raise FileNotFoundError(f"GLUE data directory {root} does not exist. Expected the {_layout_help(key)}.")
    exact = root / layout.folder
    if exact.is_dir():
        return exact
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and _normalise_name(entry.name) == _normalise_name(layout.folder):
            return entry
    if any((root / name).is_file() for name in layout.files.values()):
        return root
    hint = ""
    if key == "mnli" and any(_normalise_name(p.name) == "mnlisubset" for p in root.iterdir()):
        hint = " This directory has MNLI_subset/ (JSON lines): load it with task='mnli_subset'."
    raise FileNotFoundError(f"no {layout.folder}/ folder in {root}. Expected the {_layout_help(key)}.{hint}")


def _split_file(root: Path, key: str, split: str) -> Path:
    layout = _LAYOUTS[key]
    path = _task_folder(root, key) / layout.files[split]
    if not path.is_file():
        raise FileNotFoundError(
            f"{layout.folder} {split} split not found: expected the file {path}. Expected the {_layout_help(key)}."
        )
    return path


def _read_file(path: Path, key: str):
    layout = _LAYOUTS[key]
    info = get_task_info(key)
    reader = _read_jsonl if layout.format.jsonl else _read_tsv
    columns = reader(path, layout.format, info)
    if not columns["label"]:
        raise GlueFormatError(path, None, "no examples: the file is empty or holds only its header row; expected "
                              f"{layout.format.describe()} with at least one example")
    return _to_dataset(columns, info)


_HUB_TEXT_COLUMNS = {
    "rte": ("sentence1", "sentence2"),
    "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"),
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "qnli": ("question", "sentence"),
    "qqp": ("question1", "question2"),
    "mnli": ("premise", "hypothesis"),
}
_HUB_SPLITS = {"train": "train", "dev": "validation"}
_HUB_MNLI_SPLITS = {"train": "train", "dev": "validation_matched", "validation_mismatched": "validation_mismatched"}


def _hub_offline() -> bool:
    return any(
        os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _no_source_error(key: str, reason: str) -> FileNotFoundError:
    info = get_task_info(key)
    local = f"pass data_dir= (or set GLUE_DIR) to a directory in the standard GLUE layout — {_layout_help(key)}"
    if key in _ALIASES:
        return FileNotFoundError(f"cannot load {_LAYOUTS[key].folder}: {reason}; it is not on the Hub, so {local}.")
    hub = f"the Hub dataset {GLUE_HUB_DATASET!r} (configuration {info.hub_config!r})"
    remedy = f"unset HF_HUB_OFFLINE to download {hub}" if _hub_offline() else f"make {hub} reachable"
    return FileNotFoundError(f"cannot load {info.name}: {reason}. Either {local}; or {remedy}.")


def _load_hub_splits(key: str) -> dict[str, Any]:
    """The Hub's splits of ``key`` renamed to the normalised columns; keys ``train``, ``dev`` (+ MNLI extra)."""
    if key in _ALIASES:
        raise _no_source_error(key, "no data_dir was given and GLUE_DIR is not set")
    import datasets

    info = get_task_info(key)
    try:
        raw = datasets.load_dataset(GLUE_HUB_DATASET, info.hub_config)
    except Exception as exc:  # offline mode, no network, missing cache: all end the same way for the user
        raise _no_source_error(key, f"no data_dir was given and the Hub dataset could not be loaded ({exc})") from exc
    splits = _HUB_MNLI_SPLITS if key == "mnli" else _HUB_SPLITS
    out = {}
    for name, hub_split in splits.items():
        dataset = raw[hub_split]
        renames = {src: dst for src, dst in zip(_HUB_TEXT_COLUMNS[key], info.text_columns, strict=True) if src != dst}
        dataset = dataset.rename_columns(renames).select_columns([*info.text_columns, "label", "idx"])
        out[name] = dataset.cast(info.features())
    return out


def load_glue_split(task: str, split: str = "train", data_dir: str | os.PathLike | None = None):
    """One GLUE file as a normalised :class:`datasets.Dataset` (``split``: ``"train"`` or ``"dev"``).

    Useful where only one file exists (the shared QNLI has only ``dev.tsv``). ``data_dir`` defaults to
    ``$GLUE_DIR``; without a directory the Hub dataset ``nyu-mll/glue`` is used (``"dev"`` = its
    ``validation`` split, MNLI: ``validation_matched``).
    """
    key = _task_key(task)
    if split in ("validation", "dev_matched"):
        split = "dev"
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train' or 'dev'; got {split!r}")
    root = _resolve_data_dir(data_dir)
    if root is None:
        return _load_hub_splits(key)[split]
    return _read_file(_split_file(root, key, split), key)


def _load_sources(key: str, data_dir: str | os.PathLike | None) -> dict[str, Any]:
    root = _resolve_data_dir(data_dir)
    if root is None:
        return _load_hub_splits(key)
    layout = _LAYOUTS[key]
    files = {split: _split_file(root, key, split) for split in layout.files}  # every file found before any is read
    out = {split: _read_file(path, key) for split, path in files.items()}
    folder = _task_folder(root, key)
    for name, file_name in layout.extra_dev.items():
        if (folder / file_name).is_file():
            out[name] = _read_file(folder / file_name, key)
    return out


# --------------------------------------------------------------------------------------------------
# Stratified sampling (pure functions on label arrays)
# --------------------------------------------------------------------------------------------------


def stratification_keys(labels: Sequence[float] | np.ndarray, is_regression: bool = False) -> np.ndarray:
    """Strata for stratified sampling: the class id, or for STS-B scores the bin ``min(floor(s), 4)``."""
    values = np.asarray(labels)
    if is_regression:
        return np.clip(np.floor(values.astype(np.float64)), 0, STSB_SCORE_BINS - 1).astype(np.int64)
    return values.astype(np.int64)


def _largest_remainder(counts: np.ndarray, size: int) -> np.ndarray:
    """Integer allocation of ``size`` proportional to ``counts`` (Hamilton's method; ties → lower stratum)."""
    quotas = counts * size / counts.sum()
    allocation = np.floor(quotas).astype(np.int64)
    remainder = size - int(allocation.sum())
    order = sorted(range(len(counts)), key=lambda i: (-(quotas[i] - allocation[i]), i))
    for i in order[:remainder]:
        allocation[i] += 1
    return allocation


def stratified_sample(keys: Sequence[int] | np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a class-stratified random sample of ``size`` elements, sorted.

    Stratum ``c`` with ``n_c`` of the ``n`` elements contributes ``size * n_c / n`` rounded by the largest-
    remainder rule; within a stratum the choice is uniform (``numpy.random.default_rng(seed)``, strata
    visited in increasing order), so the result depends only on ``keys``, ``size`` and ``seed``.
    """
    keys = np.asarray(keys)
    if not 0 <= size <= len(keys):
        raise ValueError(f"size must be between 0 and {len(keys)}; got {size}")
    rng = np.random.default_rng(seed)
    strata, counts = np.unique(keys, return_counts=True)
    chosen = []
    for stratum, take in zip(strata, _largest_remainder(counts, size), strict=True):
        members = np.flatnonzero(keys == stratum)
        chosen.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def split_per_class(keys: Sequence[int] | np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices 50/50 within each class (Zhang et al. 2021): ``(first, second)``, both sorted.

    Of the ``n_c`` members of class ``c`` (in random order, ``numpy.random.default_rng(seed)``), the first
    ``n_c // 2`` go to ``first`` and the other ``n_c - n_c // 2`` to ``second``. The halves are disjoint and
    together cover every index.
    """
    keys = np.asarray(keys)
    rng = np.random.default_rng(seed)
    first, second = [], []
    for stratum in np.unique(keys):
        members = rng.permutation(np.flatnonzero(keys == stratum))
        first.append(members[: len(members) // 2])
        second.append(members[len(members) // 2 :])
    empty = np.zeros(0, dtype=np.int64)
    return (np.sort(np.concatenate(first)) if first else empty, np.sort(np.concatenate(second)) if second else empty)


# --------------------------------------------------------------------------------------------------
# Protocols
# --------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")


def _validate_arguments(protocol: str, train_size: int | None, seed: int, split_seed: int, max_length: int) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(repr(p) for p in PROTOCOLS)}; got {protocol!r}")
    if train_size is not None:
        _check_int("train_size", train_size, "None or a positive integer")
        if train_size < 1:
            raise ValueError(f"train_size must be None or a positive integer; got {train_size!r}")
    _check_int("seed", seed, "an integer")
    _check_int("split_seed", split_seed, "an integer")
    _check_int("max_length", max_length, "a positive integer")
    if max_length < 1:
        raise ValueError(f"max_length must be a positive integer; got {max_length!r}")


def _labels(dataset) -> np.ndarray:
    # ``[:]``: datasets >= 4 returns a lazy Column whose element-wise iteration is slow.
    return np.asarray(dataset["label"][:])


def _keys(dataset, info: GlueTaskInfo) -> np.ndarray:
    return stratification_keys(_labels(dataset), info.is_regression)


def _downsample(train, info: GlueTaskInfo, train_size: int | None, seed: int, where: str):
    if train_size is None:
        return train
    if train_size > len(train):
        raise ValueError(f"train_size={train_size} exceeds the {len(train)} training examples available{where}")
    return train.select(stratified_sample(_keys(train, info), train_size, seed))


def _glue_protocol(sources, info, train_size, seed) -> dict[str, Any]:
    splits = {"train": _downsample(sources["train"], info, train_size, seed, ""), "validation": sources["dev"]}
    splits.update({name: data for name, data in sources.items() if name not in ("train", "dev")})
    return splits


def _zhang2021_protocol(sources, info, train_size, seed, split_seed) -> dict[str, Any]:
    train, dev = sources["train"], sources["dev"]
    if info.small:
        validation, test = split_per_class(_keys(dev, info), split_seed)
        return {
            "train": _downsample(train, info, train_size, seed, ""),
            "validation": dev.select(validation),
            "test": dev.select(test),
        }
    if len(train) <= ZHANG2021_VALIDATION_SIZE:
        raise ValueError(
            f"{info.name} train has {len(train)} examples; the zhang2021 protocol carves "
            f"{ZHANG2021_VALIDATION_SIZE} validation examples out of it and needs more"
        )
    validation = stratified_sample(_keys(train, info), ZHANG2021_VALIDATION_SIZE, split_seed)
    rest = np.setdiff1d(np.arange(len(train)), validation, assume_unique=True)
    where = f" after carving {ZHANG2021_VALIDATION_SIZE} validation examples out of {len(train)} (zhang2021 protocol)"
    return {
        "train": _downsample(train.select(rest), info, train_size, seed, where),
        "validation": train.select(validation),
        "test": dev,
    }


def tokenize_glue(dataset, tokenizer, task: str, max_length: int = 128):
    """Tokenise a normalised GLUE ``Dataset``/``DatasetDict`` (sentence pairs as pairs), truncating to
    ``max_length`` without padding — pad per batch with ``DataCollatorWithPadding``. The text columns are
    replaced by the tokenizer's outputs; ``label`` and ``idx`` are kept."""
    info = get_task_info(task)

    def encode(batch):
        return tokenizer(*(batch[column] for column in info.text_columns), truncation=True, max_length=max_length)

    return dataset.map(encode, batched=True, remove_columns=list(info.text_columns))


def load_glue_task(
    task: str,
    data_dir: str | os.PathLike | None = None,
    tokenizer: Callable | None = None,
    max_length: int = 128,
    train_size: int | None = None,
    seed: int = 0,
    protocol: str = "glue",
    *,
    split_seed: int = 0,
):
    """Load a GLUE task as a :class:`datasets.DatasetDict` under an evaluation protocol.

    Args:
        task: ``RTE``, ``MRPC``, ``STS-B``, ``CoLA``, ``SST-2``, ``QNLI``, ``QQP``, ``MNLI`` (any case;
            ``sst2``/``stsb`` accepted) or ``mnli_subset`` (the JSON-lines ``MNLI_subset/{train,dev}.jsonl``
            layout, treated as MNLI).
        data_dir: directory in the GLUE layout (``<data_dir>/<TASK>/train.tsv``, ``dev.tsv``; MNLI
            ``dev_matched.tsv``), or a task folder itself; defaults to ``$GLUE_DIR``. Without either, the
            Hub dataset ``nyu-mll/glue`` is loaded (a clear ``FileNotFoundError`` when offline).
        tokenizer: if given, texts are tokenised (see :func:`tokenize_glue`).
        max_length: truncation length for the tokenizer.
        train_size: keep a class-stratified sample of this many training examples (``seed``).
        seed: seed of the training sample.
        protocol: ``"glue"`` (train / validation = GLUE dev) or ``"zhang2021"`` (train / validation / test,
            see the module docstring).
        split_seed: seed of the zhang2021 validation/test split; keep it fixed across a study.

    Returns:
        ``DatasetDict`` with ``train``, ``validation`` and (zhang2021) ``test``; columns ``sentence1``
        [``sentence2``] ``label`` ``idx`` or, with a tokenizer, the tokenizer's outputs plus ``label`` and
        ``idx``. Label names and ids: :func:`get_task_info`.

    Raises:
        ValueError: unknown task, protocol or invalid ``train_size``/seeds; :class:`GlueFormatError`
            (a ``ValueError``) for malformed rows or unknown labels, naming file and line.
        FileNotFoundError: missing directory or file, naming the expected path and layout.
    """
    import datasets

    key = _task_key(task)
    info = get_task_info(key)
    _validate_arguments(protocol, train_size, seed, split_seed, max_length)
    sources = _load_sources(key, data_dir)
    if protocol == "glue":
        splits = _glue_protocol(sources, info, train_size, seed)
    else:
        splits = _zhang2021_protocol(sources, info, train_size, seed, split_seed)
    empty = [name for name, split in splits.items() if len(split) == 0]
    if empty:
        sizes = ", ".join(f"{name} {len(data)}" for name, data in sources.items())
        raise ValueError(
            f"{info.name}: the {protocol!r} protocol leaves the {', '.join(empty)} split(s) with no examples (the "
            f"files hold {sizes} examples); give more examples (zhang2021 halves GLUE dev per class) or use "
            "protocol 'glue'"
        )
    result = datasets.DatasetDict(splits)
    if tokenizer is not None:
        result = tokenize_glue(result, tokenizer, key, max_length)
    return result
