"""The thin layer between ``StableTrainingArguments`` and the stock ``transformers.Trainer``.

:class:`StableFineTuningCallback` calls :func:`~hf_stable_ft.prepare_model` at ``on_init_end`` — the only
Trainer event before the optimizer exists and before ``train(resume_from_checkpoint=...)`` loads a checkpoint,
so the recorded pretrained weights are the pretrained ones even on resume — checks at ``on_train_begin`` that
the Trainer will train what the arguments describe, logs and stores the settings record, and runs the
diagnostics callbacks that the arguments ask for. (Preparation lives in :mod:`hf_stable_ft.preparation`, the
optimizer factory in :mod:`hf_stable_ft.optimizer_factory`; both are re-exported here for older imports.)
"""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn
from transformers import TrainerCallback

from .architectures import ENCODER_LAYOUTS, unwrap_model
from .args import StableTrainingArguments
from .child_tuning import ChildTuningCallback
from .diagnostics import callbacks_from_args
from .optim import StableAdamW, warn_if_anneal_misses_run
from .optimizer_factory import StableOptimizerFactory, _require_state, create_stable_optimizer, stable_optimizer
from .preparation import FineTuningState, get_fine_tuning_state, prepare_model
from .settings_record import (
    SETTINGS_KEY,
    _log_summary,
    _resume_refusal,
    checkpoint_settings_mismatch,
    settings_record,
)

logger = logging.getLogger(__name__)

# StableFineTuningCallback is this module's; the rest is re-exported for imports from hf_stable_ft.callback
# (one release).
__all__ = [
    "StableFineTuningCallback",
    "FineTuningState",
    "get_fine_tuning_state",
    "prepare_model",
    "StableOptimizerFactory",
    "create_stable_optimizer",
    "stable_optimizer",
]


def _unwrap_optimizer(optimizer):
    # AcceleratedOptimizer (and similar wrappers) keep the real optimizer in ``.optimizer``.
    while not isinstance(optimizer, StableAdamW) and isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class StableFineTuningCallback(TrainerCallback):
    """Applies ``StableTrainingArguments``'s model changes at ``on_init_end`` and runs its diagnostics.

    Pass it at construction — ``Trainer(..., callbacks=[StableFineTuningCallback()],
    optimizer_cls_and_kwargs=stable_optimizer(args))`` — so it sees ``on_init_end``. With diagnostics on, also
    call ``hf_stable_ft.diagnostics.place_before_reporters(trainer, callback)`` once, so the ``report_to``
    integrations (which the Trainer runs before user callbacks) see the diagnostics (StableTrainer does this).
    It refuses (rather than silently doing nothing) when it was added too late, when ``model_init`` replaced
    the prepared model, or when the optimizer settings were given without :func:`stable_optimizer`.

    Attributes:
        fine_tuning_state: the :class:`FineTuningState` of the prepared model (after ``on_init_end``); also
            readable as ``state`` (older name, kept one release).
    """

    def __init__(self):
        self.fine_tuning_state: FineTuningState | None = None
        self._children: list[TrainerCallback] = []
        self._saw_init_end = False

    @property
    def state(self) -> FineTuningState | None:
        return self.fine_tuning_state

    def _stable_args(self, args) -> StableTrainingArguments | None:
        return args if isinstance(args, StableTrainingArguments) else None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self._saw_init_end = True
        stable_args = self._stable_args(args)
        if stable_args is None or model is None:
            return
        stable_args._attached_callback = True
        # The Trainer decided in __init__ (before this event) whether the loss is already scaled for gradient
        # accumulation: from model.accepts_loss_kwargs, else from forward(**kwargs). Keep what it saw.
        self._loss_kwargs_inferred = _loss_kwargs_inferred(unwrap_model(model))
        self.fine_tuning_state = prepare_model(model, stable_args)
        self._children = callbacks_from_args(stable_args, self.fine_tuning_state)
        # After the diagnostics, so their per-layer gradient norms are of the unmasked (loss) gradient; it reads
        # child_tuning_mode from the arguments at each on_train_begin and does nothing when it is None.
        self._children.append(ChildTuningCallback())
        return self._forward("on_init_end", args, state, control, model=model, **kwargs)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        stable_args = self._stable_args(args)
        if stable_args is None:
            return
        if not self._saw_init_end and stable_args.modifies_model:
            raise RuntimeError(
                "StableFineTuningCallback was added after the Trainer was built (add_callback), so it never saw "
                "on_init_end and could not prepare the model; pass it in Trainer(callbacks=[...]) instead."
            )
        stable_args._check_stable_trainer()  # R3F changes the loss: only StableTrainer applies it
        if model is not None:
            self.fine_tuning_state = _require_state(model, stable_args, "StableFineTuningCallback.on_train_begin")
        if stable_args.uses_stable_optimizer and not isinstance(_unwrap_optimizer(optimizer), StableAdamW):
            raise RuntimeError(
                f"adam_bias_correction={stable_args.adam_bias_correction}, layerwise_lr_decay="
                f"{stable_args.layerwise_lr_decay}, pretrained_weight_decay={stable_args.pretrained_weight_decay} "
                "need the stable optimizer, but the Trainer built "
                f"{type(_unwrap_optimizer(optimizer)).__name__}; pass optimizer_cls_and_kwargs=stable_optimizer(args) "
                "or use StableTrainer."
            )
        warn_if_anneal_misses_run(stable_args.recadam_k, stable_args.recadam_t0, state.max_steps)
        task_model = unwrap_model(model) if model is not None else None
        multi = stable_args.gradient_accumulation_steps > 1 or stable_args.world_size > 1
        if multi and getattr(self, "_loss_kwargs_inferred", False):
            raise RuntimeError(
                f"gradient_accumulation_steps={stable_args.gradient_accumulation_steps}, world_size="
                f"{stable_args.world_size}: the stock Trainer passes num_items_in_batch to "
                f"{type(task_model).__name__}, whose loss is a per-batch mean that ignores it, so it would skip the "
                "1/gradient_accumulation_steps scaling (and multiply by the number of processes) and train on a "
                "mis-scaled loss. Set model.accepts_loss_kwargs = False before building the Trainer, or use StableTrainer."
            )
        if stable_args.min_train_steps > state.max_steps and stable_args.max_steps <= 0:
            raise RuntimeError(
                f"min_train_steps={stable_args.min_train_steps} but the stock Trainer fixed this run at "
                f"{state.max_steps} updates before any callback runs; set max_steps={stable_args.min_train_steps} "
                "or use StableTrainer, which applies min_train_steps itself."
            )
        stored = (state.stateful_callbacks or {}).get(SETTINGS_KEY)
        if stored is not None and state.global_step > 0:  # resuming: the checkpoint's settings must be these
            differ = checkpoint_settings_mismatch(stored, stable_args)
            if differ:
                raise ValueError(_resume_refusal(differ))
        record = settings_record(stable_args, self.fine_tuning_state, planned_updates=state.max_steps)
        if state.stateful_callbacks is not None:
            state.stateful_callbacks[SETTINGS_KEY] = record
        if state.is_world_process_zero:
            _log_summary(record)
        return self._forward("on_train_begin", args, state, control, model=model, optimizer=optimizer, **kwargs)

    def _forward(self, event: str, args, state, control, **kwargs):
        for child in self._children:
            result = getattr(child, event)(args, state, control, **kwargs)
            if result is not None:
                control = result
        return control



def _loss_kwargs_inferred(task_model: nn.Module) -> bool:
    """Whether the Trainer takes ``task_model``'s loss as normalised by ``num_items_in_batch`` although it is one
    of the encoder heads whose loss ignores it (no ``accepts_loss_kwargs`` and a ``forward(**kwargs)``)."""
    if hasattr(task_model, "accepts_loss_kwargs"):
        return False
    config = getattr(task_model, "config", None)
    if getattr(config, "model_type", None) not in ENCODER_LAYOUTS:
        return False
    try:
        parameters = inspect.signature(task_model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters)


def _make_forwarder(event: str):
    def forward(self, args, state, control, **kwargs):
        return self._forward(event, args, state, control, **kwargs)

    forward.__name__ = event
    return forward


for _event in [name for name in vars(TrainerCallback) if name.startswith("on_")]:
    if _event not in vars(StableFineTuningCallback):
        setattr(StableFineTuningCallback, _event, _make_forwarder(_event))
