"""ChildTuning (Xu et al., EMNLP 2021): update only a child network, by masking the gradients.

Xu, Luo, Zhang, Tan, Chang, Huang and Huang, *Raise a Child in Large Language Model: Towards Effective and
Generalizable Fine-tuning* (EMNLP 2021, eqs. 3–6). Each update uses the masked gradient ``g ⊙ M`` instead of
``g``:

* **ChildTuning_F** (task-free): a fresh ``M ~ Bernoulli(p_F)`` per element at every update, rescaled,
  ``g̃ = g ⊙ M / p_F`` (so E[g̃] = g), on every trainable parameter.
* **ChildTuning_D** (task-driven): once, before training, the diagonal Fisher information of each parameter of
  the transformer blocks, ``F(w) = (1/N) Σ_b (∂L_b/∂w)²`` over the N training batches (L_b the batch's mean
  loss, as the released code computes it), then a fixed ``M = [F(w) ≥ F_(k)]`` keeping the top
  ``k = round(p_D · n)`` of the n block parameters (ties at the threshold kept, as the code's ``>=``
  percentile). Embeddings, pooler and task head are outside the child-network search and update normally —
  the released code selects the parameters whose name contains ``"layer"``; here they are the blocks of
  :data:`hf_stable_ft.architectures.ENCODER_LAYOUTS`.

**Where the mask sits.** The released ``ChildTuningAdamW`` multiplies ``p.grad`` inside ``optimizer.step()``, i.e.
after the Trainer has accumulated the micro-batch gradients and clipped them by ``max_grad_norm``. The Trainer's
``on_pre_optimizer_step`` event is exactly there (after ``clip_grad_norm_``, right before ``optimizer.step()``,
once per update), so :class:`ChildTuningCallback` masks the gradient there: clipping uses the norm of the
*unmasked* accumulated gradient (the ``grad_norm`` the Trainer logs, and what the diagnostics' per-layer norms
report), and the mask is drawn once per optimizer update, not per micro-batch. Under DDP the gradient is already
all-reduced, and the F mask is drawn from a generator seeded with ``(seed, update)`` — the same mask on every
rank, after a resume too, without touching the global RNG.

**Weight decay.** As in the released optimizer (decoupled decay applied to every parameter after the Adam step)
the mask touches only the gradient: masked parameters are still decayed, and their Adam moments see a zero
gradient (so under F a parameter masked at this update still moves by its momentum). With StableAdamW (torch's
AdamW update) decay is applied before the step, not after — the same difference as for any AdamW here.

**The Fisher pass** (D) runs at ``on_train_begin`` over the training set in order (batch size
``per_device_train_batch_size``, the Trainer's collator), in train mode (dropout on, as the released code),
inside ``torch.random.fork_rng`` seeded with ``seed`` — so the global RNG (data order, dropout of training) is the
same as without it. It is computed on the weights fine-tuning starts from (after re-init and NoisyTune); on a
resume, where the model already holds the checkpoint's weights, those starting weights are swapped in from the
snapshot :func:`~hf_stable_ft.prepare_model` keeps for ``child_tuning_mode="D"`` (one copy of the trainable
weights), so a resumed run uses the same mask. Cost: one forward+backward pass over the training set at train
start; per step, one elementwise product (D) or one Bernoulli draw and product (F) per gradient element.
The released code also clips each tensor's batch gradient to ``max_grad_norm`` before squaring it;
:func:`fisher_information` does so with ``clip_norm=...`` (off by default: the paper's equation).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn
from transformers import TrainerCallback

from .architectures import get_encoder_layout, unwrap_model

__all__ = [
    "ChildTuningCallback",
    "child_tuning_candidates",
    "child_tuning_d_mask",
    "child_tuning_f_generator",
    "fisher_information",
    "mask_gradients_",
]

logger = logging.getLogger("hf_stable_ft")


def child_tuning_candidates(model: nn.Module) -> list[str]:
    """Names (as in ``unwrap_model(model).named_parameters()``) of the trainable parameters of the transformer
    blocks: ChildTuning_D's search space."""
    model = unwrap_model(model)
    layout = get_encoder_layout(model, purpose="ChildTuning_D")
    prefix = layout.layers + "."
    names = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith(prefix)]
    if not names:
        raise ValueError(f"ChildTuning_D: {type(model).__name__} has no trainable parameters under {layout.layers!r}")
    return names


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return type(batch)({k: _to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _default_loss(model: nn.Module, batch) -> torch.Tensor:
    outputs = model(**batch)
    loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs[0]
    if loss is None:
        raise ValueError("ChildTuning_D's Fisher pass needs a model that returns a loss: the batches need labels")
    return loss


def fisher_information(
    model: nn.Module,
    batches: Iterable,
    *,
    parameters: Iterable[str] | None = None,
    clip_norm: float | None = None,
    loss_fn: Callable[[nn.Module, object], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher information ``F(w) = (1/N) Σ_b (∂L_b/∂w)²`` over the batches (Xu et al. 2021, eq. 5).

    Args:
        model: the task model; run as it is (``model.train()`` for dropout as the paper; the caller decides).
        batches: an iterable of model inputs (dicts with labels); moved to the model's device.
        parameters: names to compute it for (default :func:`child_tuning_candidates`).
        clip_norm: clip each tensor's batch gradient to this L2 norm before squaring, as the released code does
            (``clip_grad_norm_(param, max_grad_norm)``); ``None`` is the paper's equation.
        loss_fn: ``loss_fn(model, batch) -> loss``; default ``model(**batch).loss``.

    The gradients of ``model`` are left as ``None``.
    """
    task_model = unwrap_model(model)
    named = dict(task_model.named_parameters())
    names = child_tuning_candidates(task_model) if parameters is None else list(parameters)
    device = next(iter(named.values())).device
    loss_fn = loss_fn or _default_loss
    sums = {n: torch.zeros_like(named[n], dtype=torch.float32) for n in names}
    count = 0
    for p in named.values():
        p.grad = None
    for batch in batches:
        loss = loss_fn(model, _to_device(batch, device))
        loss.backward()
        with torch.no_grad():
            for n in names:
                grad = named[n].grad
                if grad is None:
                    continue
                grad = grad.float()
                if clip_norm is not None:
                    grad = grad * min(1.0, clip_norm / (float(grad.norm()) + 1e-6))
                sums[n].add_(grad * grad)
        for p in named.values():
            p.grad = None
        count += 1
    if count == 0:
        raise ValueError("ChildTuning_D's Fisher pass got no batches")
    return {n: s.div_(count) for n, s in sums.items()}


def child_tuning_d_mask(fisher: Mapping[str, torch.Tensor], p: float) -> dict[str, torch.Tensor]:
    """Boolean masks keeping the top ``k = round(p·n)`` (at least 1) of all n Fisher values, jointly over every
    tensor: ``M = F ≥ F_(k)``, F_(k) the k-th largest value (ties at it kept)."""
    if not (0 < p <= 1):
        raise ValueError(f"child_tuning_p={p!r} is invalid; allowed: a float in (0, 1]")
    flat = torch.cat([f.reshape(-1).float() for f in fisher.values()])
    n = flat.numel()
    k = min(n, max(1, round(p * n)))
    threshold = torch.kthvalue(flat.cpu(), n - k + 1).values.to(flat.device)
    return {name: f >= threshold for name, f in fisher.items()}


def child_tuning_f_generator(seed: int, update: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator ChildTuning_F draws the masks of optimizer update ``update`` (1-based) from: seeded with
    ``(seed, update)``, so the mask of an update is the same on every rank and after a resume."""
    return torch.Generator(device=device).manual_seed((int(seed) * 1_000_003 + int(update)) % (2**63))


@torch.no_grad()
def mask_gradients_(
    parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    p: float,
    masks: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> None:
    """Mask the gradients in place: with ``masks`` (D) ``g ← g ⊙ M`` for the named tensors in it; without (F)
    ``g ← g ⊙ (M / p)``, ``M ~ Bernoulli(p)`` drawn per element from ``generator`` in the given order."""
    for name, param in parameters:
        grad = param.grad
        if grad is None:
            continue
        if masks is not None:
            mask = masks.get(name)
            if mask is not None:
                grad.mul_(mask)
        else:
            keep = torch.empty_like(grad).bernoulli_(p, generator=generator)
            grad.mul_(keep.div_(p))


class ChildTuningCallback(TrainerCallback):
    """ChildTuning as a ``TrainerCallback``: masks the gradients at ``on_pre_optimizer_step`` (after the
    Trainer's accumulation and clipping, before ``optimizer.step()``); D's Fisher pass at ``on_train_begin``.

    Args:
        mode: ``"F"``, ``"D"``, or ``None`` to read ``child_tuning_mode`` / ``child_tuning_p`` / ``seed`` from the
            :class:`~hf_stable_ft.StableTrainingArguments` at each ``on_train_begin`` (what
            :class:`~hf_stable_ft.StableFineTuningCallback` does, so hyper-parameter-search trials get their own).
        p: p_F (keep probability) or p_D (kept fraction), in (0, 1].
        seed: seed of the F masks and of the Fisher pass's dropout (default ``args.seed``).
        fisher_clip_norm: see :func:`fisher_information`; default (None) ``child_tuning_fisher_clip`` of the
            :class:`~hf_stable_ft.StableTrainingArguments` (None there too: the paper's unclipped equation).
        starting_weights: ``model -> {name: tensor}`` giving the weights fine-tuning started from, used by D when
            the model no longer holds them (resume); default the :class:`~hf_stable_ft.FineTuningState` snapshot.
    """

    def __init__(self, mode: str | None = None, p: float | None = None, seed: int | None = None, *,
                 fisher_clip_norm: float | None = None,
                 starting_weights: Callable[[nn.Module], Mapping[str, torch.Tensor] | None] | None = None):
        if mode is not None and mode not in ("F", "D"):
            raise ValueError(f"child_tuning_mode={mode!r} is invalid; allowed: None, 'F' (task-free) or 'D' (task-driven)")
        if p is not None and not (isinstance(p, (int, float)) and 0 < p <= 1):
            raise ValueError(f"child_tuning_p={p!r} is invalid; allowed: a float in (0, 1]")
        self._fixed = (mode, p, seed)
        self._fixed_clip = self.fisher_clip_norm = fisher_clip_norm
        self.starting_weights = starting_weights
        self.mode, self.p, self.seed = mode, p, seed
        self.masks: dict[str, torch.Tensor] | None = None
        self._mask_model = None
        self._params: list[tuple[str, nn.Parameter]] = []

    def _resolve(self, args) -> None:
        mode, p, seed = self._fixed
        self.mode = mode if mode is not None else getattr(args, "child_tuning_mode", None)
        self.p = p if p is not None else getattr(args, "child_tuning_p", 1.0)
        self.seed = seed if seed is not None else args.seed
        self.fisher_clip_norm = (self._fixed_clip if self._fixed_clip is not None
                                 else getattr(args, "child_tuning_fisher_clip", None))

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self._resolve(args)
        self._params = []
        if self.mode is None or model is None:
            return
        task_model = unwrap_model(model)
        self._params = [(n, p) for n, p in task_model.named_parameters() if p.requires_grad]
        if self.mode == "D" and self.p < 1:
            cached = self._mask_model() if self._mask_model is not None else None
            key = (self.p, self.seed, self.fisher_clip_norm)
            if cached is not task_model or self._mask_key != key:
                self.masks = self._fisher_masks(args, state, task_model, train_dataloader)
                self._mask_model, self._mask_key = weakref.ref(task_model), key

    def _fisher_masks(self, args, state, task_model: nn.Module, train_dataloader) -> dict[str, torch.Tensor]:
        if train_dataloader is None:
            raise RuntimeError("ChildTuning_D needs the training data for its Fisher pass (no train_dataloader)")
        start = self._starting_weights(task_model)
        named = dict(task_model.named_parameters())
        swap = start is not None and any(not torch.equal(named[n], v) for n, v in start.items() if n in named)
        if start is None and state.global_step > 0:
            raise RuntimeError(
                "ChildTuning_D on a resumed run needs the weights fine-tuning started from to recompute its Fisher "
                "mask; prepare the model with child_tuning_mode='D' (StableFineTuningCallback / StableTrainer) or pass "
                "starting_weights= to ChildTuningCallback"
            )
        current = {n: named[n].detach().clone() for n in start} if swap else None
        device = next(task_model.parameters()).device
        loader = torch.utils.data.DataLoader(
            train_dataloader.dataset, batch_size=args.per_device_train_batch_size, shuffle=False,
            collate_fn=train_dataloader.collate_fn, drop_last=args.dataloader_drop_last, num_workers=0,
        )
        was_training = task_model.training
        try:
            with torch.no_grad():
                if swap:
                    for n, v in start.items():
                        named[n].copy_(v)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(self.seed)
                task_model.train()
                fisher = fisher_information(task_model, loader, clip_norm=self.fisher_clip_norm)
        finally:
            task_model.train(was_training)
            if swap:
                with torch.no_grad():
                    for n, v in current.items():
                        named[n].copy_(v)
        masks = child_tuning_d_mask(fisher, self.p)
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        if state.is_world_process_zero:
            logger.info("hf_stable_ft: ChildTuning_D keeps %d of %d block parameters (p=%s)", kept, total, self.p)
        return masks

    def _starting_weights(self, task_model: nn.Module):
        if self.starting_weights is not None:
            return self.starting_weights(task_model)
        from .preparation import get_fine_tuning_state

        found = get_fine_tuning_state(task_model)
        return getattr(found, "initial_parameters", None)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.mode is None or not self._params or self.p >= 1:
            return
        if self.mode == "D":
            mask_gradients_(self._params, p=self.p, masks=self.masks)
            return
        generators: dict[torch.device, torch.Generator] = {}
        update = state.global_step + 1
        for name, param in self._params:
            if param.grad is None:
                continue
            device = param.grad.device
            if device not in generators:
                generators[device] = child_tuning_f_generator(self.seed, update, device)
            mask_gradients_([(name, param)], p=self.p, generator=generators[device])
