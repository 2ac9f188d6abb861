"""Mixout (Lee, Cho & Kang, ICLR 2020) as plain functions on any ``nn.Module``.

Mixout regularises fine-tuning toward the weights it started from. In training mode each mixed
``nn.Linear`` uses, instead of its weight ``W``,

    W' = ((1 − M)·W₀ + M·W − p·W₀) / (1 − p),        M ~ Bernoulli(1 − p),

which is the same as the cheaper ``W' = W₀ + M·(W − W₀)/(1 − p)``: with probability ``p`` an entry is
replaced by its starting value ``W₀`` and the kept entries are rescaled so that ``E[W'] = W``. The gradient
reaching ``W`` is ``M/(1 − p) ⊙ ∂L/∂W'``. In evaluation mode the layer is exactly ``F.linear(x, W, b)``.
Mixout replaces dropout, so by default every dropout of the model is switched off while it is applied.

What this module does, and the choices it makes (the reference is the authors' ``mixout`` repository,
``MixLinear``, as used by Zhang et al. 2021's ``--mixout`` runs, which we reproduce):

* **Targets**: every ``nn.Linear`` of the model — encoder, pooler and task head — and every transformers
  ``Conv1D`` (GPT-2-style models' linear layers: ``y = x @ W + b`` with ``W`` of shape ``(in, out)``; mixed
  exactly as the ``nn.Linear`` with weight ``Wᵀ``, see :class:`MixoutConv1D`), unless narrowed with
  ``include``/``exclude`` glob patterns on module names. Embeddings, norms and real convolutions are never
  mixed (the reference mixes Linear layers only; it predates GPT-2 fine-tuning). Without Conv1D support a
  GPT-2 model would get Mixout on its ``score`` head alone while all its dropout is switched off.
* **W₀** is a copy of each weight taken when :func:`apply_mixout` runs. Call it after any re-initialisation
  (re-initialised top layers and the freshly initialised head are then mixed toward their *new* random
  init, exactly as in the reference, where Mixout was applied after ``--reinit_layers``) and before a
  checkpoint is loaded: a resumed run keeps W₀ = the weights fine-tuning started from.
  W₀ is a non-persistent buffer (``mixout_target``): it follows ``.to(device/dtype)`` but is never saved.
* **Bias** is not mixed (the reference's ``MixLinear`` mixes only the weight).
* **Mask** (``mask=``): ``"per_input"`` (default) draws one Bernoulli variable per *input feature* per
  forward call and shares it across output units — column ``j`` of ``W`` is mixed as a whole. This is the
  paper's neuron-level picture (its Fig. 1: the parameters going out of a "dropped" neuron are replaced by
  their pretrained values, the way dropout zeroes them) and what the reference code does; it is also the
  cheapest (a mask of ``in_features`` values; for a Conv1D, one draw per row of its ``(in, out)`` weight).
  ``"per_element"`` draws one variable per weight entry (the per-parameter definition taken literally,
  "mixconnect"). A module called several times per forward
  (ALBERT's shared layer) has one W₀ and a fresh mask at every call.
* **Gradient**: computed exactly, ``M/(1 − p) ⊙ ∂L/∂W'``. (The reference's hand-written backward,
  ``grad_output * noise``, omits the ``1/(1 − p)`` factor: its weight gradient is ``(1 − p)`` times the true
  one, 0.9× at p = 0.1, 0.3× at p = 0.7 — see tests/test_reference_differences.py. Adam(W) is invariant to a
  constant gradient scale up to its ε, so results barely differ; SGD or gradient clipping would see it.)
* **Input shapes**: any ``(..., in_features)`` input ``nn.Linear`` accepts, including an unbatched 1-D one.
* **Memory and speed**: the overhead is one copy of the mixed weights (W₀) plus, for ``"per_element"``, one
  byte per weight entry for the saved masks. Outside autocast, W' is rebuilt in backward (a custom autograd
  function) instead of being kept alive per layer until backward; under autocast ``F.linear`` keeps a
  half-precision cast of its weight for backward anyway (a plain layer does too), so the differentiable
  formula is used as is and the backward runs without Python. Masks are drawn on the weight's device.
* **Dropout** (``disable_dropout=True``): ``p`` of every ``nn.Dropout``-family module of the model is set
  to 0, and so is every float attribute whose name contains ``dropout`` (transformers passes some
  attention-dropout rates as floats, e.g. ModernBERT's ``attention_dropout``; BERT-style models read
  ``self.dropout.p`` of an ``nn.Dropout``). Originals are recorded and restored by :func:`remove_mixout`.
  ``model.config`` is never modified, so a saved model keeps its original dropout settings.
* **Saving**: parameter names and ``state_dict`` keys are unchanged, so ``save_pretrained`` /
  ``Trainer.save_model`` write a stock checkpoint that ``AutoModel*.from_pretrained`` loads without
  ``hf_stable_ft`` installed.
* **PEFT** models are refused (see :func:`apply_mixout`).
* **Gradient checkpointing**: the mask is redrawn in the recomputed forward; with the default global RNG
  ``torch.utils.checkpoint`` restores the RNG state so the masks match. With a custom ``generator`` they
  would not: do not combine the two.

Reference: C. Lee, K. Cho, W. Kang. "Mixout: Effective Regularization to Finetune Large-scale Pretrained
Language Models." ICLR 2020. The paper searches p ∈ {0.1, …, 0.9}.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .architectures import unwrap_model

__all__ = [
    "MIXOUT_MASKS",
    "MixoutConv1D",
    "MixoutLinear",
    "apply_mixout",
    "has_mixout",
    "mixout",
    "mixout_module_names",
    "remove_mixout",
]

MIXOUT_MASKS = ("per_input", "per_element")

# Attribute where a module keeps the dropout values disable_dropout overwrote: {attribute name: original}.
_DROPOUT_RECORD = "_hf_stable_ft_mixout_dropout"


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise ValueError(f"Mixout probability p must be a float in [0, 1), got {p!r}")
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(
            f"Mixout probability p must be in [0, 1), got {p}: p is the chance that a weight is replaced by its "
            "starting value; p = 1 would freeze the layer at W₀ and the 1/(1 − p) rescaling is undefined"
        )
    return p


def _check_mask(mask: str) -> str:
    if mask not in MIXOUT_MASKS:
        raise ValueError(f"mask must be one of {MIXOUT_MASKS}, got {mask!r}")
    return mask


_HALF = (torch.float16, torch.bfloat16)


def _work_dtype(weight: torch.Tensor) -> torch.dtype:
    """Mixing is done in float32 for half-precision weights (1/(1 − p) is not exact in bfloat16)."""
    return torch.float32 if weight.dtype in _HALF else weight.dtype


def _draw_noise(weight: torch.Tensor, p: float, mask: str, generator: torch.Generator | None) -> torch.Tensor:
    """The random part of one Mixout draw, M ~ Bernoulli(1 − p), on the weight's device.

    ``per_input``: the scale ``M/(1 − p)`` itself, shape ``(in_features,)`` (broadcast over the rows of the
    weight), in the working dtype — tiny, so it is kept for backward as is. ``per_element``: the boolean
    mask ``M`` of the weight's shape (1 byte per entry is what backward keeps).
    """
    if mask == "per_input":
        noise = torch.empty(weight.shape[-1], dtype=_work_dtype(weight), device=weight.device)
        return noise.bernoulli_(1.0 - p, generator=generator).mul_(1.0 / (1.0 - p))
    return torch.empty(weight.shape, dtype=torch.bool, device=weight.device).bernoulli_(1.0 - p, generator=generator)


def _mix(weight: torch.Tensor, target: torch.Tensor, noise: torch.Tensor, p: float) -> torch.Tensor:
    """W' = W₀ + M/(1 − p) ⊙ (W − W₀), in the weight's dtype (computed in float32 for half precision).

    Written for few Python-level calls: on a GPU a small encoder's step is bound by launch overhead."""
    if weight.dtype in _HALF:
        mixed = _mix(weight.float(), target.float(), noise, p)
        return mixed.to(weight.dtype)
    if noise.dtype == torch.bool:  # per_element: W' = M ? lerp(W₀, W, 1/(1 − p)) : W₀
        return torch.where(noise, torch.lerp(target, weight, 1.0 / (1.0 - p)), target)
    return torch.lerp(target, weight, noise)  # per_input: one fused kernel with the broadcast scale


def _mix_grad(grad_mixed: torch.Tensor, weight: torch.Tensor, noise: torch.Tensor, p: float) -> torch.Tensor:
    """∂L/∂W = M/(1 − p) ⊙ ∂L/∂W', returned in the weight's dtype (``grad_mixed`` may be overwritten)."""
    if noise.dtype == torch.bool:
        work = _work_dtype(weight)
        grad_mixed = grad_mixed if grad_mixed.dtype == work else grad_mixed.to(work)
        grad = torch.where(noise, grad_mixed, 0.0).mul_(1.0 / (1.0 - p))
    elif grad_mixed.dtype == noise.dtype:
        grad = grad_mixed.mul_(noise)
    else:
        grad = grad_mixed * noise  # type promotion: a half-precision gradient times the float32 scale is float32
    return grad if grad.dtype == weight.dtype else grad.to(weight.dtype)


def mixout(
    weight: torch.Tensor,
    target: torch.Tensor,
    p: float,
    *,
    training: bool = True,
    mask: str = "per_input",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Functional Mixout (Lee et al. 2020) of a 2-D weight in ``nn.Linear``'s ``(out, in)`` layout (for a
    transformers ``Conv1D`` pass ``weight.t()`` and ``target.t()``), differentiable with ordinary autograd.

    Returns ``W' = ((1 − M)·W₀ + M·W − p·W₀)/(1 − p) = W₀ + M·(W − W₀)/(1 − p)`` with
    ``M ~ Bernoulli(1 − p)`` (one draw per column for ``mask="per_input"``, per entry for ``"per_element"``),
    or ``weight`` itself when ``training`` is False or ``p == 0``. ``E[W'] = W``. The analogue of
    ``F.dropout`` for weights; the modules installed by :func:`apply_mixout` draw the same masks from the same
    generator state and compute the same thing (with less memory outside autocast).
    """
    p = _check_p(p)
    _check_mask(mask)
    if weight.shape != target.shape:
        raise ValueError(f"target shape {tuple(target.shape)} does not match weight shape {tuple(weight.shape)}")
    if not training or p == 0.0:
        return weight
    return _mix(weight, target, _draw_noise(weight, p, mask, generator), p)


def _autocast_active(x: torch.Tensor) -> bool:
    """Whether autocast will cast ``F.linear(x, ...)`` to a lower precision."""
    if x.dtype == torch.float64:
        return False
    try:
        return torch.is_autocast_enabled(x.device.type)
    except (TypeError, RuntimeError):  # device types without autocast support
        return False


class _MixoutLinearFunction(torch.autograd.Function):
    """``F.linear(x, W₀ + M/(1 − p) ⊙ (W − W₀), b)`` that saves (x, W, W₀, noise) and rebuilds the mixed
    weight in backward, so no per-layer copy of W' is kept between forward and backward (used outside
    autocast; see :meth:`MixoutLinear.forward`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, target, noise, p):
        ctx.p = p
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, target, noise)
        return F.linear(x, _mix(weight, target, noise, p), bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight, target, noise = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out.matmul(_mix(weight, target, noise, ctx.p))
        # (batch..., features) -> (N, features); an unbatched 1-D input (which F.linear accepts) is N = 1.
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_w = _mix_grad(grad_2d.t().mm(x.reshape(-1, x.shape[-1])), weight, noise, ctx.p)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_2d.sum(0)
        return grad_x, grad_w, grad_b, None, None, None


class MixoutLinear(nn.Linear):
    """An ``nn.Linear`` whose weight is mixed toward ``mixout_target`` (W₀) in training mode (Lee et al. 2020).

    Not constructed directly: :func:`apply_mixout` swaps the class of existing ``nn.Linear`` modules in place,
    keeping their ``weight``/``bias`` Parameter objects (so optimizers, ``named_parameters`` and ``state_dict``
    keys are unchanged) and registering W₀ as the non-persistent buffer ``mixout_target``.

    Attributes: ``mixout_p`` (float), ``mixout_mask`` (``"per_input"`` | ``"per_element"``),
    ``mixout_generator`` (``torch.Generator`` or None for the global RNG), ``mixout_target`` (buffer).
    """

    mixout_p: float
    mixout_mask: str
    mixout_generator: torch.Generator | None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.mixout_p == 0.0:
            return F.linear(input, self.weight, self.bias)
        return _mixed_linear(self, input, self.weight, self.mixout_target)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mixout_p={self.mixout_p}, mixout_mask={self.mixout_mask!r}"


class MixoutConv1D(Conv1D):
    """transformers' ``Conv1D`` (GPT-2's linear layer: ``y = x @ W + b`` with ``W`` of shape ``(in, out)``) whose
    weight is mixed toward ``mixout_target`` (W₀, same ``(in, out)`` shape) in training mode (Lee et al. 2020).

    Exactly :class:`MixoutLinear` applied to the ``(out, in)`` view ``Wᵀ``: ``W' = W₀ + M/(1 − p) ⊙ (W − W₀)``,
    ``∂L/∂W = M/(1 − p) ⊙ ∂L/∂W'``; with ``mask="per_input"`` one draw per input feature, i.e. per *row* of the
    ``(in, out)`` weight. Evaluation mode (and p = 0) runs ``Conv1D.forward`` itself. Installed by
    :func:`apply_mixout` by swapping the class in place (same Parameters, same ``state_dict`` keys).
    """

    mixout_p: float
    mixout_mask: str
    mixout_generator: torch.Generator | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.mixout_p == 0.0:
            return super().forward(x)
        return _mixed_linear(self, x, self.weight.t(), self.mixout_target.t())

    def __repr__(self) -> str:
        return f"MixoutConv1D(nf={self.nf}, nx={self.nx}, mixout_p={self.mixout_p}, mixout_mask={self.mixout_mask!r})"


_MIXOUT_CLASSES = (MixoutLinear, MixoutConv1D)
_PLAIN_CLASS = {MixoutLinear: nn.Linear, MixoutConv1D: Conv1D}
_MIXOUT_CLASS = {nn.Linear: MixoutLinear, Conv1D: MixoutConv1D}


def _mixed_linear(module, input: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Training-mode forward of a mixed layer: ``F.linear(input, W₀ + M/(1 − p) ⊙ (W − W₀), b)`` with ``weight``
    and ``target`` in ``nn.Linear``'s ``(out, in)`` layout (a transposed view for Conv1D)."""
    p = module.mixout_p
    noise = _draw_noise(weight, p, module.mixout_mask, module.mixout_generator)
    if _autocast_active(input):
        # Under autocast F.linear keeps a half-precision cast of its weight for backward whether the weight
        # is mixed or not, so the differentiable formula costs no memory over a plain layer, and its
        # backward runs without Python (a small encoder's GPU step is bound by launch overhead).
        return F.linear(input, _mix(weight, target, noise, p), module.bias)
    # Without autocast F.linear would keep the full-precision W' of every layer until backward: rebuild it.
    return _MixoutLinearFunction.apply(input, weight, module.bias, target, noise, p)


def _as_patterns(patterns: str | Iterable[str] | None, arg: str) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    patterns = list(patterns)
    if not all(isinstance(pat, str) for pat in patterns):
        raise ValueError(f"{arg} must be a glob pattern or a list of them, got {patterns!r}")
    return patterns


def _pattern_matches(pattern: str, name: str) -> bool:
    """True when ``pattern`` (fnmatch glob) matches module ``name`` or one of the modules containing it."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def _peft_modules(model: nn.Module) -> list[str]:
    found = []
    for name, module in model.named_modules():
        if type(module).__module__.split(".")[0] == "peft":
            found.append(f"{name or '<root>'} ({type(module).__name__})")
    return found


def _disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        record: dict[str, float] = {}
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p != 0:
            record["p"] = module.p
            module.p = 0.0
        for attr, value in list(vars(module).items()):
            if (
                "dropout" in attr.lower()
                and isinstance(value, float)
                and value != 0.0
                and attr != _DROPOUT_RECORD
            ):
                record[attr] = value
                setattr(module, attr, 0.0)
        if record:
            # A module can only be recorded once: apply_mixout refuses models that already carry Mixout.
            vars(module)[_DROPOUT_RECORD] = record


def _restore_dropout(model: nn.Module) -> None:
    for module in model.modules():
        record = vars(module).pop(_DROPOUT_RECORD, None)
        for attr, value in (record or {}).items():
            setattr(module, attr, value)


def has_mixout(model: nn.Module) -> bool:
    """True when any module of ``model`` is a :class:`MixoutLinear` or :class:`MixoutConv1D`."""
    return any(isinstance(module, _MIXOUT_CLASSES) for module in model.modules())


def mixout_module_names(model: nn.Module) -> list[str]:
    """Names (as in ``unwrap_model(model).named_modules()``) of the layers that currently carry Mixout."""
    model = unwrap_model(model)
    return [name for name, module in model.named_modules() if isinstance(module, _MIXOUT_CLASSES)]


def _full_size(module: nn.Module) -> int:
    if isinstance(module, Conv1D):
        return module.nx * module.nf
    return module.in_features * module.out_features


def apply_mixout(
    model: nn.Module,
    p: float,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    mask: str = "per_input",
    disable_dropout: bool = True,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Turn ``nn.Linear`` layers of ``model`` into :class:`MixoutLinear` (and transformers ``Conv1D`` layers, as in
    GPT-2, into :class:`MixoutConv1D`) in place (Lee et al. 2020).

    In training mode each mixed layer computes ``F.linear(x, W', b)`` with
    ``W' = ((1 − M)·W₀ + M·W − p·W₀)/(1 − p) = W₀ + M·(W − W₀)/(1 − p)``, ``M ~ Bernoulli(1 − p)``
    redrawn at every forward call; in evaluation mode it is exactly ``F.linear(x, W, b)``. ``W₀`` is a copy
    of the weight *now*: call this after re-initialising layers (they are then mixed toward their new init)
    and before loading a checkpoint to resume (W₀ stays the weights training started from).

    Args:
        model: any module; DDP/DataParallel/``torch.compile`` wrappers are looked through.
        p: mix probability in [0, 1) (the paper searches 0.1 … 0.9). ``p = 0`` makes the layers plain Linears.
        include: glob pattern(s) (``fnmatch``, case-sensitive) on module names; a Linear is selected when a
            pattern matches its name or the name of a module containing it (``"bert.encoder"``,
            ``"*.attention.*"``, ``"classifier"``). Default: every ``nn.Linear`` and ``Conv1D`` of the model,
            head included.
        exclude: glob pattern(s), same rules, removed from the selection.
        mask: ``"per_input"`` (default: one draw per input feature shared by all output units, as in the
            reference code and the paper's neuron-level Fig. 1; cheapest) or ``"per_element"``.
        disable_dropout: set every dropout of the model to 0 (``nn.Dropout``-family modules and float
            attributes named ``*dropout*``), as the paper does when Mixout replaces dropout. Restored by
            :func:`remove_mixout`. The config is never changed.
        generator: ``torch.Generator`` on the model's device for the masks; default the global RNG (the
            one ``transformers.set_seed`` seeds, and the one gradient checkpointing replays).

    Returns:
        The names of the mixed modules.

    Raises:
        ValueError: p outside [0, 1); unknown ``mask``; a pattern that matches no ``nn.Linear``; an empty
            selection; a model that already carries Mixout (call :func:`remove_mixout` first); a PEFT model;
            a selected module that is a subclass of ``nn.Linear`` or ``Conv1D`` (its forward may not use
            ``weight`` the plain way) or whose weight is sharded away (ZeRO-3/FSDP).
    """
    p = _check_p(p)
    mask = _check_mask(mask)
    peft = _peft_modules(model)
    if peft:
        raise ValueError(
            "apply_mixout does not support PEFT models (found "
            + ", ".join(peft[:3])
            + (", ..." if len(peft) > 3 else "")
            + "): Mixout pulls trainable weights toward their starting values, but under PEFT the base "
            "weights are frozen (mixing a weight that never moves is a no-op) and mixing the adapter "
            "factors (e.g. LoRA A and B) toward their initialisation is not the method of Lee et al. 2020. "
            "Apply Mixout to a fully fine-tuned model instead."
        )
    model = unwrap_model(model)
    if has_mixout(model):
        raise ValueError(
            f"the model already carries Mixout on {len(mixout_module_names(model))} layer(s); "
            "call hf_stable_ft.mixout.remove_mixout(model) before applying it again"
        )
    include_patterns = _as_patterns(include, "include")
    exclude_patterns = _as_patterns(exclude, "exclude")

    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, (nn.Linear, Conv1D))]
    for arg, patterns in (("include", include_patterns), ("exclude", exclude_patterns)):
        for pattern in patterns:
            if not any(_pattern_matches(pattern, name) for name, _ in linears):
                raise ValueError(
                    f"Mixout {arg} pattern {pattern!r} matches no nn.Linear or Conv1D of {type(model).__name__} "
                    f"(patterns are fnmatch globs on module names, e.g. {linears[0][0] if linears else 'classifier'!r})"
                )
    selected = [
        (name, module)
        for name, module in linears
        if (not include_patterns or any(_pattern_matches(pat, name) for pat in include_patterns))
        and not any(_pattern_matches(pat, name) for pat in exclude_patterns)
    ]
    if not selected:
        raise ValueError(
            f"Mixout would mix no layer of {type(model).__name__} (include={include!r}, exclude={exclude!r})"
        )
    odd = [f"{name} ({type(module).__name__})" for name, module in selected if type(module) not in _MIXOUT_CLASS]
    if odd:
        raise ValueError(
            "Mixout replaces the forward of plain nn.Linear and transformers Conv1D modules only; these are "
            "subclasses whose forward "
            f"may not use .weight as F.linear does: {', '.join(odd)}. Leave them out with exclude="
        )
    sharded = [name for name, module in selected if module.weight.numel() != _full_size(module)]
    if sharded:
        raise ValueError(
            f"the weights of {', '.join(sharded[:3])} are sharded or partitioned (ZeRO-3/FSDP); Mixout needs the "
            "full weight to record W₀"
        )

    if generator is not None:
        elsewhere = [name for name, module in selected if module.weight.device.type != generator.device.type]
        if elsewhere:
            device = model.get_submodule(elsewhere[0]).weight.device
            raise ValueError(
                f"generator is on {generator.device} but the weights of {', '.join(elsewhere[:3])} are on {device}; "
                "Mixout draws its masks on the weights' device"
            )

    for _, module in selected:
        module.__class__ = _MIXOUT_CLASS[type(module)]
        module.register_buffer("mixout_target", module.weight.detach().clone(), persistent=False)
        module.mixout_p = p
        module.mixout_mask = mask
        module.mixout_generator = generator
    if disable_dropout:
        _disable_dropout(model)
    return [name for name, _ in selected]


def remove_mixout(model: nn.Module) -> list[str]:
    """Undo :func:`apply_mixout`: make every :class:`MixoutLinear` / :class:`MixoutConv1D` a plain ``nn.Linear`` /
    ``Conv1D`` again (same
    Parameters, W₀ buffer dropped) and restore the dropout values ``disable_dropout`` overwrote.
    Returns the names of the restored modules (empty when the model carries no Mixout)."""
    model = unwrap_model(model)
    names = []
    for name, module in model.named_modules():
        if isinstance(module, _MIXOUT_CLASSES):
            del module._buffers["mixout_target"]
            module._non_persistent_buffers_set.discard("mixout_target")
            for attr in ("mixout_p", "mixout_mask", "mixout_generator"):
                vars(module).pop(attr, None)
            module.__class__ = _PLAIN_CLASS[type(module)]
            names.append(name)
    _restore_dropout(model)
    return names
