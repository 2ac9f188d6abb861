import pytest
from tiny_models import tiny_model

from hf_stable_ft import build_param_groups, layerwise_lr_groups, snapshot_parameters


def _lr_by_name(groups):
    return {name: group["lr"] for group in groups for name in group["param_names"]}


def test_llrd_rates_follow_zhang_convention(tmp_path):
    model = tiny_model("bert", tmp_path, num_layers=3)
    groups = layerwise_lr_groups(model, lr=1.0, decay=0.5, weight_decay=0.01)
    lr = _lr_by_name(groups)
    assert lr["classifier.weight"] == 1.0 and lr["bert.pooler.dense.weight"] == 1.0
    assert lr["bert.encoder.layer.2.attention.self.query.weight"] == 0.5
    assert lr["bert.encoder.layer.1.output.dense.bias"] == 0.25
    assert lr["bert.encoder.layer.0.intermediate.dense.weight"] == 0.125
    assert lr["bert.embeddings.word_embeddings.weight"] == 0.0625
    assert set(lr) == {n for n, _ in model.named_parameters()}
    assert groups[0]["lr"] == 1.0  # the Trainer logs group 0's rate
    assert [g["lr"] for g in groups] == sorted((g["lr"] for g in groups), reverse=True)


def test_decay_only_on_matrices(tmp_path):
    model = tiny_model("bert", tmp_path)
    for group in layerwise_lr_groups(model, lr=1.0, decay=0.9, weight_decay=0.01):
        params = dict(zip(group["param_names"], group["params"]))
        if group["name"].endswith(".no_decay"):
            assert group["weight_decay"] == 0 and all(p.dim() == 1 for p in params.values())
        else:
            assert group["weight_decay"] == 0.01 and all(p.dim() >= 2 for p in params.values())


@pytest.mark.parametrize(
    "model_type, name, depth_from_top",
    [
        ("deberta-v2", "deberta.encoder.rel_embeddings.weight", 4),  # shared, bottom: embeddings' rate
        ("deberta-v2", "deberta.encoder.LayerNorm.weight", 4),
        ("modernbert", "model.final_norm.weight", 1),  # after the last block: the top block's rate
        ("xlm-roberta", "classifier.out_proj.weight", 0),  # XLM-R registers its classifier first
        ("mpnet", "mpnet.encoder.relative_attention_bias.weight", 4),
        ("electra", "electra.embeddings_project.weight", 4),
        ("distilbert", "pre_classifier.weight", 0),
    ],
)
def test_shared_encoder_parameters_are_placed_explicitly(model_type, name, depth_from_top, tmp_path):
    model = tiny_model(model_type, tmp_path, num_layers=3)
    lr = _lr_by_name(layerwise_lr_groups(model, lr=1.0, decay=0.5))
    assert lr[name] == 0.5**depth_from_top


def test_llrd_refused_for_albert(tmp_path):
    model = tiny_model("albert", tmp_path)
    with pytest.raises(ValueError, match="ALBERT"):
        layerwise_lr_groups(model, lr=1.0, decay=0.9)
    # without LLRD no layer map is needed
    assert build_param_groups(model, lr=1.0, weight_decay=0.01)


def test_pretrained_decay_only_for_loaded_matrices(tmp_path):
    model = tiny_model("bert", tmp_path)
    reinitialized = {n for n, _ in model.named_parameters() if n.startswith(("bert.pooler", "bert.encoder.layer.2"))}
    anchors = snapshot_parameters(model, exclude=reinitialized | {"classifier.weight", "classifier.bias"})
    groups = build_param_groups(model, lr=1e-3, weight_decay=0.01, pretrained_weight_decay=0.1, pretrained_anchors=anchors)
    kinds = {n: g["name"] for g in groups for n in g["param_names"]}
    assert kinds["bert.encoder.layer.0.attention.self.query.weight"] == "pretrained_decay"
    assert kinds["bert.encoder.layer.2.attention.self.query.weight"] == "decay"
    assert kinds["classifier.weight"] == "decay"
    assert kinds["bert.encoder.layer.0.attention.self.query.bias"] == "no_decay"
    by_name = {g["name"]: g for g in groups}
    assert by_name["pretrained_decay"]["weight_decay"] == 0.0 and by_name["pretrained_decay"]["pretrained_weight_decay"] == 0.1
    assert by_name["decay"]["weight_decay"] == 0.01  # ordinary decay stays on (the reference code switched it off)


def test_llrd_on_peft_adapters_follows_the_adapted_layer(tmp_path):
    peft = pytest.importorskip("peft")
    model = tiny_model("bert", tmp_path, num_layers=3)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(target_modules=["query", "value"], r=2, task_type="SEQ_CLS"))
    lr = _lr_by_name(layerwise_lr_groups(wrapped, lr=1.0, decay=0.5))
    lora = [n for n in lr if "lora_A" in n]
    assert lora and all(lr[n] == 0.5 ** (3 - int(n.split("layer.")[1].split(".")[0])) for n in lora)
    assert all(p.requires_grad for g in layerwise_lr_groups(wrapped, 1.0, 0.5) for p in g["params"])


def test_bad_inputs(tmp_path):
    model = tiny_model("bert", tmp_path)
    with pytest.raises(ValueError, match=r"layerwise_lr_decay must be in \(0, 1\]"):
        build_param_groups(model, lr=1.0, layerwise_lr_decay=0.0)
    with pytest.raises(ValueError, match="pretrained_anchors"):
        build_param_groups(model, lr=1.0, pretrained_weight_decay=0.1)
