"""StableTrainingArguments: every stabilisation technique of the papers as a switch on ``TrainingArguments``.

The fields are validated at construction; :class:`~hf_stable_ft.StableFineTuningCallback` and
:func:`~hf_stable_ft.stable_optimizer` read them. Named recipes (``stability_recipe``) fill in the papers'
settings; any field the user passes explicitly wins over the recipe.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from transformers import TrainingArguments

__all__ = ["StableTrainingArguments", "STABILITY_RECIPES", "zhang2021_reinit_layers"]


def zhang2021_reinit_layers(num_layers: int) -> int:
    """Number of top blocks the ``zhang2021`` recipe re-initialises for an encoder of ``num_layers`` blocks.

    Zhang et al. (2021, §5) tune L ∈ {1, …, 6} on BERT-Large (24 blocks) and find gains mostly for small L,
    with too many re-drawn blocks hurting. Without a validation search we scale with depth as L ≈ depth/8
    (3 for 24 blocks, 2 for 12, 1 for 6), never fewer than 1. Tune it on your validation set when you can.
    """
    return max(1, round(num_layers / 8))


# Each recipe: field -> value. A value of ``"auto"`` for reinit_layers is resolved from the model depth by
# the callback (see zhang2021_reinit_layers). Sources are in each entry's "source" key (not a field).
STABILITY_RECIPES: dict[str, dict[str, Any]] = {
    "devlin2019": {
        "source": "Devlin et al. 2019 (BERT) as run by Mosbach et al. 2021 §3: BERTAdam (no bias correction), "
        "3 epochs, lr 2e-5, 10% linear warmup then linear decay, weight decay 0.01, Adam eps 1e-6.",
        "adam_bias_correction": False,
        "num_train_epochs": 3,
        "learning_rate": 2e-5,
        "warmup_steps": 0.1,
        "weight_decay": 0.01,
        "adam_epsilon": 1e-6,
    },
    "mosbach2021": {
        "source": "Mosbach et al. 2021 §6 'simple baseline': bias-corrected AdamW, lr 2e-5, 10% warmup, "
        "20 epochs, weight decay 0.01.",
        "adam_bias_correction": True,
        "num_train_epochs": 20,
        "learning_rate": 2e-5,
        "warmup_steps": 0.1,
        "weight_decay": 0.01,
    },
    "zhang2021": {
        "source": "Zhang et al. 2021 §3–5: debiased Adam, pooler + top-L re-init (L scaled to depth, see "
        "zhang2021_reinit_layers), longer training (>= 1000 updates, within their 200–3200 grid and never "
        "fewer than 3 epochs), lr 2e-5, 10% warmup, weight decay 0.01.",
        "adam_bias_correction": True,
        "reinit_pooler": True,
        "reinit_layers": "auto",
        "num_train_epochs": 3,
        "min_train_steps": 1000,
        "learning_rate": 2e-5,
        "warmup_steps": 0.1,
        "weight_decay": 0.01,
    },
}


def _field_default(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


@dataclass
class StableTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the stabilisation techniques of Zhang et al. (ICLR 2021) and
    Mosbach et al. (ICLR 2021).

    Defaults that differ from ``TrainingArguments``: none — with no new field set, training is exactly the
    stock Trainer's AdamW run. Set ``stability_recipe`` for the papers' settings.
    """

    adam_bias_correction: bool = field(
        default=True,
        metadata={
            "help": "Bias-correct Adam's moment estimates. False gives BERTAdam (Devlin et al. 2019), whose "
            "over-large early updates cause degenerate runs (Zhang et al. 2021 sec. 3; Mosbach et al. 2021)."
        },
    )
    reinit_pooler: bool = field(
        default=False,
        metadata={"help": "Re-draw the pooler from N(0, initializer_range^2) before fine-tuning (Zhang et al. 2021 sec. 5)."},
    )
    reinit_layers: int = field(
        default=0,
        metadata={
            "help": "Re-draw the top L transformer blocks: weights N(0, initializer_range^2), biases 0, "
            "LayerNorm 1/0 (Zhang et al. 2021 sec. 5). 0 disables."
        },
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
    min_train_steps: int = field(
        default=0,
        metadata={
            "help": "Train for at least this many optimizer updates whatever num_train_epochs says; the "
            "learning-rate schedule uses the final count (Zhang et al. 2021 sec. 5, 'training longer')."
        },
    )
    stability_recipe: str | None = field(
        default=None,
        metadata={
            "help": "Named preset of the fields above and the usual hyper-parameters: "
            + ", ".join(STABILITY_RECIPES)
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

    def __new__(cls, *args, **kwargs):
        instance = super().__new__(cls)
        # Which fields the caller set, so a recipe never overrides them (the dataclass __init__ cannot tell a
        # default from an explicit value equal to it).
        explicit = frozenset(kwargs) | {f.name for f, _ in zip(fields(cls), args)}
        init_fields = [f for f in fields(cls) if f.init]
        if len(explicit) == len(init_fields):
            # HfArgumentParser.parse_args_into_dataclasses passes every field: only values that differ from the
            # defaults can have been chosen, so a recipe still fills in the rest.
            values = dict(zip((f.name for f in fields(cls)), args), **kwargs)
            explicit = frozenset(f.name for f in init_fields if values.get(f.name, MISSING) != _field_default(f))
        instance._explicit_fields = explicit
        return instance

    def __post_init__(self):
        self._apply_recipe()
        self._validate_stability_fields()
        super().__post_init__()

    def _apply_recipe(self) -> None:
        self.auto_reinit_layers = False
        if self.stability_recipe is None:
            return
        if self.stability_recipe not in STABILITY_RECIPES:
            raise ValueError(
                f"stability_recipe={self.stability_recipe!r} is unknown; known recipes: {', '.join(STABILITY_RECIPES)}"
            )
        explicit = getattr(self, "_explicit_fields", frozenset())
        for name, value in STABILITY_RECIPES[self.stability_recipe].items():
            if name == "source" or name in explicit:
                continue
            if name == "reinit_layers" and value == "auto":
                self.auto_reinit_layers = True
                continue
            setattr(self, name, value)

    def _validate_stability_fields(self) -> None:
        def require(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid; allowed: {allowed}")

        require(isinstance(self.reinit_layers, int) and self.reinit_layers >= 0, "reinit_layers", "an integer >= 0")
        require(0 < self.layerwise_lr_decay <= 1, "layerwise_lr_decay", "a float in (0, 1]")
        require(self.pretrained_weight_decay >= 0, "pretrained_weight_decay", "a float >= 0")
        require(0 <= self.mixout_prob < 1, "mixout_prob", "a float in [0, 1)")
        require(isinstance(self.min_train_steps, int) and self.min_train_steps >= 0, "min_train_steps", "an integer >= 0")
        require(isinstance(self.diagnostics_steps, int) and self.diagnostics_steps >= 0, "diagnostics_steps", "an integer >= 0")
        require(0 <= self.degenerate_check_fraction < 1, "degenerate_check_fraction", "a float in [0, 1)")

    def resolve_reinit_layers(self, num_layers: int) -> int:
        """The number of top blocks to re-initialise for an encoder of ``num_layers`` blocks."""
        return zhang2021_reinit_layers(num_layers) if self.auto_reinit_layers else self.reinit_layers

    @property
    def uses_stable_optimizer(self) -> bool:
        """Whether a setting needs :func:`~hf_stable_ft.stable_optimizer` (the stock optimizer ignores it)."""
        return (not self.adam_bias_correction) or self.layerwise_lr_decay < 1 or self.pretrained_weight_decay > 0

    @property
    def modifies_model(self) -> bool:
        """Whether a setting needs :class:`~hf_stable_ft.StableFineTuningCallback` at Trainer init."""
        return (
            self.reinit_pooler
            or self.reinit_layers > 0
            or self.auto_reinit_layers
            or self.pretrained_weight_decay > 0
            or self.mixout_prob > 0
        )
