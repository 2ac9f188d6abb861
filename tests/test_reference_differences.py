"""Where hf_stable_ft is right and the papers' released code is not — measured, not asserted.

Each reference behaviour is re-implemented here as a written-out formula, from reading the code of

* bloodwass/mixout ``mixout/mixout.py`` and asappresearch/revisit-bert-finetuning ``mixout.py`` (``Mixout``,
  an ``InplaceFunction`` whose backward is ``grad_output * noise``);
* asappresearch/revisit-bert-finetuning at commit 7fa85a7 (``prior_wd_optim.py``'s ``PriorWD``, ``run_glue.py``'s
  ``get_optimizer_grouped_parameters`` and ``--reinit_pooler``; the repository pins transformers 2.8.0).

The numbers these tests measure are quoted in README ("Where we differ from the reference code").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import tiny_model  # noqa: E402

from hf_stable_ft import StableAdamW, build_param_groups, snapshot_parameters  # noqa: E402
from hf_stable_ft.mixout import apply_mixout  # noqa: E402
from hf_stable_ft.reinit import reinit_top_layers  # noqa: E402

# --------------------------------------------------------------------------- Mixout's backward


class ReferenceMixout(torch.autograd.Function):
    """The reference Mixout with its mask passed in: forward ``((1 − M)·W₀ + M·W − p·W₀)/(1 − p)`` (M one
    Bernoulli(1 − p) draw per input column, repeated over the rows), backward ``grad_output · M`` — the
    1/(1 − p) of the forward's derivative is missing."""

    @staticmethod
    def forward(ctx, weight, target, keep, p):
        noise = keep.expand_as(weight)
        ctx.save_for_backward(noise)
        return ((1 - noise) * target + noise * weight - p * target) / (1 - p)

    @staticmethod
    def backward(ctx, grad_output):
        (noise,) = ctx.saved_tensors
        return grad_output * noise, None, None, None


def _mixout_gradients(p: float, seed: int = 0):
    """(ours, the reference's, the exact derivative) of a loss w.r.t. W for one Mixout layer and one mask."""
    torch.manual_seed(seed)
    layer = nn.Linear(64, 12).double()
    apply_mixout(layer, p, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight))  # W has moved away from W₀
    x, upstream = torch.randn(4, 64, dtype=torch.float64), torch.randn(4, 12, dtype=torch.float64)
    layer.train()
    (layer(x) * upstream).sum().backward()
    ours = layer.weight.grad.clone()

    # the same mask: our per-input draw from the same generator state
    keep = torch.empty(64, dtype=torch.float64).bernoulli_(1 - p, generator=torch.Generator().manual_seed(seed))
    w = layer.weight.detach().clone().requires_grad_(True)
    w0 = layer.mixout_target
    (F.linear(x, ReferenceMixout.apply(w, w0, keep, p), layer.bias.detach()) * upstream).sum().backward()
    reference = w.grad.clone()
    w.grad = None
    exact_mixed = ((1 - keep) * w0 + keep * w - p * w0) / (1 - p)  # the paper's formula, plain autograd
    (F.linear(x, exact_mixed, layer.bias.detach()) * upstream).sum().backward()
    return ours, reference, w.grad.clone(), keep


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_reference_mixout_gradient_is_one_minus_p_times_the_true_one(p):
    ours, reference, exact, keep = _mixout_gradients(p)
    kept = keep.bool().expand_as(exact)
    assert kept.any() and (~kept).any()
    torch.testing.assert_close(ours, exact, rtol=1e-12, atol=1e-12)  # ours: M/(1 − p) ⊙ ∂L/∂W'
    ratio = reference[kept] / exact[kept]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1 - p), rtol=1e-12, atol=0)  # 0.9 … 0.1
    assert torch.equal(reference[~kept], exact[~kept])  # both 0 where W₀ was used


def test_reference_mixout_gradient_fails_a_finite_difference_check():
    p = 0.3
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    w0 = torch.randn(3, 4, dtype=torch.float64)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    f = lambda weight: ReferenceMixout.apply(weight, w0, keep, p)  # noqa: E731
    assert not torch.autograd.gradcheck(f, (w,), raise_exception=False)


# --------------------------------------------------------------------------- PriorWD


class ReferencePriorWD:
    """``PriorWD`` at 7fa85a7 around an inner optimizer, written out:

    * ``__init__``: remembers each group's ``weight_decay`` and sets it to 0 **for every group, whatever
      use_prior_wd** (fixed only in the unmerged pull request #5); copies every parameter as its prior.
    * ``step``: if use_prior_wd, ``θ ← θ − lr·λ_group·(θ − θ_prior)`` for every parameter of every group — the
      branch meant to give the last group (the head) ordinary decay tests ``i == len(param_groups)``, which an
      index never equals (issue #4); then the inner step.
    """

    def __init__(self, optimizer, use_prior_wd):
        self.optimizer, self.use_prior_wd = optimizer, use_prior_wd
        self.weight_decay_by_group = [group["weight_decay"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["weight_decay"] = 0
        self.prior = {id(p): p.detach().clone() for group in optimizer.param_groups for p in group["params"]}

    @torch.no_grad()
    def step(self):
        if self.use_prior_wd:
            for i, group in enumerate(self.optimizer.param_groups):
                for p in group["params"]:
                    p.sub_(group["lr"] * self.weight_decay_by_group[i] * (p - self.prior[id(p)]))
        self.optimizer.step()


def _run(params, optimizer, steps, gradients):
    for step in range(steps):
        for p, g in zip(params, gradients(step)):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach().clone() for p in params]


def test_reference_ordinary_weight_decay_is_silently_zero():
    """Without --prior_weight_decay, a run with weight_decay 0.01 equals the run with weight_decay 0 bit for bit
    (so its "WD" baseline is its "Standard" one); ours applies the decay."""
    torch.manual_seed(0)
    start = [torch.randn(8, 8, dtype=torch.float64) for _ in range(2)]
    grads = [[torch.randn(8, 8, dtype=torch.float64) for _ in start] for _ in range(50)]
    lr, wd = 1e-2, 0.01

    def fresh():
        return [s.clone().requires_grad_(True) for s in start]

    p = fresh()
    reference = _run(p, ReferencePriorWD(torch.optim.AdamW(p, lr=lr, weight_decay=wd), use_prior_wd=False), 50, grads.__getitem__)
    p = fresh()
    no_decay = _run(p, torch.optim.AdamW(p, lr=lr, weight_decay=0.0), 50, grads.__getitem__)
    p = fresh()
    ours = _run(p, StableAdamW(p, lr=lr, weight_decay=wd), 50, grads.__getitem__)
    p = fresh()
    adamw = _run(p, torch.optim.AdamW(p, lr=lr, weight_decay=wd), 50, grads.__getitem__)
    assert all(torch.equal(a, b) for a, b in zip(reference, no_decay))
    assert all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(ours, adamw))
    assert all(not torch.allclose(a, b, rtol=1e-6, atol=0) for a, b in zip(ours, no_decay))

    # with zero gradients only the decay acts: θ·(1 − lr·λ)^N, 0.999^100 = 0.904792 of the start; the
    # reference keeps 1.0
    p = fresh()
    zero = lambda step: [torch.zeros_like(s) for s in start]  # noqa: E731
    reference = _run(p, ReferencePriorWD(torch.optim.AdamW(p, lr=0.1, weight_decay=wd), use_prior_wd=False), 100, zero)
    p = fresh()
    ours = _run(p, StableAdamW(p, lr=0.1, weight_decay=wd), 100, zero)
    assert all(torch.equal(a, s) for a, s in zip(reference, start))
    assert all(torch.allclose(a, s * 0.999**100, rtol=1e-12, atol=0) for a, s in zip(ours, start))
    assert 0.999**100 == pytest.approx(0.904792, abs=1e-6)


def test_reference_prior_wd_pulls_the_new_head_toward_its_random_init(tmp_path):
    """With --prior_weight_decay the reference pulls *every* parameter toward its value when the optimizer was
    built — for the freshly initialised head that is its random draw, so the head gets no decay at all
    (with zero gradients: exactly 1.0 of its start after 100 steps). Ours decays the new head toward 0 with
    ordinary weight decay (0.999^100 = 0.904792) and only the pretrained matrices toward θ_pre."""
    model = tiny_model("bert", tmp_path, num_layers=2)
    head = ["classifier.weight"]
    lr, wd = 0.1, 0.01
    anchors = snapshot_parameters(model, exclude=["classifier.weight", "classifier.bias"])
    groups = build_param_groups(model, lr, weight_decay=wd, pretrained_weight_decay=wd, pretrained_anchors=anchors)
    ours = StableAdamW(groups, lr=lr)
    named = dict(model.named_parameters())
    start = {n: named[n].detach().clone() for n in named}
    params = list(named.values())
    zero = lambda step: [torch.zeros_like(p) for p in params]  # noqa: E731
    _run(params, ours, 100, zero)
    for name in head:
        torch.testing.assert_close(named[name].detach(), start[name] * 0.999**100, rtol=1e-5, atol=0)  # float32
    pretrained = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(named[pretrained].detach(), start[pretrained])  # at θ_pre: nothing to pull

    reference_model = tiny_model("bert", tmp_path / "ref", num_layers=2)
    ref_named = dict(reference_model.named_parameters())
    decay = [p for n, p in ref_named.items() if p.dim() >= 2]
    no_decay = [p for n, p in ref_named.items() if p.dim() < 2]
    inner = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    ref_params = decay + no_decay
    _run(ref_params, ReferencePriorWD(inner, use_prior_wd=True), 100, lambda step: [torch.zeros_like(p) for p in ref_params])
    for name in head:
        assert torch.equal(ref_named[name].detach(), start[name])  # the head never decays


# --------------------------------------------------------------------------- LLRD on ELECTRA


def reference_llrd_parameters(model, model_type: str) -> list[str]:
    """Names of the parameters the reference's LLRD branch hands to the optimizer: those whose name contains
    "classifier" or "pooler", plus every parameter of ``<base>.embeddings`` and of each ``<base>.encoder.layer[i]``."""
    base = getattr(model, model_type)
    named = {id(p): n for n, p in model.named_parameters()}
    grouped = [n for n, _ in model.named_parameters() if "classifier" in n or "pooler" in n]
    for module in [base.embeddings, *base.encoder.layer]:
        grouped += [named[id(p)] for p in module.parameters()]
    return grouped


def test_reference_llrd_never_trains_electra_embeddings_project(tmp_path):
    model = tiny_model("electra", tmp_path, num_layers=2)  # embedding_size 16 -> hidden 32
    missing = sorted(set(n for n, _ in model.named_parameters()) - set(reference_llrd_parameters(model, "electra")))
    assert missing == ["electra.embeddings_project.bias", "electra.embeddings_project.weight"]
    named = dict(model.named_parameters())
    assert sum(named[n].numel() for n in missing) == 16 * 32 + 32 == 544
    # ELECTRA-small (embedding 128 -> hidden 256): 128·256 + 256 = 33,024 weights frozen at their pretrained
    # values, every token's input to the encoder; base and large have embedding_size == hidden_size, no projection.
    assert 128 * 256 + 256 == 33_024

    groups = build_param_groups(model, 1e-3, layerwise_lr_decay=0.5)
    ours = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert set(ours) == set(named)
    assert ours["electra.embeddings_project.weight"] == ours["electra.embeddings.word_embeddings.weight"] == 1e-3 * 0.5**3


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_reference_llrd_covers_bert_and_roberta(model_type, tmp_path):
    """The measurement above is fair: for BERT and RoBERTa the same re-implementation misses nothing."""
    model = tiny_model(model_type, tmp_path, num_layers=2)
    assert set(n for n, _ in model.named_parameters()) == set(reference_llrd_parameters(model, model_type))


# --------------------------------------------------------------------------- --reinit_pooler on RoBERTa


def test_reference_reinit_pooler_on_roberta_changes_nothing(tmp_path):
    """transformers 2.8's RobertaForSequenceClassification built ``RobertaModel(config)`` with a pooler but
    computed its logits from ``classifier(sequence_output)``: the pooler is never used. Re-drawing it, as
    ``--reinit_pooler`` does (``pooler.dense.weight ~ N(0, 0.02²)``, bias 0), leaves the logits bit-identical
    and the pooler receives no gradient. (With transformers ≥ 4 ``roberta.pooler`` is None and the reference
    line raises AttributeError.) Ours re-draws ``classifier.dense``, the layer that plays the pooler's role."""
    from transformers.models.roberta.modeling_roberta import RobertaPooler

    model = tiny_model("roberta", tmp_path, num_layers=2).eval()
    assert model.roberta.pooler is None
    config = model.config
    model.roberta.pooler = RobertaPooler(config)  # the 2.8 layout: a pooler the classification head ignores
    ids = torch.tensor([[0, 5, 9, 17, 2], [0, 33, 8, 2, 1]])
    with torch.no_grad():
        before = model(input_ids=ids).logits.clone()
        model.roberta.pooler.dense.weight.normal_(mean=0.0, std=config.initializer_range)
        model.roberta.pooler.dense.bias.zero_()
        after = model(input_ids=ids).logits
    assert (after - before).abs().max().item() == 0.0
    model.train()
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    assert all(p.grad is None for p in model.roberta.pooler.parameters())
    assert model.classifier.dense.weight.grad is not None

    model.roberta.pooler = None
    model.eval()
    assert sorted(reinit_top_layers(model, 0, reinit_pooler=True, seed=0)) == ["classifier.dense.bias", "classifier.dense.weight"]
    with torch.no_grad():
        assert (model(input_ids=ids).logits - before).abs().max().item() > 1e-4
