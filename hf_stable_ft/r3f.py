"""R3F (Aghajanyan et al., ICLR 2021): a consistency term between predictions on clean and noised embeddings.

Aghajanyan, Shrivastava, Gupta, Goyal, Zettlemoyer and Gupta, *Better Fine-Tuning by Reducing Representational
Collapse* (ICLR 2021, eq. 1–2)::

    L = L_task(f(x), y) + λ · KL_S( f(x) ‖ f(x + z) ),   z ~ U(−ε, ε)  or  N(0, ε²)  per embedding element,
    KL_S(P ‖ Q) = KL(P ‖ Q) + KL(Q ‖ P)

with f the model's class distribution (softmax of the logits) and x the token embeddings. As the reference
criterion (fairseq ``examples/rxf``, ``sentence_prediction_r3f.py``) does:

* the noise is added to the output of the **word-embedding** lookup (``model.get_input_embeddings()``), before
  position / type embeddings and the embedding LayerNorm, and the noised branch starts from the *detached*
  embeddings (``token_embeddings.detach().clone() + noise``): the word embeddings get no gradient through the
  noised forward; every other parameter gets gradients from both forwards, and KL_S is differentiated through
  both the clean and the noised predictions;
* both forwards run in train mode (independent dropout masks); KL_S is computed in float32, summed over classes
  and averaged over the batch; the term is only added in training (evaluation loss is the plain loss);
* defaults ε = 1e-5, uniform noise (the paper's and fairseq's ``--eps`` / ``--noise-type``).

Regression (``num_labels == 1`` or ``problem_type="regression"``): fairseq's criterion adds no term for regression
targets; here, as the issue asks, the term is the mean squared difference of the two predictions,
``mean((f(x) − f(x+z))²)`` — the symmetric KL of two Gaussians of equal variance σ² is (μ₁−μ₂)²/σ², so this is
KL_S up to the constant 1/σ². Multi-label classification is refused.

The noise is drawn from the global torch RNG (as fairseq's ``torch.distributions`` sampler), which the Trainer
saves in every checkpoint and restores on resume, so a resumed run draws the same noise. Cost: a second forward
and its backward, about 2× a training step.

Applied by :class:`~hf_stable_ft.StableTrainer`'s ``compute_loss`` (``r3f_lambda > 0``). The stock ``Trainer``'s
``compute_loss_func(outputs, labels, num_items_in_batch)`` never sees the model or the inputs, so it cannot run
the noised forward: with the stock Trainer, R3F is refused (use StableTrainer, or call :func:`r3f_term` in your
own ``compute_loss``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import unwrap_model

__all__ = ["noised_word_embeddings", "r3f_divergence", "r3f_problem_type", "r3f_term", "symmetric_kl"]

NOISE_TYPES = ("uniform", "normal")


def symmetric_kl(clean_logits: torch.Tensor, noisy_logits: torch.Tensor) -> torch.Tensor:
    """``(1/B) Σ_i [KL(p_i ‖ q_i) + KL(q_i ‖ p_i)]`` with p = softmax(clean), q = softmax(noisy), in float32."""
    p_log = F.log_softmax(clean_logits.float(), dim=-1)
    q_log = F.log_softmax(noisy_logits.float(), dim=-1)
    batch = clean_logits.size(0)
    return (F.kl_div(q_log, p_log, reduction="sum", log_target=True)
            + F.kl_div(p_log, q_log, reduction="sum", log_target=True)) / batch


def r3f_problem_type(model: nn.Module) -> str:
    """``"single_label_classification"`` or ``"regression"`` (as transformers infers it); others are refused."""
    config = getattr(unwrap_model(model), "config", None)
    problem = getattr(config, "problem_type", None)
    if problem is None:
        problem = "regression" if getattr(config, "num_labels", 2) == 1 else "single_label_classification"
    if problem not in ("single_label_classification", "regression"):
        raise ValueError(f"r3f_lambda > 0 supports single-label classification and regression, not problem_type={problem!r}")
    return problem


def r3f_divergence(clean: torch.Tensor, noisy: torch.Tensor, problem: str) -> torch.Tensor:
    """KL_S for classification, mean squared difference for regression (float32)."""
    if problem == "regression":
        return F.mse_loss(noisy.float(), clean.float(), reduction="mean")
    return symmetric_kl(clean, noisy)


@contextlib.contextmanager
def noised_word_embeddings(model: nn.Module, eps: float, noise_type: str = "uniform"):
    """Within the block, the word-embedding module's output ``e`` becomes ``e.detach() + z``,
    z ~ U(−eps, eps) or N(0, eps²) drawn in float32 from the global RNG on e's device."""
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"r3f_noise_type={noise_type!r} is invalid; allowed: 'uniform' or 'normal'")
    embeddings = unwrap_model(model).get_input_embeddings()
    if embeddings is None:
        raise ValueError(f"R3F needs the word embeddings, but {type(unwrap_model(model)).__name__} has none")

    def hook(module, inputs, output):
        noise = torch.empty(output.shape, device=output.device, dtype=torch.float32)
        noise = noise.uniform_(-eps, eps) if noise_type == "uniform" else noise.normal_(0.0, eps)
        return output.detach().clone() + noise.to(output.dtype)

    handle = embeddings.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def r3f_term(model: nn.Module, inputs: dict, clean_logits: torch.Tensor, *, eps: float = 1e-5,
             noise_type: str = "uniform", label_names=("labels",)) -> torch.Tensor:
    """R3F's divergence between ``clean_logits`` (the training forward's) and a forward of ``inputs`` with noised
    word embeddings (labels left out). Multiply by λ and add to the task loss."""
    problem = r3f_problem_type(model)
    noisy_inputs = {k: v for k, v in inputs.items() if k not in set(label_names)}
    with noised_word_embeddings(model, eps, noise_type):
        outputs = model(**noisy_inputs)
    noisy_logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    return r3f_divergence(clean_logits, noisy_logits, problem)
