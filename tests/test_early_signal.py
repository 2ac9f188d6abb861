"""benchmarks/early_signal.py: the validation stopping rule, against counts written out by hand."""

import gzip
import json

import pytest

from test_benchmark_archive import _load
from test_records import sweep_record


def _run(seed, validations, steps=(10, 20, 30, 40), majority=0.5, status="finished"):
    history = [{"step": s, "epoch": s / 10, "validation": v, "test": v} for s, v in zip(steps, validations)]
    return sweep_record(run_id=f"r/seed={seed}", recipe="r", seed=seed, status=status, eval_history=history,
                        best_validation=max(validations), majority_baseline={"validation": majority, "test": 0.5},
                        global_step=steps[-1], degenerate=None)


def test_the_rule_stops_every_degenerate_run_and_counts_the_healthy_ones_it_loses():
    signal = _load("early_signal")
    runs = [
        _run(0, [0.5, 0.5, 0.5, 0.5]),   # degenerate: never above the majority (0.5)
        _run(1, [0.4, 0.5, 0.5, 0.45]),  # degenerate
        _run(2, [0.5, 0.6, 0.5, 0.7]),   # healthy from the 2nd evaluation (its best so far stays above)
        _run(3, [0.5, 0.5, 0.5, 0.8]),   # healthy only at the last
        _run(4, [0.9, 0.9, 0.9, 0.9], status="aborted"),  # not a finished run: left out
    ]
    rows = signal.signal_table(runs)
    assert [(r.evaluation, r.step, r.fraction) for r in rows] == [(1, 10, 0.25), (2, 20, 0.5), (3, 30, 0.75),
                                                                  (4, 40, 1.0)]
    assert [(r.degenerate_stopped, r.degenerate) for r in rows] == [(2, 2)] * 4
    assert [(r.healthy_stopped, r.healthy) for r in rows] == [(2, 2), (1, 2), (1, 2), (0, 2)]
    text = signal.markdown("cell", "r", rows)
    assert "(4 finished runs, 2 degenerate)" in text and "| 2 | 20 (50%) | 2/2 | 1/2 | 50% |" in text


def test_runs_of_different_schedules_are_refused():
    signal = _load("early_signal")
    with pytest.raises(ValueError, match="different steps"):
        signal.signal_table([_run(0, [0.5, 0.6]), _run(1, [0.5, 0.6], steps=(10, 30))])


def test_the_command_reads_a_committed_archive_without_writing_into_the_cell(tmp_path, capsys):
    signal = _load("early_signal")
    cell = tmp_path / "cola-1k-lr1e-4"
    cell.mkdir()
    lines = "".join(json.dumps(_run(s, v)) + "\n" for s, v in ((0, [0.5, 0.5, 0.5, 0.5]), (1, [0.5, 0.6, 0.6, 0.6])))
    (cell / "runs.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    assert signal.main([str(cell), "--recipes", "r"]) == 0
    assert "| 1 | 10 (25%) | 1/1 | 1/1 | 75% |" in capsys.readouterr().out
    assert sorted(p.name for p in cell.iterdir()) == ["runs.jsonl.gz"]
    with pytest.raises(SystemExit):
        signal.main([str(cell), "--recipes", "other"])
    assert "['other'] have no records" in capsys.readouterr().err
