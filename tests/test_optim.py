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
