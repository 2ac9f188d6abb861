"""GLUE metrics for the Trainer's ``compute_metrics``, majority baselines and constant-predictor losses.

The scores are those of the GLUE benchmark (Wang et al., 2019) as computed by its reference code and the
``evaluate`` "glue" metric, here with scikit-learn/SciPy and no Hub access:

* accuracy = mean(pred == label) — RTE, SST-2, QNLI, MNLI (and MRPC, QQP);
* F1 of the positive class 1 (``equivalent``/``duplicate``), F1 = 2PR / (P + R) — MRPC, QQP;
* Matthews correlation (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) — CoLA, key
  ``matthews_correlation``;
* Pearson's r and Spearman's ρ between predicted and gold scores — STS-B, keys ``pearson``, ``spearmanr``.

One deliberate difference: a correlation with a constant input (a collapsed regressor) is undefined; SciPy
returns NaN, here it is 0.0 — the value scikit-learn already gives the Matthews correlation of a constant
classifier — so "best on validation" selection and failed-run detection never compare against NaN.

Primary metrics follow Zhang et al. (2021): RTE accuracy, MRPC F1, STS-B Spearman, CoLA MCC, accuracy for
SST-2/QNLI/QQP/MNLI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .data import get_task_info
from .stats import constant_prediction_loss  # noqa: F401  (re-exported; it lives with the statistics)

__all__ = [
    "compute_glue_metrics",
    "constant_prediction_loss",
    "glue_compute_metrics",
    "logits_to_predictions",
    "majority_baseline",
    "primary_metric",
]


def primary_metric(task: str) -> str:
    """Key of the task's headline score (Zhang et al. 2021); pass it as ``metric_for_best_model``."""
    return get_task_info(task).primary_metric


def logits_to_predictions(task: str, logits: Any) -> np.ndarray:
    """Model outputs → predictions: argmax over the last axis for classification (1-D input is taken as
    already-predicted label ids, e.g. from ``preprocess_logits_for_metrics``), a flat float array for
    regression. A tuple of outputs (logits first, as the Trainer gathers them) is reduced to its first item."""
    if isinstance(logits, tuple):
        logits = logits[0]
    values = np.asarray(logits)
    if get_task_info(task).is_regression:
        return values.reshape(-1).astype(np.float64)
    if values.ndim >= 2:
        return values.argmax(axis=-1).reshape(-1)
    return values.astype(np.int64).reshape(-1)


def _accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    return float((predictions == references).mean())


def _f1(predictions: np.ndarray, references: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(references, predictions, zero_division=0.0))


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


_METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "matthews_correlation": _matthews,
    "pearson": _pearson,
    "spearmanr": _spearman,
}


def compute_glue_metrics(
    task: str, predictions: Sequence | np.ndarray, references: Sequence | np.ndarray
) -> dict[str, float]:
    """GLUE scores of ``predictions`` (label ids, or scores for STS-B) against ``references``."""
    info = get_task_info(task)
    dtype = np.float64 if info.is_regression else np.int64
    predictions = np.asarray(predictions, dtype=dtype).reshape(-1)
    references = np.asarray(references, dtype=dtype).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if len(references) == 0:
        raise ValueError("cannot score an empty evaluation set")
    return {name: _METRIC_FUNCTIONS[name](predictions, references) for name in info.metric_names}


def _unpack(eval_pred: Any) -> tuple[Any, Any]:
    """``EvalPrediction`` (or anything with ``predictions``/``label_ids``) or a ``(predictions, labels)`` pair."""
    if hasattr(eval_pred, "predictions") and hasattr(eval_pred, "label_ids"):
        return eval_pred.predictions, eval_pred.label_ids
    predictions, labels = eval_pred[0], eval_pred[1]
    return predictions, labels


def _as_python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def glue_compute_metrics(task: str, metric: Any | None = None) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` callable for ``Trainer`` that scores ``task`` the way GLUE does.

    Args:
        task: GLUE task name (see :func:`hf_stable_ft.data.get_task_info`).
        metric: optional object with ``compute(predictions=..., references=...)`` (e.g. an ``evaluate``
            module the caller loaded); it then replaces the built-in scikit-learn/SciPy computation and its
            result dict is returned as is. No metric is ever fetched from the Hub here.

    The callable accepts an ``EvalPrediction`` or a ``(predictions, labels)`` tuple; predictions may be
    logits, a tuple whose first item is the logits, or predicted label ids.
    """
    get_task_info(task)  # fail now on an unknown task, not at the first evaluation
    if metric is not None and not callable(getattr(metric, "compute", None)):
        raise TypeError(f"metric must have a compute(predictions=, references=) method; got {type(metric).__name__}")

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits, labels = _unpack(eval_pred)
        predictions = logits_to_predictions(task, logits)
        references = np.asarray(labels).reshape(-1)
        if metric is not None:
            result = metric.compute(predictions=predictions, references=references)
            return {key: _as_python(value) for key, value in dict(result).items()}
        return compute_glue_metrics(task, predictions, references)

    return compute_metrics


def _majority_label(labels: np.ndarray) -> int:
    return int(np.bincount(labels).argmax())  # ties → the smallest label id


def majority_baseline(task: str, labels: Sequence | np.ndarray, majority_label: int | None = None) -> float:
    """Primary-metric score of a constant predictor on the split with gold ``labels``.

    The predictor outputs ``majority_label`` for every example (default: the most frequent label of
    ``labels``, ties → smallest id; pass the training split's majority to score the classifier a failed
    run collapses to). It is scored with the same code as :func:`compute_glue_metrics`: accuracy = the
    majority's share; MRPC F1 = 2p/(1+p) with p the share of class 1 when the constant is class 1, else 0;
    Matthews correlation 0. For STS-B, a constant score has no defined correlation and scores 0.
    Mosbach et al. (2021) call a run failed when its score is at or below this value.
    """
    info = get_task_info(task)
    if info.is_regression:
        return 0.0
    references = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(references) == 0:
        raise ValueError("labels is empty")
    constant = _majority_label(references) if majority_label is None else int(majority_label)
    if not 0 <= constant < info.num_labels:
        raise ValueError(f"majority_label must be a label id of {info.name} (0..{info.num_labels - 1}); got {constant}")
    predictions = np.full_like(references, constant)
    return compute_glue_metrics(task, predictions, references)[info.primary_metric]
