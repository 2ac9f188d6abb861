"""Mixed precision (bf16 autocast on CPU; bf16 and fp16 on a GPU when there is one) and PEFT/LoRA with StableTrainer.

bf16 (``bf16=True``): the Trainer runs forward/backward under ``torch.autocast(dtype=bfloat16)`` with fp32
parameters. StableAdamW's state stays fp32, the pretrained-WD anchors are exact fp32 copies of the starting
weights, and Mixout mixes in fp32 — W₀ is a buffer with the weight's dtype (it follows ``model.to(dtype)``) and
the mixed weight is cast to the autocast dtype for the matmul, so the layer computes in bf16 like ``nn.Linear``.
The same holds for ``bf16=True`` and ``fp16=True`` on a GPU (fp16 adds the Trainer's GradScaler, which unscales
the gradients before StableAdamW's step); those cases run only where CUDA is available.

PEFT/LoRA: parameter names are those of ``model.get_base_model()``; LLRD gives each LoRA matrix the rate of the
block it adapts, the head (``modules_to_save``) the base rate. Pretrained weight decay anchors every *trainable*
matrix at its value when the Trainer was built: LoRA B starts at 0, so decaying toward it is plain weight decay
on B (λ·B); LoRA A decays toward its random (Kaiming) init; the trainable copy of the head toward its start. Re-init
of the top blocks works before wrapping and through the Trainer; either way the adapters keep their init (B = 0)
and the re-drawn *frozen* weights stay at their new random values — list the pooler in ``modules_to_save`` to train
it, and ship the re-initialised base model with the adapter (the adapter file holds only trainable weights).
Mixout is refused on PEFT models. Saved adapters load with stock ``peft`` in a process without hf_stable_ft.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import RandomClassificationDataset, parameters_of, tiny_args
from tiny_models import tiny_model

from hf_stable_ft import StableAdamW, StableTrainer, get_fine_tuning_state, reinit_top_layers

REPO = Path(__file__).resolve().parents[1]
FEATURES = dict(reinit_pooler=True, reinit_layers=1, layerwise_lr_decay=0.8, pretrained_weight_decay=0.1,
                weight_decay=0.01, adam_bias_correction=False)


AMP_SETTINGS = [
    pytest.param("cpu", "bf16", id="cpu-bf16"),
    pytest.param("cuda", "bf16", id="cuda-bf16", marks=pytest.mark.skipif(
        not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()), reason="needs a GPU with bf16")),
    pytest.param("cuda", "fp16", id="cuda-fp16", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a GPU (fp16 mixed precision needs CUDA's GradScaler)")),
]


@pytest.mark.parametrize("device,precision", AMP_SETTINGS)
def test_autocast_keeps_optimizer_state_anchors_and_mixout_targets_in_fp32(tmp_path, device, precision):
    from hf_stable_ft.mixout import MixoutLinear

    model = tiny_model("bert", tmp_path)
    pretrained = parameters_of(model)
    args = tiny_args(tmp_path / "out", max_steps=4, mixout_prob=0.2, diagnostics_steps=2, use_cpu=device == "cpu",
                     **{precision: True}, **FEATURES)
    trainer = StableTrainer(model=model, args=args, train_dataset=RandomClassificationDataset(size=32))
    assert trainer.accelerator.mixed_precision == precision
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    state = get_fine_tuning_state(model)
    start = {name: value.clone() for name, value in state.initial_parameters.items()}
    seen = []
    layer = model.get_submodule("bert.encoder.layer.0.attention.self.query")
    assert isinstance(layer, MixoutLinear)
    layer.register_forward_hook(lambda module, inputs, output: seen.append((module.training, output.dtype)))
    trainer.train()

    assert (True, compute_dtype) in seen  # trained under autocast: the mixed layer computed in the autocast dtype
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert all(p.dtype == torch.float32 and p.device.type == device for p in model.parameters())
    optimizer = trainer.optimizer.optimizer
    assert isinstance(optimizer, StableAdamW)
    moments = [(s["exp_avg"].dtype, s["exp_avg_sq"].dtype) for s in optimizer.state.values()]
    assert moments and set(moments) == {(torch.float32, torch.float32)}
    # anchors: exact fp32 copies of the pretrained (loaded, not re-drawn) weights
    names = {id(p): n for g in optimizer.param_groups for n, p in zip(g["param_names"], g["params"])}
    assert optimizer.pretrained_anchors
    for param, anchor in optimizer.pretrained_anchors.items():
        name = names[id(param)]
        assert anchor.dtype == torch.float32 and torch.equal(anchor.cpu(), pretrained[name].cpu()), name
    # Mixout W0: the starting weight (after re-init) in the weight's dtype, untouched by training
    for name, module in model.named_modules():
        if isinstance(module, MixoutLinear):
            assert module.mixout_target.dtype == torch.float32
            assert torch.equal(module.mixout_target.cpu(), start[f"{name}.weight"].cpu()), name
    # pure bf16 weights: W0 follows the module's dtype
    model.to(torch.bfloat16)
    assert layer.mixout_target.dtype == torch.bfloat16


def _lora(model, **overrides):
    from peft import LoraConfig, get_peft_model

    config = dict(task_type="SEQ_CLS", target_modules=["query", "value"], r=4, lora_alpha=8, lora_dropout=0.0)
    config.update(overrides)
    return get_peft_model(model, LoraConfig(**config))


def _inputs():
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 99, (4, 12), generator=generator)
    return ids


STOCK_PEFT_LOAD = textwrap.dedent("""
    import json, sys
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base_dir, adapter_dir, ids_file, out_file = sys.argv[1:]
    base = AutoModelForSequenceClassification.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    ids = torch.tensor(json.load(open(ids_file)))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert not any(name == "hf_stable_ft" or name.startswith("hf_stable_ft.") for name in sys.modules)
    json.dump(logits.tolist(), open(out_file, "w"))
""")


def test_lora_with_llrd_pretrained_wd_and_reinit_before_wrapping_then_stock_peft_loads_the_adapter(tmp_path):
    pytest.importorskip("peft")
    base = tiny_model("bert", tmp_path)  # 3 blocks
    redrawn = reinit_top_layers(base, 1, reinit_pooler=True, seed=0)  # before wrapping
    base.save_pretrained(tmp_path / "reinit-base")  # what the adapter must be loaded onto
    after_reinit = parameters_of(base)
    model = _lora(base, modules_to_save=["pooler"])  # the re-drawn pooler must train; "classifier" is added by peft
    lr, decay = 1e-3, 0.8
    args = tiny_args(tmp_path / "out", learning_rate=lr, layerwise_lr_decay=decay, pretrained_weight_decay=0.1,
                     weight_decay=0.01, max_steps=4)
    trainer = StableTrainer(model=model, args=args, train_dataset=RandomClassificationDataset(size=32))
    state = get_fine_tuning_state(model)
    anchors = state.pretrained_anchors
    trainer.train()

    optimizer = trainer.optimizer.optimizer
    rate = {n: g["initial_lr"] for g in optimizer.param_groups for n in g["param_names"]}
    group = {n: g["name"] for g in optimizer.param_groups for n in g["param_names"]}
    lora = [n for n in rate if ".lora_" in n]
    assert len(lora) == 3 * 2 * 2  # 3 blocks x (query, value) x (A, B): nothing else in the blocks trains
    for name in lora:  # LLRD by the adapted block: block i of L=3 at lr * d^(L - i)
        block = int(name.split("encoder.layer.")[1].split(".")[0])
        assert math.isclose(rate[name], lr * decay ** (3 - block)), name
        assert group[name] == f"layer.{block}.pretrained_decay", name
    assert all(math.isclose(rate[n], lr) for n in rate if n.startswith(("classifier.", "bert.pooler.")))
    # pretrained WD on adapters = decay toward their value at init: B toward 0 (plain WD on B), A toward its init
    for name in lora:
        if ".lora_B." in name:
            assert torch.count_nonzero(anchors[name]) == 0, name
        else:
            assert torch.count_nonzero(anchors[name]) > 0
    assert set(optimizer.pretrained_anchors) == {p for g in optimizer.param_groups for p in g["params"]
                                                if g["pretrained_weight_decay"] > 0}
    # the re-drawn frozen block and pooler copy stayed as re-initialised; the adapters moved
    trained = dict(model.get_base_model().named_parameters())
    assert torch.equal(trained["bert.encoder.layer.2.output.dense.weight"], after_reinit["bert.encoder.layer.2.output.dense.weight"])
    assert "bert.encoder.layer.2.output.dense.weight" in redrawn
    assert any(torch.count_nonzero(trained[n]) for n in lora if ".lora_B." in n)

    # the adapter, saved by the Trainer, loads with stock peft in a process that never imports hf_stable_ft
    trainer.save_model(str(tmp_path / "adapter"))
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert "adapter_model.safetensors" in files and "adapter_model.bin" not in files
    ids = _inputs()
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    script = tmp_path / "load.py"
    script.write_text(STOCK_PEFT_LOAD)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(script), str(tmp_path / "reinit-base"), str(tmp_path / "adapter"),
                    str(tmp_path / "ids.json"), str(tmp_path / "logits.json")],
                   cwd=tmp_path, env=env, check=True, timeout=120, capture_output=True)
    loaded = torch.tensor(json.loads((tmp_path / "logits.json").read_text()))
    torch.testing.assert_close(loaded, expected, rtol=0, atol=1e-6)


def test_reinit_through_the_trainer_on_a_peft_model_keeps_the_adapters_at_their_init(tmp_path):
    pytest.importorskip("peft")
    model = _lora(tiny_model("bert", tmp_path))
    trainer = StableTrainer(model=model, args=tiny_args(tmp_path / "out", reinit_layers=1, reinit_pooler=True),
                            train_dataset=RandomClassificationDataset(size=16))
    state = get_fine_tuning_state(model)
    assert "bert.encoder.layer.2.attention.self.query.base_layer.weight" in state.reinitialized
    assert not any(".lora_" in name for name in state.reinitialized)
    lora_b = [p for n, p in model.get_base_model().named_parameters() if ".lora_B." in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)  # the adapters start as a no-op
    assert trainer.optimizer is None  # nothing trained yet; the model was only prepared


def test_mixout_is_refused_on_peft_models(tmp_path):
    pytest.importorskip("peft")
    model = _lora(tiny_model("bert", tmp_path))
    with pytest.raises(ValueError, match="does not support PEFT models"):
        StableTrainer(model=model, args=tiny_args(tmp_path / "out", mixout_prob=0.1),
                      train_dataset=RandomClassificationDataset(size=16))
