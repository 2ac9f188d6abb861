"""The diagnostics callbacks that :class:`~hf_stable_ft.StableTrainingArguments` ask for."""

from __future__ import annotations

from transformers import TrainerCallback

from ..preparation import get_fine_tuning_state
from .degenerate import DegenerateRunCallback
from .distance import ParameterDistanceCallback
from .grad_norms import LayerGradNormCallback

__all__ = ["callbacks_from_args"]


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
