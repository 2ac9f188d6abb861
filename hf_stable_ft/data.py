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
import dataclasses
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .tasks import (
    CLASSIFICATION,
    GLUE_HUB_DATASET,
    GLUE_TASKS,
    REGRESSION,
    TASK_KINDS,
    FileFormat,
    GlueTaskInfo,
    Task,
    get_glue_task,
    glue_task_key,
    glue_task_names,
    normalise_task_name,
)

__all__ = [
    "GLUE_HUB_DATASET",
    "PROTOCOLS",
    "ZHANG2021_VALIDATION_SIZE",
    "DataSpec",
    "GlueFormatError",
    "GlueTaskInfo",
    "Task",
    "get_task_info",
    "glue_task_names",
    "load_glue_split",
    "load_glue_task",
    "load_task",
    "split_per_class",
    "stratification_keys",
    "stratified_sample",
    "tokenize_glue",
]

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
# Task facts: one row per GLUE task in hf_stable_ft.tasks.GLUE_TASKS
# --------------------------------------------------------------------------------------------------

_FileFormat = FileFormat  # compatibility names of the merged table's parts
_LAYOUTS = GLUE_TASKS
_normalise_name = normalise_task_name


def _task_key(task: str) -> str:
    return glue_task_key(task)


def get_task_info(task: str | Task) -> Task:
    """The :class:`~hf_stable_ft.tasks.Task` of a GLUE task (``"mnli_subset"`` gives MNLI's); a Task is returned
    as is. ``Task`` is the same class (compatibility name)."""
    return get_glue_task(task)


def _not_on_hub(key: str) -> bool:
    return GLUE_TASKS[key].hub_text_columns is None


def _layout_help(key: str) -> str:
    layout = _LAYOUTS[key]
    files = " and ".join(f"<GLUE_DIR>/{layout.folder}/{name}" for name in layout.files.values())
    return f"GLUE layout for {layout.folder}: {files} ({layout.format.describe()})"


def _parse_label(value: Any, info: Task, path: Path, line: int) -> int | float:
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


def _empty_columns(info: Task) -> dict[str, list]:
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


def _read_tsv(path: Path, fmt: _FileFormat, info: Task) -> dict[str, list]:
    """Read one GLUE TSV file (``csv`` with ``QUOTE_NONE``: GLUE sentences contain bare quotes)."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        with _no_csv_field_limit():
            return _read_tsv_rows(reader, path, fmt, info)
    except csv.Error as exc:
        raise GlueFormatError(path, reader.line_num, f"cannot read the TSV row ({exc}); expected {fmt.describe()}") from None


def _read_tsv_rows(reader, path: Path, fmt: _FileFormat, info: Task) -> dict[str, list]:
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


def _read_jsonl(path: Path, fmt: _FileFormat, info: Task) -> dict[str, list]:
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


def _to_dataset(columns: dict[str, list], info: Task):
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
    if _not_on_hub(key):
        return FileNotFoundError(f"cannot load {_LAYOUTS[key].folder}: {reason}; it is not on the Hub, so {local}.")
    hub = f"the Hub dataset {GLUE_HUB_DATASET!r} (configuration {info.hub_config!r})"
    remedy = f"unset HF_HUB_OFFLINE to download {hub}" if _hub_offline() else f"make {hub} reachable"
    return FileNotFoundError(f"cannot load {info.name}: {reason}. Either {local}; or {remedy}.")


def _load_hub_splits(key: str) -> dict[str, Any]:
    """The Hub's splits of ``key`` renamed to the normalised columns; keys ``train``, ``dev`` (+ MNLI extra)."""
    if _not_on_hub(key):
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
        renames = {src: dst for src, dst in zip(GLUE_TASKS[key].hub_text_columns, info.text_columns, strict=True) if src != dst}
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


def _keys(dataset, info: Task) -> np.ndarray:
    return info.stratification_keys(_labels(dataset))


def _downsample(train, info: Task, train_size: int | None, seed: int, where: str):
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


# --------------------------------------------------------------------------------------------------
# Any dataset: data files, a saved dataset, a local dataset folder or a Hub dataset
# --------------------------------------------------------------------------------------------------

#: File suffix -> ``datasets`` builder (``.tsv`` is CSV with a tab delimiter).
DATA_FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
                     ".pq": "parquet"}
_SPLIT_FLAGS = {"train": "--train-file", "validation": "--validation-file", "test": "--test-file"}
_VALIDATION_NAMES = ("validation", "valid", "val", "dev")
#: Regression scores are stratified into this many quantile bins of the training scores.
SCORE_BINS = 5


@dataclass(frozen=True)
class DataSpec:
    """A user's task: where its data are, which columns hold text and label, its kind and metric.

    Either files (``train_file`` and ``validation_file``, optional ``test_file``: CSV, TSV, JSON, JSON lines or
    Parquet, read by ``datasets.load_dataset``) or ``dataset``: a ``save_to_disk`` directory, a local dataset
    folder, or (online) a Hub dataset name with optional ``dataset_config``. ``text_columns`` (one, or two for
    pairs; default: ``sentence1,sentence2``, ``text`` or ``sentence`` when present), ``label_column``
    (default ``label``), ``task_kind`` (``classification`` / ``regression``; default: inferred from the label
    column), ``metric`` / ``metric_key`` / ``metric_direction`` (see :func:`hf_stable_ft.metrics.task_with_metric`)
    and ``name`` (the task's name in records; default: the dataset name or the training file's stem).
    """

    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    text_columns: tuple[str, ...] | None = None
    label_column: str = "label"
    task_kind: str | None = None
    metric: str | None = None
    metric_key: str | None = None
    metric_direction: str | None = None
    name: str | None = None

    def __post_init__(self):
        if isinstance(self.text_columns, str):
            object.__setattr__(self, "text_columns", tuple(c.strip() for c in self.text_columns.split(",")))
        elif self.text_columns is not None:
            object.__setattr__(self, "text_columns", tuple(self.text_columns))
        files = [self.train_file, self.validation_file, self.test_file]
        if self.dataset is not None and any(files):
            raise ValueError("--dataset and --train-file/--validation-file/--test-file exclude each other; pass one "
                             "data source")
        if self.dataset is None:
            if not self.train_file or not self.validation_file:
                missing = "--train-file" if not self.train_file else "--validation-file"
                raise ValueError(f"{missing} is missing: data files need --train-file F and --validation-file F "
                                 "(--test-file F optional), or pass --dataset NAME")
        elif self.dataset_config is not None and not self.dataset:
            raise ValueError("--dataset-config needs --dataset")
        if self.dataset is None and self.dataset_config is not None:
            raise ValueError("--dataset-config needs --dataset")
        if self.text_columns is not None and (not 1 <= len(self.text_columns) <= 2 or not all(self.text_columns)):
            raise ValueError(f"--text-columns {','.join(self.text_columns)} is invalid; allowed: one column, or two "
                             "separated by a comma (a text pair), e.g. --text-columns question,passage")
        if not self.label_column:
            raise ValueError("--label-column is empty; allowed: the name of the label column")
        if self.text_columns is not None and self.label_column in self.text_columns:
            raise ValueError(f"--label-column {self.label_column} is also one of --text-columns; allowed: a column "
                             "that is not a text column")
        if self.task_kind is not None and self.task_kind not in TASK_KINDS:
            raise ValueError(f"--task-kind {self.task_kind} is invalid; allowed: {', '.join(TASK_KINDS)}")
        if self.metric_direction not in (None, "higher", "lower"):
            raise ValueError(f"--metric-direction {self.metric_direction} is invalid; allowed: higher, lower")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (``sweep.json``, records' settings); :meth:`from_dict` reads it back."""
        values = dataclasses.asdict(self)
        if values["text_columns"] is not None:
            values["text_columns"] = list(values["text_columns"])
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any] | DataSpec) -> DataSpec:
        if isinstance(values, DataSpec):
            return values
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown data options {unknown}; known: {', '.join(sorted(known))}")
        return cls(**values)

    @property
    def task_name(self) -> str:
        if self.name:
            return self.name
        if self.dataset:
            return Path(self.dataset.rstrip("/")).name or self.dataset
        return Path(self.train_file).stem

    def where(self, split: str) -> str:
        """The flag and source of a split, for messages: ``--train-file data/train.csv``."""
        if self.dataset is not None:
            return f"--dataset {self.dataset} ({split} split)"
        return f"{_SPLIT_FLAGS[split]} {getattr(self, f'{split}_file')}"


def _read_data_file(path_text: str, flag: str):
    """One data file as a ``datasets.Dataset`` through ``datasets.load_dataset``."""
    import datasets

    path = Path(path_text).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{flag} {path_text}: the file {what}; allowed: a CSV, TSV, JSON, JSON-lines or "
                                "Parquet file")
    suffixes = [s.lower() for s in path.suffixes]
    suffix = next((s for s in reversed(suffixes) if s in DATA_FILE_FORMATS), None)
    if suffix is None:
        raise ValueError(f"{flag} {path_text}: unknown file type {path.suffix or '(no suffix)'!r}; allowed: "
                         f"{', '.join(DATA_FILE_FORMATS)}")
    builder = DATA_FILE_FORMATS[suffix]
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    if path.stat().st_size == 0:
        raise ValueError(f"{flag} {path_text}: the split is empty (an empty file); allowed: a file with at least one "
                         "example")
    quiet = not datasets.utils.are_progress_bars_disabled()
    if quiet:
        datasets.disable_progress_bars()  # one "Generating train split" bar per file says nothing useful here
    try:
        return datasets.load_dataset(builder, data_files={"train": str(path)}, split="train", **kwargs)
    except Exception as error:
        if "corresponds to no data" in str(error):  # a header row and no example
            raise ValueError(f"{flag} {path_text}: the split is empty (no examples); allowed: a file with at least "
                             "one example") from None
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        cause = error.__cause__
        if cause is not None and str(cause):
            reason += f" ({' '.join(str(cause).split())[:200]})"
        raise ValueError(f"{flag} {path_text}: cannot read it as {builder.upper()}: {reason}") from error
    finally:
        if quiet:
            datasets.enable_progress_bars()


def _hub_or_local_dataset(spec: DataSpec) -> dict[str, Any]:
    """The splits of ``--dataset``: a ``save_to_disk`` directory, a local dataset folder, or a Hub dataset."""
    import datasets

    path = Path(spec.dataset).expanduser()
    flag = f"--dataset {spec.dataset}"
    if path.is_dir():
        saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
        try:
            loaded = datasets.load_from_disk(str(path)) if saved else \
                datasets.load_dataset(str(path), name=spec.dataset_config)
        except Exception as error:
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            raise ValueError(f"{flag}: cannot load the local dataset folder: {reason}") from error
        if isinstance(loaded, datasets.Dataset):
            raise ValueError(f"{flag}: a saved single Dataset has no splits; save a DatasetDict with train and "
                             "validation splits (and test, optional), or pass --train-file/--validation-file")
    elif path.exists():
        raise ValueError(f"{flag}: a file, not a dataset; pass data files with --train-file/--validation-file")
    elif _hub_offline():
        raise FileNotFoundError(f"{flag}: no such local directory, and HF_HUB_OFFLINE is set, so the Hub dataset "
                                "cannot be loaded; allowed offline: a save_to_disk directory, a local dataset folder, "
                                "or --train-file/--validation-file")
    else:
        try:
            loaded = datasets.load_dataset(spec.dataset, spec.dataset_config)
        except Exception as error:
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            raise ValueError(f"{flag}: cannot load the Hub dataset: {reason}") from error
    names = list(loaded)
    validation = next((n for n in _VALIDATION_NAMES if n in loaded), None)
    if "train" not in loaded or validation is None:
        need = "train" if "train" not in loaded else "validation (or valid/val/dev)"
        raise ValueError(f"{flag}: no {need} split; splits found: {', '.join(names) or 'none'}")
    splits = {"train": loaded["train"], "validation": loaded[validation]}
    if "test" in loaded:
        splits["test"] = loaded["test"]
    return splits


def _raw_splits(spec: DataSpec) -> dict[str, Any]:
    if spec.dataset is not None:
        return _hub_or_local_dataset(spec)
    files = {"train": spec.train_file, "validation": spec.validation_file, "test": spec.test_file}
    return {split: _read_data_file(path, _SPLIT_FLAGS[split]) for split, path in files.items() if path}


def _default_text_columns(columns: list[str]) -> tuple[str, ...] | None:
    for candidate in (("sentence1", "sentence2"), ("premise", "hypothesis"), ("text",), ("sentence",)):
        if all(c in columns for c in candidate):
            return candidate
    return None


def _check_columns(spec: DataSpec, splits: dict[str, Any]) -> tuple[str, ...]:
    train_columns = list(splits["train"].column_names)
    text_columns = spec.text_columns or _default_text_columns(train_columns)
    if text_columns is None:
        raise ValueError(f"--text-columns is not given and {spec.where('train')} has no text/sentence column; "
                         f"columns found: {', '.join(train_columns)}; pass --text-columns COLUMN[,COLUMN]")
    if spec.label_column in text_columns:
        raise ValueError(f"--label-column {spec.label_column} is also a text column; allowed: a column that is not a "
                         "text column")
    clash = [c for c in text_columns if c in ("label", "idx") and c != spec.label_column]
    if clash:
        raise ValueError(f"--text-columns {','.join(text_columns)}: a text column may not be named {clash[0]!r} (the "
                         "loaded dataset uses label and idx); rename that column in the data")
    for split, data in splits.items():
        columns = list(data.column_names)
        if len(data) == 0:
            raise ValueError(f"{spec.where(split)}: the split is empty (no examples); allowed: a split with at "
                             "least one example")
        for flag, wanted in (("--text-columns", text_columns), ("--label-column", (spec.label_column,))):
            missing = [c for c in wanted if c not in columns]
            if not missing:
                continue
            if split == "test" and flag == "--label-column":
                raise ValueError(f"{spec.where('test')}: the test split has no labels (no column "
                                 f"{spec.label_column!r}; columns found: {', '.join(columns)}); give a labelled test "
                                 "split, or drop it: without a test split the validation split is halved per class")
            raise ValueError(f"{flag} {','.join(wanted)}: column {missing[0]!r} is not in {spec.where(split)}; "
                             f"columns found: {', '.join(columns)}")
    return tuple(text_columns)


def _column_values(data, column: str) -> list:
    return list(data[column][:])


def _label_kind(feature: Any) -> str:
    """``"classes"`` (ClassLabel), ``"strings"``, ``"integers"``, ``"floats"`` or ``"other"``."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return "classes"
    dtype = getattr(feature, "dtype", None)
    if dtype in ("string", "large_string"):
        return "strings"
    if dtype == "bool" or (isinstance(dtype, str) and dtype.startswith(("int", "uint"))):
        return "integers"
    if isinstance(dtype, str) and dtype.startswith("float"):
        return "floats"
    return "other"


def _unlabelled(values: list, classes: bool) -> list[int]:
    return [i for i, v in enumerate(values) if v is None or (classes and v == -1)
            or (isinstance(v, float) and math.isnan(v))]


def _infer_task(spec: DataSpec, splits: dict[str, Any], text_columns: tuple[str, ...]) -> tuple[Task, dict]:
    """The task of the data (kind, classes or score bins, default metric) and each split's label values."""
    flag = f"--label-column {spec.label_column}"
    feature = splits["train"].features[spec.label_column]
    stored = _label_kind(feature)
    labels = {split: _column_values(data, spec.label_column) for split, data in splits.items()}
    for split, values in labels.items():
        missing = _unlabelled(values, stored == "classes")
        if missing and len(missing) == len(values) and split == "test":
            raise ValueError(f"{spec.where('test')}: the test split has no labels (column {spec.label_column!r} is "
                             "empty or -1 throughout); give a labelled test split, or drop it: without a test split "
                             "the validation split is halved per class")
        if missing:
            raise ValueError(f"{flag}: {len(missing)} example(s) of {spec.where(split)} have no label (first: row "
                             f"{missing[0]}); allowed: every example labelled")
    if stored == "other":
        raise ValueError(f"{flag}: the column holds {feature}, not class names, class ids or scores; allowed: a "
                         "string, integer or float column")
    kind = spec.task_kind or (REGRESSION if stored == "floats" else CLASSIFICATION)
    origin = f"given by --task-kind {kind}" if spec.task_kind else (
        f"inferred from label column {spec.label_column!r} ({'class names' if stored == 'classes' else stored}); "
        "pass --task-kind to override")
    if kind == REGRESSION:
        if stored == "classes":
            raise ValueError(f"--task-kind regression does not fit {flag}: it holds class labels "
                             f"({', '.join(feature.names[:5])}), not scores; allowed: --task-kind classification")
        if stored == "strings":
            try:
                labels = {s: [float(v) for v in values] for s, values in labels.items()}
            except (TypeError, ValueError):
                raise ValueError(f"--task-kind regression does not fit {flag}: it holds strings, not scores; "
                                 "allowed: --task-kind classification") from None
        scores = {s: np.asarray(values, dtype=np.float64) for s, values in labels.items()}
        for split, values in scores.items():
            if not np.all(np.isfinite(values)):
                raise ValueError(f"{flag}: {spec.where(split)} holds non-finite scores; allowed: finite numbers")
        train = scores["train"]
        if np.ptp(train) == 0:
            raise ValueError(f"{flag}: every training score is {train[0]:g}: a constant has nothing to learn; "
                             "allowed: a label column with at least two distinct values")
        edges = np.unique(np.quantile(train, np.arange(1, SCORE_BINS) / SCORE_BINS))
        task = Task(spec.task_name, None, (), "spearmanr", ("pearson", "spearmanr"), text_columns, small=True,
                    kind=REGRESSION, label_column=spec.label_column, score_bins=tuple(float(e) for e in edges),
                    kind_source=origin)
        return task, scores
    if stored == "classes":
        names = tuple(feature.names)
        used = sorted(set(labels["train"]))
        ids = labels
        if len(used) < 2:
            raise ValueError(f"{flag}: the training split holds one class ({names[used[0]]!r}); a classifier needs "
                             "at least 2; allowed: a label column with at least two classes")
    else:
        classes = sorted(set(labels["train"]), key=lambda v: (isinstance(v, str), v))
        if len(classes) < 2:
            raise ValueError(f"{flag}: the training split holds one class ({classes[0]!r}); a classifier needs at "
                             "least 2; allowed: a label column with at least two classes")
        position = {value: i for i, value in enumerate(classes)}
        for split, values in labels.items():
            unseen = sorted({v for v in values if v not in position}, key=str)
            if unseen:
                raise ValueError(f"{flag}: {spec.where(split)} has label(s) {unseen[:5]} that the training split "
                                 f"lacks (training classes: {', '.join(map(str, classes))}); a class the model never "
                                 "saw cannot be learned")
        names = tuple(_class_name(v) for v in classes)
        ids = {split: [position[v] for v in values] for split, values in labels.items()}
    task = Task(spec.task_name, None, names, "accuracy", ("accuracy",), text_columns, small=True, kind=CLASSIFICATION,
                label_column=spec.label_column, kind_source=origin)
    return task, ids


def _class_name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _normalised_split(data, task: Task, label_values: list, where: str):
    import datasets

    columns: dict[str, list] = {}
    for column in task.text_columns:
        values = _column_values(data, column)
        empty = [i for i, v in enumerate(values) if v is None]
        if empty:
            raise ValueError(f"--text-columns {column}: {len(empty)} example(s) of {where} have no text in column "
                             f"{column!r} (first: row {empty[0]}); allowed: every example with its text")
        columns[column] = [v if isinstance(v, str) else str(v) for v in values]
    columns["label"] = list(label_values)
    columns["idx"] = list(range(len(label_values)))
    return datasets.Dataset.from_dict(columns, features=task.features())


def _user_protocol(spec: DataSpec, splits: dict[str, Any], task: Task, protocol: str, train_size: int | None,
                   seed: int, split_seed: int) -> dict[str, Any]:
    out = {"train": _downsample(splits["train"], task, train_size, seed, f" in {spec.where('train')}")}
    validation = splits["validation"]
    if "test" in splits:
        out.update(validation=validation, test=splits["test"])
    elif protocol == "zhang2021":
        first, second = split_per_class(_keys(validation, task), split_seed)
        out.update(validation=validation.select(first), test=validation.select(second))
    else:
        out["validation"] = validation
    empty = [name for name, split in out.items() if len(split) == 0]
    if empty:
        raise ValueError(f"{spec.where('validation')}: {len(validation)} example(s); halving the validation split per "
                         f"{'score bin' if task.is_regression else 'class'} (protocol zhang2021, no test split) leaves "
                         f"the {', '.join(empty)} split empty; give more validation examples, a test split, or "
                         "--protocol glue")
    return out


def load_user_task(spec: DataSpec | dict, tokenizer: Callable | None = None, max_length: int = 128,
                   train_size: int | None = None, seed: int = 0, protocol: str = "zhang2021", *,
                   split_seed: int = 0):
    """Load a user's dataset (:class:`DataSpec`) as ``(task, DatasetDict)`` under the papers' protocol.

    The splits are normalised to the text columns, ``label`` (``ClassLabel`` of the training classes, or
    ``float32`` scores) and ``idx`` (the row number). Classes are the training split's label values (sorted);
    a validation or test label outside them, a single class, a missing column or an empty split is a
    ValueError naming the flag. ``protocol="zhang2021"`` without a test split halves the validation split per
    class (regression: per quantile bin of the training scores) with ``split_seed``; ``"glue"`` keeps it whole.
    ``train_size`` keeps a class-stratified sample of the training split (``seed``).
    """
    import datasets

    from .metrics import task_with_metric

    spec = DataSpec.from_dict(spec)
    _validate_arguments(protocol, train_size, seed, split_seed, max_length)
    raw = _raw_splits(spec)
    text_columns = _check_columns(spec, raw)
    task, labels = _infer_task(spec, raw, text_columns)
    greater = None if spec.metric_direction is None else spec.metric_direction == "higher"
    task = task_with_metric(task, spec.metric, key=spec.metric_key, greater_is_better=greater)
    splits = {split: _normalised_split(data, task, labels[split], spec.where(split)) for split, data in raw.items()}
    result = datasets.DatasetDict(_user_protocol(spec, splits, task, protocol, train_size, seed, split_seed))
    if tokenizer is not None:
        result = tokenize_glue(result, tokenizer, task, max_length)
    return task, result


def load_task(source: str | Task | DataSpec | dict, data_dir: str | os.PathLike | None = None,
              tokenizer: Callable | None = None, max_length: int = 128, train_size: int | None = None, seed: int = 0,
              protocol: str = "glue", *, split_seed: int = 0):
    """``(task, DatasetDict)`` of a GLUE task name (:func:`load_glue_task`) or of a user's :class:`DataSpec`
    (:func:`load_user_task`): the one entry point the sweep and ``train`` use."""
    if isinstance(source, (DataSpec, dict)):
        return load_user_task(source, tokenizer, max_length, train_size, seed, protocol, split_seed=split_seed)
    task = get_task_info(source)
    data = load_glue_task(source if isinstance(source, str) else task.name, data_dir=data_dir, tokenizer=tokenizer,
                          max_length=max_length, train_size=train_size, seed=seed, protocol=protocol,
                          split_seed=split_seed)
    return task, data
