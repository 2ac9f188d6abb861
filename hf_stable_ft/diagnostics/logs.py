"""Getting diagnostics into the Trainer's own log record of a step, ahead of the reporting integrations."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import DefaultFlowCallback

__all__ = ["place_before_reporters"]

logger = logging.getLogger("hf_stable_ft.diagnostics")


def place_before_reporters(trainer, *callbacks: TrainerCallback) -> None:
    """Move ``callbacks`` (instances; added if missing) in ``trainer``'s callback list to just after
    ``DefaultFlowCallback``, ahead of the ``report_to`` integrations, so that the keys they add to ``logs`` in
    ``on_log`` reach every reporting backend. Their relative order is kept."""
    handler_callbacks = trainer.callback_handler.callbacks
    for callback in callbacks:
        if callback in handler_callbacks:
            handler_callbacks.remove(callback)
    flow = [i for i, callback in enumerate(handler_callbacks) if isinstance(callback, DefaultFlowCallback)]
    position = flow[-1] + 1 if flow else 0
    handler_callbacks[position:position] = list(callbacks)


def _is_training_record(logs: Mapping[str, Any] | None) -> bool:
    return logs is not None and "loss" in logs


def _merge_into_log(state, logs: dict, values: Mapping[str, float]) -> None:
    """Add ``values`` to ``logs`` and to the ``state.log_history`` record the Trainer made of it (the Trainer
    appends a copy of ``logs`` before it calls ``on_log``)."""
    logs.update(values)
    history = state.log_history
    if history and history[-1].get("step") == state.global_step and _same(history[-1].get("loss"), logs.get("loss")):
        history[-1].update(values)


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


class _StepValues:
    """Values computed at one step (kept on-device), waiting for the Trainer's log record of that step."""

    def __init__(self):
        self.step: int | None = None
        self.values: Any = None

    def put(self, step: int, values: Any) -> None:
        self.step, self.values = step, values

    def take(self, step: int) -> Any:
        if self.step is None:
            return None
        if self.step != step:  # the record of that step never came (a Trainer that skipped logging): drop it
            logger.debug("diagnostics: dropping values of step %s at step %s", self.step, step)
            self.step = self.values = None
            return None
        values, self.step, self.values = self.values, None, None
        return values


def _check_every(every_n_steps: int) -> int:
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
        raise ValueError(f"every_n_steps must be an integer >= 1; got {every_n_steps!r}")
    return every_n_steps
