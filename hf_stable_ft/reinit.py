"""Re-initialisation of the pooler and the top-L transformer blocks (Zhang et al. 2021, §5).

Zhang et al. observe that the top blocks of a pretrained encoder are specialised to the pretraining task
and transfer poorly; re-drawing them (and the pooler) from the original initialisation distribution speeds
up and stabilises few-sample fine-tuning. Following BERT's initialisation: weights of Linear and
Embedding modules ~ N(0, initializer_range²), biases 0, normalisation weights 1 and biases 0. A family that
initialises otherwise says so in its :class:`~hf_stable_ft.architectures.EncoderLayout` (ModernBERT: a normal
truncated at ±``initializer_cutoff_factor``·std, and std ``initializer_range/√(2·num_hidden_layers)`` for the
attention and MLP output projections and the head's dense layer, as its ``_init_weights``), and is re-drawn so.

``torch.nn.init`` is used directly instead of ``model._init_weights``: transformers 5 marks every weight
loaded by ``from_pretrained`` with ``_is_hf_initialized`` and ``_init_weights`` then silently skips it.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from .architectures import get_encoder_layout, transformer_blocks, unwrap_model

__all__ = ["reinit_top_layers", "reinit_module_"]


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__.endswith(("LayerNorm", "RMSNorm", "Norm"))


@torch.no_grad()
def _normal_(tensor: torch.Tensor, std: float, generator: torch.Generator | None, cutoff: float | None = None) -> None:
    # Draw on the CPU in float32 so the result is the same whatever the device and dtype of the model.
    values = torch.empty(tensor.shape, dtype=torch.float32)
    if cutoff is None:
        values.normal_(0.0, std, generator=generator)
    else:
        nn.init.trunc_normal_(values, 0.0, std, -cutoff * std, cutoff * std, generator=generator)
    tensor.copy_(values)


@torch.no_grad()
def reinit_module_(module: nn.Module, std: float, generator: torch.Generator | None = None, prefix: str = "", *,
                   out_std: float | None = None, out_projections: tuple[str, ...] = (),
                   cutoff: float | None = None) -> list[str]:
    """Re-draw every parameter of ``module`` as BERT initialises it and return their names.

    Linear / Embedding / Conv weights ~ N(0, std²) (the padding row of an Embedding is zeroed again), biases 0,
    normalisation weights 1. A parameter none of these rules covers raises ``ValueError``: silently keeping a
    pretrained tensor inside a "re-initialised" block would corrupt the experiment.

    Families that initialise otherwise (:class:`~hf_stable_ft.architectures.EncoderLayout`): the weights of the
    modules whose dotted names end in one of ``out_projections`` are drawn with ``out_std``, and with ``cutoff``
    every weight comes from a normal truncated at ±``cutoff``·std.
    """
    names: list[str] = []
    # PEFT tuner layers (LoRA ...) inside the block: their adapters keep their own init (LoRA B = 0, so the adapter
    # starts as a no-op), as when the block is re-drawn before get_peft_model(); the wrapped base weights are re-drawn.
    tuner = getattr(sys.modules.get("peft.tuners.tuners_utils"), "BaseTunerLayer", ())
    adapters = tuple(f"{sub_name}.{attr}." if sub_name else f"{attr}." for sub_name, sub in module.named_modules(prefix=prefix)
                     if tuner and isinstance(sub, tuner) for attr in sub.adapter_layer_names)
    for sub_name, sub in module.named_modules(prefix=prefix):
        own = dict(sub.named_parameters(recurse=False))
        if not own:
            continue
        for param_name, param in own.items():
            full = f"{sub_name}.{param_name}" if sub_name else param_name
            if full.startswith(adapters):
                continue
            if param_name == "bias":
                param.zero_()
            elif _is_norm(sub) and param_name == "weight":
                param.fill_(1.0)
            elif param_name == "weight" and isinstance(sub, (nn.Linear, nn.Embedding, nn.Conv1d)):
                scaled = out_std is not None and sub_name.endswith(out_projections) and bool(out_projections)
                _normal_(param, out_std if scaled else std, generator, cutoff)
                padding_idx = getattr(sub, "padding_idx", None)
                if isinstance(sub, nn.Embedding) and padding_idx is not None:
                    param[padding_idx].zero_()
            else:
                raise ValueError(
                    f"reinit does not know how to re-initialise {full!r} ({type(sub).__name__}.{param_name}); "
                    "extend hf_stable_ft.reinit.reinit_module_"
                )
            names.append(full)
    return names


def _initializer_range(model: nn.Module) -> float:
    config = getattr(model, "config", None)
    std = getattr(config, "initializer_range", None)
    if std is None:
        raise ValueError(f"{type(model).__name__}.config has no initializer_range; pass std= explicitly")
    return float(std)


def reinit_top_layers(
    model: nn.Module,
    num_layers: int,
    reinit_pooler: bool = True,
    *,
    std: float | None = None,
    seed: int | None = None,
) -> list[str]:
    """Re-initialise the pooler and the top ``num_layers`` transformer blocks of ``model`` in place.

    Zhang et al. (2021, §5, "Re-initializing pretrained layers"): the pooler and the top L blocks are
    re-drawn from N(0, initializer_range²) with zero biases and unit LayerNorm weights. Works on any model
    of :data:`hf_stable_ft.architectures.ENCODER_LAYOUTS` (PEFT / DDP wrappers are unwrapped first); for
    families without a separate pooler, the module that plays its role (e.g. RoBERTa's ``classifier.dense``)
    is re-drawn.

    Args:
        model: a sequence-classification (or other task) model.
        num_layers: L, the number of top blocks to re-draw (0 re-draws none).
        reinit_pooler: also re-draw the pooler.
        std: standard deviation; defaults to ``model.config.initializer_range``.
        seed: seed of a private generator, so re-init is reproducible without touching the global RNG
            (the Trainer's data order and dropout stay exactly as without re-init).

    Returns:
        The names (as in ``unwrap_model(model).named_parameters()``) of the re-initialised parameters.
    """
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    model = unwrap_model(model)
    std = _initializer_range(model) if std is None else std
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    layout = get_encoder_layout(model, need_layerwise=num_layers > 0, purpose="top-layer re-initialisation")
    family_init = _family_init(model, layout, std)
    names: list[str] = []
    if num_layers:
        blocks = transformer_blocks(model)
        if num_layers > len(blocks):
            raise ValueError(
                f"reinit_layers={num_layers} but {type(model).__name__} has only {len(blocks)} transformer blocks "
                f"(allowed: 0..{len(blocks)})"
            )
        for index in range(len(blocks) - num_layers, len(blocks)):
            names += reinit_module_(blocks[index], std, generator, prefix=f"{layout.layers}.{index}", **family_init)
    if reinit_pooler:
        pooler_paths = [p for p in layout.pooler if _has_submodule(model, p)]
        if not pooler_paths:
            raise ValueError(f"reinit_pooler=True but {type(model).__name__} has none of {list(layout.pooler)}")
        for path in pooler_paths:
            names += reinit_module_(model.get_submodule(path), std, generator, prefix=path, **family_init)
    return names


def _family_init(model: nn.Module, layout, std: float) -> dict:
    """The :func:`reinit_module_` keywords of a family that does not initialise as BERT does (its layout says)."""
    config = getattr(model, "config", None)
    init: dict = {}
    if layout.out_projections:
        layers = getattr(config, "num_hidden_layers", None)
        if not layers:
            raise ValueError(f"{type(model).__name__}.config has no num_hidden_layers, which sets the std of its "
                             f"output projections {list(layout.out_projections)}")
        init.update(out_std=std / (2.0 * layers) ** 0.5, out_projections=layout.out_projections)
    if layout.truncated_init:
        factor = getattr(config, "initializer_cutoff_factor", None)
        init["cutoff"] = float(factor) if factor is not None else 3.0
    return init


def _has_submodule(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False
