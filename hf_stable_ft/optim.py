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
* ``recadam_k`` / ``recadam_t0`` per group — RecAdam (Chen, Hou, Cui, Che, Liu & Yu, "Recall and Learn",
  EMNLP 2020, eqs. 4–6): the objective ``λ(t)·Loss_T + (1 − λ(t))·(γ/2)·‖θ − θ_pre‖²`` with the annealed
  coefficient ``λ(t) = 1/(1 + exp(−k·(t − t₀)))`` (γ = the group's ``pretrained_weight_decay``), in the released
  optimizer's form: at update t of a parameter,
  ``θ ← θ − lr·(1 − λ(t))·γ·(θ − θ_pre)``, then ``θ ← θ·(1 − lr·wd)``, then ``θ ← θ − lr·λ(t)·m̂/(√v̂ + ε)``
  (Adam's moments see the unscaled task gradient; only the step is scaled by λ(t)). Early on (t ≪ t₀) the
  weights are held at θ_pre, later the task takes over. Differences from Sanyuan-Chen/RecAdam's ``RecAdam.py``:
  the penalty and weight decay are applied before the Adam step (decoupled, like the rest of this optimizer),
  where the script applies the penalty to the already-updated θ and weight decay last (an O(lr²) difference);
  ε is torch's (``√v̂ + ε``), where the script uses ``√v + ε`` with a bias-corrected step size.

Speed: BERTAdam is run through torch's own fused/foreach AdamW kernels. Since
``lr·m/(√v+ε) = (lr_t/c₁)·m/(√v/√c₂ + ε_t)`` with ``lr_t = lr·c₁/√c₂``, ``ε_t = ε/√c₂`` (``c₁ = 1−β₁ᵗ``,
``c₂ = 1−β₂ᵗ``), disabling bias correction is a per-step rescaling of the group's lr, ε and weight decay.
``t`` is each parameter's own count of updates (torch keeps one per parameter): a parameter that has no
gradient at a step is left untouched (no Adam update, no weight decay, no decay toward θ_pre) and its ``t``
does not advance, so parameters of one group can have different ``t``; they are then rescaled separately.

Mixed precision: under ``torch.amp.GradScaler`` a step whose gradients overflowed changes nothing —
parameters, moments and step counts stay bit-identical. (With the fused kernel torch calls ``step()`` anyway
and passes ``found_inf``; the decay toward θ_pre is masked by it, the kernel skips the rest.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

__all__ = ["StableAdamW", "recadam_lambda", "warn_if_anneal_misses_run"]

logger = logging.getLogger("hf_stable_ft")


def recadam_lambda(t: float, k: float, t0: float) -> float:
    """RecAdam's annealing coefficient ``λ(t) = 1/(1 + exp(−k·(t − t₀)))`` (Chen et al. 2020, eq. 6), computed
    without overflow (→ 0 for k·(t − t₀) ≪ 0, → 1 for ≫ 0)."""
    z = k * (t - t0)
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def warn_if_anneal_misses_run(k: float, t0: float, max_steps: int) -> bool:
    """Log a warning (and return True) when RecAdam's anneal ``λ(t)`` (:func:`recadam_lambda`) does not cross ½
    inside the run's ``max_steps`` updates: with ``t0 < 1`` λ(1) ≥ ½, so the encoder is never held at θ_pre (the
    paper's schedule starts near 0; its script uses t₀ = 250); with ``t0 ≥ max_steps`` λ stays below ½ to the end,
    so every task step of the encoder is damped by more than half. Nothing is changed: the run anneals as given."""
    if k <= 0 or max_steps <= 0:
        return False
    if t0 < 1:
        logger.warning(
            "hf_stable_ft: recadam_t0=%s: RecAdam's lambda(t) = 1/(1 + exp(-k(t - t0))) is already %.2f at the first "
            "update, so the encoder is never held at its pretrained weights; the paper anneals from near 0 (its script: "
            "recadam_k=0.5, recadam_t0=250). Set recadam_t0 to the update where the task should take over.",
            t0, recadam_lambda(1, k, t0))
        return True
    if t0 >= max_steps:
        logger.warning(
            "hf_stable_ft: recadam_t0=%s is not before the run's last update (%d updates): RecAdam's lambda(t) stays "
            "below 1/2 to the end (%.2g at the last update), so every task step of the encoder is damped by more "
            "than half. Use recadam_t0 well inside the run.", t0, max_steps, recadam_lambda(max_steps, k, t0))
        return True
    return False


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

    Attributes:
        run_settings: optional mapping of the settings this optimizer was built for (set by
            :func:`~hf_stable_ft.create_stable_optimizer`: the technique settings). Saved in ``state_dict()`` under
            ``"hf_stable_ft"``; ``load_state_dict`` of a state saved with other settings — or with other named
            parameter groups — raises ``ValueError`` listing the differences, instead of torch's
            group-count error or a silent swap of one run's groups for another's.
    """

    SETTINGS_KEY = "hf_stable_ft"

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
        recadam_k: float = 0.0,
        recadam_t0: float = 0.0,
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
        self.defaults["recadam_k"] = float(recadam_k)
        self.defaults["recadam_t0"] = float(recadam_t0)
        for group in self.param_groups:
            group.setdefault("bias_correction", bool(bias_correction))
            group.setdefault("pretrained_weight_decay", float(pretrained_weight_decay))
            group.setdefault("recadam_k", float(recadam_k))
            group.setdefault("recadam_t0", float(recadam_t0))
            if not (group["recadam_k"] >= 0 and group["recadam_t0"] >= 0):
                raise ValueError(f"recadam_k and recadam_t0 must be >= 0, got {group['recadam_k']}, {group['recadam_t0']}")
            if group["recadam_k"] > 0 and not group["pretrained_weight_decay"] > 0:
                raise ValueError(f"param group {group.get('name', '')!r} has recadam_k={group['recadam_k']} but no "
                                 "pretrained_weight_decay (RecAdam's gamma): set both, or recadam_k=0")
        self.pretrained_anchors: dict[Tensor, Tensor] = anchors
        self.run_settings: dict | None = None
        for group in self.param_groups:
            if group["pretrained_weight_decay"] > 0:
                missing = [p for p in group["params"] if p not in self.pretrained_anchors]
                if missing:
                    raise ValueError(
                        f"param group {group.get('name', '')!r} has pretrained_weight_decay="
                        f"{group['pretrained_weight_decay']} but {len(missing)} of its parameters have no entry in "
                        "pretrained_anchors"
                    )

    def state_dict(self):
        state = super().state_dict()
        if self.run_settings is not None:
            state[self.SETTINGS_KEY] = dict(self.run_settings)
        return state

    def load_state_dict(self, state_dict):
        saved = state_dict.get(self.SETTINGS_KEY)
        differ = []
        if saved is not None and self.run_settings is not None:
            differ = [f"{name}: checkpoint {saved[name]!r}, now {value!r}"
                      for name, value in self.run_settings.items() if name in saved and saved[name] != value]
        saved_names = [g.get("name") for g in state_dict.get("param_groups", [])]
        names = [g.get("name") for g in self.param_groups]
        if not differ and None not in saved_names + names and saved_names != names:
            differ = [f"parameter groups: checkpoint {saved_names}, now {names}"]
        if differ:
            raise ValueError(
                "cannot resume: the checkpoint's optimizer was built with other hf_stable_ft settings ("
                + "; ".join(differ) + "). Resume with the checkpoint's settings, or start a new run in another output_dir."
            )
        super().load_state_dict({k: v for k, v in state_dict.items() if k != self.SETTINGS_KEY})

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("bias_correction", True)
            group.setdefault("pretrained_weight_decay", 0.0)
            group.setdefault("recadam_k", 0.0)
            group.setdefault("recadam_t0", 0.0)

    @torch.no_grad()
    def _decay_toward_pretrained(self) -> None:
        """θ ← θ − lr·λ_pre·(θ − θ_pre), i.e. ``lerp(θ, θ_pre, lr·λ_pre)``, before the Adam update (decoupled;
        Zhang et al. 2021 §6). Only parameters with a gradient are decayed, as torch's AdamW decays only those.

        Under ``torch.amp.GradScaler`` with the fused kernel (``_step_supports_amp_scaling``) the scaler does not
        skip ``step()`` on an overflow: it sets ``self.found_inf`` and the kernel skips the update itself. The
        decay then uses the weight ``lr·λ_pre·(found_inf == 0)``, so a skipped step moves nothing (without a
        host synchronisation)."""
        for group in self.param_groups:
            if group.get("recadam_k", 0) > 0:
                continue  # RecAdam's strength depends on each parameter's t: applied in step()
            strength = group["lr"] * group["pretrained_weight_decay"]
            if strength == 0:
                continue
            self._lerp_toward_anchors([p for p in group["params"] if p.grad is not None], strength)

    def _overflow_masked(self, params: list[Tensor], value: float) -> float | list[Tensor]:
        """``value``, or per parameter ``value·(found_inf == 0)`` under a GradScaler's fused-kernel step."""
        found_inf = getattr(self, "found_inf", None)
        if found_inf is None:
            return value
        weights: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        for p in params:
            key = (p.device, p.dtype)
            if key not in weights:
                keep = found_inf.to(p.device, non_blocking=True) == 0
                weights[key] = keep.to(p.dtype) * value
        return [weights[(p.device, p.dtype)] for p in params]

    @torch.no_grad()
    def _lerp_toward_anchors(self, params: list[Tensor], strength: float) -> None:
        if not params or strength == 0:
            return
        anchors = [self.pretrained_anchors[p] for p in params]
        torch._foreach_lerp_(params, anchors, self._overflow_masked(params, strength))

    @torch.no_grad()
    def _recadam_group(self, group: dict, t: float, params: list[Tensor]) -> dict:
        """RecAdam at update ``t`` of ``params``: apply ``θ ← θ − lr·(1 − λ(t))·γ·(θ − θ_pre)`` and the decoupled
        weight decay now, and return the group for the Adam kernel with ``lr·λ(t)`` and no weight decay."""
        lam = recadam_lambda(t, group["recadam_k"], group["recadam_t0"])
        lr = group["lr"]
        self._lerp_toward_anchors(params, lr * (1.0 - lam) * group["pretrained_weight_decay"])
        if group["weight_decay"] and lr:
            shrink = self._overflow_masked(params, lr * group["weight_decay"])
            if isinstance(shrink, float):
                torch._foreach_mul_(params, 1.0 - shrink)
            else:
                torch._foreach_mul_(params, [1.0 - s for s in shrink])
        return {**group, "params": params, "lr": lr * lam, "weight_decay": 0.0}

    def _next_steps(self, group) -> list[tuple[Tensor, float]]:
        """``(parameter, t)`` for each parameter of ``group`` that has a gradient, in group order, where ``t`` is
        the step count torch's kernel will use for it: its own ``state["step"] + 1`` (1 for a parameter updated
        for the first time). Parameters that missed updates have fewer steps than the rest of their group."""
        with_grad = [p for p in group["params"] if p.grad is not None]
        known = [p for p in with_grad if "step" in self.state[p]]
        counts: dict[int, float] = {}
        by_device: dict[torch.device, list[Tensor]] = {}
        for p in known:
            by_device.setdefault(self.state[p]["step"].device, []).append(p)
        for params in by_device.values():  # one host synchronisation per device
            values = torch.stack([self.state[p]["step"].detach().float() for p in params]).cpu().tolist()
            counts.update((id(p), v) for p, v in zip(params, values))
        return [(p, counts.get(id(p), 0.0) + 1.0) for p in with_grad]

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._decay_toward_pretrained()
        per_step = [g for g in self.param_groups if not g["bias_correction"] or g.get("recadam_k", 0) > 0]
        if not per_step:
            self._adamw_step()
            return loss
        # BERTAdam: rescale lr, eps and weight decay so torch's bias-corrected kernel applies lr·m/(√v+ε).
        # RecAdam: scale the Adam step by λ(t) after the annealed decay toward θ_pre.
        original_groups = self.param_groups
        groups = []
        for group in original_groups:
            if group["bias_correction"] and not group.get("recadam_k", 0) > 0:
                groups.append(group)
                continue
            by_step: dict[float, list[Tensor]] = {}
            for p, t in self._next_steps(group):
                by_step.setdefault(t, []).append(p)
            if not by_step:
                groups.append(group)  # no gradients: torch's kernel skips the group
                continue
            if len(by_step) == 1:  # the kernel skips parameters without gradients: the whole group can go
                (t,) = by_step
                by_step = {t: [p for p in group["params"] if p.grad is not None]}
            # parameters that missed updates have their own t: one temporary group per distinct t
            for t, ps in by_step.items():
                temp = self._recadam_group(group, t, ps) if group.get("recadam_k", 0) > 0 else group
                groups.append(temp if group["bias_correction"] else self._rescaled(temp, t, ps))
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
