"""The thin layer between ``StableTrainingArguments`` and the stock ``transformers.Trainer``.

* :func:`prepare_model` composes the model-changing techniques (re-init → snapshot of the starting
  weights → Mixout) and records what it did.
* :class:`StableFineTuningCallback` calls it at ``on_init_end`` — the only Trainer event before the
  optimizer exists and before ``train(resume_from_checkpoint=...)`` loads a checkpoint, so the recorded
  pretrained weights are the pretrained ones even on resume — and runs the diagnostics callbacks that
  the arguments ask for.
* :func:`stable_optimizer` returns the ``optimizer_cls_and_kwargs`` pair that builds a
  :class:`~hf_stable_ft.StableAdamW` with LLRD / pretrained-WD parameter groups from the live model.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import TrainerCallback

from .architectures import transformer_blocks, unwrap_model
from .args import StableTrainingArguments
from .optim import StableAdamW
from .param_groups import build_param_groups, snapshot_parameters
from .reinit import reinit_top_layers

logger = logging.getLogger(__name__)

__all__ = [
    "FineTuningState",
    "prepare_model",
    "get_fine_tuning_state",
    "StableFineTuningCallback",
    "StableOptimizerFactory",
    "stable_optimizer",
]


@dataclass
class FineTuningState:
    """What :func:`prepare_model` did to a model.

    Attributes:
        reinit_layers: number of top blocks re-initialised (resolved from depth for ``zhang2021``).
        reinitialized: names of the re-initialised parameters.
        initial_parameters: name → copy of each trainable parameter at the start of fine-tuning (after
            re-init), kept when pretrained weight decay or diagnostics need it.
        mixout_layers: names of the Linear modules Mixout mixes.
    """

    reinit_layers: int = 0
    reinitialized: list[str] = field(default_factory=list)
    initial_parameters: dict[str, torch.Tensor] | None = None
    mixout_layers: list[str] = field(default_factory=list)

    #: name prefix of the pretrained encoder (``model.base_model_prefix``, e.g. ``"bert."``); parameters outside
    #: it (the task head) are new, not pretrained.
    encoder_prefix: str = ""

    @property
    def pretrained_anchors(self) -> dict[str, torch.Tensor] | None:
        """θ_pre of pretrained weight decay: starting values of the encoder parameters that were not
        re-initialised (the task head is new, so it keeps ordinary weight decay)."""
        if self.initial_parameters is None:
            return None
        reinitialized = set(self.reinitialized)
        return {
            name: value
            for name, value in self.initial_parameters.items()
            if name not in reinitialized and name.startswith(self.encoder_prefix)
        }


_STATES: "weakref.WeakKeyDictionary[nn.Module, FineTuningState]" = weakref.WeakKeyDictionary()


def get_fine_tuning_state(model: nn.Module) -> FineTuningState | None:
    """The :class:`FineTuningState` recorded for ``model`` (or its unwrapped task model), if any."""
    return _STATES.get(model) or _STATES.get(unwrap_model(model))


def prepare_model(model: nn.Module, args: StableTrainingArguments) -> FineTuningState:
    """Apply the model-changing techniques of ``args`` to ``model`` in place, once.

    Order: re-init (Zhang et al. 2021 §5, seeded with ``args.seed`` through a private generator so the
    global RNG — data order, dropout — is untouched) → snapshot of the starting weights (pretrained-WD
    anchors, diagnostics reference) → Mixout (Lee et al. 2020), whose targets are those starting weights.
    Calling it again on the same model returns the recorded state without changing anything.
    """
    existing = get_fine_tuning_state(model)
    if existing is not None:
        return existing
    task_model = unwrap_model(model)
    prefix = getattr(task_model, "base_model_prefix", "")
    state = FineTuningState(encoder_prefix=f"{prefix}." if prefix and hasattr(task_model, prefix) else "")
    needs_layers = args.reinit_layers > 0 or args.auto_reinit_layers
    if needs_layers or args.reinit_pooler:
        depth = len(transformer_blocks(task_model, purpose="top-layer re-initialisation")) if needs_layers else 0
        state.reinit_layers = args.resolve_reinit_layers(depth) if needs_layers else 0
        state.reinitialized = reinit_top_layers(
            task_model, state.reinit_layers, reinit_pooler=args.reinit_pooler, seed=args.seed
        )
    if args.pretrained_weight_decay > 0 or args.diagnostics_steps > 0:
        state.initial_parameters = snapshot_parameters(task_model)
    if args.mixout_prob > 0:
        from .mixout import apply_mixout

        state.mixout_layers = apply_mixout(task_model, args.mixout_prob)
    _STATES[task_model] = state
    if model is not task_model:
        _STATES[model] = state
    return state


def _require_state(model: nn.Module, args: StableTrainingArguments, where: str) -> FineTuningState | None:
    state = get_fine_tuning_state(model)
    if state is None and args.modifies_model:
        raise RuntimeError(
            f"{where}: the arguments ask for re-init / pretrained weight decay / Mixout (reinit_pooler="
            f"{args.reinit_pooler}, reinit_layers={args.reinit_layers}, pretrained_weight_decay="
            f"{args.pretrained_weight_decay}, mixout_prob={args.mixout_prob}) but the model was never prepared. "
            "Pass StableFineTuningCallback() in Trainer(callbacks=[...]) — callbacks added later with "
            "add_callback() never see on_init_end — or use StableTrainer, which also re-applies the changes to "
            "every model that model_init creates."
        )
    return state


class StableOptimizerFactory:
    """Optimizer factory for ``Trainer(optimizer_cls_and_kwargs=(StableOptimizerFactory, {"args": args}))``.

    transformers 5 instantiates a non-Optimizer class and calls it with the model:
    ``StableOptimizerFactory()(model, **kwargs)``.
    """

    def __call__(self, model: nn.Module, args: StableTrainingArguments) -> StableAdamW:
        return create_stable_optimizer(model, args)


def create_stable_optimizer(model: nn.Module, args: StableTrainingArguments) -> StableAdamW:
    """Build the :class:`StableAdamW` that ``args`` describe for ``model``."""
    state = _require_state(model, args, "stable_optimizer")
    anchors = state.pretrained_anchors if (state is not None and args.pretrained_weight_decay > 0) else None
    groups = build_param_groups(
        model,
        lr=args.learning_rate,
        weight_decay=args.weight_decay,
        layerwise_lr_decay=args.layerwise_lr_decay,
        pretrained_weight_decay=args.pretrained_weight_decay,
        pretrained_anchors=anchors,
    )
    return StableAdamW(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        bias_correction=args.adam_bias_correction,
    )


def stable_optimizer(args: StableTrainingArguments) -> tuple[type, dict]:
    """``(factory, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=stable_optimizer(args))``.

    The factory builds named parameter groups (decay / no-decay, LLRD, pretrained-WD anchors) from the live
    model when the Trainer creates its optimizer, and a :class:`StableAdamW` with ``args``'s betas, ε and
    bias-correction switch.
    """
    if not isinstance(args, StableTrainingArguments):
        raise TypeError(f"stable_optimizer needs StableTrainingArguments, got {type(args).__name__}")
    return StableOptimizerFactory, {"args": args}


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
        state: the :class:`FineTuningState` of the prepared model (after ``on_init_end``).
    """

    def __init__(self):
        self.state: FineTuningState | None = None
        self._children: list[TrainerCallback] = []
        self._saw_init_end = False

    def _stable_args(self, args) -> StableTrainingArguments | None:
        return args if isinstance(args, StableTrainingArguments) else None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self._saw_init_end = True
        stable_args = self._stable_args(args)
        if stable_args is None or model is None:
            return
        self.state = prepare_model(model, stable_args)
        self._children = _diagnostic_callbacks(stable_args, self.state)
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
        if model is not None:
            self.state = _require_state(model, stable_args, "StableFineTuningCallback.on_train_begin")
        if stable_args.uses_stable_optimizer and not isinstance(_unwrap_optimizer(optimizer), StableAdamW):
            raise RuntimeError(
                f"adam_bias_correction={stable_args.adam_bias_correction}, layerwise_lr_decay="
                f"{stable_args.layerwise_lr_decay}, pretrained_weight_decay={stable_args.pretrained_weight_decay} "
                "need the stable optimizer, but the Trainer built "
                f"{type(_unwrap_optimizer(optimizer)).__name__}; pass optimizer_cls_and_kwargs=stable_optimizer(args) "
                "or use StableTrainer."
            )
        task_model = unwrap_model(model) if model is not None else None
        multi = stable_args.gradient_accumulation_steps > 1 or stable_args.world_size > 1
        if multi and task_model is not None and not hasattr(task_model, "accepts_loss_kwargs"):
            logger.warning(
                "transformers 5 passes num_items_in_batch to %s, whose loss ignores it: with gradient accumulation or "
                "several processes the stock Trainer then scales the loss wrongly. Set "
                "trainer.model_accepts_loss_kwargs = False after building the Trainer, or use StableTrainer.",
                type(task_model).__name__,
            )
        if stable_args.min_train_steps > state.max_steps:
            raise RuntimeError(
                f"min_train_steps={stable_args.min_train_steps} but the stock Trainer fixed this run at "
                f"{state.max_steps} updates before any callback runs; set max_steps={stable_args.min_train_steps} "
                "or use StableTrainer, which applies min_train_steps itself."
            )
        return self._forward("on_train_begin", args, state, control, model=model, optimizer=optimizer, **kwargs)

    def _forward(self, event: str, args, state, control, **kwargs):
        for child in self._children:
            result = getattr(child, event)(args, state, control, **kwargs)
            if result is not None:
                control = result
        return control


def _diagnostic_callbacks(args: StableTrainingArguments, state: FineTuningState) -> list[TrainerCallback]:
    """The diagnostics callbacks that ``args`` ask for (see :mod:`hf_stable_ft.diagnostics`)."""
    from .diagnostics import callbacks_from_args

    return callbacks_from_args(args, state)


def _make_forwarder(event: str):
    def forward(self, args, state, control, **kwargs):
        return self._forward(event, args, state, control, **kwargs)

    forward.__name__ = event
    return forward


for _event in [name for name in vars(TrainerCallback) if name.startswith("on_")]:
    if _event not in vars(StableFineTuningCallback):
        setattr(StableFineTuningCallback, _event, _make_forwarder(_event))
