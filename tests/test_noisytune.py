"""NoisyTune (Wu et al., ACL 2022): W ← W + U(−λ/2, λ/2)·std(W) per pretrained tensor, checked against the
written-out formula on tiny models, with its seeding, its place in prepare_model and resume."""

import math

import pytest
import torch
from helpers import RandomClassificationDataset, parameters_of, tiny_args
from tiny_models import TINY_CONFIGS, tiny_model
from transformers import HfArgumentParser, Trainer

from hf_stable_ft import (
    StableTrainer,
    StableTrainingArguments,
    get_fine_tuning_state,
    prepare_model,
)
from hf_stable_ft.mixout import MixoutLinear
from hf_stable_ft.noisytune import noisytune, pretrained_parameter_names


def expected_noisy(before: dict, names, intensity: float, seed: int) -> dict:
    """The paper's eq. 1 written out: for each tensor in order, u ~ U[0,1) elementwise from one generator,
    W + (u − 0.5)·λ·std(W) with the Bessel-corrected std of the whole tensor."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(before)
    for name in names:
        w = before[name]
        if w.numel() < 2:
            continue
        u = torch.rand(w.shape, generator=generator)
        n = w.numel()
        mean = w.sum() / n
        std = math.sqrt(float(((w - mean) ** 2).sum()) / (n - 1))
        out[name] = w + (u - 0.5) * intensity * std
    return out


def test_matches_the_written_out_formula_and_leaves_the_head(tmp_path):
    model = tiny_model("bert", tmp_path)
    before = parameters_of(model)
    names = noisytune(model, 0.15, seed=3)
    assert names == [n for n in before if n.startswith("bert.")]  # every encoder tensor, pooler included
    expected = expected_noisy(before, names, 0.15, 3)
    after = parameters_of(model)
    for name in before:
        torch.testing.assert_close(after[name], expected[name], rtol=0, atol=1e-6, msg=name)
    for name in ("classifier.weight", "classifier.bias"):
        assert torch.equal(after[name], before[name])  # the new head is not pretrained
    w = "bert.encoder.layer.0.attention.self.query.weight"
    delta = after[w] - before[w]
    assert delta.abs().max() <= 0.075 * before[w].std() + 1e-7  # |U(−λ/2, λ/2)·std| ≤ λ/2·std
    assert delta.abs().max() > 0.05 * before[w].std()  # and the noise really spans that range
    ln = "bert.embeddings.LayerNorm.weight"
    assert before[ln].std() == 0 and torch.equal(after[ln], before[ln])  # a constant tensor (std 0) gets no noise


def test_private_generator_leaves_the_global_rng_and_is_seeded(tmp_path):
    model = tiny_model("bert", tmp_path)
    before = parameters_of(model)
    state = torch.get_rng_state()
    noisytune(model, 0.15, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    first = parameters_of(model)
    again = tiny_model("bert", tmp_path)
    noisytune(again, 0.15, seed=1)
    other = tiny_model("bert", tmp_path)
    noisytune(other, 0.15, seed=2)
    w = "bert.encoder.layer.1.output.dense.weight"
    assert torch.equal(parameters_of(again)[w], first[w])
    assert not torch.equal(parameters_of(other)[w], first[w])
    assert not torch.equal(first[w], before[w])


def test_zero_intensity_changes_nothing_and_bad_values_are_refused(tmp_path):
    model = tiny_model("bert", tmp_path)
    before = parameters_of(model)
    assert noisytune(model, 0.0, seed=0) == []
    assert all(torch.equal(v, parameters_of(model)[k]) for k, v in before.items())
    for bad in (-0.1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="noisytune_intensity=.* is invalid; allowed: a finite float >= 0"):
            tiny_args(tmp_path / "out", noisytune_intensity=bad)
        with pytest.raises(ValueError, match="allowed: a finite float >= 0"):
            noisytune(model, bad)
    (args,) = HfArgumentParser(StableTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path / "o"), "--noisytune_intensity", "0.15"])
    assert args.noisytune_intensity == 0.15 and args.modifies_model
    assert "noisytune_intensity=0.15" in args.settings_needing_callback()


def test_explicit_parameter_list(tmp_path):
    model = tiny_model("bert", tmp_path)
    before = parameters_of(model)
    target = ["bert.encoder.layer.2.output.dense.weight", "classifier.weight"]
    assert noisytune(model, 0.3, seed=5, parameters=target[::-1]) == target  # drawn in named_parameters order
    expected = expected_noisy(before, target, 0.3, 5)
    for name, value in parameters_of(model).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="has no parameters"):
        noisytune(model, 0.1, parameters=["nope.weight"])


def test_prepare_model_order_reinit_then_noise_then_snapshot_and_mixout(tmp_path):
    """Re-drawn tensors get no noise; pretrained-WD anchors, the diagnostics reference and Mixout's W₀ are the
    perturbed weights (the point fine-tuning starts from)."""
    common = dict(reinit_layers=1, reinit_pooler=True, seed=11)
    plain = tiny_model("bert", tmp_path)
    reinit_state = prepare_model(plain, tiny_args(tmp_path / "a", **common))
    reinit_only = parameters_of(plain)
    model = tiny_model("bert", tmp_path)
    args = tiny_args(tmp_path / "b", noisytune_intensity=0.15, mixout_prob=0.1, pretrained_weight_decay=0.01,
                     diagnostics_steps=2, **common)
    state = prepare_model(model, args)
    assert set(state.reinitialized) == set(reinit_state.reinitialized)
    names = pretrained_parameter_names(model, exclude=state.reinitialized)
    assert state.noisytune_perturbed == [n for n in names if reinit_only[n].numel() > 1]
    assert not any(n.startswith(("bert.encoder.layer.2.", "bert.pooler.", "classifier.")) for n in names)
    expected = expected_noisy(reinit_only, names, 0.15, 11)
    now = parameters_of(model)
    for name in now:
        torch.testing.assert_close(now[name], expected[name], rtol=0, atol=1e-6, msg=name)
    for name in state.reinitialized:
        assert torch.equal(now[name], reinit_only[name]), name
    for name, anchor in state.pretrained_anchors.items():
        assert torch.equal(anchor, now[name]), name
    for name, module in model.named_modules():
        if isinstance(module, MixoutLinear):
            assert torch.equal(module.mixout_target, now[f"{name}.weight"]), name
    assert state.prepared_with["noisytune_intensity"] == 0.15 and state.prepared_with["noisytune_seed"] == 11
    with pytest.raises(ValueError, match="noisytune_intensity: prepared with 0.15, now asked 0.2"):
        prepare_model(model, args.with_overrides(noisytune_intensity=0.2))


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_every_architecture_perturbs_only_its_encoder(model_type, tmp_path):
    model = tiny_model(model_type, tmp_path, num_layers=2)
    before = parameters_of(model)
    names = noisytune(model, 0.15, seed=0)
    prefix = model.base_model_prefix + "."
    assert names and all(n.startswith(prefix) for n in names)
    after = parameters_of(model)
    for name in before:
        changed = not torch.equal(after[name], before[name])
        if not name.startswith(prefix):
            assert not changed, name


def test_peft_adapters_are_not_perturbed(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model("bert", tmp_path),
                                peft.LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=2))
    base = model.get_base_model()
    before = parameters_of(base)
    names = noisytune(model, 0.15, seed=0)
    assert names and not any("lora_" in n for n in names)
    assert any("base_layer" in n for n in names)  # the frozen pretrained weights under LoRA are perturbed
    after = parameters_of(base)
    assert all(torch.equal(after[n], before[n]) for n in before if "lora_" in n)


def test_stock_trainer_without_the_callback_is_refused(tmp_path):
    args = tiny_args(tmp_path / "out", noisytune_intensity=0.15, max_steps=1)
    trainer = Trainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset())
    with pytest.raises(RuntimeError, match="noisytune_intensity=0.15 are applied by StableFineTuningCallback"):
        trainer.train()


def _train(tmp_path, output_dir, resume=None, **overrides):
    model = tiny_model("bert", tmp_path)
    settings = dict(noisytune_intensity=0.15, max_steps=6, save_strategy="steps", save_steps=2)
    settings.update(overrides)
    trainer = StableTrainer(model=model, args=tiny_args(output_dir, **settings),
                            train_dataset=RandomClassificationDataset(size=64))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_resume_continues_exactly_and_other_intensity_is_refused(tmp_path):
    full = _train(tmp_path, tmp_path / "full", pretrained_weight_decay=0.01)
    _train(tmp_path, tmp_path / "cut", pretrained_weight_decay=0.01)
    resumed = _train(tmp_path, tmp_path / "resumed", resume=str(tmp_path / "cut" / "checkpoint-2"),
                     pretrained_weight_decay=0.01)
    for name, value in parameters_of(full.model).items():
        torch.testing.assert_close(parameters_of(resumed.model)[name], value, rtol=0, atol=0, msg=name)
    # the anchors of the resumed run are the perturbed starting weights, not the checkpoint's
    anchors = get_fine_tuning_state(resumed.model).pretrained_anchors
    full_anchors = get_fine_tuning_state(full.model).pretrained_anchors
    assert all(torch.equal(anchors[n], full_anchors[n]) for n in anchors)
    with pytest.raises(ValueError, match="noisytune_intensity: checkpoint 0.15, now 0.3"):
        _train(tmp_path, tmp_path / "other", resume=str(tmp_path / "cut" / "checkpoint-2"),
               pretrained_weight_decay=0.01, noisytune_intensity=0.3)
