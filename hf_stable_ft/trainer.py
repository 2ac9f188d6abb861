"""StableTrainer: the stock ``Trainer`` with the callback and the optimizer factory wired in."""

from __future__ import annotations

import logging
import math
import os

from transformers import Trainer
from transformers.training_args import ParallelMode

from transformers.trainer_utils import HPSearchBackend, enable_full_determinism, get_last_checkpoint, set_seed

from .args import ADAMW_OPTIMS, StableTrainingArguments
from .architectures import ENCODER_LAYOUTS, unwrap_model
from .callback import StableFineTuningCallback
from .diagnostics import place_before_reporters
from .optimizer_factory import create_stable_optimizer
from .preparation import prepare_model
from .restarts import (RESTARTS_KEY, RestartRecordCallback, attempt_seeds, first_alarm, model_init_refusal,
                       move_checkpoints_aside, read_restart_record)
from .settings_record import _resume_refusal, checkpoint_settings_mismatch, read_checkpoint_settings
from .weight_averaging import WeightAveragingCallback

__all__ = ["StableTrainer", "updates_per_epoch"]

logger = logging.getLogger("hf_stable_ft")


def updates_per_epoch(num_batches: int, gradient_accumulation_steps: int) -> int:
    """Optimizer updates in one epoch of ``num_batches`` batches, as the Trainer counts them."""
    return max(math.ceil(num_batches / gradient_accumulation_steps), 1)


class StableTrainer(Trainer):
    """``transformers.Trainer`` for :class:`StableTrainingArguments`, in one object.

    Equivalent to ``Trainer(..., callbacks=[StableFineTuningCallback(), ...],
    optimizer_cls_and_kwargs=stable_optimizer(args))`` — training is identical — plus what a callback cannot
    do: ``min_train_steps`` (the stock Trainer fixes the number of updates before any callback runs),
    re-applying the model changes to every model that ``model_init`` creates with each hyper-parameter-search
    trial's own validated values, refusing a resume whose settings differ from the checkpoint's before any
    state is loaded, the right loss scaling with gradient accumulation, and R3F's term in the loss
    (``r3f_lambda``; :meth:`compute_loss`). With none of the optimizer settings
    on, a non-AdamW ``optim`` (``sgd``, ``adafactor``, …) is honoured as the stock Trainer would.
    """

    def __init__(self, model=None, args: StableTrainingArguments | None = None, *pos, callbacks=None, **kwargs):
        if args is None:
            args = StableTrainingArguments(output_dir="trainer_output")
        if not isinstance(args, StableTrainingArguments):
            raise TypeError(f"StableTrainer needs StableTrainingArguments, got {type(args).__name__}")
        callbacks = list(callbacks or [])
        if not any(isinstance(c, StableFineTuningCallback) for c in callbacks):
            callbacks.insert(0, StableFineTuningCallback())
        # Weight averaging (inert unless weight_averaging is set) and the restart record, right after it.
        first = next(i for i, c in enumerate(callbacks) if isinstance(c, StableFineTuningCallback))
        self.weight_averaging_callback = WeightAveragingCallback()
        self.restart_record_callback = RestartRecordCallback()
        callbacks[first + 1:first + 1] = [self.weight_averaging_callback, self.restart_record_callback]
        super().__init__(model, args, *pos, callbacks=callbacks, **kwargs)
        # transformers 5 takes any forward(**kwargs) as consuming num_items_in_batch; the encoder heads ignore it and
        # return a per-batch mean, so the Trainer would skip the 1/gradient_accumulation_steps scaling and multiply the
        # loss by the number of processes. A per-batch mean needs neither.
        task_model = unwrap_model(self.model)
        config = getattr(task_model, "config", None)
        if self.compute_loss_func is None and getattr(config, "model_type", None) in ENCODER_LAYOUTS:
            self.model_accepts_loss_kwargs = False
            task_model.accepts_loss_kwargs = False  # what transformers reads for any later Trainer of this model
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, StableFineTuningCallback):
                    callback._loss_kwargs_inferred = False
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
        if trial is not None and self.hp_search_backend is not None:
            # transformers 5 calls call_model_init before _hp_search_setup sets the trial's values on self.args, so
            # the model would be prepared with the previous trial's. Build this trial's arguments first (validated,
            # its stability_recipe applied) in place — train() holds this object; _hp_search_setup then sets the same
            # values again.
            if getattr(self, "_args_before_search", None) is None:  # trials start from what the user gave, not
                self._args_before_search = self.args.with_overrides()  # from the previous trial's values
            self.args.assign_from(self._args_before_search.with_overrides(**self._trial_params(trial)))
        model = super().call_model_init(trial)
        prepare_model(model, self.args)  # before train() loads any checkpoint into it
        # Building the model drew from the global RNG (a new task head), which a model= run did before
        # Trainer.__init__ seeded it. Seed again, so dropout and the data order of a model_init run (and of each
        # restart attempt) are those of the same model passed as model=: switching restarts on changes no seed
        # that never fires the alarm.
        if self.args.full_determinism:
            enable_full_determinism(self.args.seed)
        else:
            set_seed(self.args.seed)
        return model

    def _trial_params(self, trial) -> dict:
        """The hyper-parameters of ``trial``, read as ``Trainer._hp_search_setup`` reads them."""
        if self.hp_search_backend == HPSearchBackend.OPTUNA:
            params = dict(self.hp_space(trial))
        else:  # Ray Tune and W&B pass the sampled config itself
            params = {k: v for k, v in dict(trial).items() if k != "wandb"}
        known = {name for name in params if hasattr(self.args, name)}
        return {name: params[name] for name in known}

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.optimizer_cls_and_kwargs is None and self._wants_stable_optimizer():
            self.optimizer = create_stable_optimizer(self.model if model is None else model, self.args)
        return super().create_optimizer(model)

    def _wants_stable_optimizer(self) -> bool:
        # StableTrainingArguments refuses an optimizer setting with a non-AdamW optim at construction.
        return self.args.uses_stable_optimizer or getattr(self.args.optim, "value", self.args.optim) in ADAMW_OPTIMS

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The stock loss, plus R3F's ``λ · KL_S(f(x) ‖ f(x + z))`` in training when ``r3f_lambda > 0``
        (Aghajanyan et al. 2021; see :mod:`hf_stable_ft.r3f`). The term is a per-batch mean like the encoder heads'
        loss, so the Trainer's 1/gradient_accumulation_steps scaling applies to both; a loss already normalised
        over the accumulated batch (``compute_loss_func``, ``num_items_in_batch``) is refused rather than mixed."""
        lam = self.args.r3f_lambda
        if lam <= 0 or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        from .r3f import r3f_term

        scaled = self.loss_is_scaled_for_ga if getattr(self, "loss_is_scaled_for_ga", None) is not None else (
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None)
        if scaled:
            raise RuntimeError(
                f"r3f_lambda={lam} adds a per-batch mean to the loss, but this Trainer's loss is normalised over the "
                "accumulated batch (compute_loss_func, or a model that consumes num_items_in_batch); the two would be "
                "scaled differently under gradient accumulation. Drop compute_loss_func / set "
                "model.accepts_loss_kwargs = False, or r3f_lambda=0."
            )
        label_names = tuple(self.label_names or ("labels",))
        clean_inputs = dict(inputs)  # super() pops the labels when it computes the loss itself
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        clean_logits = outputs["logits"] if isinstance(outputs, dict) else outputs[1]
        loss = loss + lam * r3f_term(model, clean_inputs, clean_logits, eps=self.args.r3f_eps,
                                     noise_type=self.args.r3f_noise_type, label_names=label_names)
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, *args, **kwargs):
        """The stock evaluation; during training with ``weight_averaging`` on, of the averaged weights (swapped in,
        the training weights restored afterwards). After ``train()`` the model holds the average itself."""
        averager = self.weight_averaging_callback
        if averager.active and averager.in_training and averager.count > 0:
            with averager.swapped_in():
                return super().evaluate(*args, **kwargs)
        return super().evaluate(*args, **kwargs)

    def save_model(self, output_dir=None, _internal_call=False):
        """The stock save. In a checkpoint written during training with ``weight_averaging`` on, the model files
        hold the training weights (what a resume continues) and ``weight_average.pt`` the average; after
        ``train()`` the model is the average, so ``save_model()`` writes the averaged model."""
        super().save_model(output_dir, _internal_call=_internal_call)
        averager = self.weight_averaging_callback
        if averager.active and averager.in_training and self.args.should_save:
            averager.save(output_dir if output_dir is not None else self.args.output_dir)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # Tells StableTrainingArguments that the StableTrainer-only settings (R3F, weight averaging, restarts) are
        # applied: the stock Trainer with the same arguments is refused when it builds its schedule.
        previous = getattr(self.args, "_in_stable_trainer", False)
        self.args._in_stable_trainer = True
        try:
            if self.args.restart_degenerate_runs > 0:
                return self._train_with_restarts(resume_from_checkpoint, *args, **kwargs)
            return self._train_with_floor(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.args._in_stable_trainer = previous

    def _train_with_restarts(self, resume_from_checkpoint=None, *args, **kwargs):
        """``restart_degenerate_runs``: train; while the degenerate-run alarm stopped the attempt and restarts are
        left, rebuild the model with ``model_init`` and train again with the next seeds (see
        :mod:`hf_stable_ft.restarts`). Returns the first healthy attempt's output (or the last attempt's)."""
        limit = self.args.restart_degenerate_runs
        trial = kwargs.get("trial", args[0] if args else None)
        refusal = model_init_refusal(self.args, self.model_init)
        if refusal:
            raise RuntimeError(refusal)
        if trial is not None or self.hp_search_backend is not None:
            raise RuntimeError(f"restart_degenerate_runs={limit} is not supported inside hyperparameter_search (a "
                               "trial's model is built from the trial's values); set it to 0 for the search")
        base_seed, base_data_seed = self.args.seed, self.args.data_seed
        attempts: list[dict] = []
        start = 0
        checkpoint = self._resolve_checkpoint(resume_from_checkpoint)
        if checkpoint is not None:
            stored = read_restart_record(checkpoint)
            if stored is not None:  # continue the attempt the checkpoint belongs to, keeping the earlier ones
                attempts, start = list(stored["attempts"]), int(stored["current"]["attempt"])
                base_seed, base_data_seed = stored["base_seed"], stored["base_data_seed"]
        recorder = self.restart_record_callback
        output = None
        try:
            for attempt in range(start, limit + 1):
                seed, data_seed = attempt_seeds(base_seed, base_data_seed, attempt)
                self.args.seed, self.args.data_seed = seed, data_seed
                self._set_accelerator_data_seed(data_seed)
                recorder.record = {"base_seed": base_seed, "base_data_seed": base_data_seed, "limit": limit,
                                   "attempts": list(attempts),
                                   "current": {"attempt": attempt, "seed": seed, "data_seed": data_seed}}
                output = self._train_with_floor(resume_from_checkpoint if attempt == start else None, *args, **kwargs)
                alarm = first_alarm(self.state.log_history)
                entry = {"attempt": attempt, "seed": seed, "data_seed": data_seed,
                         "global_step": int(self.state.global_step), "degenerate": alarm is not None,
                         "alarm": None if alarm is None else {"step": alarm.step, "reason": alarm.reason}}
                if alarm is None or attempt == limit:
                    attempts.append(entry)
                    break
                entry["log_history"] = list(self.state.log_history)
                attempts.append(entry)
                moved = move_checkpoints_aside(recorder.saved_checkpoints, self.args.output_dir, attempt, seed) \
                    if self.args.should_save else None
                logger.warning("hf_stable_ft: attempt %d (seed %d) degenerate at update %d (%s); restarting with seed %d "
                               "(%d of %d restarts)%s", attempt, seed, alarm.step, alarm.reason, seed + 1,
                               attempt + 1, limit, f"; its checkpoints moved to {moved}" if moved else "")
        finally:
            self.args.seed, self.args.data_seed = base_seed, base_data_seed
            self._set_accelerator_data_seed(base_data_seed)
        final = attempts[-1]
        record = {"base_seed": base_seed, "base_data_seed": base_data_seed, "limit": limit, "attempts": attempts,
                  "current": {k: final[k] for k in ("attempt", "seed", "data_seed")},
                  "returned_attempt": final["attempt"], "restarted": final["attempt"] > 0,
                  "failed_attempts": sum(a["degenerate"] for a in attempts[:-1]), "healthy": not final["degenerate"]}
        recorder.record = None
        if self.state.stateful_callbacks is not None:
            self.state.stateful_callbacks[RESTARTS_KEY] = record
        return output

    def _set_accelerator_data_seed(self, data_seed) -> None:
        # The Trainer hands args.data_seed to accelerate once, in __init__; its seedable sampler draws the data
        # order from it, so an attempt's data_seed must reach it too.
        config = getattr(getattr(self, "accelerator", None), "dataloader_config", None)
        if config is not None and hasattr(config, "data_seed"):
            config.data_seed = data_seed

    def _resolve_checkpoint(self, resume_from_checkpoint):
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        if not checkpoint or not isinstance(checkpoint, (str, os.PathLike)):
            return None
        return os.fspath(checkpoint)

    def _train_with_floor(self, resume_from_checkpoint=None, *args, **kwargs):
        self._check_resume_settings(resume_from_checkpoint)
        self.weight_averaging_callback.resume_from = self._resolve_checkpoint(resume_from_checkpoint)
        floor = self.args.min_train_steps
        # An explicit max_steps is what the user asked for; StableTrainingArguments refuses one below an explicit
        # min_train_steps, so here a floor can only come from a recipe, and it gives way.
        planned = self._planned_updates() if floor and self.args.max_steps <= 0 else None
        if planned is None or planned >= floor:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        original_max_steps = self.args.max_steps
        self.args.max_steps = floor  # the schedule (warmup ratio, linear decay) is computed on the final count
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.args.max_steps = original_max_steps

    def _check_resume_settings(self, resume_from_checkpoint) -> None:
        """Refuse, before any state is loaded, a resume whose technique settings differ from the checkpoint's."""
        checkpoint = self._resolve_checkpoint(resume_from_checkpoint)
        stored = read_checkpoint_settings(checkpoint) if checkpoint is not None else None
        if stored is not None:
            differ = checkpoint_settings_mismatch(stored, self.args)
            if differ:
                raise ValueError(_resume_refusal(differ))

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
