"""hf_stable_ft.metrics against values worked out by hand in the comments."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from hf_stable_ft.metrics import (
    compute_glue_metrics,
    constant_prediction_loss,
    glue_compute_metrics,
    logits_to_predictions,
    majority_baseline,
    primary_metric,
)

# predictions 1,1,0,1,0 vs labels 1,0,0,1,1: TP=2 (items 0,3), FP=1 (item 1), TN=1 (item 2), FN=1 (item 4)
PAIR_PREDICTIONS = np.array([1, 1, 0, 1, 0])
PAIR_LABELS = np.array([1, 0, 0, 1, 1])


def test_accuracy_from_logits_eval_prediction():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])  # argmax 0, 1, 0, 1
    labels = np.array([0, 1, 1, 1])  # 3 of 4 correct
    assert glue_compute_metrics("rte")(EvalPrediction(predictions=logits, label_ids=labels)) == {"accuracy": 0.75}


def test_plain_tuple_and_logits_tuple():
    logits = np.array([[0.1, 0.5, 0.2], [0.9, 0.0, 0.0], [0.0, 0.0, 2.0]])  # argmax 1, 0, 2
    labels = np.array([1, 0, 0])
    compute = glue_compute_metrics("MNLI")
    assert compute((logits, labels)) == {"accuracy": pytest.approx(2 / 3)}
    hidden = np.zeros((3, 4, 8))
    assert compute(EvalPrediction(predictions=(logits, hidden), label_ids=labels)) == {"accuracy": pytest.approx(2 / 3)}
    # predictions already reduced to ids by preprocess_logits_for_metrics
    assert compute((np.array([1, 0, 2]), labels)) == {"accuracy": pytest.approx(2 / 3)}


def test_mrpc_accuracy_and_f1():
    # P = 2/3, R = 2/3 -> F1 = 2/3; accuracy = 3/5
    result = compute_glue_metrics("mrpc", PAIR_PREDICTIONS, PAIR_LABELS)
    assert result == {"accuracy": pytest.approx(0.6), "f1": pytest.approx(2 / 3)}
    assert set(compute_glue_metrics("qqp", PAIR_PREDICTIONS, PAIR_LABELS)) == {"accuracy", "f1"}


def test_cola_matthews_correlation():
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2·1 − 1·1) / sqrt(3·3·2·2) = 1/6
    assert compute_glue_metrics("cola", PAIR_PREDICTIONS, PAIR_LABELS) == {"matthews_correlation": pytest.approx(1 / 6)}
    # a constant classifier has MCC 0
    assert compute_glue_metrics("cola", np.ones(5), PAIR_LABELS) == {"matthews_correlation": 0.0}


def test_stsb_pearson_and_spearman_from_column_logits():
    # x = 1,2,3,4 ; y = 1,2,3,5: deviations -1.5,-.5,.5,1.5 and -1.75,-.75,.25,2.25
    # r = 6.5 / sqrt(5 · 8.75); identical ranks -> Spearman 1
    logits = np.array([[1.0], [2.0], [3.0], [4.0]])
    result = glue_compute_metrics("stsb")((logits, np.array([1.0, 2.0, 3.0, 5.0])))
    assert result == {"pearson": pytest.approx(6.5 / math.sqrt(43.75)), "spearmanr": pytest.approx(1.0)}
    # ranks 1,3,2,4 vs 1,2,3,4: d² = 0,1,1,0 -> ρ = 1 − 6·2 / (4·15) = 0.8
    result = compute_glue_metrics("stsb", [1.0, 3.0, 2.0, 4.0], [1.0, 2.0, 3.0, 4.0])
    assert result["spearmanr"] == pytest.approx(0.8)


def test_constant_regression_scores_zero_not_nan():
    assert compute_glue_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 4.0]) == {"pearson": 0.0, "spearmanr": 0.0}


def test_torch_logits_and_shape_errors():
    assert logits_to_predictions("sst2", torch.tensor([[0.2, 0.8], [0.9, 0.1]])).tolist() == [1, 0]
    with pytest.raises(ValueError, match="3 predictions for 2 references"):
        compute_glue_metrics("sst2", [0, 1, 1], [0, 1])


def test_external_metric_object_replaces_builtin():
    class Recorder:
        def compute(self, predictions, references):
            self.seen = (list(predictions), list(references))
            return {"accuracy": np.float64(0.5), "note": "external"}

    recorder = Recorder()
    result = glue_compute_metrics("rte", metric=recorder)((np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([0, 0])))
    assert recorder.seen == ([1, 0], [0, 0])
    assert result == {"accuracy": 0.5, "note": "external"} and type(result["accuracy"]) is float
    with pytest.raises(TypeError, match="compute"):
        glue_compute_metrics("rte", metric="glue")
    with pytest.raises(ValueError, match="unknown GLUE task"):
        glue_compute_metrics("squad")


def test_primary_metric_follows_zhang2021():
    assert [primary_metric(t) for t in ("RTE", "MRPC", "STS-B", "CoLA", "SST-2", "QNLI", "QQP", "MNLI")] == [
        "accuracy",
        "f1",
        "spearmanr",
        "matthews_correlation",
        "accuracy",
        "accuracy",
        "accuracy",
        "accuracy",
    ]


def test_majority_baseline():
    assert majority_baseline("rte", [0, 0, 1]) == pytest.approx(2 / 3)
    assert majority_baseline("rte", [0, 0, 1], majority_label=1) == pytest.approx(1 / 3)
    assert majority_baseline("sst2", [0, 1, 1, 0]) == pytest.approx(0.5)  # tie -> class 0
    # MRPC, majority "equivalent" (p = 3/4): P = 3/4, R = 1 -> F1 = 2·(3/4) / (1 + 3/4) = 6/7
    assert majority_baseline("mrpc", [1, 1, 1, 0]) == pytest.approx(6 / 7)
    # majority "not_equivalent": no positive predictions -> F1 0
    assert majority_baseline("mrpc", [0, 0, 1]) == 0.0
    assert majority_baseline("cola", [1, 1, 0]) == 0.0
    assert majority_baseline("stsb", [0.5, 3.0]) == 0.0
    with pytest.raises(ValueError, match="majority_label"):
        majority_baseline("rte", [0, 1], majority_label=2)


def test_majority_baseline_real_rte_dev():
    glue = Path(os.environ.get("GLUE_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "glue")
    if not (glue / "RTE" / "dev.tsv").is_file():
        pytest.skip("real GLUE files not found: set GLUE_DIR or put them in ../shared/data/glue")
    from hf_stable_ft.data import load_glue_split

    labels = load_glue_split("rte", "dev", data_dir=glue)["label"][:]
    assert majority_baseline("rte", labels) == pytest.approx(146 / 277)  # 146 entailment of 277


def test_constant_prediction_loss():
    assert constant_prediction_loss([0, 0, 1, 1], 2) == pytest.approx(math.log(2))
    # p = (3/4, 1/4): H = −(3/4 ln 3/4 + 1/4 ln 1/4) ≈ 0.5623
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert constant_prediction_loss([0, 0, 0, 1], 2) == pytest.approx(expected)
    assert constant_prediction_loss([0, 0, 0, 1], 3) == pytest.approx(expected)  # unseen class adds 0
    assert constant_prediction_loss([1.0, 2.0, 3.0, 4.0], 1) == pytest.approx(1.25)  # variance
    with pytest.raises(ValueError, match=r"integers in 0\.\.1"):
        constant_prediction_loss([0, 2], 2)
    with pytest.raises(ValueError, match="num_labels"):
        constant_prediction_loss([0, 1], 0)


def test_constant_prediction_loss_is_what_the_trainer_measures():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    prior = torch.bincount(labels, minlength=3).float() / len(labels)
    logits = prior.log().expand(len(labels), 3)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    assert constant_prediction_loss(labels.numpy(), 3) == pytest.approx(loss.item(), rel=1e-6)
    scores = torch.tensor([0.0, 1.0, 5.0])
    mse = torch.nn.functional.mse_loss(scores.mean().expand(3), scores)
    assert constant_prediction_loss(scores.numpy(), 1) == pytest.approx(mse.item(), rel=1e-6)
