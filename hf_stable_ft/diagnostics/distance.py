"""Per-layer L2 distance from the weights fine-tuning started from (Zhang et al. 2021, Fig. 7)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
from torch import nn
from transformers import TrainerCallback

from ..param_groups import snapshot_parameters
from .groups import _GroupNorms, layer_groups
from .logs import _check_every, _is_training_record, _merge_into_log, _StepValues

__all__ = ["DISTANCE_PREFIX", "ParameterDistanceCallback"]

logger = logging.getLogger("hf_stable_ft.diagnostics")

DISTANCE_PREFIX = "l2_from_init/"

Reference = Mapping[str, torch.Tensor] | Callable[[nn.Module], Mapping[str, torch.Tensor] | None] | None


class ParameterDistanceCallback(TrainerCallback):
    """Log ``‖θ_g − θ_g,0‖₂`` for each layer group ``g`` every ``every_n_steps`` updates (Zhang et al. 2021, Fig. 7).

    Args:
        reference: θ₀ as name → tensor (names of ``unwrap_model(model).named_parameters()``), e.g.
            ``FineTuningState.initial_parameters``, which is taken before any checkpoint is loaded, so a
            resumed run still measures from the start of fine-tuning; or a callable ``model → mapping``
            resolved at ``on_train_begin`` (for ``model_init``, whose model changes in ``train()``); or None to
            copy the weights at ``on_init_end`` (pass the callback in ``Trainer(callbacks=[...])``) or, for a
            callback added later, at ``on_train_begin`` of a run that starts from step 0.
        every_n_steps: log at updates ``every_n_steps``, ``2·every_n_steps``, … (forcing a Trainer log record there).

    Keys: ``l2_from_init/<group>`` with the groups of :func:`layer_groups`; trainable parameters missing from
    ``reference`` are left out (with a warning).
    """

    def __init__(self, reference: Reference = None, every_n_steps: int = 10):
        self.reference = reference
        self.every_n_steps = _check_every(every_n_steps)
        self._snapshot: dict[str, torch.Tensor] | None = None
        self._groups: list[tuple[str, list[torch.Tensor], list[torch.Tensor]]] = []
        self._index: tuple[int, ...] = ()
        self._norms = _GroupNorms(0)
        self._pending = _StepValues()

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if self.reference is None and model is not None:
            self._snapshot = snapshot_parameters(model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        reference = self._resolve_reference(model, state)
        self._groups = []
        missing = []
        for group, params in layer_groups(model).items():
            live, initial = [], []
            for name, param in params:
                value = reference.get(name)
                if value is None or value.shape != param.shape:
                    missing.append(name)
                    continue
                live.append(param)
                initial.append(value if value.device == param.device else value.to(param.device))
            if live:
                self._groups.append((group, live, initial))
        self._index = tuple(i for i, (_, live, _) in enumerate(self._groups) for _ in live)
        self._norms = _GroupNorms(len(self._groups))
        if missing:
            logger.warning("ParameterDistanceCallback: no starting value for %d parameters (%s…); left out",
                           len(missing), ", ".join(missing[:3]))

    def _resolve_reference(self, model, state) -> Mapping[str, torch.Tensor]:
        reference = self.reference
        if callable(reference):
            reference = reference(model)
        if reference is None:
            reference = self._snapshot
        if reference is None:
            if state.global_step > 0:
                raise ValueError(
                    "ParameterDistanceCallback has no starting weights on a resumed run: pass reference= (e.g. "
                    "FineTuningState.initial_parameters) or give the callback in Trainer(callbacks=[...]) so it "
                    "copies them at on_init_end, before the checkpoint is loaded"
                )
            reference = self._snapshot = snapshot_parameters(model)
        return reference

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_n_steps or not self._groups:
            return
        with torch.no_grad():
            norms = []
            for _, live, initial in self._groups:
                # one group at a time: the temporary differences take one layer's memory, not the model's
                diffs = torch._foreach_sub(live, initial)
                norms.extend(torch._foreach_norm(diffs))
                del diffs
            self._pending.put(state.global_step, self._norms(norms, self._index))
        control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not _is_training_record(logs):
            return
        distances = self._pending.take(state.global_step)
        if distances is None:
            return
        values = {DISTANCE_PREFIX + group: value for (group, _, _), value in zip(self._groups, distances.tolist())}
        _merge_into_log(state, logs, values)
