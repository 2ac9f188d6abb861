"""Weight averaging: a bias-corrected exponential moving average (EMA) of the weights, or SWA's uniform average.

**EMA** (``weight_averaging="ema"``, decay β = ``ema_decay``). The average after update t is the *zero-debiased*
EMA of the weights θ_1 … θ_t (θ_s: the weights after update s)::

    e_0 = 0,   e_t = β·e_{t−1} + (1 − β)·θ_t,   θ̄_t = e_t / (1 − β^t)

— Adam's bias correction of its moment estimates (Kingma & Ba, ICLR 2015, §3 and Algorithm 1), applied to the
weights; the same as ``tf.train.ExponentialMovingAverage(zero_debias=True)``. Without the division the early
average would be pulled toward 0 (or, started at θ_0, toward the starting weights for ~1/(1−β) updates — what
TRL's ``BEMACallback`` (Block & Zhang 2025, "EMA without the lag") and timm's ``ModelEmaV3`` warm-up
(``decay_t = 1 − (1 + t/γ)^(−p)``) each correct in their own way; we use the Adam form, which has no extra
hyper-parameter). It is computed recursively as ``θ̄_t = θ̄_{t−1} + w_t·(θ_t − θ̄_{t−1})`` with
``w_t = (1 − β)/(1 − β^t)`` (w_1 = 1: θ̄_1 = θ_1), one ``lerp`` per tensor per update. The weights of
updates 1 … t carry ``(1 − β)·β^{t−s} / (1 − β^t)``, which sum to 1.

**SWA** (``weight_averaging="swa"``; Izmailov, Podoprikhin, Garipov, Vetrov & Wilson, UAI 2018, Algorithm 1 with
cycle length c = 1 update): the uniform mean of the weights after each update from
``t_start = floor(swa_start_fraction · max_steps) + 1`` to the last, ``θ̄ = (1/n)·Σ θ_t``, computed as
``θ̄ ← θ̄ + (θ_t − θ̄)/n`` (as ``torch.optim.swa_utils.AveragedModel``). The encoders here use LayerNorm, so
SWA's batch-norm statistics pass is not needed. The learning-rate schedule is left as it is (the Trainer's);
the paper's constant/cyclic SWA schedule can be chosen with ``lr_scheduler_type``.

What is averaged: every trainable floating-point parameter (a frozen one equals its own average; under PEFT the
adapters). The average is kept in float32 for lower-precision parameters.

**Where the average is used** (:class:`~hf_stable_ft.StableTrainer`): evaluation during training swaps it in and
the training weights back afterwards (training is unchanged: same trajectory as without averaging); at the end
of ``train()`` it is copied into the model, so ``trainer.model``, ``evaluate()``, ``predict()`` and
``save_model()`` are the averaged model. Checkpoints hold the *training* weights in ``model.safetensors`` (what
a resume continues from) and the average, with its count, in ``weight_average.pt``
(:func:`load_weight_average`); a resumed run restores it and continues bit-exactly.
``load_best_model_at_end`` is refused (the checkpoint's weights are not the average that was evaluated).

Cost: one copy of the trainable weights (float32), one lerp per update; a swap (two copies) per evaluation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable

import torch
from torch import nn
from transformers import TrainerCallback

from .architectures import unwrap_model

__all__ = [
    "WEIGHT_AVERAGE_FILE",
    "WeightAveragingCallback",
    "averaged_parameters",
    "ema_weight",
    "ema_window",
    "load_weight_average",
    "swa_start_step",
    "update_average_",
    "warn_if_window_too_long",
]

logger = logging.getLogger("hf_stable_ft")

#: The file a checkpoint keeps the average in.
WEIGHT_AVERAGE_FILE = "weight_average.pt"

#: ``state.stateful_callbacks`` key of what was averaged (mode, number of updates averaged, first one).
RECORD_KEY = "hf_stable_ft_weight_averaging"


def ema_weight(decay: float, t: int) -> float:
    """``w_t = (1 − β)/(1 − β^t)``: the weight of θ_t in the zero-debiased EMA's recursion (t ≥ 1; w_1 = 1)."""
    if t < 1:
        raise ValueError(f"t must be >= 1, got {t}")
    return (1.0 - decay) / (1.0 - decay**t)


def ema_window(decay: float) -> float:
    """``1/(1 − β)``: the number of recent updates that carry most (1 − 1/e ≈ 63%) of an EMA's weight."""
    return 1.0 / (1.0 - decay)


def warn_if_window_too_long(decay: float, max_steps: int) -> bool:
    """Log a warning (and return True) when the EMA's window ``1/(1 − β)`` is more than half of the run's
    ``max_steps`` updates: the average is then still dominated by weights from the first half of training and lags
    the model being trained. Measured (BENCHMARKS.md §2, MiniLM, CoLA 1k, lr 1e-4, 189 updates, CPU):
    ``ema_decay=0.99`` (a ≈100-update window) left 9/10 runs at the majority class, although averaging does not
    change the training trajectory. Nothing is changed: the run averages with the decay it was given."""
    if max_steps <= 0 or ema_window(decay) <= max_steps / 2:
        return False
    logger.warning(
        "hf_stable_ft: ema_decay=%s averages over about %.0f updates (1/(1 - ema_decay)), more than half of this "
        "run's %d; the averaged model (what is evaluated and saved) lags the training weights and may still predict "
        "what the model predicted early in training. A window well inside the run needs ema_decay < 1 - 2/max_steps "
        "= %.4g.", decay, ema_window(decay), max_steps, 1 - 2 / max_steps)
    return True


def swa_start_step(start_fraction: float, max_steps: int) -> int:
    """The first update SWA averages: ``floor(swa_start_fraction · max_steps) + 1``."""
    return math.floor(start_fraction * max_steps) + 1


def averaged_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters averaged: every trainable floating-point parameter of the (unwrapped) model, by name."""
    return [(n, p) for n, p in unwrap_model(model).named_parameters() if p.requires_grad and p.is_floating_point()]


@torch.no_grad()
def update_average_(average: list[torch.Tensor], params: Iterable[torch.Tensor], weight: float) -> None:
    """``θ̄ ← θ̄ + weight·(θ − θ̄)`` for each pair, in place: the EMA step with ``weight = ema_weight(β, t)``, the
    SWA step with ``weight = 1/n``."""
    params = [p.detach().to(a.dtype) for a, p in zip(average, params)]
    torch._foreach_lerp_(average, params, float(weight))


def load_weight_average(checkpoint: str | os.PathLike, model: nn.Module | None = None) -> dict:
    """Read the average a checkpoint stores (``{"mode", "count", "tensors", ...}``); with ``model``, also copy it
    into the model's parameters (e.g. to evaluate a checkpoint's averaged weights)."""
    path = os.path.join(os.fspath(checkpoint), WEIGHT_AVERAGE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the checkpoint was not written with weight_averaging on")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if model is not None:
        named = dict(unwrap_model(model).named_parameters())
        with torch.no_grad():
            for name, value in saved["tensors"].items():
                named[name].copy_(value)
    return saved


class WeightAveragingCallback(TrainerCallback):
    """Keeps the EMA / SWA average of the weights (see the module docstring); used by
    :class:`~hf_stable_ft.StableTrainer`, which swaps it in for evaluation, stores it in checkpoints and leaves it
    in the model at the end of training.

    Args:
        mode, ema_decay, swa_start_fraction: fixed values; ``None`` reads ``weight_averaging`` / ``ema_decay`` /
            ``swa_start_fraction`` from the arguments at each ``on_train_begin`` (``mode`` None there disables).

    Attributes:
        average: name → averaged tensor (empty when off). count: updates averaged so far.
        start_step: the first update averaged (1 for EMA).
        resume_from: the checkpoint directory a resumed run restores the average from (set by StableTrainer).
    """

    def __init__(self, mode: str | None = None, ema_decay: float | None = None, swa_start_fraction: float | None = None):
        if mode is not None and mode not in ("ema", "swa"):
            raise ValueError(f"weight_averaging={mode!r} is invalid; allowed: None, 'ema' or 'swa'")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ValueError(f"ema_decay={ema_decay!r} is invalid; allowed: a float in (0, 1)")
        if swa_start_fraction is not None and not 0 <= swa_start_fraction < 1:
            raise ValueError(f"swa_start_fraction={swa_start_fraction!r} is invalid; allowed: a float in [0, 1)")
        self._fixed = (mode, ema_decay, swa_start_fraction)
        self.mode: str | None = mode
        self.ema_decay = ema_decay
        self.swa_start_fraction = swa_start_fraction
        self.average: dict[str, torch.Tensor] = {}
        self.count = 0
        self.start_step = 1
        self.resume_from: str | None = None
        self.in_training = False
        self._params: list[tuple[str, nn.Parameter]] = []

    @property
    def active(self) -> bool:
        return self.mode is not None and bool(self._params)

    def _resolve(self, args) -> None:
        mode, decay, start = self._fixed
        self.mode = mode if mode is not None else getattr(args, "weight_averaging", None)
        self.ema_decay = decay if decay is not None else getattr(args, "ema_decay", 0.999)
        self.swa_start_fraction = start if start is not None else getattr(args, "swa_start_fraction", 0.75)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._resolve(args)
        self.average, self.count, self._params, self.in_training = {}, 0, [], False
        if self.mode is None or model is None:
            return
        self._params = averaged_parameters(model)
        self.start_step = 1 if self.mode == "ema" else swa_start_step(self.swa_start_fraction, state.max_steps)
        if self.mode == "ema" and state.global_step == 0:
            warn_if_window_too_long(self.ema_decay, state.max_steps)
        self.average = {n: p.detach().clone().to(torch.float32 if p.element_size() < 4 else p.dtype)
                        for n, p in self._params}
        self.in_training = True
        if state.global_step > 0:
            self._restore(state)
        self._record(state)

    def _restore(self, state) -> None:
        expected = max(0, state.global_step - self.start_step + 1)
        if self.resume_from is None:
            if expected == 0:
                return
            raise RuntimeError(
                f"weight_averaging={self.mode!r}: this run resumes at update {state.global_step} but the checkpoint it "
                f"resumes from is unknown, so its average of {expected} update(s) cannot be restored; resume through "
                "StableTrainer.train(resume_from_checkpoint=...)"
            )
        saved = load_weight_average(self.resume_from)
        if saved.get("mode") != self.mode or set(saved["tensors"]) != set(self.average):
            raise ValueError(
                f"cannot resume: {self.resume_from} holds a {saved.get('mode')!r} average of other parameters; "
                f"this run averages with weight_averaging={self.mode!r}"
            )
        if int(saved["count"]) != expected:
            raise ValueError(f"cannot resume: the checkpoint's average covers {saved['count']} update(s), this run "
                             f"expects {expected} at update {state.global_step} (other max_steps or settings?)")
        with torch.no_grad():
            for name, value in saved["tensors"].items():
                self.average[name].copy_(value)
        self.count = int(saved["count"])

    def on_step_end(self, args, state, control, **kwargs):
        if not self.active or state.global_step < self.start_step:
            return
        self.count += 1
        weight = ema_weight(self.ema_decay, self.count) if self.mode == "ema" else 1.0 / self.count
        update_average_([self.average[n] for n, _ in self._params], [p for _, p in self._params], weight)
        record = (state.stateful_callbacks or {}).get(RECORD_KEY)
        if record is not None:
            record["averaged_updates"] = self.count

    def on_train_end(self, args, state, control, **kwargs):
        if not self.active:
            return
        self._record(state)
        self.in_training = False
        if self.count == 0:
            logger.warning("hf_stable_ft: weight_averaging=%r averaged no update (training stopped at update %d, before "
                           "update %d); the model keeps its training weights", self.mode, state.global_step,
                           self.start_step)
            return
        self.copy_into_model()

    def _record(self, state) -> None:
        if state.stateful_callbacks is not None:
            state.stateful_callbacks[RECORD_KEY] = {
                "mode": self.mode, "ema_decay": self.ema_decay if self.mode == "ema" else None,
                "first_averaged_update": self.start_step, "averaged_updates": self.count,
            }

    # -- using the average

    @torch.no_grad()
    def copy_into_model(self) -> None:
        for name, param in self._params:
            param.copy_(self.average[name])

    @contextlib.contextmanager
    def swapped_in(self):
        """The average in the model's parameters inside the ``with`` block, the training weights restored after."""
        saved = [p.detach().clone() for _, p in self._params]
        self.copy_into_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, param), value in zip(self._params, saved):
                    param.copy_(value)

    def state_for_checkpoint(self) -> dict:
        return {"mode": self.mode, "ema_decay": self.ema_decay, "swa_start_fraction": self.swa_start_fraction,
                "start_step": self.start_step, "count": self.count,
                "tensors": {n: t.detach().cpu() for n, t in self.average.items()}}

    def save(self, directory: str | os.PathLike) -> None:
        """Write the average into a checkpoint directory (``weight_average.pt``)."""
        os.makedirs(directory, exist_ok=True)
        torch.save(self.state_for_checkpoint(), os.path.join(os.fspath(directory), WEIGHT_AVERAGE_FILE))

