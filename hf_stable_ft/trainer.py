"""StableTrainer: the stock ``Trainer`` with the callback and the optimizer factory wired in."""

from __future__ import annotations

import math
import os

from transformers import Trainer
from transformers.training_args import ParallelMode

from .args import StableTrainingArguments
from .architectures import ENCODER_LAYOUTS, unwrap_model
from .callback import StableFineTuningCallback, create_stable_optimizer, prepare_model
from .diagnostics import place_before_reporters

__all__ = ["StableTrainer", "updates_per_epoch"]


def updates_per_epoch(num_batches: int, gradient_accumulation_steps: int) -> int:
    """Optimizer updates in one epoch of ``num_batches`` batches, as the Trainer counts them."""
    return max(math.ceil(num_batches / gradient_accumulation_steps), 1)


class StableTrainer(Trainer):
    """``transformers.Trainer`` for :class:`StableTrainingArguments`, in one object.

    Equivalent to ``Trainer(..., callbacks=[StableFineTuningCallback(), ...],
    optimizer_cls_and_kwargs=stable_optimizer(args))`` — training is identical — plus what a callback cannot
    do: ``min_train_steps`` (the stock Trainer fixes the number of updates before any callback runs) and
    re-applying the model changes to every model that ``model_init`` creates (hyper-parameter search).
    """

    def __init__(self, model=None, args: StableTrainingArguments | None = None, *pos, callbacks=None, **kwargs):
        if args is None:
            args = StableTrainingArguments(output_dir="trainer_output")
        if not isinstance(args, StableTrainingArguments):
            raise TypeError(f"StableTrainer needs StableTrainingArguments, got {type(args).__name__}")
        callbacks = list(callbacks or [])
        if not any(isinstance(c, StableFineTuningCallback) for c in callbacks):
            callbacks.insert(0, StableFineTuningCallback())
        super().__init__(model, args, *pos, callbacks=callbacks, **kwargs)
        # transformers 5 takes any forward(**kwargs) as consuming num_items_in_batch; the encoder heads ignore it and
        # return a per-batch mean, so the Trainer would skip the 1/gradient_accumulation_steps scaling and multiply the
        # loss by the number of processes. A per-batch mean needs neither.
        task_model = unwrap_model(self.model)
        config = getattr(task_model, "config", None)
        if self.compute_loss_func is None and getattr(config, "model_type", None) in ENCODER_LAYOUTS:
            self.model_accepts_loss_kwargs = False
            task_model.accepts_loss_kwargs = False  # what transformers reads for any later Trainer of this model
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1 and self.args.parallel_mode != ParallelMode.DISTRIBUTED:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} but the Trainer is not running distributed (parallel_mode="
                f"{self.args.parallel_mode.value}): each process would train alone on all the data. On a machine "
                "without GPUs pass use_cpu=True (--use_cpu) so transformers uses gloo."
            )
        # Ahead of the report_to integrations, so the diagnostics it adds to the logs reach every backend.
        place_before_reporters(self, *(c for c in self.callback_handler.callbacks if isinstance(c, StableFineTuningCallback)))

    def call_model_init(self, trial=None):
        model = super().call_model_init(trial)
        prepare_model(model, self.args)  # before train() loads any checkpoint into it
        return model

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.optimizer_cls_and_kwargs is None:
            self.optimizer = create_stable_optimizer(self.model if model is None else model, self.args)
        return super().create_optimizer(model)

    def train(self, *args, **kwargs):
        floor = self.args.min_train_steps
        planned = self._planned_updates() if floor else None
        if planned is None or planned >= floor:
            return super().train(*args, **kwargs)
        original_max_steps = self.args.max_steps
        self.args.max_steps = floor  # the schedule (warmup ratio, linear decay) is computed on the final count
        try:
            return super().train(*args, **kwargs)
        finally:
            self.args.max_steps = original_max_steps

    def _planned_updates(self) -> int | None:
        if self.args.max_steps > 0:
            return self.args.max_steps
        try:
            num_batches = len(self.get_train_dataloader())
        except TypeError as error:
            raise ValueError(
                "min_train_steps needs a training set with a length (or max_steps set explicitly)"
            ) from error
        per_epoch = updates_per_epoch(num_batches, self.args.gradient_accumulation_steps)
        return math.ceil(self.args.num_train_epochs * per_epoch)
