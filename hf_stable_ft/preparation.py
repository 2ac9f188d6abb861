"""Model preparation: the model-changing techniques applied once, before the optimizer exists, and recorded.

:func:`prepare_model` composes re-init (Zhang et al. 2021 §5) → NoisyTune (Wu et al. 2022) → snapshot of the
starting weights → Mixout (Lee et al. 2020) and records what it did in a :class:`FineTuningState`, kept per model in a weak registry
(:func:`get_fine_tuning_state`) so a model's preparation is found again by every later step.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from .architectures import transformer_blocks, unwrap_model
from .args import StableTrainingArguments
from .param_groups import snapshot_parameters
from .reinit import reinit_top_layers

__all__ = ["FineTuningState", "get_fine_tuning_state", "preparation_settings", "prepare_model"]


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
    #: names of the tensors NoisyTune perturbed (``noisytune_intensity > 0``).
    noisytune_perturbed: list[str] = field(default_factory=list)

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
                "keeps_starting_weights": args.pretrained_weight_decay > 0 or args.diagnostics_steps > 0
                or args.child_tuning_mode == "D"}
    if settings["reinit_pooler"] or layers:
        settings["reinit_seed"] = args.seed
    if args.noisytune_intensity > 0:  # only recorded when on, so older records compare equal
        settings["noisytune_intensity"] = args.noisytune_intensity
        settings["noisytune_seed"] = args.seed
    return settings


def _same_preparation(done: dict, wanted: dict) -> list[str]:
    """The settings in which ``wanted`` differs from ``done`` (kept starting weights serve a run not needing them)."""
    differ = []
    for name in sorted(set(done) | set(wanted)):
        if name == "keeps_starting_weights":
            if wanted[name] and not done[name]:
                differ.append("keeps_starting_weights (pretrained_weight_decay / diagnostics_steps / "
                              "child_tuning_mode='D' need a snapshot taken before training)")
        elif done.get(name) != wanted.get(name):
            differ.append(f"{name}: prepared with {done.get(name)!r}, now asked {wanted.get(name)!r}")
    return differ


def prepare_model(model: nn.Module, args: StableTrainingArguments) -> FineTuningState:
    """Apply the model-changing techniques of ``args`` to ``model`` in place, once.

    Order: re-init (Zhang et al. 2021 §5, seeded with ``args.seed`` through a private generator so the
    global RNG — data order, dropout — is untouched) → NoisyTune (Wu et al. 2022, on the pretrained tensors that
    were not re-drawn, same seeding) → snapshot of the starting weights (pretrained-WD
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
    if args.noisytune_intensity > 0:
        # After re-init (re-drawn tensors are not pretrained and are skipped), before the snapshot: the starting
        # weights that pretrained WD decays toward, Mixout mixes toward, diagnostics and ChildTuning_D's Fisher pass
        # measure from are the perturbed ones (see hf_stable_ft.noisytune).
        from .noisytune import noisytune

        state.noisytune_perturbed = noisytune(task_model, args.noisytune_intensity, seed=args.seed,
                                              exclude=state.reinitialized)
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
