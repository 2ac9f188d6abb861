"""Per-layer gradient L2 norms before clipping (Mosbach et al. 2021, Fig. 4)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from .groups import _GroupNorms, layer_groups
from .logs import _check_every, _is_training_record, _merge_into_log, _StepValues

__all__ = ["GRAD_NORM_PREFIX", "LayerGradNormCallback"]

logger = logging.getLogger("hf_stable_ft.diagnostics")

GRAD_NORM_PREFIX = "grad_norm/"


class LayerGradNormCallback(TrainerCallback):
    """Log the L2 norm of each layer group's gradient, before clipping, every ``every_n_steps`` updates.

    The norm is that of the gradient the optimizer steps with (accumulated over ``gradient_accumulation_steps``
    micro-batches, all-reduced under DDP), measured before ``max_grad_norm`` clipping as Mosbach et al. (2021,
    Fig. 4) do; see the module docstring for how the clipping is undone exactly. Keys:
    ``grad_norm/<group>`` with the groups of :func:`layer_groups`. The squares of the group norms sum to the
    square of the Trainer's ``grad_norm`` (up to parameters without a gradient).

    Args:
        every_n_steps: log at updates ``every_n_steps``, ``2·every_n_steps``, … (forcing a Trainer log record there).
    """

    def __init__(self, every_n_steps: int = 10):
        self.every_n_steps = _check_every(every_n_steps)
        self._groups: list[str] = []
        self._params: list[tuple[nn.Parameter, int]] = []
        self._norms = _GroupNorms(0)
        self._pending = _StepValues()
        self._warned = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        groups = layer_groups(model)
        self._groups = list(groups)
        self._params = [(param, index) for index, params in enumerate(groups.values()) for _, param in params]
        self._norms = _GroupNorms(len(self._groups))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        step = state.global_step + 1  # the update about to be made
        if step % self.every_n_steps or not self._params:
            return
        pairs = [(param.grad, index) for param, index in self._params if param.grad is not None]
        if not pairs:
            return
        grads, index = zip(*pairs)
        with torch.no_grad():
            self._pending.put(step, self._norms(torch._foreach_norm(list(grads)), index))

    def on_step_end(self, args, state, control, **kwargs):
        if self._pending.step == state.global_step:
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not _is_training_record(logs):
            return
        clipped = self._pending.take(state.global_step)
        if clipped is None:
            return
        norms = clipped.tolist()
        scale = self._clip_factor(args, logs, norms)
        if scale is None:
            return
        values = {GRAD_NORM_PREFIX + group: (norm / scale if scale > 0 else math.nan) for group, norm in zip(self._groups, norms)}
        _merge_into_log(state, logs, values)

    def _clip_factor(self, args, logs: Mapping[str, Any], clipped_norms: list[float]) -> float | None:
        """The factor ``c`` that clipping multiplied every gradient by (1 when it did not clip)."""
        max_norm = getattr(args, "max_grad_norm", None)
        if not max_norm or max_norm <= 0:
            return 1.0
        total = logs.get("grad_norm")
        if total is None:
            # Without the Trainer's pre-clipping norm we can still tell an unclipped step (its norm is below
            # the threshold); a clipped one cannot be undone.
            if math.sqrt(sum(n * n for n in clipped_norms)) < max_norm * (1 - 1e-4):
                return 1.0
            if not self._warned:
                logger.warning("LayerGradNormCallback: the Trainer logged no grad_norm, so clipped steps are not reported")
                self._warned = True
            return None
        total = float(total)
        if not math.isfinite(total):
            return 0.0  # the gradient itself is not finite: report NaN
        # torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1.
        return min(1.0, max_norm / (total + 1e-6))
