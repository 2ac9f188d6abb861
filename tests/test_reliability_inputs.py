"""Issue 14, the input side: what a user types (flags, ``--config`` files, data files, ``--model``, output
paths, ``--resume_from_checkpoint``) is either done exactly or refused before any work, in one line naming
the flag or file, exit code 2, nothing written.

Tiny models and GLUE-format fixtures; every test runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from scale_fixtures import save_tiny_bert_with_tokenizer, write_rte

from hf_stable_ft import StableTrainingArguments
from hf_stable_ft.cli import main, parse_training_flags
from hf_stable_ft.data import GlueFormatError, load_glue_task

FAST = ["--max_steps", "2", "--per_device_eval_batch_size", "16", "--use_cpu", "true", "--report_to", "none"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model = save_tiny_bert_with_tokenizer(root / "model")
    glue = write_rte(root / "glue", train=16, dev=8)
    return {"model": str(model), "glue": str(glue)}


def _config(tmp_path: Path, text: str, suffix: str) -> str:
    path = tmp_path / f"config{suffix}"
    path.write_text(text)
    return str(path)


def _refused(capsys, argv: list[str], *needles: str) -> str:
    """``main(argv)`` exits with code 2 and one line on stderr (no traceback) that holds every needle."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("hf-stable-ft"), err
    assert "usage:" not in err, err  # not the 300-line usage of every TrainingArguments field
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


# ---------------------------------------------------------------------------------------------------
# --config values are parsed exactly as the flags are
# ---------------------------------------------------------------------------------------------------

FLAG_FORMS = [
    ("learning_rate", "2e-5"),
    ("adam_bias_correction", "false"),
    ("adam_bias_correction", "no"),
    ("adam_bias_correction", "0"),
    ("abort_degenerate_runs", "false"),
    ("abort_degenerate_runs", "yes"),
    ("abort_degenerate_runs", "1"),
    ("reinit_layers", "2"),
    ("layerwise_lr_decay", "0.9"),
    ("lr_scheduler_type", "cosine"),
    ("stability_recipe", "mosbach2021"),
    ("max_steps", "7"),
]


@pytest.mark.parametrize("name,text", FLAG_FORMS)
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_strings_are_parsed_as_the_same_flag(name, text, suffix, tmp_path):
    if suffix == ".json":
        config = _config(tmp_path, json.dumps({name: text}), suffix)
    else:
        config = _config(tmp_path, f"{name}: '{text}'\n", suffix)
    from_config = parse_training_flags([], config)
    from_flag = parse_training_flags([f"--{name}", text])
    assert from_config == from_flag
    assert type(from_config[name]) is type(from_flag[name])


def test_yaml_scalars_and_native_values_get_the_field_types(tmp_path):
    yaml_config = _config(tmp_path, "learning_rate: 2e-5\nwarmup_steps: 3\nadam_bias_correction: false\n"
                                    "abort_degenerate_runs: no\nreinit_pooler: yes\nreinit_layers: 1\n", ".yaml")
    values = parse_training_flags([], yaml_config)
    assert values == {"learning_rate": 2e-5, "warmup_steps": 3.0, "adam_bias_correction": False,
                      "abort_degenerate_runs": False, "reinit_pooler": True, "reinit_layers": 1}
    assert isinstance(values["learning_rate"], float) and isinstance(values["warmup_steps"], float)
    json_config = _config(tmp_path, json.dumps({"learning_rate": 2e-05, "adam_bias_correction": False,
                                                "abort_degenerate_runs": 0, "reinit_layers": 2}), ".json")
    assert parse_training_flags([], json_config) == {"learning_rate": 2e-5, "adam_bias_correction": False,
                                                     "abort_degenerate_runs": False, "reinit_layers": 2}


def test_config_values_reach_the_arguments(tmp_path):
    """The reported cases: asked BERTAdam and no abort, got BERTAdam and no abort."""
    config = _config(tmp_path, json.dumps({"adam_bias_correction": "false", "abort_degenerate_runs": "false",
                                           "learning_rate": "2e-5"}), ".json")
    args = StableTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none",
                                   **parse_training_flags([], config))
    assert args.adam_bias_correction is False and args.abort_degenerate_runs is False
    assert args.learning_rate == 2e-5


def test_flags_win_over_the_config(tmp_path):
    config = _config(tmp_path, "adam_bias_correction: 'false'\nlearning_rate: 2e-5\n", ".yaml")
    assert parse_training_flags(["--adam_bias_correction", "true"], config) == {
        "adam_bias_correction": True, "learning_rate": 2e-5}


def test_null_is_allowed_for_optional_fields_only(tmp_path):
    assert parse_training_flags([], _config(tmp_path, "stability_recipe: null\n", ".yaml")) == {
        "stability_recipe": None}
    with pytest.raises(ValueError, match=r"config\.yaml.*learning_rate"):
        parse_training_flags([], _config(tmp_path, "learning_rate: null\n", ".yaml"))


@pytest.mark.parametrize("text,field,needle", [
    ('{"learning_rate": [1e-5, 2e-5]}', "learning_rate", "list"),
    ('{"learning_rate": "fast"}', "learning_rate", "invalid float value: 'fast'"),
    ('{"learning_rate": true}', "learning_rate", "invalid float value"),
    ('{"learning_rate": {"a": 1}}', "learning_rate", "mapping"),
    ('{"reinit_layers": 1.5}', "reinit_layers", "invalid int value: '1.5'"),
    ('{"adam_bias_correction": "maybe"}', "adam_bias_correction", "true/false"),
    ('{"adam_bias_correction": 2}', "adam_bias_correction", "true/false"),
    ('{"lr_scheduler_type": "cosyne"}', "lr_scheduler_type", "cosine"),
])
def test_config_values_of_the_wrong_type_name_the_field_and_the_file(text, field, needle, tmp_path):
    config = _config(tmp_path, text, ".json")
    with pytest.raises(ValueError) as error:
        parse_training_flags([], config)
    message = str(error.value)
    assert config in message and field in message and needle in message, message


def test_config_files_that_cannot_be_read_name_the_file(tmp_path):
    broken = _config(tmp_path, '{"learning_rate": 2e-5,,}', ".json")
    with pytest.raises(ValueError, match=r"config\.json.*not valid JSON"):
        parse_training_flags([], broken)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("output_dir: 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.yaml.*UTF-8"):
        parse_training_flags([], str(latin1))
    with pytest.raises(ValueError, match=r"config\.yaml.*mapping"):
        parse_training_flags([], _config(tmp_path, "- learning_rate\n", ".yaml"))
    with pytest.raises(ValueError, match=r"unknown fields \['learning_rat'\].*learning_rate"):
        parse_training_flags([], _config(tmp_path, "learning_rat: 1\n", ".yaml"))


def test_a_bad_config_on_the_command_line_is_one_line(tiny, tmp_path, capsys):
    config = _config(tmp_path, '{"learning_rate": [1e-5]}', ".json")
    out = tmp_path / "out"
    _refused(capsys, ["train", "--model", tiny["model"], "--data-dir", tiny["glue"], "--config", config,
                      "--output_dir", str(out), *FAST], "learning_rate", config)
    assert not out.exists()


def test_bad_flag_values_and_unknown_flags_are_one_line(tiny, tmp_path, capsys):
    base = ["train", "--model", tiny["model"], "--data-dir", tiny["glue"], "--output_dir", str(tmp_path / "o")]
    _refused(capsys, base + ["--learning_rate", "fast"], "--learning_rate", "invalid float value: 'fast'")
    _refused(capsys, base + ["--reinit_layesr", "2"], "--reinit_layesr", "--reinit_layers")
    _refused(capsys, base + ["--weight_decay", "-1", *FAST], "weight_decay")  # the arguments' own check
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------------
# data files
# ---------------------------------------------------------------------------------------------------


def _rte_copy(tiny, tmp_path: Path) -> Path:
    glue = tmp_path / "glue"
    (glue / "RTE").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (glue / "RTE" / name).write_bytes((Path(tiny["glue"]) / "RTE" / name).read_bytes())
    return glue


@pytest.mark.parametrize("split,content", [
    ("train.tsv", b"index\tsentence1\tsentence2\tlabel\n"),
    ("dev.tsv", b"index\tsentence1\tsentence2\tlabel\n"),
    ("train.tsv", b""),
    ("dev.tsv", b"\n\n"),
])
def test_a_header_only_or_empty_file_names_the_file(split, content, tiny, tmp_path):
    glue = _rte_copy(tiny, tmp_path)
    (glue / "RTE" / split).write_bytes(content)
    with pytest.raises(GlueFormatError, match=rf"{split}.*no examples"):
        load_glue_task("rte", data_dir=glue)


def test_an_empty_jsonl_file_names_the_file(tmp_path):
    folder = tmp_path / "MNLI_subset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("")
    (folder / "dev.jsonl").write_text(json.dumps({"idx": 0, "premise": "a", "hypothesis": "b", "label": 0}) + "\n")
    with pytest.raises(GlueFormatError, match=r"train\.jsonl.*no examples"):
        load_glue_task("mnli_subset", data_dir=tmp_path)


def test_a_non_utf8_file_names_the_file_the_line_and_the_fix(tiny, tmp_path):
    glue = _rte_copy(tiny, tmp_path)
    path = glue / "RTE" / "train.tsv"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"\t", "\tcaf\xe9 ".encode("latin-1"), 1)  # file line 4, first sentence
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(GlueFormatError, match=r"train\.tsv:4: not UTF-8.*UTF-8") as error:
        load_glue_task("rte", data_dir=glue)
    assert "\n" not in str(error.value)


def test_a_field_over_the_csv_size_limit_is_read_whole(tiny, tmp_path):
    import csv

    glue = _rte_copy(tiny, tmp_path)
    path = glue / "RTE" / "train.tsv"
    long_text = "the cat sat. " * 20_000  # 260 kB: over csv's default 128 KiB field limit
    assert len(long_text) > csv.field_size_limit()
    with open(path, "a") as handle:
        handle.write(f"99\t{long_text}\tthe cat.\tentailment\n")
    limit = csv.field_size_limit()
    train = load_glue_task("rte", data_dir=glue)["train"]
    assert train[-1]["sentence1"] == long_text and train[-1]["idx"] == 99
    assert csv.field_size_limit() == limit  # the process-wide limit is left as it was


def test_bad_data_on_the_command_line_is_one_line_and_writes_nothing(tiny, tmp_path, capsys):
    glue = _rte_copy(tiny, tmp_path)
    (glue / "RTE" / "dev.tsv").write_bytes(b"index\tsentence1\tsentence2\tlabel\n")
    out = tmp_path / "out"
    _refused(capsys, ["train", "--model", tiny["model"], "--data-dir", str(glue), "--output_dir", str(out), *FAST],
             "dev.tsv", "no examples")
    assert not out.exists()
    _refused(capsys, ["train", "--model", tiny["model"], "--data-dir", str(tmp_path / "nowhere"),
                      "--output_dir", str(out), *FAST], "nowhere")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------
# --model
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_missing_model_directory_is_one_line_naming_the_flag(command, tiny, tmp_path, capsys):
    out = tmp_path / "out"
    target = ["--output_dir", str(out)] if command == "train" else ["--output", str(out), "--seeds", "1"]
    line = _refused(capsys, [command, "--model", str(tmp_path / "nonexistent"), "--data-dir", tiny["glue"],
                             *target, *FAST], "--model", str(tmp_path / "nonexistent"), "no such directory")
    assert "repo id" not in line.lower() and "repo_id" not in line
    assert not out.exists()


def test_a_directory_that_is_not_a_model_is_one_line(tiny, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(capsys, ["train", "--model", str(empty), "--data-dir", tiny["glue"], "--output_dir",
                      str(tmp_path / "out"), *FAST], "--model", "config.json")


def test_a_hub_name_that_cannot_be_loaded_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _refused(capsys, ["train", "--model", "no-such-user-hf-stable-ft/no-such-model", "--data-dir", tiny["glue"],
                      "--output_dir", str(tmp_path / "out"), *FAST], "--model", "no-such-user-hf-stable-ft/no-such-model")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------
# train: output directory and --resume_from_checkpoint
# ---------------------------------------------------------------------------------------------------


def test_train_creates_a_missing_parent_of_the_output_directory(tiny, tmp_path):
    out = tmp_path / "does" / "not" / "exist" / "run"
    assert main(["train", "--model", tiny["model"], "--data-dir", tiny["glue"], "--output_dir", str(out),
                 *FAST]) == 0
    assert (out / "model.safetensors").exists() and (out / "all_results.json").exists()


# 16 examples, batch 8: 2 updates an epoch, evaluated at each epoch's end (train's default); the checkpoint at step 3
# lies inside epoch 2, so the resumed run skips one batch of it (the Trainer restores the data order and RNG).
CHECKPOINTED = ["--max_steps", "6", "--per_device_train_batch_size", "8", "--save_strategy", "steps",
                "--save_steps", "3", "--logging_steps", "1", "--learning_rate", "1e-3", "--use_cpu", "true", "--report_to", "none",
                "--seed", "3", "--reinit_layers", "1", "--layerwise_lr_decay", "0.9", "--adam_bias_correction", "false"]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _train(tiny, out: Path, *extra: str) -> dict:
    assert main(["train", "--model", tiny["model"], "--data-dir", tiny["glue"], "--output_dir", str(out),
                 *CHECKPOINTED, *extra]) == 0
    return json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())  # the last save_steps save


def test_train_resumes_from_a_checkpoint_and_ends_where_an_uninterrupted_run_ends(tiny, tmp_path):
    full = tmp_path / "full"
    full_state = _train(tiny, full)
    assert full_state["global_step"] == 6 and (full / "checkpoint-3").is_dir()

    resumed = tmp_path / "resumed"
    resumed_state = _train(tiny, resumed, "--resume_from_checkpoint", str(full / "checkpoint-3"))
    assert resumed_state["global_step"] == 6
    # it continued from step 3: training from scratch would have written checkpoint-3 here
    assert not (resumed / "checkpoint-3").exists() and (resumed / "checkpoint-6").is_dir()
    expected, got = _weights(full), _weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)

    def losses(state):
        return [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]

    assert losses(resumed_state) == losses(full_state)


def test_train_resume_true_continues_from_the_last_checkpoint_of_the_output_directory(tiny, tmp_path):
    full = tmp_path / "full"
    _train(tiny, full)
    again = tmp_path / "again"
    again.mkdir()
    import shutil

    shutil.copytree(full / "checkpoint-3", again / "checkpoint-3")
    (again / "checkpoint-5").mkdir()  # killed while it was written (no trainer_state.json): not the last checkpoint
    state = _train(tiny, again, "--resume_from_checkpoint", "true")
    assert state["global_step"] == 6 and (again / "checkpoint-6").is_dir()
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]
    for name, value in _weights(full).items():
        torch.testing.assert_close(_weights(again)[name], value, rtol=0, atol=1e-6, msg=name)


def test_a_resume_checkpoint_that_is_not_there_is_refused_before_work(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["train", "--model", tiny["model"], "--data-dir", tiny["glue"], "--output_dir", str(out), *FAST]
    _refused(capsys, base + ["--resume_from_checkpoint", str(tmp_path / "checkpoint-9")], "--resume_from_checkpoint",
             "checkpoint-9")
    _refused(capsys, base + ["--resume_from_checkpoint", "true"], "--resume_from_checkpoint", "no checkpoint")
    half = tmp_path / "half" / "checkpoint-2"
    half.mkdir(parents=True)  # a checkpoint killed while it was written: no trainer_state.json
    _refused(capsys, base + ["--resume_from_checkpoint", str(half)], "trainer_state.json")
    assert not out.exists()


def test_a_genuine_bug_keeps_its_traceback(tiny, tmp_path, monkeypatch):
    from hf_stable_ft import experiment

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(experiment, "train_once", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["train", "--model", tiny["model"], "--data-dir", tiny["glue"], "--output_dir", str(tmp_path / "o")])


def test_a_protocol_that_leaves_a_split_empty_is_refused(tiny, tmp_path):
    glue = _rte_copy(tiny, tmp_path)
    (glue / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta cat.\ta cat.\tentailment\n")
    with pytest.raises(ValueError, match=r"zhang2021.*validation.*no examples.*dev 1"):
        load_glue_task("rte", data_dir=glue, protocol="zhang2021")
    assert len(load_glue_task("rte", data_dir=glue)["validation"]) == 1  # glue protocol: dev as it is


def test_the_no_flags_of_boolean_fields_that_default_to_true(tmp_path):
    """``--no_adam_bias_correction`` (the README's BERTAdam flag) whatever marker stands for the default."""
    assert parse_training_flags(["--no_adam_bias_correction"]) == {"adam_bias_correction": False}
    assert parse_training_flags(["--no-adam-bias-correction"]) == {"adam_bias_correction": False}
    assert parse_training_flags(["--adam_bias_correction"]) == {"adam_bias_correction": True}
    assert parse_training_flags(["--no_remove_unused_columns"]) == {"remove_unused_columns": False}


def test_a_model_directory_without_a_tokenizer_is_refused(tiny, tmp_path, capsys):
    """transformers 5 would build an empty-vocabulary tokenizer (every word [UNK]) and train on that."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((Path(tiny["model"]) / name).read_bytes())
    _refused(capsys, ["train", "--model", str(bare), "--data-dir", tiny["glue"], "--output_dir", str(tmp_path / "out"),
                      *FAST], "--model", "tokenizer")
    assert not (tmp_path / "out").exists()


def test_examples_longer_than_the_model_takes_are_refused_before_training(tiny, tmp_path, capsys):
    glue = _rte_copy(tiny, tmp_path)
    with open(glue / "RTE" / "train.tsv", "a") as handle:  # the tiny model has 64 positions
        handle.write(f"99\t{'the cat sat on the mat . ' * 20}\tthe cat.\tentailment\n")
    out = tmp_path / "out"
    argv = ["train", "--model", tiny["model"], "--data-dir", str(glue), "--output_dir", str(out), *FAST]
    _refused(capsys, argv + ["--max-length", "128"], "--max-length 128", "at most 64")
    assert not out.exists()
    assert main(argv + ["--max-length", "64"]) == 0  # truncated to what the model takes


def test_train_refuses_to_overwrite_a_trained_model(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", tiny["model"], "--data-dir", tiny["glue"], "--output_dir", str(out), *FAST]
    assert main(argv) == 0
    before = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "already holds a trained model" in err and err.strip().count("\n") == 0
    assert (out / "model.safetensors").read_bytes() == before  # nothing a user trained is overwritten
