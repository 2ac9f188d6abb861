"""The optimizer factory: :class:`~hf_stable_ft.StableAdamW` with named parameter groups from the live model.

``stable_optimizer(args)`` is the ``(factory, kwargs)`` pair for ``Trainer(optimizer_cls_and_kwargs=...)``;
``create_stable_optimizer(model, args)`` builds the optimizer itself (what the factory and ``StableTrainer`` call).
"""

from __future__ import annotations

import torch
from torch import nn

from .args import StableTrainingArguments
from .optim import StableAdamW
from .param_groups import build_param_groups
from .preparation import FineTuningState, get_fine_tuning_state

__all__ = ["StableOptimizerFactory", "create_stable_optimizer", "stable_optimizer"]


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
        anchor_all_pretrained=args.recadam_k > 0,
    )
    if args.recadam_k > 0:  # RecAdam anneals the groups that decay toward the pretrained weights (Chen et al. 2020)
        for group in groups:
            if group.get("pretrained_weight_decay", 0) > 0:
                group["recadam_k"], group["recadam_t0"] = args.recadam_k, args.recadam_t0
    optimizer = StableAdamW(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        bias_correction=args.adam_bias_correction,
    )
    optimizer.run_settings = args.technique_settings()  # a resume with other settings is refused on load
    return optimizer


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
