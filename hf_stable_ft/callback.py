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

import inspect
import json
import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from .architectures import ENCODER_LAYOUTS, transformer_blocks, unwrap_model
from .args import TECHNIQUE_FIELDS, StableTrainingArguments
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
    "SETTINGS_KEY",
    "checkpoint_settings_mismatch",
]

#: Key of ``trainer_state.json``'s ``stateful_callbacks`` under which the resolved settings are stored.
SETTINGS_KEY = "hf_stable_ft"


@dataclass
class FineTuningState:
    """What :func:`prepare_model` did to a model.

    Attributes:
        reinit_layers: number of top blocks re-initialised (resolved from depth for ``zhang2021``).
        reinitialized: names of the re-initialised parameters.
        initial_parameters: name → copy of each trainable parameter at the start of fine-tuning (after
            re-init), kept when pretrained weight decay or diagnostics need it.
        mixout_layers: names of the Linear modules Mixout mixes.
        prepared_with: the settings the model was prepared with (see :func:`preparation_settings`); a second
            preparation that asks for other ones is refused.
    """

    reinit_layers: int = 0
    reinitialized: list[str] = field(default_factory=list)
    initial_parameters: dict[str, torch.Tensor] | None = None
    mixout_layers: list[str] = field(default_factory=list)
    prepared_with: dict = field(default_factory=dict)

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


def preparation_settings(model: nn.Module, args: StableTrainingArguments) -> dict:
    """What :func:`prepare_model` does to ``model`` for ``args``: re-init (pooler, resolved block count and its
    seed), Mixout's p and whether the starting weights are kept (pretrained WD anchors, diagnostics)."""
    task_model = unwrap_model(model)
    needs_layers = args.reinit_layers > 0 or args.auto_reinit_layers
    layers = 0
    if needs_layers:
        layers = args.resolve_reinit_layers(len(transformer_blocks(task_model, purpose="top-layer re-initialisation")))
    settings = {"reinit_pooler": bool(args.reinit_pooler), "reinit_layers": layers, "mixout_prob": args.mixout_prob,
                "keeps_starting_weights": args.pretrained_weight_decay > 0 or args.diagnostics_steps > 0}
    if settings["reinit_pooler"] or layers:
        settings["reinit_seed"] = args.seed
    return settings


def _same_preparation(done: dict, wanted: dict) -> list[str]:
    """The settings in which ``wanted`` differs from ``done`` (kept starting weights serve a run not needing them)."""
    differ = []
    for name in sorted(set(done) | set(wanted)):
        if name == "keeps_starting_weights":
            if wanted[name] and not done[name]:
                differ.append("keeps_starting_weights (pretrained_weight_decay / diagnostics_steps need a snapshot "
                              "taken before training)")
        elif done.get(name) != wanted.get(name):
            differ.append(f"{name}: prepared with {done.get(name)!r}, now asked {wanted.get(name)!r}")
    return differ


def prepare_model(model: nn.Module, args: StableTrainingArguments) -> FineTuningState:
    """Apply the model-changing techniques of ``args`` to ``model`` in place, once.

    Order: re-init (Zhang et al. 2021 §5, seeded with ``args.seed`` through a private generator so the
    global RNG — data order, dropout — is untouched) → snapshot of the starting weights (pretrained-WD
    anchors, diagnostics reference) → Mixout (Lee et al. 2020), whose targets are those starting weights.
    Calling it again with the same settings returns the recorded state without changing anything; with other
    settings (a model prepared by one Trainer handed to a second) it raises ``ValueError`` naming the
    differences, because re-drawing or mixing again would not give what the new settings describe.
    With ``stability_recipe="zhang2021"`` the depth-dependent block count is written back to
    ``args.reinit_layers``, so the logged and saved arguments show the number re-drawn.
    """
    wanted = preparation_settings(model, args)
    existing = get_fine_tuning_state(model)
    if existing is not None:
        differ = _same_preparation(existing.prepared_with, wanted)
        if differ:
            raise ValueError(
                "this model was already prepared by hf_stable_ft with other settings (" + "; ".join(differ) + "). "
                "Load a fresh copy (from_pretrained) for each Trainer, or pass model_init to the Trainer."
            )
        _record_resolved_reinit(args, existing.reinit_layers)
        return existing
    task_model = unwrap_model(model)
    prefix = getattr(task_model, "base_model_prefix", "")
    state = FineTuningState(encoder_prefix=f"{prefix}." if prefix and hasattr(task_model, prefix) else "",
                            prepared_with=wanted)
    if wanted["reinit_layers"] or args.reinit_pooler:
        state.reinit_layers = wanted["reinit_layers"]
        state.reinitialized = reinit_top_layers(
            task_model, state.reinit_layers, reinit_pooler=args.reinit_pooler, seed=args.seed
        )
    if wanted["keeps_starting_weights"]:
        state.initial_parameters = snapshot_parameters(task_model)
    if args.mixout_prob > 0:
        from .mixout import apply_mixout

        state.mixout_layers = apply_mixout(task_model, args.mixout_prob)
    _STATES[task_model] = state
    if model is not task_model:
        _STATES[model] = state
    _record_resolved_reinit(args, state.reinit_layers)
    return state


def _record_resolved_reinit(args: StableTrainingArguments, layers: int) -> None:
    if args.auto_reinit_layers:
        args.reinit_layers = layers


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
        stable_args._attached_callback = True
        # The Trainer decided in __init__ (before this event) whether the loss is already scaled for gradient
        # accumulation: from model.accepts_loss_kwargs, else from forward(**kwargs). Keep what it saw.
        self._loss_kwargs_inferred = _loss_kwargs_inferred(unwrap_model(model))
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
        record = settings_record(stable_args, self.state, planned_updates=state.max_steps)
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


def settings_record(args: StableTrainingArguments, state: FineTuningState | None, planned_updates: int | None = None) -> dict:
    """What a run applies, JSON-ready: the resolved settings with their sources, the technique settings a resume
    must match, and what preparation did (blocks re-drawn, Mixout layers, optimizer mode, updates)."""
    resolved = {name: {"value": _jsonable(entry["value"]), "source": entry["source"]}
                for name, entry in args.resolved_settings().items()}
    applied = {
        "optimizer": _optimizer_description(args),
        "reinitialized_blocks": state.reinit_layers if state is not None else 0,
        "reinitialized_pooler": bool(args.reinit_pooler),
        "mixout_layers": len(state.mixout_layers) if state is not None else 0,
    }
    if planned_updates is not None:
        applied["updates"] = int(planned_updates)
    return {"settings": resolved, "technique": {k: _jsonable(v) for k, v in args.technique_settings().items()},
            "applied": applied}


def _jsonable(value):
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def _optimizer_description(args: StableTrainingArguments) -> str:
    optim = getattr(args.optim, "value", args.optim)
    if not args.uses_stable_optimizer and optim not in ("adamw_torch", "adamw_torch_fused"):
        return f"stock optim={optim}"
    mode = "BERTAdam (no bias correction)" if not args.adam_bias_correction else "bias-corrected AdamW"
    extras = []
    if args.layerwise_lr_decay < 1:
        extras.append(f"LLRD d={args.layerwise_lr_decay}")
    if args.pretrained_weight_decay > 0:
        extras.append(f"pretrained WD {args.pretrained_weight_decay}")
    return f"StableAdamW, {mode}" + (f", {', '.join(extras)}" if extras else "")


def _log_summary(record: dict) -> None:
    settings = record["settings"]
    applied = record["applied"]
    chosen = ", ".join(
        f"{name}={entry['value']} ({entry['source']})" for name, entry in settings.items()
        if entry["source"] != "default"
    )
    parts = [applied["optimizer"]]
    if applied["reinitialized_pooler"] or applied["reinitialized_blocks"]:
        parts.append(f"re-initialised {'pooler + ' if applied['reinitialized_pooler'] else ''}top "
                     f"{applied['reinitialized_blocks']} block(s)")
    if applied["mixout_layers"]:
        parts.append(f"Mixout p={settings['mixout_prob']['value']} on {applied['mixout_layers']} Linear layers")
    if "updates" in applied:
        parts.append(f"{applied['updates']} updates")
    logger.info("hf_stable_ft: %s. Settings not at their defaults: %s", "; ".join(parts), chosen or "none")


def checkpoint_settings_mismatch(stored: dict, args: StableTrainingArguments) -> list[str]:
    """The technique settings in which a checkpoint's record (:func:`settings_record`) differs from ``args``."""
    saved = stored.get("technique", {}) if isinstance(stored, dict) else {}
    now = args.technique_settings()
    return [f"{name}: checkpoint {saved[name]!r}, now {now[name]!r}"
            for name in TECHNIQUE_FIELDS if name in saved and saved[name] != _jsonable(now[name])]


def _resume_refusal(differ: list[str]) -> str:
    return ("cannot resume: the checkpoint was trained with other hf_stable_ft settings (" + "; ".join(differ) + "). "
            "Resume with the checkpoint's settings, or start a new run in another output_dir.")


def read_checkpoint_settings(checkpoint: str) -> dict | None:
    """The settings record stored in ``checkpoint``'s ``trainer_state.json``, if any."""
    path = Path(checkpoint) / "trainer_state.json"
    if not path.is_file():
        return None
    try:
        stateful = json.loads(path.read_text()).get("stateful_callbacks") or {}
    except (OSError, ValueError):
        return None
    return stateful.get(SETTINGS_KEY)


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
