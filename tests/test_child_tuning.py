"""ChildTuning (Xu et al., EMNLP 2021): F's per-update Bernoulli mask and D's Fisher mask, checked against the
written-out formulas on tiny models — where the mask meets clipping and accumulation, weight decay on masked
parameters, composition with the other switches, and resume."""

import math

import pytest
import torch
from helpers import RandomClassificationDataset, parameters_of, tiny_args
from tiny_models import tiny_model
from torch import nn
from transformers import Trainer, TrainerCallback

from hf_stable_ft import StableFineTuningCallback, StableTrainer, stable_optimizer
from hf_stable_ft.child_tuning import (
    ChildTuningCallback,
    child_tuning_candidates,
    child_tuning_d_mask,
    child_tuning_f_generator,
    fisher_information,
    mask_gradients_,
)


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


class GradientSpy(TrainerCallback):
    """The gradients the optimizer stepped with, per update (read after optimizer.step, before zero_grad)."""

    def __init__(self):
        self.grads = []

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def raw_gradient(model, dataset):
    batch = {k: torch.stack([dataset[i][k] for i in range(len(dataset))]) for k in ("input_ids", "attention_mask", "labels")}
    model.zero_grad()
    model(**batch).loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return grads


# ------------------------------------------------------------------------------------------- fields


def test_fields_are_validated_at_construction(tmp_path):
    for bad in ("f", "X", 1):
        with pytest.raises(ValueError, match=r"child_tuning_mode=.* is invalid; allowed: None, 'F' .* or 'D'"):
            tiny_args(tmp_path / "o", child_tuning_mode=bad)
    for bad in (0, -0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"child_tuning_p=.* is invalid; allowed: a float in \(0, 1\]"):
            tiny_args(tmp_path / "o", child_tuning_mode="F", child_tuning_p=bad)
    args = tiny_args(tmp_path / "o", child_tuning_mode="D", child_tuning_p=0.2)
    assert args.modifies_model and "child_tuning_mode=D" in args.settings_needing_callback()
    assert args.technique_settings()["child_tuning_mode"] == "D"
    assert not tiny_args(tmp_path / "o", child_tuning_mode="F").modifies_model  # F needs no snapshot
    for bad in (0, -1.0, float("inf"), "1"):
        with pytest.raises(ValueError, match=r"child_tuning_fisher_clip=.* is invalid; allowed: None or a finite float > 0"):
            tiny_args(tmp_path / "o", child_tuning_mode="D", child_tuning_fisher_clip=bad)
    for mode in (None, "F"):  # nothing to clip without D's Fisher pass: refused, not ignored
        with pytest.raises(ValueError, match=r"child_tuning_fisher_clip=1.0 clips .*Fisher pass.*child_tuning_mode="):
            tiny_args(tmp_path / "o", child_tuning_mode=mode, child_tuning_fisher_clip=1.0)
    assert tiny_args(tmp_path / "o", child_tuning_mode="D", child_tuning_fisher_clip=1.0).technique_settings()[
        "child_tuning_fisher_clip"] == 1.0


# ------------------------------------------------------------------------------------------- ChildTuning_F


def test_f_mask_is_bernoulli_rescaled_and_seeded_by_update():
    param = nn.Parameter(torch.zeros(200, 50))
    param.grad = torch.full((200, 50), 2.0)
    mask_gradients_([("w", param)], p=0.3, generator=child_tuning_f_generator(5, 1))
    nonzero = param.grad[param.grad != 0]
    assert set(nonzero.unique().tolist()) == {float(torch.tensor(2.0) * (torch.tensor(1.0) / 0.3))}  # g·(1/p)
    kept = (param.grad != 0).float().mean().item()
    assert abs(kept - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 10_000)
    expected = torch.full((200, 50), 2.0) * (torch.empty(200, 50).bernoulli_(0.3, generator=child_tuning_f_generator(5, 1)) / 0.3)
    assert torch.equal(param.grad, expected)
    other = torch.empty(200, 50).bernoulli_(0.3, generator=child_tuning_f_generator(5, 2))
    assert not torch.equal((expected != 0).float(), other)  # a fresh mask each update


def test_f_masks_after_clipping_the_unmasked_accumulated_gradient(tmp_path):
    """One update: the optimizer steps with  g · min(1, c/(‖g‖+1e-6)) · M/p,  ‖g‖ the norm of the unmasked gradient,
    M drawn from child_tuning_f_generator(seed, 1) in parameter order — with gradient accumulation the same."""
    dataset = RandomClassificationDataset(size=8)
    reference = no_dropout(tiny_model("bert", tmp_path))
    g = raw_gradient(reference, dataset)
    norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in g.values()))
    max_norm = norm / 10  # clipping active
    clip = min(1.0, max_norm / (norm + 1e-6))
    generator = child_tuning_f_generator(7, 1)
    expected = {n: v * clip * (torch.empty_like(v).bernoulli_(0.4, generator=generator) / 0.4) for n, v in g.items()}
    for accumulation, batch in ((1, 8), (2, 4)):
        spy = GradientSpy()
        model = no_dropout(tiny_model("bert", tmp_path))
        args = tiny_args(tmp_path / f"ga{accumulation}", child_tuning_mode="F", child_tuning_p=0.4, max_steps=1,
                         max_grad_norm=max_norm, gradient_accumulation_steps=accumulation,
                         per_device_train_batch_size=batch)
        trainer = StableTrainer(model=model, args=args, train_dataset=dataset, callbacks=[spy])
        trainer.train()
        logged = [r["grad_norm"] for r in trainer.state.log_history if "grad_norm" in r][0]
        assert logged == pytest.approx(norm, rel=1e-4)  # the Trainer's grad_norm is before clipping and masking
        (stepped,) = spy.grads
        for name, value in expected.items():
            torch.testing.assert_close(stepped[name], value, rtol=1e-4, atol=1e-9, msg=f"GA {accumulation} {name}")


def test_stock_trainer_with_the_callback_trains_like_stable_trainer(tmp_path):
    dataset = RandomClassificationDataset(size=32)
    settings = dict(child_tuning_mode="F", child_tuning_p=0.5, max_steps=3)
    args = tiny_args(tmp_path / "stock", **settings)
    stock = Trainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=dataset,
                    callbacks=[StableFineTuningCallback()], optimizer_cls_and_kwargs=stable_optimizer(args))
    stock.train()
    stable = StableTrainer(model=tiny_model("bert", tmp_path), args=tiny_args(tmp_path / "st", **settings),
                           train_dataset=dataset)
    stable.train()
    plain = StableTrainer(model=tiny_model("bert", tmp_path), args=tiny_args(tmp_path / "pl", max_steps=3),
                          train_dataset=dataset)
    plain.train()
    a, b, c = parameters_of(stock.model), parameters_of(stable.model), parameters_of(plain.model)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    without = Trainer(model=tiny_model("bert", tmp_path), args=tiny_args(tmp_path / "no", **settings),
                      train_dataset=dataset)
    with pytest.raises(RuntimeError, match="child_tuning_mode=F are applied by StableFineTuningCallback"):
        without.train()


# ------------------------------------------------------------------------------------------- ChildTuning_D


def test_fisher_information_and_top_p_mask_match_the_written_out_formula(tmp_path):
    model = no_dropout(tiny_model("bert", tmp_path))
    dataset = RandomClassificationDataset(size=16)
    batches = [{k: torch.stack([dataset[i][k] for i in range(s, s + 8)]) for k in ("input_ids", "attention_mask", "labels")}
               for s in (0, 8)]
    names = child_tuning_candidates(model)
    assert names and all(n.startswith("bert.encoder.layer.") for n in names)
    grads = [raw_gradient(model, _Batch(b)) for b in batches]
    expected = {n: (grads[0][n] ** 2 + grads[1][n] ** 2) / 2 for n in names}  # F = (1/N) Σ_b (∂L_b/∂w)²
    fisher = fisher_information(model, batches)
    assert set(fisher) == set(names)
    for n in names:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-5, atol=1e-12, msg=n)
    assert all(p.grad is None for p in model.parameters())
    masks = child_tuning_d_mask(fisher, 0.2)
    flat = torch.cat([fisher[n].reshape(-1) for n in names])
    k = round(0.2 * flat.numel())
    assert sum(int(m.sum()) for m in masks.values()) == k
    kept = torch.cat([fisher[n][masks[n]] for n in names])
    dropped = torch.cat([fisher[n][~masks[n]] for n in names])
    assert kept.min() >= dropped.max()
    clipped = fisher_information(model, batches, clip_norm=1e-3)  # the released code's per-tensor clipping
    n = names[0]
    c = [min(1.0, 1e-3 / (float(g[n].norm()) + 1e-6)) for g in grads]
    torch.testing.assert_close(clipped[n], ((grads[0][n] * c[0]) ** 2 + (grads[1][n] * c[1]) ** 2) / 2,
                               rtol=1e-5, atol=1e-14)


class _Batch(torch.utils.data.Dataset):
    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return len(self.batch["labels"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.batch.items()}


def _d_trainer(tmp_path, out, resume=None, callbacks=(), **overrides):
    settings = dict(child_tuning_mode="D", child_tuning_p=0.25, max_steps=6, save_strategy="steps", save_steps=2)
    settings.update(overrides)
    trainer = StableTrainer(model=tiny_model("bert", tmp_path), args=tiny_args(out, **settings),
                            train_dataset=RandomClassificationDataset(size=32), callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _child(trainer) -> ChildTuningCallback:
    stable = next(c for c in trainer.callback_handler.callbacks if isinstance(c, StableFineTuningCallback))
    return next(c for c in stable._children if isinstance(c, ChildTuningCallback))


def test_d_updates_only_the_child_network_and_decays_the_rest(tmp_path):
    start = parameters_of(tiny_model("bert", tmp_path))
    trainer = _d_trainer(tmp_path, tmp_path / "d", save_strategy="no", weight_decay=0.0)
    masks = _child(trainer).masks
    end = parameters_of(trainer.model)
    for name, mask in masks.items():
        assert torch.equal(end[name][~mask], start[name][~mask]), name  # zero gradient, zero Adam update
    moved = sum(int((end[n][m] != start[n][m]).sum()) for n, m in masks.items())
    assert moved > 0.9 * sum(int(m.sum()) for m in masks.values())
    assert not torch.equal(end["bert.embeddings.word_embeddings.weight"], start["bert.embeddings.word_embeddings.weight"])
    assert not torch.equal(end["classifier.weight"], start["classifier.weight"])  # outside the search: trained
    # weight decay is not masked (as the released ChildTuningAdamW): masked matrix entries shrink by (1 − lr·wd) per update
    decayed = _d_trainer(tmp_path, tmp_path / "wd", save_strategy="no", weight_decay=0.1, max_steps=1,
                         lr_scheduler_type="constant")
    w = "bert.encoder.layer.0.attention.self.query.weight"
    mask = _child(decayed).masks[w]
    torch.testing.assert_close(parameters_of(decayed.model)[w][~mask], start[w][~mask] * (1 - 1e-3 * 0.1),
                               rtol=0, atol=1e-9)


def test_the_released_codes_fisher_clipping_is_a_switch(tmp_path):
    # AliceMind's ChildTuningD.py clips each tensor's batch gradient (to max_grad_norm) before squaring it; a clip
    # this small makes every tensor's Fisher sum about the same, so the kept set moves to the small tensors
    plain = _child(_d_trainer(tmp_path, tmp_path / "plain", save_strategy="no", max_steps=1))
    clipped = _child(_d_trainer(tmp_path, tmp_path / "clip", save_strategy="no", max_steps=1,
                                child_tuning_fisher_clip=1e-6))
    assert plain.fisher_clip_norm is None and clipped.fisher_clip_norm == 1e-6
    assert set(plain.masks) == set(clipped.masks)
    assert any(not torch.equal(plain.masks[n], clipped.masks[n]) for n in plain.masks)
    # a callback built with its own clip keeps it whatever the arguments say
    own = ChildTuningCallback(fisher_clip_norm=0.5)
    own._resolve(tiny_args(tmp_path / "o", child_tuning_mode="D", child_tuning_fisher_clip=1.0))
    assert own.fisher_clip_norm == 0.5


def test_fisher_pass_leaves_the_global_rng(tmp_path):
    model = tiny_model("bert", tmp_path)
    callback = ChildTuningCallback("D", 0.3, seed=1)
    args = tiny_args(tmp_path / "o")
    loader = torch.utils.data.DataLoader(RandomClassificationDataset(size=16), batch_size=8)
    state = torch.get_rng_state()
    from transformers import TrainerControl, TrainerState

    callback.on_train_begin(args, TrainerState(), TrainerControl(), model=model, train_dataloader=loader)
    assert torch.equal(torch.get_rng_state(), state)
    first = callback.masks
    again = ChildTuningCallback("D", 0.3, seed=1)
    again.on_train_begin(args, TrainerState(), TrainerControl(), model=tiny_model("bert", tmp_path), train_dataloader=loader)
    assert all(torch.equal(first[n], again.masks[n]) for n in first)  # dropout of the pass is seeded


@pytest.mark.parametrize("mode", ["F", "D"])
def test_resume_continues_exactly(mode, tmp_path):
    full = _d_trainer(tmp_path, tmp_path / "full", child_tuning_mode=mode)
    _d_trainer(tmp_path, tmp_path / "cut", child_tuning_mode=mode)
    resumed = _d_trainer(tmp_path, tmp_path / "resumed", resume=str(tmp_path / "cut" / "checkpoint-2"),
                         child_tuning_mode=mode)
    a, b = parameters_of(full.model), parameters_of(resumed.model)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    if mode == "D":  # the resumed run recomputed its Fisher mask at the starting weights, not the checkpoint's
        assert all(torch.equal(_child(full).masks[n], _child(resumed).masks[n]) for n in _child(full).masks)
    with pytest.raises(ValueError, match="child_tuning_p: checkpoint 0.25, now 0.5"):
        _d_trainer(tmp_path, tmp_path / "other", resume=str(tmp_path / "cut" / "checkpoint-2"),
                   child_tuning_mode=mode, child_tuning_p=0.5)


@pytest.mark.parametrize("mode", ["F", "D"])
def test_composes_with_every_switch(mode, tmp_path):
    """Every other switch on: trains to finite weights, and the diagnostics report the unmasked gradient (their
    per-layer norms still add up to the Trainer's grad_norm)."""
    trainer = _d_trainer(
        tmp_path, tmp_path / mode, child_tuning_mode=mode, save_strategy="no", max_steps=4,
        adam_bias_correction=False, reinit_pooler=True, reinit_layers=1, layerwise_lr_decay=0.9,
        pretrained_weight_decay=0.01, mixout_prob=0.1, noisytune_intensity=0.15, diagnostics_steps=2,
        degenerate_check_fraction=0.5, gradient_accumulation_steps=2, per_device_train_batch_size=4,
    )
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    records = [r for r in trainer.state.log_history if "grad_norm/head" in r]
    assert records
    for record in records:
        groups = sum(v ** 2 for k, v in record.items() if k.startswith("grad_norm/"))
        assert math.sqrt(groups) == pytest.approx(record["grad_norm"], rel=1e-3)
