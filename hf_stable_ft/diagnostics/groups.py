"""Layer groups of a model for the diagnostics, and their per-group norms on-device."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from ..architectures import parameter_depths, unwrap_model

__all__ = ["layer_groups", "group_order"]

logger = logging.getLogger("hf_stable_ft.diagnostics")


def layer_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters of ``unwrap_model(model)`` by layer group, bottom to top.

    Groups are those of :func:`~hf_stable_ft.architectures.parameter_depths`: ``embeddings``, ``layer.0`` …
    ``layer.{L-1}``, ``pooler``, ``head`` (empty groups left out). For a model without a layer-wise layout
    (an unknown architecture, ALBERT) the single group ``all`` holds every trainable parameter.
    """
    task_model = unwrap_model(model)
    named = [(name, param) for name, param in task_model.named_parameters() if param.requires_grad]
    try:
        depths = parameter_depths(task_model)
    except ValueError as error:
        logger.warning("diagnostics: no per-layer groups for this model (%s); reporting one group, 'all'", error)
        return {"all": named}
    ranked = sorted({(d.depth, d.group == "head", d.group) for d in depths.values()})  # pooler before head
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {group: [] for _, _, group in ranked}
    for name, param in named:
        groups[depths[name].group].append((name, param))
    return {group: params for group, params in groups.items() if params}


def group_order(names: Iterable[str]) -> list[str]:
    """Group names of :func:`layer_groups` bottom to top, as it orders them: ``embeddings``, ``layer.0`` …
    ``layer.{L-1}``, any other name (``all``) in the order given, ``pooler``, ``head``.

    For series read back from a file that lost the logged order (``runs.jsonl`` is written with sorted keys,
    which puts ``head`` before ``layer.0`` and ``layer.10`` before ``layer.2``).
    """
    def rank(position_name: tuple[int, str]) -> tuple[int, int, int]:
        position, name = position_name
        if name == "embeddings":
            return (0, 0, position)
        index = name[len("layer."):] if name.startswith("layer.") else ""
        if index.isdigit():
            return (1, int(index), position)
        return ({"pooler": 3, "head": 4}.get(name, 2), 0, position)

    unique = list(dict.fromkeys(names))
    return [name for _, name in sorted(enumerate(unique), key=rank)]


class _GroupNorms:
    """√(Σ‖t‖²) per group from per-tensor norms, on-device and without host synchronisation: one stack, one
    ``index_add_``, one ``sqrt``. The group-index tensors are built once and cached (building one from a Python
    list is a blocking host-to-device copy)."""

    def __init__(self, num_groups: int):
        self.num_groups = num_groups
        self._index: dict[tuple, torch.Tensor] = {}

    def __call__(self, norms: list[torch.Tensor], group_index: tuple[int, ...]) -> torch.Tensor:
        device = norms[0].device
        index = self._index.get((device, group_index))
        if index is None:
            index = self._index[(device, group_index)] = torch.tensor(group_index, device=device)
        stacked = torch.stack([n.to(device, torch.float32) for n in norms])
        squares = torch.zeros(self.num_groups, dtype=torch.float32, device=device)
        return squares.index_add_(0, index, stacked * stacked).sqrt()
