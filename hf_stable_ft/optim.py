"""StableAdamW: AdamW with switchable bias correction (BERTAdam) and decay toward pretrained weights.

One optimizer covers the three update rules the papers compare:

* ``bias_correction=True`` — AdamW (Loshchilov & Hutter 2019) exactly as ``torch.optim.AdamW``:
  ``θ ← θ·(1 − lr·λ) − lr · m̂ / (√v̂ + ε)`` with ``m̂ = m/(1−β₁ᵗ)``, ``v̂ = v/(1−β₂ᵗ)``.
* ``bias_correction=False`` — BERTAdam (Devlin et al. 2019), the optimizer Zhang et al. (2021, §3) and
  Mosbach et al. (2021, §5) identify as a cause of degenerate fine-tuning runs:
  ``θ ← θ·(1 − lr·λ) − lr · m / (√v + ε)``. Early updates are ``(1−β₁ᵗ)/√(1−β₂ᵗ)`` times larger than
  Adam's (≈3.16× at t=1 for β=(0.9, 0.999)).
* ``pretrained_weight_decay`` per group — decoupled decay toward the pretrained values
  (Zhang et al. 2021 §6, after Wiese et al. 2017): ``θ ← θ − lr·λ_pre·(θ − θ_pre)``.

Speed: BERTAdam is run through torch's own fused/foreach AdamW kernels. Since
``lr·m/(√v+ε) = (lr_t/c₁)·m/(√v/√c₂ + ε_t)`` with ``lr_t = lr·c₁/√c₂``, ``ε_t = ε/√c₂`` (``c₁ = 1−β₁ᵗ``,
``c₂ = 1−β₂ᵗ``), disabling bias correction is a per-step rescaling of the group's lr, ε and weight decay.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

__all__ = ["StableAdamW"]


def _fused_supported(params: Iterable[Tensor]) -> bool:
    return all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda", "xpu", "mps") and not p.is_sparse for p in params
    )


class StableAdamW(torch.optim.AdamW):
    """AdamW with optional bias correction and optional decay toward pretrained weights.

    Args:
        params: parameters or parameter groups, as for ``torch.optim.AdamW``. Groups may carry
            ``bias_correction`` and ``pretrained_weight_decay`` keys of their own.
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (same defaults).
        bias_correction: ``False`` gives BERTAdam (no ``1/(1−βᵗ)`` correction of the moments).
        pretrained_weight_decay: default λ_pre for groups that do not set it; needs ``pretrained_anchors``.
        pretrained_anchors: mapping ``parameter -> tensor`` of the values to decay toward (θ_pre); a group may
            instead carry an ``anchors`` list aligned with its ``params``. Kept out of ``state_dict()`` on
            purpose: on resume the anchors must be the pretrained values, not a checkpoint's.
        fused, foreach: kernel choice as in torch; by default the fused kernel is used where torch supports it.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        bias_correction: bool = True,
        *,
        pretrained_weight_decay: float = 0.0,
        pretrained_anchors: Mapping[Tensor, Tensor] | None = None,
        fused: bool | None = None,
        foreach: bool | None = None,
        maximize: bool = False,
    ):
        params = list(params)
        anchors = dict(pretrained_anchors or {})
        for i, group in enumerate(params):
            if isinstance(group, dict) and "anchors" in group:  # groups from build_param_groups
                group = dict(group)
                anchors.update(zip(group["params"], group.pop("anchors")))
                params[i] = group
        if fused is None and foreach is None:
            flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
            fused = _fused_supported(flat)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused,
                         foreach=foreach, maximize=maximize)
        if pretrained_weight_decay < 0:
            raise ValueError(f"pretrained_weight_decay must be >= 0, got {pretrained_weight_decay}")
        self.defaults["bias_correction"] = bool(bias_correction)
        self.defaults["pretrained_weight_decay"] = float(pretrained_weight_decay)
        for group in self.param_groups:
            group.setdefault("bias_correction", bool(bias_correction))
            group.setdefault("pretrained_weight_decay", float(pretrained_weight_decay))
        self.pretrained_anchors: dict[Tensor, Tensor] = anchors
        for group in self.param_groups:
            if group["pretrained_weight_decay"] > 0:
                missing = [p for p in group["params"] if p not in self.pretrained_anchors]
                if missing:
                    raise ValueError(
                        f"param group {group.get('name', '')!r} has pretrained_weight_decay="
                        f"{group['pretrained_weight_decay']} but {len(missing)} of its parameters have no entry in "
                        "pretrained_anchors"
                    )

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("bias_correction", True)
            group.setdefault("pretrained_weight_decay", 0.0)

    @torch.no_grad()
    def _decay_toward_pretrained(self) -> None:
        """θ ← θ − lr·λ_pre·(θ − θ_pre), i.e. ``lerp(θ, θ_pre, lr·λ_pre)``, before the Adam update (decoupled)."""
        for group in self.param_groups:
            strength = group["lr"] * group["pretrained_weight_decay"]
            if strength == 0:
                continue
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                anchors = [self.pretrained_anchors[p] for p in params]
                torch._foreach_lerp_(params, anchors, strength)

    def _next_steps(self, group) -> list[float]:
        steps = [self.state[p]["step"] for p in group["params"] if p.grad is not None and "step" in self.state[p]]
        fresh = sum(1 for p in group["params"] if p.grad is not None and "step" not in self.state[p])
        values = torch.stack([s.detach().float().cpu() for s in steps]).tolist() if steps else []
        return [v + 1 for v in values] + [1.0] * fresh

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._decay_toward_pretrained()
        uncorrected = [g for g in self.param_groups if not g["bias_correction"]]
        if not uncorrected:
            self._adamw_step()
            return loss
        # BERTAdam: rescale lr, eps and weight decay so torch's bias-corrected kernel applies lr·m/(√v+ε).
        original_groups = self.param_groups
        groups = []
        for group in original_groups:
            if group["bias_correction"]:
                groups.append(group)
                continue
            steps = self._next_steps(group)
            if len(set(steps)) <= 1:
                groups.append(self._rescaled(group, steps[0] if steps else 1.0, group["params"]))
            else:  # parameters that missed updates have their own t: one temporary group per distinct t
                by_step: dict[float, list[Tensor]] = {}
                with_grad = [p for p in group["params"] if p.grad is not None]
                for p, t in zip(with_grad, steps):
                    by_step.setdefault(t, []).append(p)
                groups.extend(self._rescaled(group, t, ps) for t, ps in by_step.items())
        self.param_groups = groups
        try:
            self._adamw_step()
        finally:
            self.param_groups = original_groups
        return loss

    def _adamw_step(self) -> None:
        # torch wraps every optimizer class's ``step`` with its hook runner; call AdamW's update without that
        # wrapper so step hooks fire once, around StableAdamW.step.
        adamw_step = torch.optim.AdamW.step
        if getattr(adamw_step, "hooked", False):
            adamw_step = adamw_step.__wrapped__
        adamw_step(self)

    @staticmethod
    def _rescaled(group: dict, t: float, params: list[Tensor]) -> dict:
        beta1, beta2 = group["betas"]
        c1 = 1 - beta1**t
        sqrt_c2 = math.sqrt(1 - beta2**t)
        lr = group["lr"]
        scaled_lr = lr * c1 / sqrt_c2
        return {
            **group,
            "params": params,
            "lr": scaled_lr,
            "eps": group["eps"] / sqrt_c2,
            # torch multiplies θ by (1 − lr_t·λ_t): keep lr·λ unchanged.
            "weight_decay": group["weight_decay"] * lr / scaled_lr if scaled_lr else group["weight_decay"],
        }
