"""The run record (hf_stable_ft.records): the schema's round trip, older records, the one reader's three corrupt-line
policies, the one writer and the one JSON sanitiser."""

import json
import math

import numpy as np
import pytest

from hf_stable_ft.records import (
    RUNS_FILE,
    RunRecord,
    append_record,
    json_safe,
    latest_by_run_id,
    read_records,
)
from hf_stable_ft.stats import degenerate_record


def sweep_record(**changes) -> dict:
    """A record with every key experiment.run_single and run_sweep write (values as a tiny CPU run gives them)."""
    record = {
        "run_id": "reinit2/seed=3", "recipe": "reinit2",
        "seed": 3, "task": "RTE", "status": "finished", "primary_metric": "accuracy",
        "majority_baseline": {"validation": 0.5, "test": 0.52}, "constant_prediction_loss": 0.6931,
        "settings": {"learning_rate": 2e-05, "trainer_class": "StableTrainer", "recipe_fields": {"reinit_layers": 2},
                     "resolved_reinit_layers": 2},
        "eval_history": [{"step": 2, "epoch": 0.5, "validation": 0.5, "test": 0.52},
                         {"step": 4, "epoch": 1.0, "validation": 0.625, "test": 0.5}],
        "best_validation": 0.625, "best_step": 4, "test_at_best_validation": 0.5, "final_validation": 0.625,
        "final_test": 0.5, "train_loss": [[1, 0.7], [2, "nan"]], "nonfinite_loss_step": 2,
        "diagnostics": {"grad_norm": {"embeddings": [[2, 0.1]], "head": [[2, 1.5]]}, "l2_from_init": {},
                        "degenerate_alarm": None},
        "abort_reason": None, "global_step": 4, "wall_time_s": 3.21, "device": "cpu (x86_64, 2 cores)",
        "error": None, "degenerate": False,
        "sweep_settings": {"shared": {"task": "rte"}, "recipe": {"label": "reinit2", "preset": "mosbach2021",
                                                                 "overrides": {"reinit_layers": 2}}},
    }
    record.update(changes)
    return record


def test_a_sweep_record_round_trips_to_the_same_line():
    data = sweep_record()
    record = RunRecord.from_dict(data)
    assert record.to_json() == json.dumps(data, sort_keys=True)  # the line run_sweep wrote before RunRecord
    assert RunRecord.from_json(record.to_json()) == record
    assert record.extra == {} and record.best_step == 4 and record.train_loss[1] == [2, "nan"]


def test_keys_written_only_when_set():
    data = sweep_record()
    del data["best_step"], data["sweep_settings"]  # a run without a finite evaluation; a transfer's stage 1
    line = json.loads(RunRecord.from_dict(data).to_json())
    assert "best_step" not in line and "sweep_settings" not in line
    assert line == data


def test_an_older_record_reads_with_defaults_and_keeps_unknown_keys():
    old = {"run_id": "devlin2019/seed=0", "recipe": "devlin2019", "best_validation": 0.4,
           "majority_baseline": {"validation": 0.5}, "legacy_key": [1, 2]}
    record = RunRecord.from_dict(old)
    assert record.status == "finished" and record.seed is None and record.eval_history == []
    assert record.diagnostics == {} and record.sweep_settings is None
    assert record.degenerate is degenerate_record(old) is True  # set once, by the one definition
    line = json.loads(record.to_json())
    assert line["legacy_key"] == [1, 2] and line["degenerate"] is True and line["status"] == "finished"
    # a recipe missing from an old record is read from its run_id
    assert RunRecord.from_dict({"run_id": "a/seed=0"}).recipe == "a"


def test_degenerate_is_decided_once_and_a_stored_flag_is_kept():
    learned = sweep_record(degenerate="yes")  # no boolean flag: decided by degenerate_record
    assert RunRecord.from_dict(learned).degenerate is False
    assert RunRecord.from_dict(sweep_record(degenerate=True)).degenerate is True  # the sweep's flag wins
    assert RunRecord.from_dict(sweep_record(status="failed", degenerate=None)).degenerate is None
    assert RunRecord.from_dict(sweep_record(status="aborted", degenerate=None)).degenerate is True
    built = RunRecord(run_id="r/seed=0", recipe="r", majority_baseline={"validation": 0.5}, best_validation=0.5)
    assert built.degenerate is True


@pytest.mark.parametrize(("data", "problem"), [
    ([1, 2], "expected a JSON object, got list"),
    ({"seed": 1}, "no 'recipe' name"),
    ({"recipe": "r"}, "no 'run_id'"),
    ({"run_id": "no-seed-in-it"}, "no 'recipe' name"),
    ({"run_id": "", "recipe": "r"}, "no 'run_id'"),
])
def test_what_is_not_a_run_record(data, problem):
    with pytest.raises(ValueError, match=problem):
        RunRecord.from_dict(data)


def _write(path, *lines, newline_at_end=True):
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""))
    return path


def test_reader_raise_names_the_file_and_line(tmp_path):
    good = json.dumps(sweep_record())
    path = _write(tmp_path / RUNS_FILE, good, "", '{"run_id": "a/seed=1", "recipe": ', good)
    with pytest.raises(ValueError, match=r"runs.jsonl, line 3: corrupt run record: invalid JSON"):
        read_records(path)
    with pytest.raises(ValueError, match="line 1: corrupt run record: no 'run_id'"):
        read_records(_write(tmp_path / "other.jsonl", '{"recipe": "r"}'), on_corrupt="raise")
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="on_corrupt='ignore' is invalid"):
        read_records(path, on_corrupt="ignore")


def test_reader_skip_names_the_lines_and_keeps_the_rest(tmp_path):
    good = json.dumps(sweep_record())
    path = _write(tmp_path / RUNS_FILE, good, "[1]", good.replace("seed=3", "seed=4"), '{"seed": 1}', "{torn")
    with pytest.warns(UserWarning, match=r"lines \[2, 4, 5\]"):
        records = read_records(tmp_path, on_corrupt="skip")  # a sweep directory works too
    assert [r.run_id for r in records] == ["reinit2/seed=3", "reinit2/seed=4"]
    assert path.read_text().endswith("{torn\n")  # reading never changes the file


def test_reader_truncate_torn_tail_cuts_only_an_unfinished_last_line(tmp_path):
    good = json.dumps(sweep_record())
    path = _write(tmp_path / RUNS_FILE, good, '{"run_id": "reinit2/seed=4", "sta', newline_at_end=False)
    before = path.read_bytes()
    assert [r.run_id for r in read_records(path, on_corrupt="truncate_torn_tail", fix_file=False)] == ["reinit2/seed=3"]
    assert path.read_bytes() == before  # fix_file=False: read as if cut, the file left as it is
    with pytest.raises(ValueError, match="line 2"):
        read_records(path)  # "raise" does not excuse a torn line
    assert [r.run_id for r in read_records(path, on_corrupt="truncate_torn_tail")] == ["reinit2/seed=3"]
    assert path.read_text() == good + "\n"
    # a corrupt line that is not the torn tail still raises
    _write(path, good, "not json", good)
    with pytest.raises(ValueError, match="line 2"):
        read_records(path, on_corrupt="truncate_torn_tail")
    assert path.read_text() == f"{good}\nnot json\n{good}\n"


def test_writer_appends_whole_lines_that_read_back(tmp_path):
    path = tmp_path / RUNS_FILE
    first = RunRecord.from_dict(sweep_record())
    retry = RunRecord.from_dict(sweep_record(wall_time_s=9.0))
    other = RunRecord.from_dict(sweep_record(run_id="reinit2/seed=4", seed=4))
    for record in (first, other, retry):
        append_record(path, record)
    lines = path.read_text().split("\n")
    assert lines[-1] == "" and lines[0] == first.to_json()
    records = read_records(path)
    assert records == [first, other, retry]
    latest = latest_by_run_id(records)
    assert list(latest) == ["reinit2/seed=4", "reinit2/seed=3"]  # ordered by each run's last line
    assert latest["reinit2/seed=3"].wall_time_s == 9.0


def test_json_safe():
    value = {1: (np.float32(0.5), np.int64(3), np.bool_(True)), "x": [math.nan, -math.inf, 2.5],
             "a": np.array([1, 2]), "o": object, "none": None}
    safe = json_safe(value)
    assert safe == {"1": [0.5, 3, True], "x": [None, None, 2.5], "a": [1, 2], "o": str(object), "none": None}
    assert type(safe["1"][1]) is int and type(safe["1"][2]) is bool
    json.dumps(safe, allow_nan=False)
    record = RunRecord(run_id="r/seed=0", recipe="r", best_validation=float("nan"), wall_time_s=np.float64(1.5))
    assert json.loads(record.to_json())["best_validation"] is None
