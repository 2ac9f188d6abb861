"""The degenerate-run alarm: a non-finite loss or weights, or a training loss no better than a constant
predictor's (Mosbach et al. 2021; Dodge et al. 2020 for stopping bad seeds early)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from ..architectures import unwrap_model
from ..stats import constant_prediction_loss
from .groups import layer_groups
from .labels import dataset_labels
from .logs import _check_every, _is_training_record, _merge_into_log, _StepValues

__all__ = ["ALARM_KEY", "DegenerateAlarm", "DegenerateRunCallback", "loss_alarm_step"]

logger = logging.getLogger("hf_stable_ft.diagnostics")

ALARM_KEY = "degenerate_alarm"

# Why an alarm fires; each becomes a numeric key ``degenerate_alarm/<reason>`` (every backend accepts numbers).
_REASONS = ("nonfinite", "not_below_constant_loss")


@dataclass(frozen=True)
class DegenerateAlarm:
    """A raised degenerate-run alarm.

    Attributes:
        step: the update at which it was raised.
        reason: ``"nonfinite"`` (the loss or the weights became NaN/inf) or ``"not_below_constant_loss"``
            (after ``check_fraction`` of training the smoothed training loss is still ≥ the loss of the best
            constant predictor).
        train_loss: the smoothed training loss that was compared (None for ``nonfinite`` from the weights).
        constant_prediction_loss: the threshold it was compared with (None when the check was off).
        aborted: whether training was stopped because of it.
    """

    step: int
    reason: str
    train_loss: float | None = None
    constant_prediction_loss: float | None = None
    aborted: bool = False

    def as_log(self) -> dict[str, float]:
        """Numeric log keys (every reporting backend accepts them)."""
        values = {
            ALARM_KEY: 1.0,
            f"{ALARM_KEY}/{self.reason}": 1.0,
            f"{ALARM_KEY}/step": float(self.step),
            f"{ALARM_KEY}/aborted": float(self.aborted),
        }
        if self.train_loss is not None:
            values[f"{ALARM_KEY}/train_loss"] = self.train_loss
        if self.constant_prediction_loss is not None:
            values[f"{ALARM_KEY}/constant_prediction_loss"] = self.constant_prediction_loss
        return values

    @classmethod
    def from_log(cls, record: Mapping[str, Any]) -> DegenerateAlarm | None:
        """The alarm recorded in one ``log_history`` record, or None."""
        if not record.get(ALARM_KEY):
            return None
        reason = next((r for r in _REASONS if record.get(f"{ALARM_KEY}/{r}")), "unknown")
        train_loss = record.get(f"{ALARM_KEY}/train_loss")
        constant = record.get(f"{ALARM_KEY}/constant_prediction_loss")
        return cls(
            step=int(record.get(f"{ALARM_KEY}/step", record.get("step", -1))),
            reason=reason,
            train_loss=None if train_loss is None else float(train_loss),
            constant_prediction_loss=None if constant is None else float(constant),
            aborted=bool(record.get(f"{ALARM_KEY}/aborted", 0.0)),
        )


def _constant_prediction_loss_of(model: nn.Module, dataset) -> float:
    """Loss of the best constant predictor on ``dataset`` for the model's loss (cross-entropy or MSE)."""
    config = getattr(unwrap_model(model), "config", None)
    num_labels = getattr(config, "num_labels", None)
    problem_type = getattr(config, "problem_type", None)
    advice = "pass DegenerateRunCallback(constant_prediction_loss=...) explicitly"
    if num_labels is None:
        raise ValueError(f"the model has no config.num_labels to tell cross-entropy from MSE; {advice}")
    if problem_type == "multi_label_classification":
        raise ValueError(f"no constant-prediction loss for multi-label (BCE) models is built in; {advice}")
    try:
        labels = dataset_labels(dataset)
    except ValueError as error:
        raise ValueError(f"DegenerateRunCallback cannot find the training labels ({error}); {advice}") from error
    return constant_prediction_loss(labels, num_labels=int(num_labels))


class DegenerateRunCallback(TrainerCallback):
    """Raise an alarm, and optionally stop training, when a fine-tuning run degenerates.

    Two tests, each firing at most once per run (the first alarm is the one recorded):

    * **non-finite** — checked every ``nan_check_steps`` updates on the weights of the top layer group (the
      head always receives the loss gradient, so a NaN/inf loss makes them non-finite at that very update, even
      though the Trainer's ``logging_nan_inf_filter`` hides it from the logged loss; steps the fp16 grad
      scaler skips leave them finite and raise nothing), and on every logged training loss. On CPU the flag is
      read at once. On CUDA it is copied to the host asynchronously and read at the next update (and at once on
      the last one), so the check never stalls the GPU pipeline: the alarm names the update that went
      non-finite and training stops one update later.
    * **no better than constant** — from update ``ceil(check_fraction · max_steps)`` on, at every training log
      record, the smoothed training loss (the step-weighted mean of the logged losses over the last
      ``ceil(window_fraction · max_steps)`` updates) is compared with ``constant_prediction_loss``, the loss of
      the best input-independent predictor: the entropy of the training label distribution for cross-entropy,
      the label variance for MSE (:func:`hf_stable_ft.metrics.constant_prediction_loss`). The alarm fires when
      the smoothed loss is not below it. The callback forces a Trainer log at the check update and every
      window after it, so the test runs whatever ``logging_steps`` is.

    When it fires, the record of that update gets ``degenerate_alarm = 1``, ``degenerate_alarm/<reason> = 1``,
    ``degenerate_alarm/step`` (the update it concerns), ``degenerate_alarm/aborted`` and, for the loss test, ``degenerate_alarm/train_loss`` and
    ``degenerate_alarm/constant_prediction_loss``; :attr:`alarm` holds a :class:`DegenerateAlarm`. On resume
    the alarm is restored from ``state.log_history``. With ``abort=True`` the Trainer stops after that update
    (``control.should_training_stop``); the run is then recorded as aborted, never dropped.

    Args:
        constant_prediction_loss: the threshold; None computes it at ``on_train_begin`` from the labels of
            ``train_dataloader.dataset`` (a ``labels``/``label`` column or item key) and ``model.config``
            (``num_labels == 1`` → MSE). Pass it for other losses (label smoothing, multi-label, custom
            ``compute_loss``).
        check_fraction: fraction of ``max_steps`` after which the loss test starts; 0 or None disables it
            (the non-finite test stays on).
        abort: stop training when the alarm fires.
        window_fraction: smoothing window as a fraction of ``max_steps``.
        nan_check_steps: how often (in updates) the weights are checked.
    """

    def __init__(
        self,
        constant_prediction_loss: float | None = None,
        check_fraction: float | None = 0.3,
        abort: bool = False,
        window_fraction: float = 0.1,
        nan_check_steps: int = 1,
    ):
        if check_fraction is not None and not 0 <= check_fraction < 1:
            raise ValueError(f"check_fraction must be in [0, 1); got {check_fraction!r}")
        if not 0 < window_fraction <= 1:
            raise ValueError(f"window_fraction must be in (0, 1]; got {window_fraction!r}")
        self.constant_prediction_loss = constant_prediction_loss
        self.check_fraction = check_fraction or 0.0
        self.abort = abort
        self.window_fraction = window_fraction
        self.nan_check_steps = _check_every(nan_check_steps)
        self.alarm: DegenerateAlarm | None = None
        self._threshold: float | None = None
        self._check_step = 0
        self._window = 1
        self._watched: list[torch.Tensor] = []
        self._checks: list[tuple[int, torch.Tensor, Any]] = []  # (update, host flag, CUDA event or None)
        self._pending = _StepValues()

    # -- setup

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.alarm = next(
            (a for a in (DegenerateAlarm.from_log(r) for r in state.log_history) if a is not None), None
        )
        self._watched = _top_group_parameters(model) if model is not None else []
        self._checks = []
        self._check_step, self._window = _loss_test_schedule(state.max_steps, self.check_fraction,
                                                             self.window_fraction)
        self._threshold = None
        if self._check_step:
            if self.constant_prediction_loss is not None:
                self._threshold = float(self.constant_prediction_loss)
            else:
                dataset = getattr(train_dataloader, "dataset", None)
                if dataset is None:
                    raise ValueError("DegenerateRunCallback: no training set to read labels from; pass "
                                     "constant_prediction_loss=... explicitly")
                self._threshold = _constant_prediction_loss_of(model, dataset)

    # -- tests

    def on_step_end(self, args, state, control, **kwargs):
        if self.alarm is not None:
            return
        step = state.global_step
        if step % self.nan_check_steps == 0 and self._watched:
            self._checks.append((step, *_launch_finite_check(self._watched)))
        bad_step = self._read_checks(wait_for=step if step >= state.max_steps else step - 1)
        if bad_step is not None:
            self._fire(DegenerateAlarm(bad_step, "nonfinite", aborted=self.abort), state, control)
            self._pending.put(step, self.alarm.as_log())
            control.should_log = True
            return
        if self._check_step and step >= self._check_step and (step - self._check_step) % self._window == 0:
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not _is_training_record(logs):
            return
        staged = self._pending.take(state.global_step)
        if staged is not None:
            _merge_into_log(state, logs, staged)
            return
        if self.alarm is not None:
            return
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            alarm = DegenerateAlarm(state.global_step, "nonfinite", train_loss=loss, aborted=self.abort)
        elif self._check_step and state.global_step >= self._check_step:
            smoothed = _smoothed_loss(state.log_history, state.global_step, self._window)
            if not _not_below(smoothed, self._threshold):
                return
            alarm = DegenerateAlarm(state.global_step, "not_below_constant_loss", train_loss=smoothed,
                                    constant_prediction_loss=self._threshold, aborted=self.abort)
        else:
            return
        self._fire(alarm, state, control)
        _merge_into_log(state, logs, alarm.as_log())

    def on_train_end(self, args, state, control, **kwargs):
        # A run stopped early (another callback) may leave a check unread: record it in the history.
        bad_step = self._read_checks(wait_for=state.global_step) if self.alarm is None else None
        if bad_step is not None:
            self._fire(DegenerateAlarm(bad_step, "nonfinite", aborted=False), state, control)
            state.log_history.append({**self.alarm.as_log(), "step": state.global_step})

    def _read_checks(self, wait_for: int) -> int | None:
        """Read the finiteness flags of the checks made at updates ≤ ``wait_for`` (CPU flags: all of them);
        the first update found non-finite, or None. Reads happen at the same updates on every rank."""
        bad = None
        while self._checks and bad is None:
            step, flag, event = self._checks[0]
            if event is not None and step > wait_for:
                break
            self._checks.pop(0)
            if event is not None:
                event.synchronize()  # this update's kernels have long finished: no pipeline stall
            if not flag.item():
                bad = step
        if bad is not None:
            self._checks.clear()
        return bad

    def _fire(self, alarm: DegenerateAlarm, state, control) -> None:
        self.alarm = alarm
        if state.is_world_process_zero:
            detail = (f" (smoothed training loss {alarm.train_loss:.4g} >= constant-prediction loss "
                      f"{alarm.constant_prediction_loss:.4g})" if alarm.reason == "not_below_constant_loss" else "")
            logger.warning("degenerate-run alarm at step %d: %s%s%s", alarm.step, alarm.reason, detail,
                           "; stopping training" if alarm.aborted else "")
        if self.abort:
            control.should_training_stop = True


def _top_group_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The trainable parameters of the highest layer group (the head): a NaN/inf loss reaches them first."""
    groups = layer_groups(model)
    return [param for _, param in list(groups.values())[-1]] if groups else []


def _launch_finite_check(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """Start checking that every value of ``tensors`` is finite, min-reduced over ranks. Returns the flag (1 =
    finite) and, for a CUDA flag, the event after which its pinned host copy is valid (else None)."""
    with torch.no_grad():
        norms = torch._foreach_norm(tensors)
        device = norms[0].device
        flag = torch.isfinite(torch.stack([n.to(device, torch.float32) for n in norms]).sum()).to(torch.int32)
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            flag = flag.to(_collective_device())
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        if flag.device.type != "cuda":
            return flag.cpu(), None
        host = torch.empty((), dtype=flag.dtype, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event


def _collective_device() -> torch.device:
    backend = torch.distributed.get_backend()
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def loss_alarm_step(log_history: list[dict], *, max_steps: int, constant_prediction_loss: float,
                    check_fraction: float = 0.3, window_fraction: float = 0.1) -> int | None:
    """The update at which :class:`DegenerateRunCallback`'s tests of the logged loss would first fire on an already logged run,
    or None: a finished run's ``log_history`` (or a sweep record's ``train_loss`` as ``{"step", "loss"}`` dicts)
    replayed offline, e.g. to ask whether ``restart_degenerate_runs`` would have restarted a recorded run.

    The same rule as the live callback: a non-finite logged loss fires at its update; from update
    ``ceil(check_fraction · max_steps)`` on, at every logged training loss, the step-weighted mean of the logged
    losses over the last ``ceil(window_fraction · max_steps)`` updates fires when not below
    ``constant_prediction_loss``. Replayed on the log the callback saw, the update is the callback's. A log written
    without the callback lacks the training log it forces at the check update and every window after, so the
    first test falls at the first logged update from the check on (the non-finite weights test needs the weights,
    and is not replayed)."""
    if check_fraction is None or not 0 <= check_fraction < 1:
        raise ValueError(f"check_fraction must be in [0, 1); got {check_fraction!r}")
    check_step, window = _loss_test_schedule(max_steps, check_fraction, window_fraction)
    for record in log_history:
        if not _is_training_record(record) or "step" not in record:
            continue
        step, loss = int(record["step"]), float(record["loss"])
        if not math.isfinite(loss):
            return step
        if check_step and step >= check_step and _not_below(_smoothed_loss(log_history, step, window),
                                                             float(constant_prediction_loss)):
            return step
    return None


def _loss_test_schedule(max_steps: int | None, check_fraction: float, window_fraction: float) -> tuple[int, int]:
    """(first update of the loss test, 0 when it is off; smoothing window in updates) for a run of max_steps."""
    max_steps = max(int(max_steps or 0), 1)
    window = max(1, math.ceil(window_fraction * max_steps))
    return (max(1, math.ceil(check_fraction * max_steps)) if check_fraction > 0 else 0), window


def _not_below(smoothed: float | None, threshold: float) -> bool:
    """The loss test: a smoothed training loss not below the constant predictor's fires the alarm."""
    return smoothed is not None and not smoothed < threshold


def _smoothed_loss(log_history: list[dict], step: int, window: int) -> float | None:
    """Step-weighted mean of the logged training losses whose updates fall in the last ``window`` updates."""
    records = [(int(r["step"]), float(r["loss"])) for r in log_history if "loss" in r and "step" in r]
    total = weight = 0.0
    for i in range(len(records) - 1, -1, -1):
        record_step, loss = records[i]
        if record_step > step:
            continue
        if record_step <= step - window:
            break
        previous = records[i - 1][0] if i > 0 else 0
        covered = max(record_step - previous, 1)
        total += loss * covered
        weight += covered
    return total / weight if weight else None
