"""Faults lose nothing: kill -9 during training and during a sweep, NaN losses, unwritable or full disks; and the
security hygiene of what is written and read back (safetensors, ``weights_only`` loads, safe YAML, JSON records).

* A StableTrainer run with every feature on (re-init, LLRD, pretrained WD, BERTAdam, Mixout, diagnostics, the
  degenerate check; dropout and Mixout draw from the RNG the Trainer checkpoints) killed with SIGKILL after a
  checkpoint exists and resumed from the last *complete* checkpoint (the Trainer writes ``trainer_state.json``
  last) ends with the same weights (atol 1e-6; bitwise in practice on one machine), the same per-step log
  (loss, gradient norms, diagnostics) and the same evaluation as an uninterrupted run.
* ``hf-stable-ft sweep`` killed mid-sweep and re-run: every (recipe, seed) recorded exactly once, the records
  written before the kill kept byte for byte, a torn last line removed.
* A run whose loss turns NaN is recorded as degenerate with its step; the sweep goes on.
* An output directory that cannot be written (a path under a regular file: the tests run as root, so
  ``chmod`` would not stop a write) or a full disk stops ``sweep``, ``train`` and ``transfer`` before any training.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fault_worker
import pytest
import torch
import yaml
from helpers import nan_from_seed
from scale_fixtures import save_tiny_bert_with_tokenizer, write_rte
from tiny_models import tiny_model

from hf_stable_ft import cli, experiment
from hf_stable_ft.experiment import SweepConfig, read_finished_runs, run_sweep

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120
RUNTIME_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos",
                "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(REPO / "tests"), env.get("PYTHONPATH")]))
    return env


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the process ended (rc={process.returncode}) before {what}:\n{out[-2000:]}\n{err[-4000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _kill9(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL


@pytest.fixture
def restore_determinism():
    """``full_determinism`` switches torch's deterministic mode on process-wide and sets CUDA env variables."""
    environ, deterministic = dict(os.environ), torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)


def _complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints the Trainer finished writing: ``trainer_state.json`` is written last."""
    found = [p for p in output_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _records(log_history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in RUNTIME_KEYS} for r in log_history]


def test_kill_9_during_training_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch,
                                                                                restore_determinism):
    tiny_model("bert", tmp_path, num_layers=3)
    model_dir = tmp_path / "tiny-bert-3"
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "fault_worker.py"), "--model", str(model_dir), "--out", str(killed_dir),
         "--slow", "0.4"], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: bool(_complete_checkpoints(killed_dir)) if killed_dir.exists() else False, process,
                  "the first checkpoint")
    finally:
        if process.poll() is None:
            _kill9(process)
    assert not (killed_dir / "FINISHED").exists()
    checkpoint = _complete_checkpoints(killed_dir)[-1]
    resumed_from = int(checkpoint.name.split("-")[1])
    assert resumed_from < fault_worker.MAX_STEPS

    # the uninterrupted reference, in this process
    full = fault_worker.build_trainer(model_dir, tmp_path / "full")
    full.train()
    full_metrics = full.evaluate()

    # resume; record every torch.load (optimizer, scheduler, RNG states are torch.save pickles)
    loads = []
    real_load = torch.load

    def recording_load(f, *args, **kwargs):
        loads.append((str(f), kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    resumed = fault_worker.build_trainer(model_dir, killed_dir)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    resumed_metrics = resumed.evaluate()
    monkeypatch.undo()

    for name, value in full.model.named_parameters():
        torch.testing.assert_close(dict(resumed.model.named_parameters())[name], value, rtol=0, atol=1e-6, msg=name)
    # every per-step record (loss, grad_norm, learning rate, diagnostics) and the evaluation; the end-of-training
    # summary's train_loss averages only the updates run in the resumed session, so it is left out
    steps = lambda trainer: [r for r in _records(trainer.state.log_history) if "train_loss" not in r]  # noqa: E731
    assert steps(resumed) == steps(full)
    assert any("l2_from_init/layer.0" in r for r in resumed.state.log_history if r["step"] > resumed_from)
    assert {k: v for k, v in resumed_metrics.items() if k not in RUNTIME_KEYS} == \
        {k: v for k, v in full_metrics.items() if k not in RUNTIME_KEYS}

    # security hygiene of the checkpoint and of the resume
    assert (checkpoint / "model.safetensors").exists() and not (checkpoint / "pytorch_model.bin").exists()
    loaded = {Path(path).name: weights_only for path, weights_only in loads}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= set(loaded), loaded
    assert all(weights_only is True for weights_only in loaded.values()), loaded
    assert "training_args.bin" not in loaded  # a pickle the Trainer writes but never reads back


@pytest.fixture
def glue_fixture(tmp_path) -> tuple[Path, Path]:
    return save_tiny_bert_with_tokenizer(tmp_path / "model"), write_rte(tmp_path / "glue")


def _sweep_argv(model: Path, glue: Path, output: Path) -> list[str]:
    return ["sweep", "--task", "rte", "--model", str(model), "--data-dir", str(glue),
            "--recipes", "mosbach2021,mixout=mosbach2021:mixout_prob=0.2:reinit_layers=1", "--seeds", "2",
            "--output", str(output), "--evaluations", "2",
            "--max_steps", "4", "--per_device_train_batch_size", "8", "--use_cpu", "--diagnostics_steps", "2",
            "--degenerate_check_fraction", "0.5"]


def test_sweep_killed_mid_run_loses_and_duplicates_nothing(glue_fixture, tmp_path, capsys):
    model, glue = glue_fixture
    output = tmp_path / "sweep"
    runs = output / "runs.jsonl"
    argv = _sweep_argv(model, glue, output)
    process = subprocess.Popen([sys.executable, "-m", "hf_stable_ft.cli", *argv], cwd=tmp_path, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: runs.exists() and runs.read_bytes().count(b"\n") >= 1, process, "the first run record")
    finally:
        if process.poll() is None:
            _kill9(process)
    before = runs.read_bytes().splitlines(keepends=True)
    assert 1 <= len(before) < 4, "the sweep was not killed mid-run"
    with open(runs, "ab") as handle:  # what a kill in the middle of a write would leave
        handle.write(b'{"run_id": "mixout/seed=1", "status": "finis')

    assert cli.main(argv) == 0
    after = runs.read_bytes().splitlines(keepends=True)
    assert after[: len(before)] == before  # earlier records kept byte for byte
    records = [json.loads(line) for line in after]  # the torn line is gone: every line parses
    ids = [r["run_id"] for r in records]
    expected = {f"{recipe}/seed={seed}" for recipe in ("mosbach2021", "mixout") for seed in range(2)}
    assert len(ids) == len(set(ids)) == 4 and set(ids) == expected
    assert all(r["status"] == "finished" and r["global_step"] == 4 for r in records)
    assert all(r["diagnostics"]["grad_norm"] for r in records)
    assert cli.main(argv) == 0  # a third run has nothing left to do
    assert runs.read_bytes().splitlines(keepends=True) == after


def test_nan_loss_is_recorded_as_a_degenerate_run_with_its_step_and_the_sweep_goes_on(glue_fixture, tmp_path,
                                                                                     monkeypatch):
    model, glue = glue_fixture
    nan_from_step = 3
    nan_from_seed(monkeypatch, experiment, nan_from_step, seed=1)  # NaN logits from the 3rd training batch on
    config = SweepConfig(task="rte", model=str(model), recipes=["mosbach2021"], seeds=[0, 1, 2], data_dir=str(glue),
                         evaluations_per_run=2,
                         training={"max_steps": 6, "per_device_train_batch_size": 8, "use_cpu": True,
                                   "abort_degenerate_runs": True})  # the non-finite test only
    records = read_finished_runs(run_sweep(config, tmp_path / "sweep", progress=False))
    assert sorted(records) == [f"mosbach2021/seed={s}" for s in range(3)]
    bad = records["mosbach2021/seed=1"]
    alarm = bad["diagnostics"]["degenerate_alarm"]
    assert alarm["step"] == nan_from_step and alarm["reason"] == "nonfinite" and alarm["aborted"]
    assert bad["degenerate"] is True and bad["status"] == "aborted" and bad["global_step"] == nan_from_step
    for seed in (0, 2):
        assert records[f"mosbach2021/seed={seed}"]["status"] == "finished"
        assert records[f"mosbach2021/seed={seed}"]["global_step"] == 6


def _blocked_output(tmp_path: Path) -> Path:
    blocker = tmp_path / "a_regular_file"
    blocker.write_text("not a directory\n")
    return blocker / "out"


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started although the output directory is unusable")

    monkeypatch.setattr(experiment.StableTrainer, "train", refuse)
    monkeypatch.setattr(experiment, "run_single", refuse)


def _cli_argv(command, model, glue, output):
    common = ["--task", "rte", "--model", str(model), "--data-dir", str(glue), "--use_cpu"]
    return {
        "sweep": ["sweep", *common, "--output", str(output), "--seeds", "1"],
        "train": ["train", *common, "--output_dir", str(output)],
        "transfer": ["transfer", *common, "--intermediate-task", "rte", "--label-map", "", "--output", str(output)],
    }[command]


@pytest.mark.parametrize("command", ["sweep", "train", "transfer"])
def test_unwritable_output_fails_before_training(command, glue_fixture, tmp_path, monkeypatch, capsys):
    model, glue = glue_fixture
    output = _blocked_output(tmp_path)
    _no_training(monkeypatch)
    argv = _cli_argv(command, model, glue, output)
    started = time.monotonic()
    with pytest.raises(SystemExit) as stop:  # the CLI: one line naming the directory, exit code 2
        cli.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and str(output.parent) in err and "Traceback" not in err
    assert time.monotonic() - started < 30
    monkeypatch.setenv("HF_STABLE_FT_TRACEBACK", "1")  # the Python error itself, on request
    with pytest.raises(OSError, match=str(output.parent)):
        cli.main(argv)


@pytest.mark.parametrize("command", ["sweep", "train", "transfer"])
def test_full_disk_fails_before_training(command, glue_fixture, tmp_path, monkeypatch, capsys):
    model, glue = glue_fixture
    _no_training(monkeypatch)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(experiment.shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    output = tmp_path / "out"
    argv = _cli_argv(command, model, glue, output)
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2 and "only 1 MiB free" in capsys.readouterr().err


def test_yaml_config_cannot_construct_python_objects(tmp_path):
    marker = tmp_path / "PWNED"
    for payload in (f'!!python/object/apply:os.system ["touch {marker}"]\n',
                    "learning_rate: !!python/object/apply:os.getcwd []\n",
                    "!!python/object:hf_stable_ft.args.StableTrainingArguments {output_dir: x}\n"):
        config = tmp_path / "evil.yaml"
        config.write_text(payload)
        with pytest.raises(yaml.YAMLError):
            cli.parse_training_flags([], str(config))
    assert not marker.exists()


def test_run_records_are_parsed_as_json_only(tmp_path):
    marker = tmp_path / "PWNED"
    runs = tmp_path / "runs.jsonl"
    good = json.dumps({"run_id": "a/seed=0", "status": "finished"})
    runs.write_text(good + "\n" + f'!!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ValueError, match="corrupt run record"):
        read_finished_runs(runs)
    assert not marker.exists()
