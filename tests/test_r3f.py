"""R3F (Aghajanyan et al., ICLR 2021): λ·KL_S(f(x) ‖ f(x + z)) on noised word embeddings, checked against the
written-out formula on tiny models, through StableTrainer's loss, refused on the stock Trainer, and resumed."""

import pytest
import torch
from helpers import RandomClassificationDataset, parameters_of, tiny_args
from tiny_models import tiny_model
from torch import nn
from transformers import Trainer

from hf_stable_ft import StableFineTuningCallback, StableTrainer, stable_optimizer
from hf_stable_ft.r3f import r3f_term, symmetric_kl


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def batch_of(dataset, n=8):
    return {k: torch.stack([dataset[i][k] for i in range(n)]) for k in ("input_ids", "attention_mask", "labels")}


def written_out_symmetric_kl(a, b):
    p, q = a.double().softmax(-1), b.double().softmax(-1)
    return float(((p * (p.log() - q.log())).sum(-1) + (q * (q.log() - p.log())).sum(-1)).mean())


def test_symmetric_kl_matches_the_definition():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    assert float(symmetric_kl(a, b)) == pytest.approx(written_out_symmetric_kl(a, b), rel=1e-5)
    assert float(symmetric_kl(b, a)) == pytest.approx(float(symmetric_kl(a, b)), rel=1e-6)  # symmetric
    assert float(symmetric_kl(a, a)) == pytest.approx(0.0, abs=1e-7)


def manual_noisy_logits(model, batch, eps, noise_type):
    """The noised forward written out: word embeddings (detached) + z, through inputs_embeds."""
    words = model.get_input_embeddings()(batch["input_ids"]).detach()
    noise = torch.empty(words.shape)
    noise = noise.uniform_(-eps, eps) if noise_type == "uniform" else noise.normal_(0.0, eps)
    return model(inputs_embeds=words + noise, attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("noise_type", ["uniform", "normal"])
def test_term_and_its_gradient_match_the_written_out_formula(noise_type, tmp_path):
    model = no_dropout(tiny_model("bert", tmp_path)).train()
    batch = batch_of(RandomClassificationDataset())
    eps = 0.5  # large enough for a clearly non-zero term
    torch.manual_seed(3)
    clean = model(**batch).logits
    term = r3f_term(model, batch, clean, eps=eps, noise_type=noise_type)
    term.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch.manual_seed(3)
    clean = model(**batch).logits
    noisy = manual_noisy_logits(model, batch, eps, noise_type)
    p, q = clean.softmax(-1), noisy.softmax(-1)
    expected = ((p * (p.log() - q.log())).sum(-1) + (q * (q.log() - p.log())).sum(-1)).mean()
    assert float(term.detach()) == pytest.approx(float(expected.detach()), rel=1e-4) and float(term.detach()) > 1e-4
    expected.backward()
    for name, grad in ours.items():
        torch.testing.assert_close(grad, model.get_parameter(name).grad, rtol=1e-3, atol=1e-8, msg=name)


def test_regression_uses_the_mean_squared_difference(tmp_path):
    model = no_dropout(tiny_model("bert", tmp_path, num_labels=1)).train()
    batch = batch_of(RandomClassificationDataset())
    batch["labels"] = batch["labels"].float()
    torch.manual_seed(0)
    clean = model(**batch).logits
    term = r3f_term(model, batch, clean, eps=0.5)
    torch.manual_seed(0)
    model(**batch)
    noisy = manual_noisy_logits(model, batch, 0.5, "uniform")
    assert float(term) == pytest.approx(float(((clean - noisy) ** 2).mean()), rel=1e-4) and float(term) > 0
    model.config.problem_type = "multi_label_classification"
    with pytest.raises(ValueError, match="not problem_type='multi_label_classification'"):
        r3f_term(model, batch, clean)


def test_fields_are_validated_at_construction(tmp_path):
    for name, bad, allowed in (("r3f_lambda", -1.0, "a finite float >= 0"), ("r3f_lambda", float("nan"), ">= 0"),
                               ("r3f_eps", 0.0, "a finite float > 0"), ("r3f_eps", float("inf"), "> 0"),
                               ("r3f_noise_type", "gaussian", "'uniform' or 'normal'")):
        with pytest.raises(ValueError, match=f"{name}=.* is invalid; allowed: .*{allowed}"):
            tiny_args(tmp_path / "o", **{name: bad})
    args = tiny_args(tmp_path / "o", r3f_lambda=1.0)
    assert args.settings_needing_stable_trainer() == ["r3f_lambda=1.0"]
    assert args.technique_settings()["r3f_lambda"] == 1.0


def test_stable_trainer_adds_lambda_times_the_term_in_training_only(tmp_path):
    dataset = RandomClassificationDataset()
    model = no_dropout(tiny_model("bert", tmp_path))
    trainer = StableTrainer(model=model, args=tiny_args(tmp_path / "o", r3f_lambda=2.0, r3f_eps=0.5),
                            train_dataset=dataset)
    batch = batch_of(dataset)
    model.train()
    torch.manual_seed(1)
    loss = trainer.compute_loss(model, dict(batch))
    torch.manual_seed(1)
    outputs = model(**batch)
    expected = outputs.loss + 2.0 * r3f_term(model, batch, outputs.logits, eps=0.5)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5) and float(loss) > float(outputs.loss) + 1e-4
    model.eval()
    assert float(trainer.compute_loss(model, dict(batch))) == pytest.approx(float(model(**batch).loss), rel=1e-6)


def test_training_changes_with_r3f_and_is_unchanged_without(tmp_path):
    dataset = RandomClassificationDataset(size=32)

    def run(name, **settings):
        trainer = StableTrainer(model=tiny_model("bert", tmp_path), train_dataset=dataset,
                                args=tiny_args(tmp_path / name, max_steps=3, **settings))
        trainer.train()
        return parameters_of(trainer.model)

    plain, zero, r3f = run("plain"), run("zero", r3f_lambda=0.0, r3f_eps=0.1), run("r3f", r3f_lambda=5.0, r3f_eps=0.1)
    assert all(torch.equal(plain[n], zero[n]) for n in plain)
    assert any(not torch.equal(plain[n], r3f[n]) for n in plain)


def test_stock_trainer_is_refused_with_or_without_the_callback(tmp_path):
    dataset = RandomClassificationDataset()
    args = tiny_args(tmp_path / "a", r3f_lambda=1.0, max_steps=1)
    with_callback = Trainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=dataset,
                            callbacks=[StableFineTuningCallback()], optimizer_cls_and_kwargs=stable_optimizer(args))
    before = parameters_of(with_callback.model)
    with pytest.raises(RuntimeError, match="r3f_lambda=1.0 changes the training loss.*Use StableTrainer"):
        with_callback.train()
    assert all(torch.equal(v, parameters_of(with_callback.model)[k]) for k, v in before.items())
    bare = Trainer(model=tiny_model("bert", tmp_path), args=tiny_args(tmp_path / "b", r3f_lambda=1.0, max_steps=1),
                   train_dataset=dataset)
    with pytest.raises(RuntimeError, match="only StableTrainer's compute_loss applies"):
        bare.train()
    # the same arguments, once StableTrainer has trained with them, still refuse a stock Trainer afterwards
    shared = tiny_args(tmp_path / "c", r3f_lambda=1.0, max_steps=1)
    StableTrainer(model=tiny_model("bert", tmp_path), args=shared, train_dataset=dataset).train()
    with pytest.raises(RuntimeError, match="r3f_lambda"):
        Trainer(model=tiny_model("bert", tmp_path), args=shared, train_dataset=dataset,
                callbacks=[StableFineTuningCallback()], optimizer_cls_and_kwargs=stable_optimizer(shared)).train()


def test_a_loss_normalised_over_the_accumulated_batch_is_refused(tmp_path):
    dataset = RandomClassificationDataset()
    trainer = StableTrainer(model=tiny_model("bert", tmp_path), train_dataset=dataset,
                            args=tiny_args(tmp_path / "o", r3f_lambda=1.0, max_steps=1),
                            compute_loss_func=lambda outputs, labels, num_items_in_batch=None:
                            nn.functional.cross_entropy(outputs.logits, labels))
    with pytest.raises(RuntimeError, match="normalised over the accumulated batch"):
        trainer.train()


def _train(tmp_path, out, resume=None, **overrides):
    settings = dict(r3f_lambda=1.0, r3f_eps=0.1, max_steps=6, save_strategy="steps", save_steps=2)
    settings.update(overrides)
    trainer = StableTrainer(model=tiny_model("bert", tmp_path), args=tiny_args(out, **settings),
                            train_dataset=RandomClassificationDataset(size=64))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_resume_continues_exactly_and_other_settings_are_refused(tmp_path):
    full = _train(tmp_path, tmp_path / "full")
    _train(tmp_path, tmp_path / "cut")
    resumed = _train(tmp_path, tmp_path / "resumed", resume=str(tmp_path / "cut" / "checkpoint-2"))
    a, b = parameters_of(full.model), parameters_of(resumed.model)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="r3f_noise_type: checkpoint 'uniform', now 'normal'"):
        _train(tmp_path, tmp_path / "other", resume=str(tmp_path / "cut" / "checkpoint-2"), r3f_noise_type="normal")


def test_composes_with_every_switch(tmp_path):
    trainer = _train(
        tmp_path, tmp_path / "all", save_strategy="no", max_steps=4, adam_bias_correction=False, reinit_pooler=True,
        reinit_layers=1, layerwise_lr_decay=0.9, pretrained_weight_decay=0.01, mixout_prob=0.1,
        noisytune_intensity=0.15, child_tuning_mode="F", diagnostics_steps=2, degenerate_check_fraction=0.5,
        gradient_accumulation_steps=2, per_device_train_batch_size=4, min_train_steps=4,
    )
    assert trainer.state.global_step == 4
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in trainer.state.log_history if "loss" in r)


@pytest.mark.parametrize("model_type", ["roberta", "distilbert", "deberta-v2", "modernbert", "electra"])
def test_other_architectures_train(model_type, tmp_path):
    trainer = StableTrainer(model=tiny_model(model_type, tmp_path, num_layers=2), train_dataset=RandomClassificationDataset(),
                            args=tiny_args(tmp_path / model_type, r3f_lambda=1.0, max_steps=2))
    trainer.train()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
