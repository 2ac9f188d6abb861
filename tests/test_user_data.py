"""Any task: the user's CSV / JSON lines / Parquet files and local datasets, the task kind inferred from the label
column, the papers' protocol on them, built-in and evaluate-style metrics, bad input refused before any run, and a
tiny sweep on a user CSV end to end (records + report)."""

from __future__ import annotations

import json
import sys
import types
from collections import Counter

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")
pd = pytest.importorskip("pandas")

from scale_fixtures import save_tiny_bert_with_tokenizer

from hf_stable_ft.cli import main
from hf_stable_ft.data import DataSpec, load_task
from hf_stable_ft.experiment import SweepConfig, read_finished_runs
from hf_stable_ft.metrics import (
    compute_metrics_for,
    constant_baseline,
    task_with_metric,
)
from hf_stable_ft.tasks import GLUE_TASKS, Task, get_glue_task

FAST = ["--max_steps", "2", "--per_device_eval_batch_size", "16", "--use_cpu", "true"]
WORDS = ["the", "cat", "dog", "sat", "ran", "big", "small", "red", "blue", "house", "mat", "on"]


def _reviews(n: int, labels=("neg", "neu", "pos"), seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"review": " ".join(rng.choice(WORDS, 5)), "stars": labels[i % len(labels)], "other": i}
            for i in range(n)]


def _csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _parquet(path, rows):
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


# --------------------------------------------------------------------------------------------------------
# loading and the protocol


def test_csv_classes_inferred_and_validation_halved_per_class_with_a_fixed_seed(tmp_path):
    train = _csv(tmp_path / "train.csv", _reviews(30))
    dev = _jsonl(tmp_path / "dev.jsonl", _reviews(15, seed=1))  # 5 per class
    spec = DataSpec(train_file=train, validation_file=dev, text_columns="review", label_column="stars")
    task, data = load_task(spec, protocol="zhang2021", train_size=12)
    assert task.kind == "classification" and task.label_names == ("neg", "neu", "pos")  # sorted training classes
    assert task.primary_metric == "accuracy" and task.greater_is_better and task.name == "train"
    assert "inferred from label column 'stars' (strings)" in task.describe()
    assert set(data) == {"train", "validation", "test"} and data["train"].column_names == ["review", "label", "idx"]
    # per class: 5 dev examples -> 2 to validation, 3 to test; the training sample is 4 per class of 12
    assert Counter(data["validation"]["label"][:]) == {0: 2, 1: 2, 2: 2}
    assert Counter(data["test"]["label"][:]) == {0: 3, 1: 3, 2: 3}
    assert Counter(data["train"]["label"][:]) == {0: 4, 1: 4, 2: 4}
    assert not set(data["validation"]["idx"][:]) & set(data["test"]["idx"][:])
    again = load_task(spec, protocol="zhang2021", train_size=12, seed=5)[1]
    assert again["validation"]["idx"][:] == data["validation"]["idx"][:]  # the split seed is fixed
    assert again["train"]["idx"][:] != data["train"]["idx"][:]  # the training sample follows the seed
    whole = load_task(spec, protocol="glue")[1]
    assert set(whole) == {"train", "validation"} and len(whole["validation"]) == 15


def test_jsonl_pairs_with_a_test_file_integer_classes(tmp_path):
    rows = [{"q": f"question {i}", "p": f"passage {i}", "label": 3 + i % 2} for i in range(12)]
    spec = DataSpec(train_file=_jsonl(tmp_path / "t.jsonl", rows), validation_file=_jsonl(tmp_path / "v.jsonl", rows[:4]),
                    test_file=_jsonl(tmp_path / "s.jsonl", rows[4:10]), text_columns=("q", "p"))
    task, data = load_task(spec, protocol="zhang2021")
    assert task.label_names == ("3", "4") and task.text_columns == ("q", "p")
    assert (len(data["validation"]), len(data["test"])) == (4, 6)  # a test split is used as given, not carved
    assert data["test"]["label"][:] == [0, 1, 0, 1, 0, 1]


def test_parquet_floats_are_regression_binned_by_training_quantiles(tmp_path):
    rows = [{"text": f"t {i}", "label": i / 4} for i in range(40)]
    spec = DataSpec(train_file=_parquet(tmp_path / "t.parquet", rows), validation_file=_parquet(tmp_path / "v.parquet", rows))
    task, data = load_task(spec, protocol="zhang2021")
    assert task.kind == "regression" and task.num_labels == 1 and task.primary_metric == "spearmanr"
    assert task.metric_names == ("pearson", "spearmanr") and len(task.score_bins) == 4
    bins = Counter(task.stratification_keys(np.array([r["label"] for r in rows])).tolist())
    assert sorted(bins.values()) == [8, 8, 8, 8, 8]  # quintiles
    assert len(data["validation"]) == len(data["test"]) == 20  # 4 of each bin's 8 on either side
    assert data["train"].features["label"].dtype == "float32"
    forced = load_task(DataSpec(**{**spec.to_dict(), "task_kind": "classification"}), protocol="glue")[0]
    assert forced.kind == "classification" and forced.num_labels == 40 and "--task-kind" in forced.describe()


def test_offline_saved_dataset_and_local_dataset_folder(tmp_path):
    rows = _reviews(12)
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "validation": datasets.Dataset.from_list(rows[:6])}).save_to_disk(str(saved))
    task, data = load_task(DataSpec(dataset=str(saved), text_columns="review", label_column="stars"), protocol="glue")
    assert task.name == "saved" and len(data["validation"]) == 6
    folder = tmp_path / "folder"
    folder.mkdir()
    _csv(folder / "train.csv", rows)
    _csv(folder / "validation.csv", rows[:6])
    _csv(folder / "test.csv", rows[6:])
    task, data = load_task(DataSpec(dataset=str(folder), text_columns="review", label_column="stars"))
    assert set(data) == {"train", "validation", "test"} and len(data["test"]) == 6


# --------------------------------------------------------------------------------------------------------
# metrics


def test_compute_metrics_for_names_tasks_and_metric_objects():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])  # argmax 0, 1, 1, 2
    labels = np.array([0, 1, 2, 2])
    # per-class F1: class 0 = 1, class 1 (P 1/2, R 1) = 2/3, class 2 (P 1, R 1/2) = 2/3 -> macro 7/9
    assert compute_metrics_for("f1_macro")((logits, labels)) == {"f1_macro": pytest.approx(7 / 9)}
    both = compute_metrics_for(["accuracy", "mcc"])((logits, labels))
    assert both["accuracy"] == pytest.approx(0.75) and set(both) == {"accuracy", "matthews_correlation"}
    assert compute_metrics_for("spearman")((np.array([[1.0], [3.0], [2.0], [4.0]]), np.array([1.0, 2.0, 3.0, 4.0]))
                                           ) == {"spearmanr": pytest.approx(0.8)}
    assert compute_metrics_for("rte")((np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 0]))) == {"accuracy": 0.5}
    with pytest.raises(ValueError, match="unknown GLUE task"):
        compute_metrics_for("squad")
    with pytest.raises(ValueError, match="mix classification and regression"):
        compute_metrics_for(["accuracy", "pearson"])

    class Half:
        name = "half"

        def compute(self, predictions, references):
            return {"half": np.float64(np.mean(predictions == references) / 2), "n": len(references)}

    task = Task("mine", None, ("a", "b", "c"), "accuracy", ("accuracy",), ("text",))
    scored = task_with_metric(task, Half())
    assert scored.primary_metric == "half" and scored.metric_names == ("half",)  # the key named like the module
    assert compute_metrics_for(scored)((logits, labels)) == {"half": 0.375, "n": 4}
    assert task_with_metric(task, Half(), key="n").primary_metric == "n"


def test_metric_that_does_not_fit_the_task_names_the_allowed_ones():
    three = Task("mine", None, ("a", "b", "c"), "accuracy", ("accuracy",), ("text",))
    with pytest.raises(ValueError, match=r"--metric f1 does not fit 3 classes .*allowed for this task: accuracy, f1_macro, "
                                         r"matthews_correlation"):
        task_with_metric(three, "f1")
    with pytest.raises(ValueError, match="--metric pearson does not fit a classification task"):
        task_with_metric(three, "pearson")
    regression = Task("r", None, (), "spearmanr", ("pearson", "spearmanr"), ("text",), kind="regression")
    with pytest.raises(ValueError, match="allowed for this task: pearson, spearmanr"):
        task_with_metric(regression, "accuracy")
    assert task_with_metric(regression, "pearson").metric_names == ("pearson", "spearmanr")


def test_constant_baseline_comes_from_the_given_training_constant():
    binary = Task("b", None, ("no", "yes"), "f1", ("f1", "accuracy"), ("text",))
    # training majority "yes" (1) on a split with p = 1/4 of class 1: F1 = 2p / (1 + p) = 0.4
    assert constant_baseline(binary, [0, 0, 0, 1], constant=1) == pytest.approx(0.4)
    assert constant_baseline(binary, [0, 0, 0, 1]) == 0.0  # the split's own majority (0): no positive prediction
    regression = Task("r", None, (), "spearmanr", ("pearson", "spearmanr"), ("text",), kind="regression")
    assert constant_baseline(regression, [0.5, 2.0, 3.0], constant=1.0) == 0.0

    class NegativeMSE:
        def compute(self, predictions, references):
            return {"neg_mse": -float(np.mean((predictions - references) ** 2))}

    mse = task_with_metric(regression, NegativeMSE())
    assert constant_baseline(mse, [1.0, 2.0, 3.0], constant=2.0) == pytest.approx(-2 / 3)


def test_a_local_evaluate_metric_folder_is_loaded_through_evaluate(tmp_path, monkeypatch):
    folder = tmp_path / "my_metric"
    folder.mkdir()
    (folder / "my_metric.py").write_text("# an evaluate metric script\n")
    loaded = []

    class Module:
        name = "my_metric"

        def compute(self, predictions, references):
            return {"my_metric": float(np.mean(predictions == references)), "support": len(references)}

    def load(path):
        loaded.append(path)
        return Module()

    monkeypatch.setitem(sys.modules, "evaluate", types.SimpleNamespace(load=load))
    task = Task("mine", None, ("a", "b"), "accuracy", ("accuracy",), ("text",))
    scored = task_with_metric(task, str(folder), greater_is_better=False)
    assert loaded == [str(folder)] and scored.primary_metric == "my_metric" and scored.direction == "lower"
    assert compute_metrics_for(str(folder))((np.array([[0.0, 1.0]]), np.array([1])))["my_metric"] == 1.0


def test_a_hub_metric_offline_is_refused_naming_the_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = Task("mine", None, ("a", "b"), "accuracy", ("accuracy",), ("text",))
    with pytest.raises(ValueError, match="--metric bertscore: not a built-in metric .* HF_HUB_OFFLINE is set"):
        task_with_metric(task, "bertscore")


# --------------------------------------------------------------------------------------------------------
# one table, one task object


def test_glue_table_has_one_row_per_task_and_keeps_the_old_names():
    from hf_stable_ft.data import GlueTaskInfo, get_task_info

    assert GlueTaskInfo is Task and get_task_info("sst-2") is GLUE_TASKS["sst2"].task
    assert GLUE_TASKS["mrpc"].format.text == ("#1 String", "#2 String")
    assert GLUE_TASKS["qnli"].hub_text_columns == ("question", "sentence") and GLUE_TASKS["mnlisubset"].hub_text_columns is None
    assert GLUE_TASKS["mnlisubset"].task is get_glue_task("mnli")
    assert get_glue_task("stsb").kind == "regression" and get_glue_task("stsb").is_glue
    scores = np.array([0.0, 0.99, 1.0, 2.5, 3.99, 4.0, 5.0])
    assert get_glue_task("stsb").stratification_keys(scores).tolist() == [0, 0, 1, 2, 3, 4, 4]  # min(floor(s), 4)


def test_glue_sweep_identity_is_unchanged_and_user_data_is_part_of_it():
    glue = SweepConfig(task="rte")
    assert "data" not in glue.identity() and "data" not in glue.shared_settings()
    user = SweepConfig(task="mine", data={"train_file": "t.csv", "validation_file": "v.csv"})
    assert user.identity()["data"]["train_file"] == "t.csv" and user.source.task_name == "t"


# --------------------------------------------------------------------------------------------------------
# bad input: one line naming the flag, exit 2, before any run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_tiny_bert_with_tokenizer(tmp_path_factory.mktemp("tiny") / "model"))


def _printed_result(out: str) -> dict:
    """The JSON ``train`` prints last (the Trainer's own log lines come before it)."""
    return json.loads(out[out.index("{\n"):])


def _refused(capsys, argv) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hf-stable-ft {argv[0]}: error: "), err
    return err[0]


@pytest.mark.parametrize("case, expected", [
    ("missing_column", r"--text-columns body: column 'body' is not in --train-file .*columns found: review, stars, other"),
    ("one_class", r"--label-column stars: the training split holds one class \('pos'\)"),
    ("empty_split", r"--validation-file .*the split is empty"),
    ("metric_kind", r"--metric pearson does not fit a classification task; allowed for this task: accuracy, f1_macro"),
    ("unlabelled_test", r"--test-file .*the test split has no labels .*columns found: review, other"),
    ("task_and_file", r"--task rte and --train-file exclude each other"),
    ("no_validation", r"--validation-file is missing"),
    ("unseen_class", r"--label-column stars: --validation-file .* has label\(s\) \['zzz'\] that the training split lacks"),
    ("bad_suffix", r"--train-file .*unknown file type '.xlsx'; allowed: .csv"),
    ("hub_offline", r"--dataset someone/reviews: no such local directory, and HF_HUB_OFFLINE is set"),
    ("kind_mismatch", r"--task-kind regression does not fit --label-column stars: it holds strings"),
    ("metric_without_data", r"--metric applies to your own data"),
])
def test_bad_input_is_refused_before_any_run(case, expected, tmp_path, capsys, model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = _reviews(12)
    train = _csv(tmp_path / "train.csv", rows)
    dev = _csv(tmp_path / "dev.csv", rows[:6])
    data = ["--train-file", train, "--validation-file", dev, "--text-columns", "review", "--label-column", "stars"]
    if case == "missing_column":
        data[5] = "body"
    elif case == "one_class":
        data[1] = _csv(tmp_path / "one.csv", [dict(r, stars="pos") for r in rows])
    elif case == "empty_split":
        (tmp_path / "empty.csv").write_text("review,stars,other\n")
        data[3] = str(tmp_path / "empty.csv")
    elif case == "metric_kind":
        data += ["--metric", "pearson"]
    elif case == "unlabelled_test":
        data += ["--test-file", _csv(tmp_path / "test.csv", [{"review": r["review"], "other": 1} for r in rows])]
    elif case == "task_and_file":
        data = ["--task", "rte"] + data
    elif case == "no_validation":
        data = data[:2] + data[4:]
    elif case == "unseen_class":
        data[3] = _csv(tmp_path / "dev2.csv", rows[:5] + [dict(rows[5], stars="zzz")])
    elif case == "bad_suffix":
        (tmp_path / "train.xlsx").write_text("x")
        data[1] = str(tmp_path / "train.xlsx")
    elif case == "hub_offline":
        data = ["--dataset", "someone/reviews"] + data[4:]
    elif case == "kind_mismatch":
        data += ["--task-kind", "regression"]
    elif case == "metric_without_data":
        data = ["--task", "rte", "--metric", "f1"]
    out = tmp_path / "out"
    line = _refused(capsys, ["sweep", *data, "--model", model_dir, "--seeds", "1", "--output", str(out), *FAST])
    assert __import__("re").search(expected, line), line
    assert not out.exists()  # nothing written, no run started


def test_lower_is_better_metric_trains_but_cannot_drive_a_sweep(tmp_path, capsys, model_dir, monkeypatch):
    folder = tmp_path / "error_rate"
    folder.mkdir()

    class ErrorRate:
        name = "error_rate"

        def compute(self, predictions, references):
            return {"error_rate": float(np.mean(predictions != references))}

    monkeypatch.setitem(sys.modules, "evaluate", types.SimpleNamespace(load=lambda path: ErrorRate()))
    rows = _reviews(12, labels=("neg", "pos"))
    data = ["--train-file", _csv(tmp_path / "train.csv", rows), "--validation-file", _csv(tmp_path / "dev.csv", rows),
            "--text-columns", "review", "--label-column", "stars", "--metric", str(folder), "--metric-direction", "lower"]
    line = _refused(capsys, ["sweep", *data, "--model", model_dir, "--seeds", "1", "--output", str(tmp_path / "o"),
                             *FAST])
    assert "--metric-direction lower: a sweep keeps each run's best checkpoint" in line
    assert not (tmp_path / "o").exists()
    assert main(["train", *data, "--model", model_dir, "--output_dir", str(tmp_path / "t"), *FAST]) == 0
    result = _printed_result(capsys.readouterr().out)
    assert result["task"] == {"name": "train", "kind": "classification", "label_names": ["neg", "pos"],
                              "primary_metric": "error_rate", "greater_is_better": False}
    assert "validation/eval_error_rate" in json.loads((tmp_path / "t" / "all_results.json").read_text())


# --------------------------------------------------------------------------------------------------------
# end to end


def test_tiny_sweep_on_a_user_csv_records_and_report(tmp_path, capsys, model_dir):
    # training majority "pos" (6 of 9); validation+test: 4 neg, 4 pos per half after halving 8/8
    train_rows = _reviews(9, labels=("pos", "neg", "pos"))
    dev_rows = _reviews(16, labels=("neg", "pos"), seed=3)
    out = tmp_path / "sweep"
    argv = ["sweep", "--train-file", _csv(tmp_path / "reviews.csv", train_rows), "--validation-file",
            _csv(tmp_path / "reviews_dev.csv", dev_rows), "--text-columns", "review", "--label-column", "stars",
            "--metric", "f1", "--model", model_dir, "--recipes", "devlin2019,stock", "--seeds", "2",
            "--evaluations", "2", "--output", str(out), "--report", *FAST]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "task reviews: classification with 2 classes (neg, pos) (inferred from label column 'stars' (strings)" \
        in captured.err and "primary metric f1 (higher is better)" in captured.err
    runs = read_finished_runs(out / "runs.jsonl")
    assert set(runs) == {"devlin2019/seed=0", "devlin2019/seed=1", "stock/seed=0", "stock/seed=1"}
    record = runs["devlin2019/seed=0"]
    assert record["status"] == "finished" and record["task"] == "reviews" and record["primary_metric"] == "f1"
    assert record["primary_metric_greater_is_better"] is True and record["task_kind"] == "classification"
    assert record["label_names"] == ["neg", "pos"]
    # the constant baseline is the training majority ("pos" = class 1) on each half: F1 = 2p/(1+p), p = 1/2
    assert record["majority_baseline"] == {"validation": pytest.approx(2 / 3), "test": pytest.approx(2 / 3)}
    # the constant-prediction loss is the entropy of the training labels (6 pos, 3 neg)
    p = 6 / 9
    assert record["constant_prediction_loss"] == pytest.approx(-(p * np.log(p) + (1 - p) * np.log(1 - p)))
    assert {"validation", "test"} <= set(record["eval_history"][0])
    assert record["sweep_settings"]["shared"]["data"]["label_column"] == "stars"
    report = (out / "report.md").read_text()
    assert "devlin2019" in report and "stock" in report
    lines = (out / "runs.jsonl").read_text().count("\n")
    assert main(argv) == 0 and (out / "runs.jsonl").read_text().count("\n") == lines  # resumes: nothing to redo


def test_train_on_a_regression_parquet(tmp_path, capsys, model_dir):
    rows = [{"sentence1": " ".join(WORDS[i % 5: i % 5 + 3]), "sentence2": "the cat", "score": (i % 6) / 1.5}
            for i in range(24)]
    out = tmp_path / "train"
    argv = ["train", "--train-file", _parquet(tmp_path / "sts.parquet", rows), "--validation-file",
            _parquet(tmp_path / "sts_dev.parquet", rows[:12]), "--label-column", "score", "--metric", "spearman",
            "--protocol", "zhang2021", "--model", model_dir, "--output_dir", str(out), *FAST]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "regression" in captured.err and "text sentence1 + sentence2" in captured.err
    result = _printed_result(captured.out)
    assert result["task"]["kind"] == "regression" and result["task"]["primary_metric"] == "spearmanr"
    assert "test/test_spearmanr" in json.loads((out / "all_results.json").read_text())
    assert result["majority_baseline"] == {"validation": 0.0, "test": 0.0}  # a constant has no correlation
