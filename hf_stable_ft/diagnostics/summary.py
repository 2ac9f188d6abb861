"""Diagnostics series read back from a finished run's ``log_history``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from .degenerate import DegenerateAlarm
from .distance import DISTANCE_PREFIX
from .grad_norms import GRAD_NORM_PREFIX

__all__ = ["summarize_diagnostics"]


def summarize_diagnostics(log_history: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Diagnostics series from ``trainer.state.log_history`` (JSON-ready; for ``runs.jsonl``).

    Returns ``{"grad_norm": {group: [[step, value], ...]}, "l2_from_init": {group: [[step, value], ...]},
    "degenerate_alarm": None or {"step", "reason", "train_loss", "constant_prediction_loss", "aborted"},
    "abort_reason": the alarm's reason when it stopped training, else None}``, groups in the order they were
    logged (bottom to top), steps ascending as logged.
    """
    series: dict[str, dict[str, list[list]]] = {"grad_norm": {}, "l2_from_init": {}}
    prefixes = {GRAD_NORM_PREFIX: "grad_norm", DISTANCE_PREFIX: "l2_from_init"}
    alarm = None
    for record in log_history:
        step = record.get("step")
        for key, value in record.items():
            for prefix, name in prefixes.items():
                if key.startswith(prefix):
                    series[name].setdefault(key[len(prefix):], []).append([step, float(value)])
        if alarm is None:
            alarm = DegenerateAlarm.from_log(record)
    return {
        **series,
        "degenerate_alarm": None if alarm is None else asdict(alarm),
        "abort_reason": alarm.reason if alarm is not None and alarm.aborted else None,
    }
