"""Training diagnostics as small ``TrainerCallback``s: per-layer gradient norms, per-layer distance from the
starting weights, and a live degenerate-run alarm.

* :class:`LayerGradNormCallback` — L2 norm of the gradient of each layer group at the update, **before
  clipping** (Mosbach et al. 2021, Fig. 4: failed runs show vanishing gradients in the lower layers).
  Keys ``grad_norm/embeddings``, ``grad_norm/layer.0`` … ``grad_norm/layer.{L-1}``, ``grad_norm/pooler``,
  ``grad_norm/head``.
* :class:`ParameterDistanceCallback` — ``‖θ_g − θ_g,0‖₂`` over all parameters of group ``g``, θ₀ being the
  weights fine-tuning started from (Zhang et al. 2021, Fig. 7). Keys ``l2_from_init/<group>``.
* :class:`DegenerateRunCallback` — raises an alarm when the training loss or the weights become non-finite
  (at the update it happens; on CUDA read one update later so the GPU never stalls) or when, after a fraction
  of training, the training loss is still not below the loss of the best constant predictor; optionally stops
  the run (Dodge et al. 2020: bad seeds can be stopped early). Keys ``degenerate_alarm`` and ``degenerate_alarm/*``.
* :func:`callbacks_from_args` builds them from :class:`~hf_stable_ft.StableTrainingArguments`;
  :func:`summarize_diagnostics` turns ``trainer.state.log_history`` back into series.

Groups come from :func:`hf_stable_ft.architectures.parameter_depths` (embeddings, one group per block,
pooler, head); for a model it has no layout for (or ALBERT, whose blocks share weights) there is one group,
``all``, and a warning says so. Only trainable parameters are counted.

How the values reach the logs
-----------------------------
Each callback computes its values at its step and writes them into **the Trainer's own log record of that
step**: it sets ``control.should_log = True`` at that step (so the Trainer logs then — diagnostics steps are
logging steps), and in ``on_log`` adds its keys to the ``logs`` dict and to the record the Trainer has just
appended to ``state.log_history``. One record per step therefore carries ``loss``, ``grad_norm``,
``learning_rate`` and the diagnostics, and ``log_history`` (saved in ``trainer_state.json``, restored on
resume) holds them all.

``on_log`` runs the callbacks in list order, and the Trainer puts its reporting integrations (``report_to``:
TensorBoard, W&B, MLflow, …) *before* every callback passed in ``callbacks=[...]``. A value added to ``logs``
by a callback reaches only the callbacks after it. :func:`place_before_reporters` moves a callback right
behind ``DefaultFlowCallback``, ahead of the integrations, so every backend receives the values;
``StableTrainer`` does this for its :class:`~hf_stable_ft.StableFineTuningCallback`. With a stock
``Trainer`` call ``place_before_reporters(trainer, callback)`` once after building it. (We chose this over
TRL's ``trainer.log(extra)`` because the pre-clipping norms need the Trainer's own ``grad_norm`` of the same
step, which exists only in that step's record, and because one record per step keeps every backend's
history aligned.)

Pre-clipping gradient norms
---------------------------
The Trainer clips before the first event that sees the accumulated gradient (``on_pre_optimizer_step``), and
``clip_grad_norm_`` scales every gradient by the same ``c = min(1, max_grad_norm / (‖g‖ + 1e-6))``, where
``‖g‖`` is the pre-clipping total norm that the Trainer logs as ``grad_norm``. The callback takes the
per-group norms of the clipped gradients at ``on_pre_optimizer_step`` (on-device, no synchronisation) and
divides them by ``c`` recomputed from that step's logged ``grad_norm``: the result equals the norm of the
unclipped gradient to float rounding, costs one pass over the gradients on diagnostics steps only, and
under DistributedDataParallel reads the all-reduced gradient (gradient hooks would see each rank's local
one). With gradient accumulation it is the accumulated gradient exactly as the optimizer receives it.

Distributed training
--------------------
Under DDP every rank holds the same all-reduced gradients and the same parameters, so every rank computes the
same values; the Trainer calls ``on_log`` on every rank and its integrations report from the main process
only. The degenerate-run decision uses the logged loss, which the Trainer averages over ranks before logging,
and parameters that are identical on every rank; the finiteness flag is moreover min-reduced across ranks and
read at the same update everywhere, so an abort is decided identically on every rank. Sharded training (FSDP, DeepSpeed ZeRO-2/3) keeps only
a shard of each gradient/parameter per rank: the group norms would be per-shard values and are not supported.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import DefaultFlowCallback

from .architectures import parameter_depths, unwrap_model

__all__ = [
    "GRAD_NORM_PREFIX",
    "DISTANCE_PREFIX",
    "ALARM_KEY",
    "DegenerateAlarm",
    "DegenerateRunCallback",
    "LayerGradNormCallback",
    "ParameterDistanceCallback",
    "callbacks_from_args",
    "dataset_labels",
    "layer_groups",
    "place_before_reporters",
    "summarize_diagnostics",
]

logger = logging.getLogger(__name__)

GRAD_NORM_PREFIX = "grad_norm/"
DISTANCE_PREFIX = "l2_from_init/"
ALARM_KEY = "degenerate_alarm"

# Why an alarm fires; each becomes a numeric key ``degenerate_alarm/<reason>`` (every backend accepts numbers).
_REASONS = ("nonfinite", "not_below_constant_loss")


# ----------------------------------------------------------------------------------------------------------
# grouping


def layer_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters of ``unwrap_model(model)`` by layer group, bottom to top.

    Groups are those of :func:`~hf_stable_ft.architectures.parameter_depths`: ``embeddings``, ``layer.0`` …
    ``layer.{L-1}``, ``pooler``, ``head`` (empty groups left out). For a model without a layer-wise layout
    (an unknown architecture, ALBERT) the single group ``all`` holds every trainable parameter.
    """
    task_model = unwrap_model(model)
    named = [(name, param) for name, param in task_model.named_parameters() if param.requires_grad]
    try:
        depths = parameter_depths(task_model)
    except ValueError as error:
        logger.warning("diagnostics: no per-layer groups for this model (%s); reporting one group, 'all'", error)
        return {"all": named}
    ranked = sorted({(d.depth, d.group == "head", d.group) for d in depths.values()})  # pooler before head
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {group: [] for _, _, group in ranked}
    for name, param in named:
        groups[depths[name].group].append((name, param))
    return {group: params for group, params in groups.items() if params}


class _GroupNorms:
    """√(Σ‖t‖²) per group from per-tensor norms, on-device and without host synchronisation: one stack, one
    ``index_add_``, one ``sqrt``. The group-index tensors are built once and cached (building one from a Python
    list is a blocking host-to-device copy)."""

    def __init__(self, num_groups: int):
        self.num_groups = num_groups
        self._index: dict[tuple, torch.Tensor] = {}

    def __call__(self, norms: list[torch.Tensor], group_index: tuple[int, ...]) -> torch.Tensor:
        device = norms[0].device
        index = self._index.get((device, group_index))
        if index is None:
            index = self._index[(device, group_index)] = torch.tensor(group_index, device=device)
        stacked = torch.stack([n.to(device, torch.float32) for n in norms])
        squares = torch.zeros(self.num_groups, dtype=torch.float32, device=device)
        return squares.index_add_(0, index, stacked * stacked).sqrt()


# ----------------------------------------------------------------------------------------------------------
# getting values into the Trainer's logs


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


# ----------------------------------------------------------------------------------------------------------
# per-layer gradient norms


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


# ----------------------------------------------------------------------------------------------------------
# per-layer distance from the starting weights

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
            self._snapshot = _copy_trainable(model)

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
            reference = self._snapshot = _copy_trainable(model)
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


def _copy_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in unwrap_model(model).named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------------------------------------
# degenerate runs


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


_LABEL_KEYS = ("labels", "label", "label_ids")


def dataset_labels(dataset) -> np.ndarray:
    """The labels of a training set: the ``labels``/``label``/``label_ids`` column of a 🤗 ``datasets.Dataset``,
    or that key of every item of a map-style dataset. Raises ``ValueError`` when there are none to read."""
    column_names = getattr(dataset, "column_names", None)
    if isinstance(column_names, (list, tuple)):
        for key in _LABEL_KEYS:
            if key in column_names:
                return _as_array(dataset[key])
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(f"cannot read the labels of an iterable dataset ({type(dataset).__name__})")
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    first = dataset[0]
    key = next((k for k in _LABEL_KEYS if isinstance(first, Mapping) and k in first), None)
    if key is None:
        raise ValueError(f"the items of {type(dataset).__name__} have no 'labels'/'label' key")
    return _as_array([dataset[i][key] for i in range(len(dataset))])


def _as_array(values: Iterable) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray([v.item() if hasattr(v, "item") else v for v in values])


def _constant_prediction_loss_of(model: nn.Module, dataset) -> float:
    """Loss of the best constant predictor on ``dataset`` for the model's loss (cross-entropy or MSE)."""
    from .metrics import constant_prediction_loss

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
        max_steps = max(int(state.max_steps or 0), 1)
        self._window = max(1, math.ceil(self.window_fraction * max_steps))
        self._check_step = max(1, math.ceil(self.check_fraction * max_steps)) if self.check_fraction > 0 else 0
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
            if smoothed is None or smoothed < self._threshold:
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


# ----------------------------------------------------------------------------------------------------------
# wiring and summaries


def callbacks_from_args(args, state=None) -> list[TrainerCallback]:
    """The diagnostics callbacks that :class:`~hf_stable_ft.StableTrainingArguments` ask for.

    * ``diagnostics_steps > 0`` → :class:`LayerGradNormCallback` and :class:`ParameterDistanceCallback`
      every ``diagnostics_steps`` updates, the latter measuring from ``state.initial_parameters`` (the
      :class:`~hf_stable_ft.FineTuningState` of the prepared model; looked up again at ``on_train_begin`` so a
      ``model_init`` model is measured from its own start).
    * ``degenerate_check_fraction > 0`` or ``abort_degenerate_runs`` → :class:`DegenerateRunCallback` with
      ``check_fraction=degenerate_check_fraction`` (0 keeps only the non-finite test) and
      ``abort=abort_degenerate_runs``.
    """
    callbacks: list[TrainerCallback] = []
    steps = getattr(args, "diagnostics_steps", 0) or 0
    if steps > 0:
        initial = getattr(state, "initial_parameters", None)

        def reference(model):
            from .callback import get_fine_tuning_state

            current = get_fine_tuning_state(model) if model is not None else None
            found = getattr(current, "initial_parameters", None)
            return found if found is not None else initial

        callbacks.append(LayerGradNormCallback(every_n_steps=steps))
        callbacks.append(ParameterDistanceCallback(reference=reference, every_n_steps=steps))
    fraction = getattr(args, "degenerate_check_fraction", 0.0) or 0.0
    abort = bool(getattr(args, "abort_degenerate_runs", False))
    if fraction > 0 or abort:
        callbacks.append(DegenerateRunCallback(check_fraction=fraction, abort=abort))
    return callbacks


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
