"""NoisyTune (Wu et al., ACL 2022): perturb the pretrained parameters once, before fine-tuning.

Wu, Wu, Qi and Huang, *NoisyTune: A Little Noise Can Help You Finetune Pretrained Language Models Better*
(ACL 2022, eq. 1). Every pretrained parameter tensor W_i is perturbed with uniform noise scaled by its own
standard deviation::

    W̃_i = W_i + U(−λ/2, λ/2) · std(W_i)

with intensity λ (the paper's default 0.15). The authors' released snippet is
``W += (torch.rand(W.size()) - 0.5) * noise_lambda * torch.std(W)`` over ``model.named_parameters()``: one
noise draw per element, ``std`` the sample standard deviation (``torch.std``, Bessel-corrected) of the whole
tensor, biases and LayerNorm weights included. We do the same, with three differences, each stated:

* only **pretrained** tensors are perturbed: those of the encoder (``model.base_model_prefix``, e.g. ``bert.``)
  that were not re-initialised. The new task head and re-drawn blocks are random already; the paper perturbs
  "the PLM" (its snippet runs on the loaded model, before any head is meaningful). PEFT adapters (LoRA A/B) are
  not pretrained either and are left alone.
* the noise comes from a **private** ``torch.Generator`` seeded with ``seed`` and is drawn on the CPU in float32
  (then moved to each tensor's device and dtype), like :func:`hf_stable_ft.reinit_top_layers`: the global RNG
  (data order, dropout) is untouched and the perturbed model is the same on every device and DDP rank.
* tensors with fewer than 2 elements have no sample std and are left unchanged (``torch.std`` is NaN there).

Cost: one pass over the weights at preparation; nothing per step.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable

import torch
from torch import nn

from .architectures import unwrap_model

__all__ = ["noisytune", "pretrained_parameter_names"]


def _adapter_prefixes(model: nn.Module) -> tuple[str, ...]:
    tuner = getattr(sys.modules.get("peft.tuners.tuners_utils"), "BaseTunerLayer", None)
    if tuner is None:
        return ()
    return tuple(f"{name}.{attr}." if name else f"{attr}." for name, sub in model.named_modules()
                 if isinstance(sub, tuner) for attr in sub.adapter_layer_names)


def pretrained_parameter_names(model: nn.Module, exclude: Iterable[str] = ()) -> list[str]:
    """Names (as in ``unwrap_model(model).named_parameters()``) of the parameters NoisyTune perturbs by default:
    everything under ``model.base_model_prefix`` (the whole model when it has none), minus ``exclude`` (e.g. the
    re-initialised parameters) and PEFT adapter weights, in ``named_parameters`` order."""
    model = unwrap_model(model)
    prefix = getattr(model, "base_model_prefix", "")
    prefix = f"{prefix}." if prefix and isinstance(getattr(model, prefix, None), nn.Module) else ""
    excluded = set(exclude)
    adapters = _adapter_prefixes(model)
    return [name for name, _ in model.named_parameters()
            if name.startswith(prefix) and name not in excluded and not (adapters and name.startswith(adapters))]


@torch.no_grad()
def noisytune(
    model: nn.Module,
    intensity: float = 0.15,
    seed: int | None = None,
    *,
    parameters: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> list[str]:
    """Apply NoisyTune in place: ``W ← W + (U − 0.5) · λ · std(W)``, U ~ Uniform[0, 1) per element.

    Args:
        model: any ``nn.Module`` (PEFT / DDP wrappers are unwrapped).
        intensity: λ ≥ 0 (paper default 0.15); 0 changes nothing.
        seed: seed of the private CPU generator the noise is drawn from (``None``: a fresh unseeded generator).
        parameters: names of the tensors to perturb; default :func:`pretrained_parameter_names` (the encoder's).
        exclude: names never perturbed (e.g. re-initialised parameters).

    Returns:
        The names of the perturbed tensors, in the order their noise was drawn (``named_parameters`` order).
    """
    if not (isinstance(intensity, (int, float)) and not isinstance(intensity, bool) and math.isfinite(intensity)
            and intensity >= 0):
        raise ValueError(f"noisytune intensity={intensity!r} is invalid; allowed: a finite float >= 0")
    model = unwrap_model(model)
    named = dict(model.named_parameters())
    if parameters is None:
        names = pretrained_parameter_names(model, exclude=exclude)
    else:
        wanted, excluded = list(parameters), set(exclude)
        unknown = [n for n in wanted if n not in named]
        if unknown:
            raise ValueError(f"noisytune: {type(model).__name__} has no parameters {unknown[:5]}")
        order = {n: i for i, n in enumerate(named)}
        names = sorted((n for n in set(wanted) if n not in excluded), key=order.__getitem__)
    if intensity == 0:
        return []
    generator = torch.Generator().manual_seed(seed) if seed is not None else torch.Generator()
    perturbed = []
    for name in names:
        param = named[name]
        if param.numel() < 2 or not param.is_floating_point():
            continue
        uniform = torch.rand(param.shape, dtype=torch.float32, generator=generator)
        std = param.detach().float().std().cpu()
        noise = (uniform - 0.5) * intensity * std
        param.add_(noise.to(device=param.device, dtype=param.dtype))
        perturbed.append(name)
    return perturbed
