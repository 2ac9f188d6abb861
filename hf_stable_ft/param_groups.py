"""Named optimizer parameter groups: weight decay, layer-wise LR decay (LLRD) and pretrained weight decay.

Pure functions from a model to ``torch.optim`` parameter groups, in the spirit of timm's
``param_groups_layer_decay`` and PEFT's ``create_loraplus_optimizer``. Every group carries its own ``lr``
(HF's LambdaLR schedulers scale each group's lr by the same factor), a readable ``name`` and the
``param_names`` of its tensors. The head (top) group comes first, so the learning rate the Trainer logs
(group 0's) is the base one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import nn

from .architectures import parameter_depths, unwrap_model

__all__ = ["layerwise_lr_groups", "build_param_groups", "snapshot_parameters", "uses_weight_decay"]


def uses_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Ordinary weight decay is applied to matrices only; biases and normalisation weights (1-D) are
    exempt, as in BERT's original optimizer and ``Trainer.get_decay_parameter_names``."""
    return param.dim() >= 2


def snapshot_parameters(model: nn.Module, exclude: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable parameters of ``unwrap_model(model)`` (same device and dtype),
    keyed by name — the θ_pre anchors of pretrained weight decay."""
    excluded = set(exclude)
    return {
        name: param.detach().clone()
        for name, param in unwrap_model(model).named_parameters()
        if param.requires_grad and name not in excluded
    }


def build_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    layerwise_lr_decay: float = 1.0,
    pretrained_weight_decay: float = 0.0,
    pretrained_anchors: Mapping[str, torch.Tensor] | None = None,
    anchor_all_pretrained: bool = False,
) -> list[dict]:
    """Parameter groups combining ordinary weight decay, LLRD and pretrained weight decay.

    Args:
        model: the model (PEFT / DDP wrappers are unwrapped; only ``requires_grad`` parameters are grouped).
        lr: base learning rate (head and pooler).
        weight_decay: ordinary decoupled weight decay λ for matrices that are not decayed toward θ_pre.
        layerwise_lr_decay: d in Zhang et al.'s LLRD (2021, §6; Howard & Ruder 2018): the head and pooler
            train at ``lr``, the top block at ``lr·d``, the block below at ``lr·d²``, …, the embeddings at
            ``lr·d^(L+1)``. 1.0 disables it (and then no architecture knowledge is needed).
        pretrained_weight_decay: λ_pre of ``θ ← θ − lr·λ_pre·(θ − θ_pre)`` (Zhang et al. 2021, §6), applied
            instead of ordinary decay to the matrices listed in ``pretrained_anchors``; every other matrix
            (new head, re-initialised blocks) keeps ordinary ``weight_decay``.
        pretrained_anchors: name → θ_pre for the parameters that came from the checkpoint and were not
            re-initialised (see :func:`snapshot_parameters`). Required when ``pretrained_weight_decay > 0``.
        anchor_all_pretrained: RecAdam's grouping (Chen et al. 2020; ``run_glue_with_RecAdam.py`` of
            Sanyuan-Chen/RecAdam): *every* tensor in ``pretrained_anchors`` is decayed toward θ_pre — the 1-D ones
            (biases, LayerNorm weights) in ``pretrained_no_decay`` groups without ordinary weight decay — and the
            anchored matrices keep the ordinary ``weight_decay`` as well. False (Zhang et al.'s PriorWD): matrices
            only, the pull toward θ_pre replacing their ordinary decay.

    Returns:
        Groups ordered top (head) to bottom (embeddings), each with keys ``params``, ``param_names``,
        ``name``, ``lr``, ``weight_decay``, ``pretrained_weight_decay`` and, for pretrained-decay groups,
        ``anchors`` (a list aligned with ``params``; :func:`hf_stable_ft.stable_optimizer` hands them to
        :class:`~hf_stable_ft.StableAdamW`, which keeps them out of its state dict).
    """
    if not 0 < layerwise_lr_decay <= 1:
        raise ValueError(f"layerwise_lr_decay must be in (0, 1], got {layerwise_lr_decay}")
    if pretrained_weight_decay < 0:
        raise ValueError(f"pretrained_weight_decay must be >= 0, got {pretrained_weight_decay}")
    if pretrained_weight_decay > 0 and pretrained_anchors is None:
        raise ValueError("pretrained_weight_decay > 0 needs pretrained_anchors (see snapshot_parameters)")
    anchors = pretrained_anchors if pretrained_weight_decay > 0 else {}

    named = [(n, p) for n, p in unwrap_model(model).named_parameters() if p.requires_grad]
    if layerwise_lr_decay < 1:
        depths = parameter_depths(model)
        top = next(iter(depths.values())).num_layers + 1
        position = {name: (top - depths[name].depth, depths[name].group) for name, _ in named}
    else:
        position = {name: (0, "all") for name, _ in named}

    groups: dict[tuple[int, str, str], dict] = {}
    for name, param in named:
        distance, layer_group = position[name]
        decays = uses_weight_decay(name, param)
        if name in anchors and decays:
            kind = "pretrained_decay"
        elif name in anchors and anchor_all_pretrained:
            kind = "pretrained_no_decay"
        elif decays:
            kind = "decay"
        else:
            kind = "no_decay"
        anchored = kind.startswith("pretrained")
        group = groups.setdefault(
            (distance, layer_group, kind),
            {
                "name": f"{layer_group}.{kind}" if layer_group != "all" else kind,
                "params": [],
                "param_names": [],
                "lr": lr * layerwise_lr_decay**distance,
                "weight_decay": weight_decay if kind == "decay" or (kind == "pretrained_decay" and anchor_all_pretrained)
                else 0.0,
                "pretrained_weight_decay": pretrained_weight_decay if anchored else 0.0,
            },
        )
        group["params"].append(param)
        group["param_names"].append(name)
        if anchored:
            anchor = anchors[name]
            if anchor.shape != param.shape:
                raise ValueError(f"anchor of {name!r} has shape {tuple(anchor.shape)}, parameter {tuple(param.shape)}")
            group.setdefault("anchors", []).append(anchor.to(device=param.device, dtype=param.dtype))
    kind_order = {"decay": 0, "pretrained_decay": 1, "pretrained_no_decay": 2, "no_decay": 3}
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], kind_order[k[2]]))]


def layerwise_lr_groups(model: nn.Module, lr: float, decay: float, weight_decay: float = 0.0) -> list[dict]:
    """LLRD parameter groups (Zhang et al. 2021, §6): head and pooler at ``lr``, block ``L−k`` at
    ``lr·decay^(k+1)``, embeddings at ``lr·decay^(L+1)``; matrices get ``weight_decay``, 1-D tensors none.

    Shared encoder-level modules are placed explicitly by :mod:`hf_stable_ft.architectures`
    (e.g. DeBERTa's relative embeddings with the embeddings, ModernBERT's final norm with the top block).
    """
    return build_param_groups(model, lr, weight_decay=weight_decay, layerwise_lr_decay=decay)
