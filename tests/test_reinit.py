import math

import pytest
import torch
from tiny_models import TINY_CONFIGS, tiny_model
from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2ForSequenceClassification

from hf_stable_ft import get_encoder_layout, reinit_top_layers, unwrap_model
from hf_stable_ft.architectures import transformer_blocks

LAYERWISE_TYPES = [t for t in TINY_CONFIGS if t != "albert"]


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _expected_names(model, num_layers, pooler=True):
    layout = get_encoder_layout(model)
    blocks = transformer_blocks(model)
    prefixes = [f"{layout.layers}.{i}." for i in range(len(blocks) - num_layers, len(blocks))]
    if pooler:
        prefixes += [p + "." for p in layout.pooler]
    return {n for n, _ in model.named_parameters() if any(n.startswith(p) for p in prefixes)}


@pytest.mark.parametrize("model_type", LAYERWISE_TYPES)
def test_reinit_touches_exactly_top_blocks_and_pooler(model_type, tmp_path):
    model = tiny_model(model_type, tmp_path, num_layers=3)
    before = _snapshot(model)
    names = reinit_top_layers(model, 2, reinit_pooler=True, seed=0)
    assert set(names) == _expected_names(model, 2)
    after = _snapshot(model)
    for name, value in after.items():
        if name not in names:
            assert torch.equal(value, before[name]), f"{name} changed but was not re-initialised"
    for name in names:
        value = after[name]
        if name.endswith("bias"):
            assert torch.count_nonzero(value) == 0
        elif value.dim() == 1:
            assert torch.all(value == 1), name
        else:
            # saved-and-reloaded weights carry _is_hf_initialized: make sure they really were re-drawn
            assert not torch.equal(value, before[name]), f"{name} was not re-drawn"
            if value.numel() >= 512 and not get_encoder_layout(model).out_projections:  # ModernBERT: test below
                assert value.std().item() == pytest.approx(0.02, rel=0.2), name


def test_modernbert_is_redrawn_as_its_own_init_draws_it(tmp_path):
    # ModernBertPreTrainedModel._init_weights written out: a normal truncated at +-cutoff*std, with std =
    # initializer_range for Wqkv / Wi and initializer_range / sqrt(2 * num_hidden_layers) for attn.Wo, mlp.Wo and
    # head.dense. A normal truncated at +-c*std has standard deviation std * sqrt(1 - 2c*phi(c) / (2*Phi(c) - 1)).
    model = tiny_model("modernbert", tmp_path, num_layers=3)
    config = model.config
    cutoff, base = config.initializer_cutoff_factor, config.initializer_range
    assert (cutoff, base) == (2.0, 0.02)
    shrink = math.sqrt(1 - 2 * cutoff * math.exp(-cutoff**2 / 2) / math.sqrt(2 * math.pi) / math.erf(cutoff / math.sqrt(2)))
    names = reinit_top_layers(model, 2, reinit_pooler=True, seed=0)
    params = dict(model.named_parameters())
    drawn = [n for n in names if params[n].dim() >= 2]
    out = [n for n in drawn if n.endswith(("attn.Wo.weight", "mlp.Wo.weight", "head.dense.weight"))]
    assert len(out) == 5 and len(drawn) == 9
    for name in drawn:
        std = base / math.sqrt(2 * 3) if name in out else base
        value = params[name]
        assert value.abs().max().item() <= cutoff * std * (1 + 1e-6), name
        assert value.std().item() == pytest.approx(std * shrink, rel=0.15), name


def test_reinit_is_seeded_and_leaves_global_rng_alone(tmp_path):
    first, second = tiny_model("bert", tmp_path), tiny_model("bert", tmp_path)
    torch.manual_seed(123)
    reinit_top_layers(first, 1, seed=5)
    after_first = torch.rand(3)
    torch.manual_seed(123)
    reinit_top_layers(second, 1, seed=5)
    after_second = torch.rand(3)
    assert torch.equal(after_first, after_second)
    for (n, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
        assert torch.equal(a, b), n


def test_reinit_pooler_only_for_roberta_uses_classifier_dense(tmp_path):
    model = tiny_model("roberta", tmp_path)
    names = reinit_top_layers(model, 0, reinit_pooler=True, seed=0)
    assert set(names) == {"classifier.dense.weight", "classifier.dense.bias"}


def test_reinit_rejects_more_layers_than_the_model_has(tmp_path):
    model = tiny_model("bert", tmp_path, num_layers=2)
    with pytest.raises(ValueError, match=r"reinit_layers=3 .* only 2 .*allowed: 0\.\.2"):
        reinit_top_layers(model, 3)


def test_albert_is_refused_with_a_reason(tmp_path):
    model = tiny_model("albert", tmp_path)
    with pytest.raises(ValueError, match="ALBERT shares one set of block weights"):
        reinit_top_layers(model, 1)


def test_unknown_architecture_names_supported_ones():
    model = GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=99))
    with pytest.raises(ValueError, match="supported model types: .*bert.*modernbert"):
        reinit_top_layers(model, 1)


def test_reinit_through_peft_wrapper(tmp_path):
    peft = pytest.importorskip("peft")
    model = tiny_model("bert", tmp_path)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(target_modules=["query", "value"], r=2, task_type="SEQ_CLS"))
    names = reinit_top_layers(wrapped, 1, seed=0)
    assert names and all(n.startswith(("bert.encoder.layer.2.", "bert.pooler.")) for n in names)
    assert unwrap_model(wrapped) is model


def test_reinit_on_embedded_minilm(minilm_path):
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    before = _snapshot(model)
    names = set(reinit_top_layers(model, 2, reinit_pooler=True, seed=0))
    assert names == _expected_names(model, 2)
    assert any(n.startswith("bert.encoder.layer.4.") for n in names)
    assert not any(n.startswith("bert.encoder.layer.3.") for n in names)
    for name, value in model.named_parameters():
        if name in names and name.endswith("bias"):
            assert torch.count_nonzero(value) == 0
        elif name in names:
            assert not torch.equal(value, before[name]), f"{name} kept its pretrained value"
        else:
            assert torch.equal(value, before[name]), f"{name} changed"
