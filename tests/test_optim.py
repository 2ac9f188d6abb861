import math

import pytest
import torch

from hf_stable_ft import StableAdamW


def _train(make_optimizer, steps=100, dtype=torch.float32, skip=None):
    torch.manual_seed(0)
    params = [torch.randn(40, 30, dtype=dtype, requires_grad=True), torch.randn(30, dtype=dtype, requires_grad=True)]
    optimizer = make_optimizer(params)
    for step in range(steps):
        generator = torch.Generator().manual_seed(1000 + step)
        for index, p in enumerate(params):
            p.grad = None if skip and skip(step, index) else torch.randn(p.shape, generator=generator, dtype=dtype)
        optimizer.step()
    return [p.detach().clone() for p in params], optimizer


def _bert_adam_reference(params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """Devlin et al. 2019's update, written out: no 1/(1-beta^t) correction of the moments."""
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]

    class Reference:
        @torch.no_grad()
        def step(self):
            for p, (m, v) in zip(params, moments):
                if p.grad is None:
                    continue
                p.mul_(1 - lr * weight_decay)
                m.mul_(betas[0]).add_(p.grad, alpha=1 - betas[0])
                v.mul_(betas[1]).addcmul_(p.grad, p.grad, value=1 - betas[1])
                p.addcdiv_(m, v.sqrt().add_(eps), value=-lr)

    return Reference()


def _max_relative_error(a, b):
    return max(((x - y).abs() / y.abs().clamp_min(1e-30)).max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("kernel", [dict(fused=True), dict(foreach=True), dict(foreach=False)])
def test_bias_corrected_matches_torch_adamw(kernel):
    expected, _ = _train(lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, **kernel))
    actual, _ = _train(lambda ps: StableAdamW(ps, lr=1e-2, weight_decay=0.1, **kernel))
    assert _max_relative_error(actual, expected) <= 1e-6


@pytest.mark.parametrize("kernel", [dict(fused=True), dict(foreach=True), dict(foreach=False)])
def test_without_bias_correction_is_bert_adam(kernel):
    expected, _ = _train(lambda ps: _bert_adam_reference(ps, lr=1e-2, weight_decay=0.1), dtype=torch.float64)
    actual, _ = _train(
        lambda ps: StableAdamW(ps, lr=1e-2, weight_decay=0.1, bias_correction=False, **kernel), dtype=torch.float64
    )
    assert _max_relative_error(actual, expected) <= 1e-9


def test_bert_adam_with_parameters_that_miss_updates():
    # the second parameter gets no gradient on every third step, so its own step count lags behind
    skip = lambda step, index: index == 1 and step % 3 == 0  # noqa: E731
    expected, _ = _train(lambda ps: _bert_adam_reference(ps, lr=1e-2), dtype=torch.float64, skip=skip)
    actual, _ = _train(lambda ps: StableAdamW(ps, lr=1e-2, weight_decay=0.0, bias_correction=False), dtype=torch.float64, skip=skip)
    assert _max_relative_error(actual, expected) <= 1e-9


def test_first_bert_adam_update_is_3_16_times_adams():
    updates = {}
    for bias_correction in (True, False):
        p = torch.zeros(1000, requires_grad=True)
        p.grad = torch.randn(1000, generator=torch.Generator().manual_seed(0))
        StableAdamW([p], lr=1e-3, weight_decay=0.0, bias_correction=bias_correction).step()
        updates[bias_correction] = p.detach().abs().mean().item()
    # (1 - beta1) / sqrt(1 - beta2) = 0.1 / sqrt(0.001) = 3.162 (Zhang et al. 2021, §3)
    assert updates[False] / updates[True] == pytest.approx(0.1 / math.sqrt(0.001), rel=1e-4)


def test_pretrained_weight_decay_pulls_toward_anchor_exactly():
    anchor = torch.full((4, 4), 2.0)
    p = torch.zeros(4, 4, requires_grad=True)
    optimizer = StableAdamW(
        [{"params": [p], "anchors": [anchor], "pretrained_weight_decay": 0.5}], lr=0.1, weight_decay=0.0
    )
    p.grad = torch.zeros_like(p)  # no Adam movement: only the decay acts
    optimizer.step()
    # theta <- theta - lr * lambda * (theta - theta_pre) = 0 - 0.1 * 0.5 * (0 - 2) = 0.1
    assert torch.allclose(p.detach(), torch.full((4, 4), 0.1))
    optimizer.step()
    assert torch.allclose(p.detach(), torch.full((4, 4), 0.1 + 0.05 * 1.9))


def test_anchors_stay_out_of_the_state_dict_and_survive_loading():
    p = torch.zeros(3, requires_grad=True)
    optimizer = StableAdamW([{"params": [p], "anchors": [torch.ones(3)], "pretrained_weight_decay": 0.1}])
    p.grad = torch.ones(3)
    optimizer.step()
    state = optimizer.state_dict()
    assert all("anchors" not in group for group in state["param_groups"])
    assert state["param_groups"][0]["pretrained_weight_decay"] == 0.1
    fresh = StableAdamW([{"params": [p], "anchors": [torch.ones(3)], "pretrained_weight_decay": 0.1}])
    fresh.load_state_dict(state)
    assert torch.equal(fresh.pretrained_anchors[p], torch.ones(3))
    assert fresh.state[p]["step"].item() == 1


def test_missing_anchor_is_an_error():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="no entry in pretrained_anchors"):
        StableAdamW([p], pretrained_weight_decay=0.1)


def test_step_hooks_fire_once_per_step():
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # makes torch wrap AdamW.step with its hook runner
    calls = []
    p = torch.zeros(3, requires_grad=True)
    optimizer = StableAdamW([p], bias_correction=False)
    optimizer.register_step_pre_hook(lambda *args: calls.append(1))
    p.grad = torch.ones(3)
    optimizer.step()
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------------------------
# Parameters that miss gradients, and steps the fp16 loss scaler skips (issue 13, items 1 and 2), against a
# written-out float64 reference.
# ---------------------------------------------------------------------------------------------------------------


class WrittenOutAdam:
    """The update rules of optim.py's docstring, one parameter at a time, in float64.

    For each parameter that has a gradient at this step (a parameter without one is left entirely alone, as
    torch.optim.AdamW and the original BERT optimizers do):

    1. pretrained weight decay (Zhang et al. 2021 §6):  θ ← θ − lr·λ_pre·(θ − θ_pre)
    2. t ← t + 1 (the parameter's own count of updates)
       m ← β₁·m + (1 − β₁)·g,   v ← β₂·v + (1 − β₂)·g²
    3. BERTAdam (Devlin et al. 2019, AdamWeightDecay):  θ ← θ − lr·(m/(√v + ε) + λ·θ)
       AdamW (bias-corrected):                          θ ← θ − lr·(m̂/(√v̂ + ε) + λ·θ),
                                                        m̂ = m/(1 − β₁ᵗ), v̂ = v/(1 − β₂ᵗ)
    """

    def __init__(self, groups, betas=(0.9, 0.999), eps=1e-8):
        self.groups = [dict(g, params=list(g["params"])) for g in groups]
        self.betas, self.eps = betas, eps
        self.state = {id(p): dict(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p)) for g in groups for p in g["params"]}

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        for group in self.groups:
            lr, wd = group["lr"], group.get("weight_decay", 0.0)
            pre_wd, anchors = group.get("pretrained_weight_decay", 0.0), group.get("anchors")
            for index, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[id(p)]
                if pre_wd:
                    p.sub_(lr * pre_wd * (p - anchors[index]))
                state["t"] += 1
                t = state["t"]
                state["m"] = b1 * state["m"] + (1 - b1) * g
                state["v"] = b2 * state["v"] + (1 - b2) * g * g
                m, v = state["m"], state["v"]
                if group["bias_correction"]:
                    m, v = m / (1 - b1**t), v / (1 - b2**t)
                p.sub_(lr * (m / (v.sqrt() + self.eps) + wd * p))


def _groups(seed, pretrained=False, bias_correction=False, n_groups=2, per_group=4):
    torch.manual_seed(seed)
    groups = []
    for g in range(n_groups):
        params = [torch.randn(5, 3, dtype=torch.float64, requires_grad=True) for _ in range(per_group)]
        group = dict(params=params, lr=1e-2 * (g + 1), weight_decay=0.1 * g, bias_correction=bias_correction)
        if pretrained:
            group["pretrained_weight_decay"] = 0.5 + g
            group["anchors"] = [p.detach() + torch.randn_like(p) for p in params]
        groups.append(group)
    return groups


def _clone_groups(groups):
    cloned = []
    for group in groups:
        group = dict(group)
        group["params"] = [p.detach().clone().requires_grad_(True) for p in group["params"]]
        if "anchors" in group:
            group["anchors"] = [a.clone() for a in group["anchors"]]
        cloned.append(group)
    return cloned


def _skip_pattern(seed, n_params, steps):
    """skip[step][i]: parameter i has no gradient. Each parameter starts late (0–20 steps) and then misses
    steps at its own random rate (0–60 %), so step counts inside one group drift apart in every order."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 21, (n_params,), generator=generator)
    rate = torch.rand(n_params, generator=generator) * 0.6
    noise = torch.rand(steps, n_params, generator=generator)
    return [[bool(step < start[i] or noise[step, i] < rate[i]) for i in range(n_params)] for step in range(steps)]


def _run_both(groups, skip, kernel, steps=200):
    reference_groups = _clone_groups(groups)
    ours = StableAdamW(_clone_groups(groups), **kernel)
    reference = WrittenOutAdam(reference_groups)
    ours_params = [p for g in ours.param_groups for p in g["params"]]
    ref_params = [p for g in reference.groups for p in g["params"]]
    for step in range(steps):
        generator = torch.Generator().manual_seed(10_000 + step)
        for i, (a, b) in enumerate(zip(ours_params, ref_params)):
            grad = torch.randn(a.shape, generator=generator, dtype=torch.float64)
            a.grad = None if skip[step][i] else grad.clone()
            b.grad = None if skip[step][i] else grad.clone()
        ours.step()
        reference.step()
    return ours, ours_params, ref_params


KERNELS = [dict(fused=True), dict(foreach=True), dict(foreach=False)]


@pytest.mark.parametrize("kernel", KERNELS, ids=["fused", "foreach", "for-loop"])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("bias_correction", [False, True], ids=["bertadam", "adamw"])
def test_parameters_missing_gradients_match_the_written_out_reference(seed, bias_correction, kernel):
    groups = _groups(seed, bias_correction=bias_correction)
    skip = _skip_pattern(seed, sum(len(g["params"]) for g in groups), 200)
    ours, actual, expected = _run_both(groups, skip, kernel)
    assert _max_relative_error(actual, expected) <= 1e-10
    counts = [ours.state[p]["step"].item() for p in actual]
    assert counts == [sum(not row[i] for row in skip) for i in range(len(actual))]


@pytest.mark.parametrize("kernel", KERNELS, ids=["fused", "foreach", "for-loop"])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("bias_correction", [False, True], ids=["bertadam", "adamw"])
def test_pretrained_weight_decay_with_missing_gradients_matches_the_reference(seed, bias_correction, kernel):
    groups = _groups(100 + seed, pretrained=True, bias_correction=bias_correction)
    skip = _skip_pattern(100 + seed, sum(len(g["params"]) for g in groups), 200)
    _, actual, expected = _run_both(groups, skip, kernel)
    assert _max_relative_error(actual, expected) <= 1e-10


def test_issue_example_middle_parameter_starting_late():
    """Group [A, B, C], B without gradient for the first 3 steps: at step 4 each update equals BERTAdam's
    (before the fix B's update was 1.7× and C's 0.58× the written-out reference's)."""
    torch.manual_seed(0)
    groups = [dict(params=[torch.randn(50, dtype=torch.float64, requires_grad=True) for _ in range(3)], lr=1e-3,
                   weight_decay=0.0, bias_correction=False)]
    skip = [[False, step < 3, False] for step in range(4)]
    _, after3, _ = _run_both(groups, skip, dict(fused=True), steps=3)
    _, actual, expected = _run_both(groups, skip, dict(fused=True), steps=4)
    ratios = [((a - b).abs().mean() / (e - b).abs().mean()).item() for a, e, b in zip(actual, expected, after3)]
    assert ratios == pytest.approx([1.0, 1.0, 1.0], rel=1e-9), ratios


def _scaled_run(kernel, skipped_steps, steps=30, pretrained=True, bias_correction=False, unscale_first=False):
    """Train with torch.amp.GradScaler on the CPU; at ``skipped_steps`` the loss is made non-finite, as an fp16
    overflow would, so the scaler must skip the update. ``unscale_first``: call ``scaler.unscale_`` before
    ``scaler.step`` (what the Trainer does to clip gradients). Returns (optimizer, params, groups, targets,
    [whether each skipped step left everything bit-identical])."""
    groups = _groups(7, pretrained=pretrained, bias_correction=bias_correction, per_group=3)
    optimizer = StableAdamW(_clone_groups(groups), **kernel)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    targets = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i, p in enumerate(params)]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=5)
    unchanged = []
    for step in range(steps):
        coefficient = 1.0 + 0.1 * step  # a different gradient at every step
        loss = sum(coefficient * ((p - target) ** 2).sum() for p, target in zip(params, targets))
        if step in skipped_steps:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        if unscale_first:
            scaler.unscale_(optimizer)
        before = ([p.detach().clone() for p in params],
                  [{k: v.clone() for k, v in optimizer.state[p].items()} for p in params])
        scaler.step(optimizer)
        scaler.update()
        if step in skipped_steps:
            after_state = [{k: v.clone() for k, v in optimizer.state[p].items()} for p in params]
            unchanged.append(
                all(torch.equal(a, b) for a, b in zip(params, before[0]))
                and all(set(x) == set(y) or not y for x, y in zip(after_state, before[1]))
                and all(torch.equal(x[k], y[k]) for x, y in zip(after_state, before[1]) for k in y)
            )
        for p in params:
            p.grad = None
    return optimizer, params, groups, targets, unchanged


@pytest.mark.parametrize("unscale_first", [False, True], ids=["step", "unscale-then-step"])
@pytest.mark.parametrize("kernel", KERNELS, ids=["fused", "foreach", "for-loop"])
@pytest.mark.parametrize("bias_correction", [False, True], ids=["bertadam", "adamw"])
def test_a_step_the_loss_scaler_skips_changes_nothing(kernel, bias_correction, unscale_first):
    """Issue 13 item 2: with the fused kernel torch's GradScaler calls step() on an overflow and lets the kernel
    skip (found_inf); the pretrained-WD lerp used to move the weights anyway. The steps after a skip must use
    the right t (BERTAdam's rescaling): the whole run equals the reference run without the skipped steps."""
    skipped = {0, 3, 4, 11}
    optimizer, params, groups, targets, unchanged = _scaled_run(
        kernel, skipped, bias_correction=bias_correction, unscale_first=unscale_first
    )
    assert unchanged == [True] * len(skipped)  # parameters, moments and step counts bit-identical
    assert [optimizer.state[p]["step"].item() for p in params] == [30 - len(skipped)] * len(params)
    # every other step equals the written-out reference run without the skipped steps
    reference_groups = _clone_groups(groups)
    reference = WrittenOutAdam(reference_groups)
    ref_params = [p for g in reference.groups for p in g["params"]]
    for step in range(30):
        if step in skipped:
            continue
        coefficient = 1.0 + 0.1 * step
        for p, target in zip(ref_params, targets):
            p.grad = 2 * coefficient * (p.detach() - target)
        reference.step()
    assert _max_relative_error(params, ref_params) <= 1e-10
