"""Metrics for the Trainer's ``compute_metrics`` on any task, majority/constant baselines and constant-predictor
losses.

Built-in metrics (scikit-learn/SciPy, no Hub access), by the name ``--metric`` takes (aliases in brackets):

* ``accuracy`` = mean(pred == label);
* ``f1`` (``f1_binary``) — F1 of the positive class 1, F1 = 2PR / (P + R); binary classification only;
* ``f1_macro`` (``macro_f1``) — the unweighted mean of the per-class F1 scores;
* ``matthews_correlation`` (``mcc``) — (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)), multi-class as
  scikit-learn defines it;
* ``pearson`` and ``spearmanr`` (``spearman``) — Pearson's r and Spearman's ρ of predicted and gold scores;
  regression only.

All are higher-is-better. An ``evaluate`` module (a local metric folder offline, a Hub name online) or any object
with ``compute(predictions=, references=)`` can replace them (:func:`task_with_metric`); its primary key and its
direction are then explicit. GLUE tasks score as the GLUE benchmark (Wang et al., 2019) does; primary metrics follow
Zhang et al. (2021): RTE accuracy, MRPC F1, STS-B Spearman, CoLA MCC, accuracy for SST-2/QNLI/QQP/MNLI.

One deliberate difference from SciPy: a correlation with a constant input (a collapsed regressor) is undefined;
SciPy returns NaN, here it is 0.0 — the value scikit-learn already gives the Matthews correlation of a constant
classifier — so "best on validation" selection and failed-run detection never compare against NaN.

:func:`compute_metrics_for` gives a ``compute_metrics`` for any Trainer script from a :class:`~hf_stable_ft.tasks.Task`,
a GLUE task name, a built-in metric name (or a list of them) or a metric object.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .stats import constant_prediction_loss
from .tasks import CLASSIFICATION, REGRESSION, Task, get_glue_task, glue_task_key

__all__ = [
    "BUILTIN_METRICS",
    "compute_glue_metrics",
    "compute_metrics_for",
    "compute_task_metrics",
    "constant_baseline",
    "constant_prediction_loss",
    "glue_compute_metrics",
    "load_metric_module",
    "logits_to_predictions",
    "majority_baseline",
    "metric_key",
    "primary_metric",
    "task_with_metric",
]


def _task(task: str | Task) -> Task:
    return get_glue_task(task)


def primary_metric(task: str | Task) -> str:
    """Key of the task's headline score (GLUE: Zhang et al. 2021); pass it as ``metric_for_best_model``."""
    return _task(task).primary_metric


def _predictions(logits: Any, regression: bool) -> np.ndarray:
    if isinstance(logits, tuple):
        logits = logits[0]
    values = np.asarray(logits)
    if regression:
        return values.reshape(-1).astype(np.float64)
    if values.ndim >= 2:
        return values.argmax(axis=-1).reshape(-1)
    return values.astype(np.int64).reshape(-1)


def logits_to_predictions(task: str | Task, logits: Any) -> np.ndarray:
    """Model outputs → predictions: argmax over the last axis for classification (1-D input is taken as
    already-predicted label ids, e.g. from ``preprocess_logits_for_metrics``), a flat float array for
    regression. A tuple of outputs (logits first, as the Trainer gathers them) is reduced to its first item."""
    return _predictions(logits, _task(task).is_regression)


def _accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    return float((predictions == references).mean())


def _f1(predictions: np.ndarray, references: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(references, predictions, zero_division=0.0))


def _f1_macro(predictions: np.ndarray, references: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(references, predictions, average="macro", zero_division=0.0))


def _matthews(predictions: np.ndarray, references: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(references, predictions))


def _is_degenerate(x: np.ndarray, y: np.ndarray) -> bool:
    return len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0


def _pearson(predictions: np.ndarray, references: np.ndarray) -> float:
    from scipy.stats import pearsonr

    return 0.0 if _is_degenerate(predictions, references) else float(pearsonr(predictions, references)[0])


def _spearman(predictions: np.ndarray, references: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return 0.0 if _is_degenerate(predictions, references) else float(spearmanr(predictions, references)[0])


#: Built-in metric key -> (function, task kind it fits). Every one is higher-is-better.
BUILTIN_METRICS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], str]] = {
    "accuracy": (_accuracy, CLASSIFICATION),
    "f1": (_f1, CLASSIFICATION),
    "f1_macro": (_f1_macro, CLASSIFICATION),
    "matthews_correlation": (_matthews, CLASSIFICATION),
    "pearson": (_pearson, REGRESSION),
    "spearmanr": (_spearman, REGRESSION),
}
_ALIASES = {"mcc": "matthews_correlation", "matthews": "matthews_correlation", "spearman": "spearmanr",
            "f1_binary": "f1", "binary_f1": "f1", "macro_f1": "f1_macro", "acc": "accuracy"}
_METRIC_FUNCTIONS = {name: function for name, (function, _) in BUILTIN_METRICS.items()}  # compatibility
_ALLOWED = "accuracy, f1, f1_macro, mcc (matthews_correlation), pearson, spearman (spearmanr)"


def metric_key(name: str) -> str | None:
    """The key of a built-in metric name or alias (``"mcc"`` → ``"matthews_correlation"``); None if not built in."""
    text = str(name).strip().lower().replace("-", "_")
    text = _ALIASES.get(text, text)
    return text if text in BUILTIN_METRICS else None


def _as_arrays(task: Task, predictions, references) -> tuple[np.ndarray, np.ndarray]:
    dtype = np.float64 if task.is_regression else np.int64
    predictions = np.asarray(predictions, dtype=dtype).reshape(-1)
    references = np.asarray(references, dtype=dtype).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if len(references) == 0:
        raise ValueError("cannot score an empty evaluation set")
    return predictions, references


def _as_python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def compute_task_metrics(task: str | Task, predictions: Sequence | np.ndarray, references: Sequence | np.ndarray
                         ) -> dict[str, float]:
    """The task's scores of ``predictions`` (label ids, or scores for regression) against ``references``: its
    built-in metrics, or the result of its metric module (as the module returns it)."""
    task = _task(task)
    predictions, references = _as_arrays(task, predictions, references)
    if task.metric is not None:
        result = task.metric.compute(predictions=predictions, references=references)
        return {key: _as_python(value) for key, value in dict(result).items()}
    return {name: _METRIC_FUNCTIONS[name](predictions, references) for name in task.metric_names}


def compute_glue_metrics(task: str | Task, predictions: Sequence | np.ndarray, references: Sequence | np.ndarray
                         ) -> dict[str, float]:
    """GLUE scores of ``predictions`` (label ids, or scores for STS-B) against ``references``
    (:func:`compute_task_metrics` of a GLUE task)."""
    return compute_task_metrics(task, predictions, references)


def _unpack(eval_pred: Any) -> tuple[Any, Any]:
    """``EvalPrediction`` (or anything with ``predictions``/``label_ids``) or a ``(predictions, labels)`` pair."""
    if hasattr(eval_pred, "predictions") and hasattr(eval_pred, "label_ids"):
        return eval_pred.predictions, eval_pred.label_ids
    predictions, labels = eval_pred[0], eval_pred[1]
    return predictions, labels


def _check_metric_object(metric: Any) -> None:
    if not callable(getattr(metric, "compute", None)):
        raise TypeError(f"metric must have a compute(predictions=, references=) method; got {type(metric).__name__}")


def _names_callable(names: Sequence[str]) -> Callable[[Any], dict[str, float]]:
    keys = []
    for name in names:
        key = metric_key(name)
        if key is None:
            raise ValueError(f"unknown metric {name!r}; built-in metrics: {_ALLOWED}")
        keys.append(key)
    kinds = {BUILTIN_METRICS[key][1] for key in keys}
    if len(kinds) > 1:
        raise ValueError(f"metrics {list(names)} mix classification and regression metrics; pass those of one kind")
    regression = kinds == {REGRESSION}

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits, labels = _unpack(eval_pred)
        dtype = np.float64 if regression else np.int64
        predictions = _predictions(logits, regression)
        references = np.asarray(labels, dtype=dtype).reshape(-1)
        if predictions.shape != references.shape:
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        return {key: _METRIC_FUNCTIONS[key](predictions, references) for key in keys}

    return compute_metrics


def compute_metrics_for(target: Any, metric: Any | None = None) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` callable for any ``Trainer`` script.

    ``target`` is one of:

    * a :class:`~hf_stable_ft.tasks.Task` (e.g. from :func:`hf_stable_ft.data.load_task`): its metrics;
    * a GLUE task name (``"rte"``, ``"STS-B"``, ...): scored as GLUE does;
    * a built-in metric name or a list of them (``"f1"``, ``["accuracy", "f1_macro"]``, ``"spearman"``): those
      scores, from logits (argmax) or, for ``pearson``/``spearman``, from one regression output;
    * an object with ``compute(predictions=, references=)`` (an ``evaluate`` module you loaded), or the path of
      a local ``evaluate`` metric folder: its result, as is, of the argmax predictions.

    ``metric`` (optional, with a task or GLUE name): an object with ``compute`` that replaces the built-in
    computation. No metric is ever fetched from the Hub here (see :func:`load_metric_module`).

    The callable accepts an ``EvalPrediction`` or a ``(predictions, labels)`` tuple; predictions may be logits,
    a tuple whose first item is the logits, or predicted label ids.
    """
    if metric is not None:
        _check_metric_object(metric)
    if isinstance(target, (list, tuple)) and all(isinstance(name, str) for name in target):
        return _names_callable(target)
    if isinstance(target, str) and metric_key(target) is not None and glue_task_key(target, missing_ok=True) is None:
        return _names_callable([target])
    if isinstance(target, (str, os.PathLike)) and glue_task_key(str(target), missing_ok=True) is None \
            and Path(target).expanduser().exists():
        target = load_metric_module(str(target))  # a local evaluate metric folder
    if not isinstance(target, (str, Task)):
        _check_metric_object(target)
        metric, regression = target, False
        task = None
    else:
        task = _task(target)  # fails now on an unknown task, not at the first evaluation
        regression = task.is_regression
        metric = metric if metric is not None else task.metric

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits, labels = _unpack(eval_pred)
        predictions = _predictions(logits, regression)
        references = np.asarray(labels).reshape(-1)
        if metric is not None:
            result = metric.compute(predictions=predictions, references=references)
            return {key: _as_python(value) for key, value in dict(result).items()}
        return compute_task_metrics(task, predictions, references)

    return compute_metrics


def glue_compute_metrics(task: str | Task, metric: Any | None = None) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` callable for ``Trainer`` that scores ``task`` the way GLUE does
    (:func:`compute_metrics_for` of a GLUE task name).

    Args:
        task: GLUE task name (see :func:`hf_stable_ft.data.get_task_info`) or a :class:`~hf_stable_ft.tasks.Task`.
        metric: optional object with ``compute(predictions=..., references=...)`` (e.g. an ``evaluate`` module
            the caller loaded); it then replaces the built-in scikit-learn/SciPy computation and its result dict
            is returned as is. No metric is ever fetched from the Hub here.
    """
    if metric is not None:
        _check_metric_object(metric)
    return compute_metrics_for(_task(task), metric=metric)


# --------------------------------------------------------------------------------------------------------
# choosing a task's metric


def _hub_offline() -> bool:
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"))


def load_metric_module(source: str) -> Any:
    """``evaluate.load(source)``: a local metric folder (or script) offline, a Hub name (e.g. ``"accuracy"`` of
    ``evaluate``) online. Errors name ``--metric`` and what to pass instead."""
    path = Path(source).expanduser()
    local = path.exists()
    if not local and _hub_offline():
        raise ValueError(f"--metric {source}: not a built-in metric ({_ALLOWED}) nor an existing local metric folder, "
                         "and HF_HUB_OFFLINE is set, so it cannot be fetched from the Hub; pass a built-in name or the "
                         "path of an evaluate metric folder")
    try:
        import evaluate
    except ImportError:
        raise ImportError(f"--metric {source}: not a built-in metric ({_ALLOWED}); an evaluate module needs the "
                          "evaluate package: pip install evaluate") from None
    try:
        return evaluate.load(str(path) if local else source)
    except Exception as error:
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        where = f"the local folder {path}" if local else "the Hub"
        raise ValueError(f"--metric {source}: cannot load the evaluate module from {where}: {reason}; pass a built-in "
                         f"metric ({_ALLOWED}) or an evaluate metric folder") from error


def _probe(metric: Any, task: Task) -> dict[str, Any]:
    """The metric's result on a tiny perfect prediction: its keys, checked before any run."""
    if task.is_regression:
        values = np.array([0.0, 1.0, 2.0, 3.0])
    else:
        values = np.arange(4) % task.num_labels
    try:
        result = metric.compute(predictions=values, references=values)
    except Exception as error:
        raise ValueError(f"--metric {task.metric_source or type(metric).__name__}: computing it on {task.kind} "
                         f"predictions fails ({type(error).__name__}: {error}); it does not fit a {task.kind} task")\
            from error
    if not isinstance(result, dict) or not result:
        raise ValueError(f"--metric {task.metric_source}: compute() returned {result!r}, not a dict of scores")
    return result


def task_with_metric(task: Task, metric: Any | None = None, *, key: str | None = None,
                     greater_is_better: bool | None = None) -> Task:
    """``task`` scored by ``metric``: a built-in name (see :data:`BUILTIN_METRICS`; aliases ``mcc``, ``spearman``),
    a local ``evaluate`` metric folder or a Hub name (:func:`load_metric_module`), or an object with ``compute``.

    ``key`` names the primary key of a module's result (default: its only key, or the key named like the
    module); ``greater_is_better`` its direction (default True; built-in metrics are all higher-is-better). A
    metric that does not fit the task's kind (``pearson`` on classes, ``f1`` on three classes) is a ValueError
    naming ``--metric`` and the metrics that fit. ``metric=None`` leaves the task as it is.
    """
    if metric is None:
        if key is not None or greater_is_better is False:
            raise ValueError("--metric-key / --metric-direction need --metric (an evaluate module)")
        return task
    if isinstance(metric, str) and metric_key(metric) is not None:
        name = metric_key(metric)
        fits = [k for k, (_, kind) in BUILTIN_METRICS.items() if kind == task.kind
                and not (k == "f1" and task.num_labels != 2)]
        if name not in fits:
            why = (f"{task.num_labels} classes (f1 is binary; use f1_macro)" if name == "f1" and not task.is_regression
                   else f"a {task.kind} task")
            raise ValueError(f"--metric {metric} does not fit {why}; allowed for this task: {', '.join(fits)}")
        if greater_is_better is False:
            raise ValueError(f"--metric-direction lower does not fit --metric {metric}: it is higher-is-better")
        if key is not None and key != name:
            raise ValueError(f"--metric-key {key} does not fit --metric {metric}, whose key is {name}")
        names = (name, "pearson" if name == "spearmanr" else "spearmanr") if task.is_regression else \
            tuple(dict.fromkeys((name, "accuracy")))
        return task.with_metric(primary_metric=name, metric_names=names, greater_is_better=True, metric=None,
                                metric_source=str(metric))
    source = str(metric) if isinstance(metric, (str, os.PathLike)) else type(metric).__name__
    module = load_metric_module(str(metric)) if isinstance(metric, (str, os.PathLike)) else metric
    _check_metric_object(module)
    probe_task = task.with_metric(metric=module, metric_source=source)
    keys = list(_probe(module, probe_task))
    if key is None:
        own = getattr(module, "name", None) or Path(source).stem
        if len(keys) == 1:
            key = keys[0]
        elif own in keys:
            key = own
        else:
            raise ValueError(f"--metric {source} returns several scores ({', '.join(keys)}); pick the primary one "
                             "with --metric-key KEY")
    elif key not in keys:
        raise ValueError(f"--metric-key {key}: --metric {source} returns {', '.join(keys)}; allowed: one of those")
    return probe_task.with_metric(primary_metric=key, metric_names=(key,),
                                  greater_is_better=True if greater_is_better is None else bool(greater_is_better))


# --------------------------------------------------------------------------------------------------------
# baselines


def _majority_label(labels: np.ndarray) -> int:
    return int(np.bincount(labels).argmax())  # ties → the smallest label id


def constant_baseline(task: str | Task, labels: Sequence | np.ndarray, constant: float | None = None
                      ) -> float | None:
    """Primary-metric score of a constant predictor on the split with gold ``labels``, scored by the task's own
    metric (built-in or module).

    The constant is ``constant`` (pass the *training* split's majority class / mean score: the predictor a
    collapsed run turns into) or, by default, the majority class (ties → smallest id) / mean of ``labels``.
    Built-in scores: accuracy = the constant class's share; binary F1 = 2p/(1+p) with p the share of class 1
    when the constant is class 1, else 0; Matthews correlation and correlations 0. None when the metric gives no
    finite number. Mosbach et al. (2021) call a run failed when its score is at or below this value.
    """
    task = _task(task)
    if task.is_regression:
        references = np.asarray(labels, dtype=np.float64).reshape(-1)
        if len(references) == 0:
            raise ValueError("labels is empty")
        value = float(references.mean()) if constant is None else float(constant)
        predictions = np.full_like(references, value)
    else:
        references = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(references) == 0:
            raise ValueError("labels is empty")
        value = _majority_label(references) if constant is None else int(constant)
        if not 0 <= value < task.num_labels:
            raise ValueError(f"majority_label must be a label id of {task.name} (0..{task.num_labels - 1}); got {value}")
        predictions = np.full_like(references, value)
    if task.metric is None and task.is_regression and all(
            BUILTIN_METRICS[name][0] in (_pearson, _spearman) for name in task.metric_names):
        return 0.0  # a constant has no correlation: scored 0 (no call needed)
    score = compute_task_metrics(task, predictions, references).get(task.primary_metric)
    try:
        score = float(score)
    except (TypeError, ValueError):
        return None
    return score if np.isfinite(score) else None


def majority_baseline(task: str | Task, labels: Sequence | np.ndarray, majority_label: float | None = None
                      ) -> float | None:
    """Primary-metric score of a constant predictor on the split with gold ``labels`` (:func:`constant_baseline`;
    ``majority_label`` is the constant: a class id, or for regression a score). For STS-B, a constant score has
    no defined correlation and scores 0."""
    return constant_baseline(task, labels, majority_label)
