"""Sweep recipes: a preset (:data:`~hf_stable_ft.RECIPES`), ``stock``, or a variant ``label=base:field=value:...``.

One parser for variants: each ``field=value`` is converted exactly as ``--field value`` would be
(:func:`hf_stable_ft.field_values.field_value`), and the variant's arguments are built once to validate them.
"""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any

from transformers import TrainingArguments

from .args import StableTrainingArguments
from .field_values import field_value
from .recipes import RECIPES

__all__ = ["STOCK", "RecipeSpec", "build_arguments", "parse_recipe"]

STOCK = "stock"

_STABLE_FIELDS = {f.name for f in dataclasses.fields(StableTrainingArguments)} - {
    f.name for f in dataclasses.fields(TrainingArguments)
}


@dataclasses.dataclass(frozen=True)
class RecipeSpec:
    """A recipe of a sweep: a label, an optional preset and explicit field values on top."""

    label: str
    preset: str | None
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def is_stock(self) -> bool:
        return self.preset == STOCK

    def fields(self) -> dict[str, Any]:
        values = dict(self.overrides)
        if self.preset not in (None, STOCK):
            values["stability_recipe"] = self.preset
        return values


def parse_recipe(text: str) -> RecipeSpec:
    """Parse ``name`` or ``label=base:field=value:...`` into a :class:`RecipeSpec` (validated early)."""
    known = sorted(RECIPES) + [STOCK]
    if "=" not in text.split(":", 1)[0]:
        if text not in known:
            raise ValueError(
                f"unknown recipe {text!r}; known recipes: {', '.join(known)}, or a variant "
                "'label=base:field=value:...' (base one of those or 'none')"
            )
        return RecipeSpec(text, text)
    label, rest = text.split("=", 1)
    base, *assignments = rest.split(":")
    if base not in known + ["none"]:
        raise ValueError(f"recipe {label!r}: unknown base {base!r}; known: {', '.join(known)}, none")
    overrides = []
    for assignment in assignments:
        if "=" not in assignment:
            raise ValueError(f"recipe {label!r}: {assignment!r} is not field=value")
        name, value = assignment.split("=", 1)
        if base == STOCK and name in _STABLE_FIELDS:
            raise ValueError(f"recipe {label!r}: the stock Trainer has no {name!r}; use a stable base")
        typed = None if value.lower() in ("none", "null") else value
        overrides.append((name, field_value(name, typed, where=f"recipe {label!r}: {name}")))
    spec = RecipeSpec(label, None if base == "none" else base, tuple(overrides))
    build_arguments(spec, {"output_dir": tempfile.gettempdir(), "report_to": "none"})  # validate now
    return spec


def build_arguments(spec: RecipeSpec, common: dict[str, Any]) -> TrainingArguments:
    """The arguments of one run of ``spec`` with the shared ``common`` fields (the recipe's own values win)."""
    if spec.is_stock:
        stock_common = {k: v for k, v in common.items() if k not in _STABLE_FIELDS}
        return TrainingArguments(**stock_common, **dict(spec.overrides))
    return StableTrainingArguments(**{**common, **spec.fields()})


