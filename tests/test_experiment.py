"""Sweeps, single runs, the CLI's train / transfer / sweep / report on a tiny model and GLUE-format fixtures."""

import json
import re

import pytest
from scale_fixtures import save_tiny_bert_with_tokenizer, write_rte

from hf_stable_ft.cli import main, parse_training_flags
from hf_stable_ft.experiment import parse_recipe, read_finished_runs

FAST = ["--max_steps", "2", "--per_device_eval_batch_size", "16", "--use_cpu", "true"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model = save_tiny_bert_with_tokenizer(root / "model")
    glue = write_rte(root / "glue", train=32, dev=16)
    mnli = glue / "MNLI_subset"
    mnli.mkdir()
    labels = ["entailment", "neutral", "contradiction"]
    for name, size in (("train.jsonl", 24), ("dev.jsonl", 12)):
        rows = [{"idx": i, "premise": "the cat sat on the mat.", "hypothesis": "a dog ran." if i % 3 else "the cat sat.",
                 "label": labels[i % 3]} for i in range(size)]
        (mnli / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": str(model), "glue": str(glue)}


def test_parse_recipe_presets_variants_and_errors():
    assert parse_recipe("zhang2021").fields() == {"stability_recipe": "zhang2021"}
    spec = parse_recipe("reinit2=mosbach2021:reinit_layers=2:learning_rate=1e-4:reinit_pooler=true")
    assert spec.label == "reinit2" and spec.fields() == {
        "reinit_layers": 2, "learning_rate": 1e-4, "reinit_pooler": True, "stability_recipe": "mosbach2021"}
    assert parse_recipe("stock").is_stock
    with pytest.raises(ValueError, match="known recipes: devlin2019, mosbach2021, zhang2021, stock"):
        parse_recipe("bert")
    with pytest.raises(ValueError, match="not a StableTrainingArguments field"):
        parse_recipe("x=mosbach2021:reinit_layerz=2")
    with pytest.raises(ValueError, match="stock Trainer has no 'reinit_layers'"):
        parse_recipe("x=stock:reinit_layers=2")
    with pytest.raises(ValueError, match="layerwise_lr_decay"):
        parse_recipe("x=none:layerwise_lr_decay=2")


def test_training_flags_only_explicit_fields(tmp_path):
    config = tmp_path / "args.yaml"
    config.write_text("reinit_layers: 1\nlearning_rate: 3.0e-5\n")
    values = parse_training_flags(["--learning_rate", "1e-4", "--no_adam_bias_correction"], str(config))
    assert values == {"reinit_layers": 1, "learning_rate": 1e-4, "adam_bias_correction": False}
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("learning_rate: !!python/object/apply:os.system ['echo unsafe']\n")
    with pytest.raises(Exception, match="python/object"):
        parse_training_flags([], str(unsafe))


def test_sweep_records_resumes_and_reports(tiny, tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", "--task", "rte", "--model", tiny["model"], "--data-dir", tiny["glue"], "--recipes",
            "devlin2019,stock", "--seeds", "2", "--evaluations", "2", "--output", str(out), *FAST]
    assert main(argv) == 0
    runs = read_finished_runs(out / "runs.jsonl")
    assert set(runs) == {"devlin2019/seed=0", "devlin2019/seed=1", "stock/seed=0", "stock/seed=1"}
    record = runs["devlin2019/seed=0"]
    for key in ("recipe", "seed", "settings", "eval_history", "best_validation", "test_at_best_validation",
                "final_validation", "final_test", "train_loss", "diagnostics", "degenerate", "wall_time_s", "device",
                "majority_baseline", "status"):
        assert key in record, key
    assert record["settings"]["adam_bias_correction"] is False and record["status"] == "finished"
    assert runs["stock/seed=0"]["settings"]["trainer_class"] == "Trainer"
    assert [h["step"] for h in record["eval_history"]] == [1, 2]
    assert {"validation", "test"} <= set(record["eval_history"][0])
    lines_before = (out / "runs.jsonl").read_text().count("\n")
    assert main(argv) == 0  # same sweep again: every run is finished, nothing is added
    assert (out / "runs.jsonl").read_text().count("\n") == lines_before
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").exists() and (out / "boxplot.png").exists()


def test_records_and_report_name_date_versions_and_command(tiny, tmp_path):
    """Each record keeps when and with what it was trained; sweep.json the process's command line; the report
    prints both, and says how many older records lack them."""
    import shlex
    import sys

    import torch
    import transformers

    from hf_stable_ft import __version__

    out = tmp_path / "sweep"
    argv = ["sweep", "--task", "rte", "--model", tiny["model"], "--data-dir", tiny["glue"], "--recipes",
            "devlin2019,stock", "--seeds", "1", "--evaluations", "1", "--output", str(out), *FAST]
    assert main(argv) == 0
    runs = read_finished_runs(out / "runs.jsonl")
    env = runs["stock/seed=0"]["environment"]
    assert env["torch"] == torch.__version__ and env["transformers"] == transformers.__version__
    assert env["hf_stable_ft"] == __version__ and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", env["finished_at"])
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["history"][-1]["command"] == shlex.join(sys.argv)
    # a record written before records kept an environment
    old = dict(runs["devlin2019/seed=0"], run_id="devlin2019/seed=7", seed=7)
    del old["environment"]
    with open(out / "runs.jsonl", "a") as f:
        f.write(json.dumps(old) + "\n")
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    day = env["finished_at"][:10]
    line = (f"{runs['stock/seed=0']['device']} · {day} · hf_stable_ft {__version__} · torch {torch.__version__} · "
            f"transformers {transformers.__version__}")
    assert line in md
    assert "date and versions not recorded for 1 of 3 runs" in md
    assert f"`{shlex.join(sys.argv)}`" in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["versions"]["torch"] == {torch.__version__: 2}
    assert summary["provenance"]["not_recorded"] == 1


def test_a_different_sweep_in_the_same_directory_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    base = ["sweep", "--task", "rte", "--model", tiny["model"], "--data-dir", tiny["glue"], "--seeds", "1",
            "--evaluations", "1", "--output", str(out), *FAST]
    assert main(base + ["--recipes", "stock"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(base + ["--recipes", "devlin2019"])
    assert stop.value.code == 2
    assert re.search("holds a different sweep.*--resume.*--overwrite", capsys.readouterr().err)
    assert main(base + ["--recipes", "devlin2019", "--overwrite"]) == 0
    assert set(read_finished_runs(out / "runs.jsonl")) == {"devlin2019/seed=0"}
    (backup,) = out.glob("runs.jsonl.bak-*")  # the stock run is kept, not deleted
    assert set(read_finished_runs(backup)) == {"stock/seed=0"}


def test_unknown_recipe_fails_before_any_run(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["sweep", "--task", "rte", "--model", tiny["model"], "--data-dir", tiny["glue"], "--recipes", "bert",
              "--output", str(tmp_path / "x")])
    assert stop.value.code == 2 and "unknown recipe 'bert'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_torn_last_line_is_removed(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({"run_id": "a/seed=0"}) + "\n" + '{"run_id": "a/seed=1", "trunc')
    assert set(read_finished_runs(path)) == {"a/seed=0"}
    assert path.read_text().endswith("\n")


def test_train_command_saves_model_and_metrics(tiny, tmp_path):
    out = tmp_path / "train"
    assert main(["train", "--task", "rte", "--model", tiny["model"], "--data-dir", tiny["glue"],
                 "--output_dir", str(out), "--reinit_layers", "1", *FAST]) == 0
    assert (out / "model.safetensors").exists() and not (out / "pytorch_model.bin").exists()
    results = json.loads((out / "all_results.json").read_text())
    assert "validation/eval_accuracy" in results


def test_train_command_with_restarts_trains_instead_of_refusing(tiny, tmp_path):
    """Reported defect (2026-12-05): ``train --restart_degenerate_runs 1`` always ended in "needs model_init"
    (train_once built its StableTrainer with model=)."""
    out = tmp_path / "train"
    assert main(["train", "--task", "rte", "--model", tiny["model"], "--data-dir", tiny["glue"],
                 "--output_dir", str(out), "--abort_degenerate_runs", "true", "--restart_degenerate_runs", "1",
                 *FAST]) == 0
    assert (out / "model.safetensors").exists()


def test_a_sweep_seed_that_never_fires_the_alarm_trains_the_same_with_restarts_on(tiny, tmp_path):
    """Reported defect (2026-12-06): in the stability study `zhang+restart2` and `zhang2021` differed from the first
    logged loss on, although the alarm never fired in any seed (model_init drew the head after the Trainer's
    seeding, so dropout and the data order differed). A restart recipe is paired with its base seed by seed."""
    out = tmp_path / "sweep"
    assert main(["sweep", "--task", "rte", "--model", tiny["model"], "--data-dir", tiny["glue"], "--recipes",
                 "base=devlin2019:adam_bias_correction=true,restart=devlin2019:adam_bias_correction=true:"
                 "abort_degenerate_runs=true:restart_degenerate_runs=1", "--seeds", "1", "--evaluations", "2",
                 "--output", str(out), "--max_steps", "4", "--logging_steps", "1", "--per_device_eval_batch_size",
                 "16", "--use_cpu", "true"]) == 0
    runs = read_finished_runs(out / "runs.jsonl")
    base, restart = runs["base/seed=0"], runs["restart/seed=0"]
    assert restart["settings"]["hf_stable_ft_restarts"]["restarted"] is False
    assert len(base["train_loss"]) == 4 and restart["train_loss"] == base["train_loss"]
    assert restart["eval_history"] == base["eval_history"]


def test_transfer_runs_both_stages_with_the_label_mapped_head(tiny, tmp_path):
    out = tmp_path / "transfer"
    assert main(["transfer", "--intermediate-task", "mnli_subset", "--task", "rte", "--model", tiny["model"],
                 "--data-dir", tiny["glue"], "--recipe", "mosbach2021", "--seeds", "1", "--output", str(out),
                 "--evaluations", "1", *FAST]) == 0
    summary = json.loads((out / "transfer.json").read_text())
    assert summary["intermediate"]["task"] == "mnli_subset" and summary["intermediate"]["best_validation"] is not None
    assert set(summary["target"]) == {"mosbach2021/seed=0"}
    stage1 = json.loads((out / "intermediate.json").read_text())
    assert stage1["task"] == "MNLI" and stage1["status"] == "finished"
    assert stage1["settings"]["eval_steps"] == 0.9999  # --evaluations 1 reaches stage 1, not only the target stage
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out / "intermediate").num_labels == 3
    target = read_finished_runs(out / "target" / "runs.jsonl")["mosbach2021/seed=0"]
    assert target["status"] == "finished" and target["settings"]["eval_steps"] == 0.9999
