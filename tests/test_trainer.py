"""The two ways in — stock Trainer + callback + optimizer factory, and StableTrainer — on tiny models."""

import pytest
import torch
from helpers import RandomClassificationDataset, parameters_of, tiny_args
from tiny_models import tiny_model
from transformers import AutoModelForSequenceClassification, Trainer

from hf_stable_ft import (
    StableAdamW,
    StableFineTuningCallback,
    StableTrainer,
    get_fine_tuning_state,
    stable_optimizer,
)

FEATURES = dict(reinit_pooler=True, reinit_layers=1, layerwise_lr_decay=0.8, pretrained_weight_decay=0.1,
                weight_decay=0.01, adam_bias_correction=False)


def _stock_trainer(model, args, dataset):
    return Trainer(model=model, args=args, train_dataset=dataset, callbacks=[StableFineTuningCallback()],
                   optimizer_cls_and_kwargs=stable_optimizer(args))


def test_callback_path_and_stable_trainer_train_identically(tmp_path):
    dataset = RandomClassificationDataset()
    results = []
    for build in (_stock_trainer, lambda m, a, d: StableTrainer(model=m, args=a, train_dataset=d)):
        model = tiny_model("bert", tmp_path)
        args = tiny_args(tmp_path / "out", **FEATURES)
        trainer = build(model, args, dataset)
        trainer.train()
        assert isinstance(trainer.optimizer.optimizer, StableAdamW)
        results.append(parameters_of(model))
    for name, value in results[0].items():
        assert torch.equal(value, results[1][name]), name


def test_features_change_training_and_are_recorded(tmp_path):
    dataset = RandomClassificationDataset()
    model = tiny_model("bert", tmp_path)
    pretrained = parameters_of(model)
    trainer = StableTrainer(model=model, args=tiny_args(tmp_path / "out", **FEATURES), train_dataset=dataset)
    state = get_fine_tuning_state(model)
    assert state.reinit_layers == 1 and "bert.pooler.dense.weight" in state.reinitialized
    anchors = state.pretrained_anchors
    assert "bert.pooler.dense.weight" not in anchors  # re-initialised
    assert "classifier.weight" not in anchors  # the new head is not pretrained
    assert torch.equal(anchors["bert.encoder.layer.0.output.dense.weight"], pretrained["bert.encoder.layer.0.output.dense.weight"])
    trainer.train()
    groups = {g["name"]: g for g in trainer.optimizer.optimizer.param_groups}
    assert "layer.0.pretrained_decay" in groups and "layer.2.decay" in groups  # re-initialised block: ordinary WD
    assert trainer.optimizer.optimizer.param_groups[0]["name"].startswith(("head", "pooler"))


def test_resume_continues_identically_and_keeps_pretrained_anchors(tmp_path):
    dataset = RandomClassificationDataset(size=64)
    common = dict(FEATURES, num_train_epochs=2, save_strategy="steps", save_steps=4)

    def run(output_dir, resume=None):
        model = tiny_model("bert", tmp_path)  # same pretrained weights every time
        pretrained = parameters_of(model)
        trainer = StableTrainer(model=model, args=tiny_args(output_dir, **common), train_dataset=dataset)
        trainer.train(resume_from_checkpoint=resume)
        return model, pretrained, trainer

    full, _, _ = run(tmp_path / "full")
    run(tmp_path / "interrupted")  # leaves checkpoint-4 behind
    resumed, pretrained, trainer = run(tmp_path / "resumed_from", resume=str(tmp_path / "interrupted" / "checkpoint-4"))
    for name, value in parameters_of(full).items():
        assert torch.allclose(value, parameters_of(resumed)[name], atol=1e-6), name
    optimizer = trainer.optimizer.optimizer
    names = {id(p): n for g in optimizer.param_groups for n, p in zip(g["param_names"], g["params"])}
    assert optimizer.pretrained_anchors
    for param, anchor in optimizer.pretrained_anchors.items():
        assert torch.equal(anchor, pretrained[names[id(param)]]), names[id(param)]


def test_callback_added_late_is_refused(tmp_path):
    model = tiny_model("bert", tmp_path)
    args = tiny_args(tmp_path / "out", reinit_layers=1)
    trainer = Trainer(model=model, args=args, train_dataset=RandomClassificationDataset(),
                      optimizer_cls_and_kwargs=stable_optimizer(args))
    trainer.add_callback(StableFineTuningCallback())
    with pytest.raises(RuntimeError, match="never prepared|add_callback"):
        trainer.train()


def test_optimizer_settings_without_stable_optimizer_are_refused(tmp_path):
    args = tiny_args(tmp_path / "out", adam_bias_correction=False)
    trainer = Trainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset(),
                      callbacks=[StableFineTuningCallback()])
    with pytest.raises(RuntimeError, match="optimizer_cls_and_kwargs=stable_optimizer"):
        trainer.train()


def test_model_init_is_refused_by_the_stock_trainer_and_handled_by_stable_trainer(tmp_path):
    path = tmp_path / "saved"
    tiny_model("bert", tmp_path).save_pretrained(path)
    model_init = lambda: AutoModelForSequenceClassification.from_pretrained(path)  # noqa: E731
    args = tiny_args(tmp_path / "out", reinit_layers=1)
    stock = Trainer(model_init=model_init, args=args, train_dataset=RandomClassificationDataset(),
                    callbacks=[StableFineTuningCallback()], optimizer_cls_and_kwargs=stable_optimizer(args))
    with pytest.raises(RuntimeError, match="model_init"):
        stock.train()
    trainer = StableTrainer(model_init=model_init, args=args, train_dataset=RandomClassificationDataset())
    trainer.train()
    assert get_fine_tuning_state(trainer.model).reinit_layers == 1


def test_min_train_steps(tmp_path):
    dataset = RandomClassificationDataset(size=32)  # 4 updates per epoch
    args = tiny_args(tmp_path / "out", min_train_steps=10, warmup_steps=0.1)
    trainer = StableTrainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=dataset)
    assert trainer.train().global_step == 10
    assert args.max_steps == -1  # restored after training
    stock = Trainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=dataset,
                    callbacks=[StableFineTuningCallback()], optimizer_cls_and_kwargs=stable_optimizer(args))
    with pytest.raises(RuntimeError, match="set max_steps=10 or use StableTrainer"):
        stock.train()


def test_too_many_reinit_layers_fail_at_init(tmp_path):
    args = tiny_args(tmp_path / "out", reinit_layers=5)
    with pytest.raises(ValueError, match="reinit_layers=5 .* only 3"):
        StableTrainer(model=tiny_model("bert", tmp_path), args=args, train_dataset=RandomClassificationDataset())


def test_mixout_through_the_trainer_saves_a_plain_model(tmp_path):
    import subprocess
    import sys
    import textwrap

    from hf_stable_ft.mixout import has_mixout

    dataset = RandomClassificationDataset()
    args = tiny_args(tmp_path / "out", mixout_prob=0.1, layerwise_lr_decay=0.8, pretrained_weight_decay=0.01,
                     reinit_layers=1, gradient_accumulation_steps=2, bf16=True)
    model = tiny_model("bert", tmp_path)
    trainer = StableTrainer(model=model, args=args, train_dataset=dataset)
    assert has_mixout(model) and get_fine_tuning_state(model).mixout_layers
    optimizer_params = {id(p) for g in trainer.create_optimizer().param_groups for p in g["params"]}
    assert optimizer_params == {id(p) for p in model.parameters() if p.requires_grad}
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    plain = trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False).eval()  # without bf16 autocast
    inputs = dataset[:4]["input_ids"]
    expected = plain(input_ids=inputs).logits.detach()
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForSequenceClassification
        model, info = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "saved")!r}, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert "hf_stable_ft" not in sys.modules
        logits = model.eval()(input_ids=torch.load({str(tmp_path / "inputs.pt")!r})).logits
        torch.save(logits, {str(tmp_path / "logits.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5)
