"""Restart a degenerate run with the next seed inside one ``train()`` call (``restart_degenerate_runs=N``).

Dodge et al. (2020, "Fine-Tuning Pretrained Language Models: Weight Initializations, Data Orders, and Early
Stopping") show that bad seeds are visible early in training and that stopping them and starting new ones is
the cheaper way to a good model. With ``abort_degenerate_runs=True`` the degenerate-run alarm
(:class:`~hf_stable_ft.diagnostics.DegenerateRunCallback`: a non-finite loss or weights, or — with
``degenerate_check_fraction > 0`` — a training loss no better than the constant predictor's) stops the run;
:class:`~hf_stable_ft.StableTrainer` then trains again from the pretrained weights with attempt k's seeds
``seed + k`` (and ``data_seed + k`` when ``data_seed`` is set), at most N more times, and ``train()`` returns the
first attempt that finished without an alarm (or the last one, still flagged degenerate).

**Why ``model_init`` is required.** An attempt must be what an independent run with its seed would be: the task
head drawn from the seed, the top blocks re-drawn and NoisyTune's noise drawn from it, Mixout applied to the
pretrained weights. A kept copy of the starting state dict cannot give that: it holds the head drawn for the
first seed, the blocks already re-drawn and perturbed for it, and Mixout has replaced modules. ``model_init``
(called by the Trainer after ``set_seed(seed + k)``, then prepared by StableTrainer) gives exactly the model an
independent run with ``seed + k`` gets, so attempt k is bit-identical to a first-try run with those seeds.
StableTrainer seeds the global RNG again after ``model_init`` (whose head draws it consumed), so an attempt trains
with the dropout masks and data order of the same model passed as ``model=``: a seed that never fires the alarm
is the run without restarts. The optimizer and learning-rate schedule are built anew for each attempt
(``Trainer.train`` does so whenever ``model_init`` is used) and the data order is re-drawn from the new seed.

**Nothing is hidden.** ``trainer.state.stateful_callbacks["hf_stable_ft_restarts"]`` (also in every checkpoint's
``trainer_state.json``) lists every attempt — number, seeds, updates done, the alarm (update and reason) and, for
a failed attempt, its ``log_history`` — plus ``returned_attempt`` and ``restarted``; the log of the returned
attempt starts with a record ``restart/attempt``, ``restart/seed``, ``restart/failed_attempts``; each restart is
logged as a warning. A restarted run is never reported as a first-try success: ``restarted`` is True and
``failed_attempts`` > 0. Checkpoints a failed attempt wrote to ``output_dir`` are moved to
``output_dir/degenerate-attempt-<k>-seed-<s>/`` (kept, not deleted), so ``resume_from_checkpoint=True`` finds
the current attempt's; resuming one of its checkpoints continues that attempt with its seeds (read from the
record in the checkpoint) and keeps the earlier attempts' records. ``args.seed`` / ``args.data_seed`` are set back
to the values given once ``train()`` returns; the record says which seed trained the model.

Not inside ``hyperparameter_search`` (a trial's model is built from the trial's values, which would reset the
seed); refused there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

from transformers import TrainerCallback

from .diagnostics.degenerate import DegenerateAlarm

__all__ = ["RESTARTS_KEY", "RestartRecordCallback", "attempt_seeds", "first_alarm", "read_restart_record"]

logger = logging.getLogger("hf_stable_ft")

#: ``state.stateful_callbacks`` key of the attempts record.
RESTARTS_KEY = "hf_stable_ft_restarts"


def requested_restarts(args) -> int:
    """``args.restart_degenerate_runs`` (0 for a stock ``TrainingArguments``, which has no such field)."""
    return getattr(args, "restart_degenerate_runs", 0) or 0


def model_init_refusal(args, model_init) -> str | None:
    """Why a Trainer with ``args`` and ``model_init`` cannot restart (the message names the fix), or None."""
    limit = requested_restarts(args)
    if limit > 0 and model_init is None:
        return (f"restart_degenerate_runs={limit} rebuilds the model from the pretrained weights for each attempt, "
                "which needs model_init: build the Trainer with model_init=lambda trial=None: "
                "AutoModelForSequenceClassification.from_pretrained(...) (called after the attempt's seed is set) "
                "instead of model=...")
    return None


def attempt_seeds(seed: int, data_seed: int | None, attempt: int) -> tuple[int, int | None]:
    """Attempt ``attempt``'s seeds: ``seed + attempt`` and ``data_seed + attempt`` (None stays None)."""
    return seed + attempt, (None if data_seed is None else data_seed + attempt)


def first_alarm(log_history: list[dict]) -> DegenerateAlarm | None:
    """The degenerate-run alarm recorded in a run's ``log_history``, if any."""
    return next((a for a in (DegenerateAlarm.from_log(r) for r in log_history) if a is not None), None)


def read_restart_record(checkpoint: str | os.PathLike) -> dict | None:
    """The attempts record stored in a checkpoint's ``trainer_state.json``, if any."""
    path = os.path.join(os.fspath(checkpoint), "trainer_state.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return (json.load(f).get("stateful_callbacks") or {}).get(RESTARTS_KEY)


class RestartRecordCallback(TrainerCallback):
    """Writes the attempts record into ``state.stateful_callbacks`` (so every checkpoint carries it), logs the
    attempt at the start of its log, and remembers the checkpoints the attempt writes (to move them aside if it
    fails). Driven by :class:`~hf_stable_ft.StableTrainer`; inert when :attr:`record` is None."""

    def __init__(self):
        self.record: dict | None = None
        self.saved_checkpoints: list[str] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.saved_checkpoints = []
        if self.record is None or state.stateful_callbacks is None:
            return
        state.stateful_callbacks[RESTARTS_KEY] = self.record
        current = self.record["current"]
        if state.global_step == 0 and not any("restart/attempt" in r for r in state.log_history):
            state.log_history.append({"restart/attempt": current["attempt"], "restart/seed": current["seed"],
                                      "restart/failed_attempts": len(self.record["attempts"]), "step": 0})

    def on_save(self, args, state, control, **kwargs):
        if self.record is not None:
            self.saved_checkpoints.append(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))


def move_checkpoints_aside(paths: list[str], output_dir: str, attempt: int, seed: int) -> str | None:
    """Move a failed attempt's checkpoints into ``output_dir/degenerate-attempt-<k>-seed-<s>/``."""
    existing = [p for p in dict.fromkeys(paths) if os.path.isdir(p)]
    if not existing:
        return None
    target = os.path.join(output_dir, f"degenerate-attempt-{attempt}-seed-{seed}")
    os.makedirs(target, exist_ok=True)
    for path in existing:
        destination = os.path.join(target, os.path.basename(path))
        if os.path.exists(destination):
            shutil.rmtree(destination)
        shutil.move(path, destination)
    return target
