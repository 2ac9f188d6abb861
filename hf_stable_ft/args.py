"""StableTrainingArguments: every stabilisation technique of the papers as a switch on ``TrainingArguments``.

The fields are validated at construction; :class:`~hf_stable_ft.StableFineTuningCallback` and
:func:`~hf_stable_ft.stable_optimizer` read them. Named recipes (``stability_recipe``) fill in the papers'
settings; any field the user gives explicitly — keyword argument, command-line flag (also one equal to the
default), JSON/YAML key, hyper-parameter-search value — wins over the recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

from .recipes import RECIPES, STABILITY_RECIPES, get_recipe, zhang2021_reinit_layers

__all__ = ["StableTrainingArguments", "STABILITY_RECIPES", "RECIPE_FIELDS", "zhang2021_reinit_layers"]

#: appended to a recipe's source in :meth:`StableTrainingArguments.resolved_settings` for a block count the depth
#: rule resolves from the model (``reinit_layers="auto"``)
AUTO_FROM_DEPTH = " (auto from depth)"


#: The fields a recipe sets. Their dataclass defaults are :class:`_Unset` markers, so "not given" is told apart
#: from "given, equal to the default" on every path (``HfArgumentParser`` passes every field, given or not).
RECIPE_FIELDS: tuple[str, ...] = tuple(sorted({name for recipe in RECIPES.values() for name in recipe.fields}))

#: The settings that change what is trained; a checkpoint records them and a resume must match them.
TECHNIQUE_FIELDS: tuple[str, ...] = (
    "adam_bias_correction", "reinit_pooler", "reinit_layers", "layerwise_lr_decay", "pretrained_weight_decay",
    "mixout_prob", "min_train_steps",
    "noisytune_intensity", "child_tuning_mode", "child_tuning_p", "child_tuning_fisher_clip",
    "r3f_lambda", "r3f_eps", "r3f_noise_type",
    "weight_averaging", "ema_decay", "swa_start_fraction", "recadam_k", "recadam_t0",
)

#: ``weight_averaging`` values: a bias-corrected exponential moving average, or SWA's uniform average.
WEIGHT_AVERAGING_MODES = ("ema", "swa")

#: ``child_tuning_mode`` values: ChildTuning_F (task-free) and ChildTuning_D (task-driven), Xu et al. 2021.
CHILD_TUNING_MODES = ("F", "D")

#: ``r3f_noise_type`` values (Aghajanyan et al. 2021; fairseq's ``--noise-type``).
R3F_NOISE_TYPES = ("uniform", "normal")

#: ``optim`` values whose update :class:`~hf_stable_ft.StableAdamW` reproduces (torch's AdamW).
ADAMW_OPTIMS = ("adamw_torch", "adamw_torch_fused")


class _Unset:
    """Default of a recipe-controlled field: "not given by the caller", standing for ``value``.

    ``__post_init__`` replaces it with the recipe's value or ``value``; it never survives construction.
    It prints as ``value`` so ``--help`` shows the real default.
    """

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, _Unset) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("_Unset", self.value))


_BASE_FIELDS = {f.name: f for f in fields(TrainingArguments)}


def _recipe_field(name: str, default=None, help: str | None = None):
    """A recipe-controlled field: the base field's default (or ``default``) behind an :class:`_Unset` marker."""
    base = _BASE_FIELDS.get(name)
    value = base.default if base is not None else default
    metadata = dict(base.metadata) if base is not None else {}
    if help is not None:
        metadata["help"] = help
    metadata["help"] = metadata.get("help", "") + " Set by stability_recipe unless given."
    return field(default=_Unset(value), metadata=metadata)


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class StableTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the stabilisation techniques of Zhang et al. (ICLR 2021) and
    Mosbach et al. (ICLR 2021).

    Defaults that differ from ``TrainingArguments``: none — with no new field set, training is exactly the
    stock Trainer's AdamW run. Set ``stability_recipe`` for the papers' settings; a field you give (also one
    equal to its default) wins over the recipe, and ``stability_sources`` / :meth:`resolved_settings` say where
    each value came from.
    """

    # The TrainingArguments fields that recipes set, re-declared behind _Unset markers (same types and help).
    num_train_epochs: float = _recipe_field("num_train_epochs")
    learning_rate: float = _recipe_field("learning_rate")
    warmup_steps: float = _recipe_field("warmup_steps")
    weight_decay: float = _recipe_field("weight_decay")
    adam_epsilon: float = _recipe_field("adam_epsilon")

    adam_bias_correction: bool = _recipe_field(
        "adam_bias_correction", True,
        "Bias-correct Adam's moment estimates. False gives BERTAdam (Devlin et al. 2019), whose over-large early "
        "updates cause degenerate runs (Zhang et al. 2021 sec. 3; Mosbach et al. 2021). Default True.",
    )
    reinit_pooler: bool = _recipe_field(
        "reinit_pooler", False,
        "Re-draw the pooler from N(0, initializer_range^2) before fine-tuning (Zhang et al. 2021 sec. 5). Default False.",
    )
    reinit_layers: int = _recipe_field(
        "reinit_layers", 0,
        "Re-draw the top L transformer blocks: weights N(0, initializer_range^2), biases 0, LayerNorm 1/0 "
        "(Zhang et al. 2021 sec. 5). 0 disables. After the model is prepared it holds the number re-drawn.",
    )
    layerwise_lr_decay: float = field(
        default=1.0,
        metadata={
            "help": "Layer-wise learning-rate decay d in (0, 1]: head and pooler at lr, top block lr*d, ..., "
            "embeddings lr*d^(L+1) (Zhang et al. 2021 sec. 6). 1.0 disables."
        },
    )
    pretrained_weight_decay: float = field(
        default=0.0,
        metadata={
            "help": "Decay toward the pretrained weights, theta <- theta - lr*lambda*(theta - theta_pretrained), "
            "for matrices loaded from the checkpoint and not re-initialised; other matrices keep weight_decay "
            "(Zhang et al. 2021 sec. 6). 0 disables."
        },
    )
    mixout_prob: float = field(
        default=0.0,
        metadata={
            "help": "Mixout probability p in [0, 1): mix each weight toward its pretrained value with "
            "probability p, replacing dropout (Lee et al. 2020). 0 disables."
        },
    )
    min_train_steps: int = _recipe_field(
        "min_train_steps", 0,
        "Train for at least this many optimizer updates whatever num_train_epochs says; the learning-rate "
        "schedule uses the final count (Zhang et al. 2021 sec. 5, 'training longer'). An explicit max_steps wins "
        "over a recipe's floor; both explicit with max_steps < min_train_steps is an error. Default 0.",
    )
    stability_recipe: str | None = field(
        default=None,
        metadata={
            "help": "Named preset of the fields above and the usual hyper-parameters: "
            + ", ".join(RECIPES)
            + ". Fields passed explicitly win over the recipe."
        },
    )
    diagnostics_steps: int = field(
        default=0,
        metadata={
            "help": "Every N optimizer updates, log per-layer gradient L2 norms (before clipping) and per-layer "
            "L2 distance from the starting weights (Mosbach et al. 2021 fig. 4; Zhang et al. 2021 fig. 7). 0 disables."
        },
    )
    degenerate_check_fraction: float = field(
        default=0.0,
        metadata={
            "help": "After this fraction of training, raise the degenerate-run alarm when the training loss is "
            "not below the constant-prediction loss (a non-finite loss raises it at once). 0 disables the loss check."
        },
    )
    abort_degenerate_runs: bool = field(
        default=False,
        metadata={
            "help": "Stop training when the degenerate-run alarm fires (Dodge et al. 2020 early stopping of bad "
            "seeds); the run is recorded as aborted, never dropped."
        },
    )
    noisytune_intensity: float = field(
        default=0.0,
        metadata={
            "help": "NoisyTune lambda >= 0: before fine-tuning, W <- W + U(-lambda/2, lambda/2) * std(W) for every "
            "pretrained tensor not re-initialised, seeded with seed (Wu et al. 2022; paper default 0.15). "
            "Pretrained WD and Mixout anchor to the perturbed weights. 0 disables."
        },
    )
    child_tuning_mode: str | None = field(
        default=None,
        metadata={
            "help": "ChildTuning (Xu et al. 2021): 'F' masks every gradient with a fresh Bernoulli(child_tuning_p) "
            "mask each update, rescaled by 1/child_tuning_p; 'D' updates only the top child_tuning_p fraction of "
            "the transformer-block parameters by Fisher information (one pass over the training data at train "
            "start). The mask is applied after gradient clipping, to the accumulated gradient. None disables."
        },
    )
    child_tuning_p: float = field(
        default=0.3,
        metadata={"help": "ChildTuning's p in (0, 1]: keep probability (F) or kept fraction (D). Default 0.3."},
    )
    child_tuning_fisher_clip: float | None = field(
        default=None,
        metadata={
            "help": "ChildTuning_D only: clip each tensor's per-batch gradient to this L2 norm before squaring it in "
            "the Fisher pass, as the released code does (AliceMind's ChildTuningD.py, with max_grad_norm = 1.0). "
            "None (default) is the paper's equation 5, unclipped."
        },
    )
    r3f_lambda: float = field(
        default=0.0,
        metadata={
            "help": "R3F lambda >= 0: add lambda * symmetric KL between the predictions on clean and on noised "
            "word embeddings (MSE for regression) to the training loss (Aghajanyan et al. 2021). Needs "
            "StableTrainer; about 2x a step. 0 disables."
        },
    )
    r3f_eps: float = field(
        default=1e-5,
        metadata={"help": "R3F noise scale eps > 0: U(-eps, eps) or N(0, eps^2) per embedding element. Default 1e-5."},
    )
    r3f_noise_type: str = field(
        default="uniform",
        metadata={"help": "R3F noise distribution: 'uniform' (default, as the paper) or 'normal'."},
    )
    weight_averaging: str | None = field(
        default=None,
        metadata={
            "help": "Average the weights over training and evaluate / save the average: 'ema' keeps the "
            "zero-debiased exponential moving average avg_t = e_t / (1 - ema_decay^t), e_t = ema_decay*e_(t-1) + "
            "(1 - ema_decay)*theta_t (Kingma & Ba 2015 sec. 3 bias correction); 'swa' the uniform mean of the "
            "weights after each update from floor(swa_start_fraction*max_steps)+1 on (Izmailov et al. 2018). "
            "StableTrainer only. None disables."
        },
    )
    ema_decay: float = field(
        default=0.999,
        metadata={"help": "EMA decay beta in (0, 1) for weight_averaging='ema'. Default 0.999."},
    )
    swa_start_fraction: float = field(
        default=0.75,
        metadata={"help": "SWA averages the updates after this fraction of max_steps, in [0, 1). Default 0.75."},
    )
    recadam_k: float = field(
        default=0.0,
        metadata={
            "help": "RecAdam (Chen et al. 2020) annealing rate k > 0: the loss is lambda(t)*task + (1-lambda(t))*"
            "(pretrained_weight_decay/2)*||theta - theta_pre||^2 with lambda(t) = 1/(1 + exp(-k*(t - recadam_t0))), "
            "applied as the optimizer-level decay of StableAdamW; needs pretrained_weight_decay > 0. 0 disables."
        },
    )
    recadam_t0: float = field(
        default=0.0,
        metadata={"help": "RecAdam's t0 >= 0: the update at which lambda(t) = 1/2. Default 0 (the paper's script: 250); "
                          "a t0 outside [1, max_steps) is warned about at train start."},
    )
    restart_degenerate_runs: int = field(
        default=0,
        metadata={
            "help": "When the degenerate-run alarm stops a run (abort_degenerate_runs=True), train again from the "
            "pretrained weights with the next seed (seed+1, data_seed+1; head, re-init, data order, optimizer and "
            "schedule re-drawn), at most N times within one train() call; every attempt is recorded. Needs "
            "StableTrainer with model_init. 0 disables."
        },
    )

    def __post_init__(self):
        self._apply_recipe()
        self._validate_stability_fields()
        super().__post_init__()

    def _apply_recipe(self) -> None:
        """Resolve every recipe-controlled field: the caller's value, else the recipe's, else the default.

        ``stability_sources`` records where each value came from (``"explicit"``, ``"recipe <name>"``,
        ``"default"``); ``auto_reinit_layers`` marks the recipe's depth-dependent re-init count.
        """
        recipe = get_recipe(self.stability_recipe).fields if self.stability_recipe is not None else {}
        self.auto_reinit_layers = False
        sources: dict[str, str] = {}
        for name in RECIPE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, _Unset):
                sources[name] = "explicit"
                continue
            if name in recipe:
                sources[name] = f"recipe {self.stability_recipe}"
                value = recipe[name]
                if name == "reinit_layers" and value == "auto":
                    self.auto_reinit_layers = True
                    value = 0  # the number is resolved from the model's depth when it is prepared
            else:
                sources[name] = "default"
                value = value.value
            setattr(self, name, value)
        self.stability_sources = sources

    def _validate_stability_fields(self) -> None:
        def require(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; allowed: {allowed}")

        def integer(name: str) -> bool:
            value = getattr(self, name)
            return isinstance(value, int) and not isinstance(value, bool)

        for name in ("adam_bias_correction", "reinit_pooler", "abort_degenerate_runs"):
            require(isinstance(getattr(self, name), bool), name, "True or False")
        require(integer("reinit_layers") and self.reinit_layers >= 0, "reinit_layers", "an integer >= 0")
        require(_is_finite_number(self.layerwise_lr_decay) and 0 < self.layerwise_lr_decay <= 1,
                "layerwise_lr_decay", "a float in (0, 1]")
        require(_is_finite_number(self.pretrained_weight_decay) and self.pretrained_weight_decay >= 0,
                "pretrained_weight_decay", "a finite float >= 0")
        require(_is_finite_number(self.mixout_prob) and 0 <= self.mixout_prob < 1, "mixout_prob", "a float in [0, 1)")
        require(integer("min_train_steps") and self.min_train_steps >= 0, "min_train_steps", "an integer >= 0")
        require(integer("diagnostics_steps") and self.diagnostics_steps >= 0, "diagnostics_steps", "an integer >= 0")
        require(_is_finite_number(self.degenerate_check_fraction) and 0 <= self.degenerate_check_fraction < 1,
                "degenerate_check_fraction", "a float in [0, 1)")
        require(_is_finite_number(self.noisytune_intensity) and self.noisytune_intensity >= 0,
                "noisytune_intensity", "a finite float >= 0")
        require(self.child_tuning_mode is None or self.child_tuning_mode in CHILD_TUNING_MODES,
                "child_tuning_mode", "None, 'F' (task-free) or 'D' (task-driven)")
        require(_is_finite_number(self.child_tuning_p) and 0 < self.child_tuning_p <= 1,
                "child_tuning_p", "a float in (0, 1]")
        require(self.child_tuning_fisher_clip is None
                or (_is_finite_number(self.child_tuning_fisher_clip) and self.child_tuning_fisher_clip > 0),
                "child_tuning_fisher_clip", "None or a finite float > 0")
        if self.child_tuning_fisher_clip is not None and self.child_tuning_mode != "D":
            raise ValueError(
                f"child_tuning_fisher_clip={self.child_tuning_fisher_clip} clips the gradients of ChildTuning_D's "
                f"Fisher pass, but child_tuning_mode={self.child_tuning_mode!r}; allowed: child_tuning_fisher_clip "
                "only with child_tuning_mode='D', or None"
            )
        require(_is_finite_number(self.r3f_lambda) and self.r3f_lambda >= 0, "r3f_lambda", "a finite float >= 0")
        require(_is_finite_number(self.r3f_eps) and self.r3f_eps > 0, "r3f_eps", "a finite float > 0")
        require(self.r3f_noise_type in R3F_NOISE_TYPES, "r3f_noise_type", "'uniform' or 'normal'")
        require(self.weight_averaging is None or self.weight_averaging in WEIGHT_AVERAGING_MODES,
                "weight_averaging", "None, 'ema' or 'swa'")
        require(_is_finite_number(self.ema_decay) and 0 < self.ema_decay < 1, "ema_decay", "a float in (0, 1)")
        require(_is_finite_number(self.swa_start_fraction) and 0 <= self.swa_start_fraction < 1,
                "swa_start_fraction", "a float in [0, 1)")
        if self.weight_averaging is not None and self.load_best_model_at_end:
            raise ValueError(
                f"weight_averaging={self.weight_averaging!r} with load_best_model_at_end=True is refused: the "
                "checkpoints hold the training weights (what a resume continues), not the average the evaluation "
                "scored, so the 'best' model loaded would not be the one evaluated; drop one of them"
            )
        require(_is_finite_number(self.recadam_k) and self.recadam_k >= 0, "recadam_k", "a finite float >= 0")
        require(_is_finite_number(self.recadam_t0) and self.recadam_t0 >= 0, "recadam_t0", "a finite float >= 0")
        if self.recadam_k > 0 and not self.pretrained_weight_decay > 0:
            raise ValueError(
                f"recadam_k={self.recadam_k} anneals the pretrained weight decay, but pretrained_weight_decay="
                f"{self.pretrained_weight_decay}; allowed: recadam_k > 0 only with pretrained_weight_decay > 0 "
                "(it is the strength of the quadratic penalty), or recadam_k=0"
            )
        require(integer("restart_degenerate_runs") and self.restart_degenerate_runs >= 0, "restart_degenerate_runs",
                "an integer >= 0")
        if self.restart_degenerate_runs > 0 and not self.abort_degenerate_runs:
            raise ValueError(
                f"restart_degenerate_runs={self.restart_degenerate_runs} restarts a run the degenerate-run alarm "
                "stopped, but abort_degenerate_runs=False; allowed: restart_degenerate_runs > 0 only with "
                "abort_degenerate_runs=True (and degenerate_check_fraction > 0 for the loss test; the non-finite "
                "test is always on)"
            )
        # TrainingArguments leaves these to fail (or train to NaN) deep inside the optimizer.
        require(_is_finite_number(self.learning_rate) and self.learning_rate >= 0, "learning_rate", "a finite float >= 0")
        require(_is_finite_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a finite float >= 0")
        require(_is_finite_number(self.adam_beta1) and 0 <= self.adam_beta1 < 1, "adam_beta1", "a float in [0, 1)")
        require(_is_finite_number(self.adam_beta2) and 0 <= self.adam_beta2 < 1, "adam_beta2", "a float in [0, 1)")
        require(_is_finite_number(self.adam_epsilon) and self.adam_epsilon > 0, "adam_epsilon", "a finite float > 0")
        require(_is_finite_number(self.num_train_epochs) and self.num_train_epochs >= 0, "num_train_epochs",
                "a finite float >= 0")
        require(_is_finite_number(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps",
                "a float in [0, 1) (a ratio) or a number of steps >= 1")
        explicit_floor = self.stability_sources["min_train_steps"] == "explicit"
        if explicit_floor and 0 < self.max_steps < self.min_train_steps:
            raise ValueError(
                f"max_steps={self.max_steps} and min_train_steps={self.min_train_steps} were both given and "
                "contradict each other (max_steps < min_train_steps); drop one of them"
            )
        optim = getattr(self.optim, "value", self.optim)
        if self.uses_stable_optimizer and optim not in ADAMW_OPTIMS:
            needs = ", ".join(self._stable_optimizer_settings())
            raise ValueError(
                f"optim={optim!r} names another optimizer, but {needs} need StableAdamW (an AdamW); set "
                f"optim to one of {', '.join(ADAMW_OPTIMS)} or drop those settings"
            )

    def _stable_optimizer_settings(self) -> list[str]:
        settings = []
        if not self.adam_bias_correction:
            settings.append("adam_bias_correction=False")
        if self.layerwise_lr_decay < 1:
            settings.append(f"layerwise_lr_decay={self.layerwise_lr_decay}")
        if self.pretrained_weight_decay > 0:
            settings.append(f"pretrained_weight_decay={self.pretrained_weight_decay}")
        if self.recadam_k > 0:
            settings.append(f"recadam_k={self.recadam_k}")
        return settings

    # -- what the Trainer calls

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warmup updates for ``num_training_steps``.

        Under a ``stability_recipe`` a ratio is truncated, ``int(ratio · steps)``, as both papers' code does
        (``int(args.warmup_ratio * t_total)`` in asappresearch/revisit-bert-finetuning and
        uds-lsv/bert-stable-fine-tuning): 18 of 189 updates, where transformers rounds up to 19. Without a recipe
        the stock Trainer's rounding is kept. The Trainer calls this when it builds the schedule, before the
        first update, which is also where a missing :class:`~hf_stable_ft.StableFineTuningCallback` is caught.
        """
        self._check_callback_attached()
        self._check_stable_trainer()
        if self.stability_recipe is not None and 0 < self.warmup_steps < 1:
            return int(num_training_steps * self.warmup_steps)
        return super().get_warmup_steps(num_training_steps)

    def _check_callback_attached(self) -> None:
        needs = self.settings_needing_callback()
        if needs and not getattr(self, "_attached_callback", False):
            raise RuntimeError(
                f"{', '.join(needs)} are applied by StableFineTuningCallback, but no Trainer built with these "
                "arguments has it: pass callbacks=[StableFineTuningCallback()] and "
                "optimizer_cls_and_kwargs=stable_optimizer(args) to Trainer(...), or use StableTrainer."
            )

    def _check_stable_trainer(self) -> None:
        others = self._stable_trainer_only_settings()
        if others and not getattr(self, "_in_stable_trainer", False):
            raise RuntimeError(
                f"{', '.join(others)} are applied only by StableTrainer (averaged weights swapped in for evaluation "
                "and saving, stored in checkpoints; restarts rebuild the model with model_init inside train()); the "
                "stock Trainer would silently train without them. Use StableTrainer (hf_stable_ft.StableTrainer)."
            )
        needs = [s for s in self.settings_needing_stable_trainer() if s not in others]
        if needs and not getattr(self, "_in_stable_trainer", False):
            raise RuntimeError(
                f"{', '.join(needs)} changes the training loss, which only StableTrainer's compute_loss applies; the "
                "stock Trainer (with or without StableFineTuningCallback) would silently train without it. Use "
                "StableTrainer (hf_stable_ft.StableTrainer), or hf_stable_ft.r3f.r3f_loss in your own compute_loss."
            )

    # -- derived facts

    def settings_needing_stable_trainer(self) -> list[str]:
        """The settings only :class:`~hf_stable_ft.StableTrainer` applies: R3F (it changes the loss, which no
        callback can), weight averaging (evaluation and saving swap in the average) and restarts (``train()`` itself
        re-draws the run)."""
        return ([f"r3f_lambda={self.r3f_lambda}"] if self.r3f_lambda > 0 else []) + self._stable_trainer_only_settings()

    def _stable_trainer_only_settings(self) -> list[str]:
        """Weight averaging and restarts: they act on evaluation, saving and ``train()`` itself."""
        needs = []
        if self.weight_averaging is not None:
            needs.append(f"weight_averaging={self.weight_averaging!r}")
        if self.restart_degenerate_runs > 0:
            needs.append(f"restart_degenerate_runs={self.restart_degenerate_runs}")
        return needs

    def settings_needing_callback(self) -> list[str]:
        """The settings the stock Trainer ignores unless :class:`~hf_stable_ft.StableFineTuningCallback` runs."""
        needs = self._stable_optimizer_settings()
        for name in ("reinit_pooler", "abort_degenerate_runs"):
            if getattr(self, name):
                needs.append(f"{name}=True")
        for name in ("reinit_layers", "mixout_prob", "min_train_steps", "diagnostics_steps", "degenerate_check_fraction",
                     "noisytune_intensity", "child_tuning_mode"):
            if getattr(self, name):
                needs.append(f"{name}={getattr(self, name)}")
        if self.auto_reinit_layers:
            needs.append("reinit_layers=auto (recipe)")
        return needs

    def resolve_reinit_layers(self, num_layers: int) -> int:
        """The number of top blocks to re-initialise for an encoder of ``num_layers`` blocks."""
        return zhang2021_reinit_layers(num_layers) if self.auto_reinit_layers else self.reinit_layers

    def technique_settings(self) -> dict[str, Any]:
        """The resolved values of the settings that change what is trained (:data:`TECHNIQUE_FIELDS`)."""
        return {name: getattr(self, name) for name in TECHNIQUE_FIELDS}

    def resolved_settings(self) -> dict[str, dict[str, Any]]:
        """Every stabilisation setting and recipe-controlled field: ``{name: {"value": v, "source": s}}``, the
        source being ``"explicit"``, ``"recipe <name>"`` or ``"default"`` (fields outside the recipes:
        ``"explicit"`` when they differ from the default)."""
        names = list(RECIPE_FIELDS) + [
            f.name for f in fields(StableTrainingArguments)
            if f.name not in _BASE_FIELDS and f.name not in RECIPE_FIELDS
        ]
        resolved = {}
        for name in names:
            source = self.stability_sources.get(name)
            if source is None:
                default = next(f.default for f in fields(StableTrainingArguments) if f.name == name)
                source = "default" if getattr(self, name) == default else "explicit"
            resolved[name] = {"value": getattr(self, name), "source": source}
        if self.auto_reinit_layers:
            resolved["reinit_layers"]["source"] += AUTO_FROM_DEPTH
        return resolved

    def with_overrides(self, **overrides) -> "StableTrainingArguments":
        """A new, validated copy with ``overrides`` applied as explicit values.

        Fields the caller never gave (recipe-filled or default) are left unset, so a ``stability_recipe`` in
        ``overrides`` fills them anew; everything else is copied. Used for hyper-parameter-search trials.
        """
        unknown = sorted(set(overrides) - {f.name for f in fields(self) if f.init})
        if unknown:
            raise ValueError(f"unknown StableTrainingArguments fields: {unknown}")
        init = {}
        for f in fields(self):
            if not f.init or f.name in overrides:
                continue
            if f.name in RECIPE_FIELDS and self.stability_sources.get(f.name) != "explicit":
                continue
            init[f.name] = getattr(self, f.name)
        init.update(overrides)
        copy = type(self)(**init)
        if getattr(self, "_attached_callback", False):  # the same Trainer's callback applies the copy
            copy._attached_callback = True
        return copy

    def assign_from(self, other: "StableTrainingArguments") -> None:
        """Take every field of ``other`` (and where its values came from) in place: the Trainer's training loop
        holds on to this object, so a trial's values must land in it."""
        for f in fields(self):
            if f.init:
                setattr(self, f.name, getattr(other, f.name))
        self.stability_sources = dict(other.stability_sources)
        self.auto_reinit_layers = other.auto_reinit_layers

    @property
    def uses_stable_optimizer(self) -> bool:
        """Whether a setting needs :func:`~hf_stable_ft.stable_optimizer` (the stock optimizer ignores it)."""
        return bool(self._stable_optimizer_settings())

    @property
    def modifies_model(self) -> bool:
        """Whether a setting needs :class:`~hf_stable_ft.StableFineTuningCallback` at Trainer init."""
        return bool(
            self.reinit_pooler
            or self.reinit_layers > 0
            or self.auto_reinit_layers
            or self.pretrained_weight_decay > 0
            or self.mixout_prob > 0
            or self.noisytune_intensity > 0
            or self.child_tuning_mode == "D"
        )
