"""The papers' recipes: named presets of :class:`~hf_stable_ft.StableTrainingArguments` fields, with sources.

A :class:`Recipe` is a name, the citation its values come from, and the field values. ``reinit_layers="auto"``
is resolved from the model's depth when the model is prepared (:func:`zhang2021_reinit_layers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["Recipe", "RECIPES", "STABILITY_RECIPES", "get_recipe", "zhang2021_reinit_layers"]


def zhang2021_reinit_layers(num_layers: int) -> int:
    """Number of top blocks the ``zhang2021`` recipe re-initialises for an encoder of ``num_layers`` blocks.

    Zhang et al. (2021, §5) tune L ∈ {1, …, 6} on BERT-Large (24 blocks) and find gains mostly for small L,
    with too many re-drawn blocks hurting. Without a validation search we scale with depth as L ≈ depth/8
    (3 for 24 blocks, 2 for 12, 1 for 6), never fewer than 1. Tune it on your validation set when you can.
    """
    return max(1, round(num_layers / 8))


@dataclass(frozen=True)
class Recipe:
    """A named preset: ``fields`` maps ``StableTrainingArguments`` field names to values; ``source`` cites them."""

    name: str
    source: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "devlin2019",
            "Devlin et al. 2019 (BERT) as run by Mosbach et al. 2021 §3: BERTAdam (no bias correction), 3 epochs, "
            "lr 2e-5, 10% linear warmup then linear decay, weight decay 0.01, Adam eps 1e-6.",
            {"adam_bias_correction": False, "num_train_epochs": 3, "learning_rate": 2e-5, "warmup_steps": 0.1,
             "weight_decay": 0.01, "adam_epsilon": 1e-6},
        ),
        Recipe(
            "mosbach2021",
            "Mosbach et al. 2021 §6 'simple baseline': bias-corrected AdamW, lr 2e-5, 10% warmup, 20 epochs, weight "
            "decay 0.01, Adam eps 1e-6 (the eps of every config in uds-lsv/bert-stable-fine-tuning, the "
            "bias-corrected 20-epoch baseline included).",
            {"adam_bias_correction": True, "num_train_epochs": 20, "learning_rate": 2e-5, "warmup_steps": 0.1,
             "weight_decay": 0.01, "adam_epsilon": 1e-6},
        ),
        Recipe(
            "zhang2021",
            "Zhang et al. 2021 §3–5: debiased Adam, pooler + top-L re-init (L scaled to depth, see "
            "zhang2021_reinit_layers), longer training (>= 1000 updates, within their 200–3200 grid and never "
            "fewer than 3 epochs), lr 2e-5, 10% warmup, weight decay 0 and Adam eps 1e-8 (asappresearch/"
            "revisit-bert-finetuning sample_commands: --weight_decay 0, the default --adam_epsilon 1e-8).",
            {"adam_bias_correction": True, "reinit_pooler": True, "reinit_layers": "auto", "num_train_epochs": 3,
             "min_train_steps": 1000, "learning_rate": 2e-5, "warmup_steps": 0.1, "weight_decay": 0.0,
             "adam_epsilon": 1e-8},
        ),
    )
}

#: The older view of :data:`RECIPES`: name → ``{"source": ..., **fields}`` (kept one release).
STABILITY_RECIPES: dict[str, dict[str, Any]] = {
    name: {"source": recipe.source, **recipe.fields} for name, recipe in RECIPES.items()
}


def get_recipe(name: str) -> Recipe:
    """The :class:`Recipe` called ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"stability_recipe={name!r} is unknown; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
