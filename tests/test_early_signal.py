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


def _logged(seed, losses, recipe="r", degenerate_at_end=False, **changes):
    """A finished 100-update run logging its training loss every 10 updates; constant predictor's loss 0.6."""
    validations = [0.5, 0.5, 0.5, 0.5] if degenerate_at_end else [0.5, 0.6, 0.7, 0.7]
    record = _run(seed, validations, steps=(25, 50, 75, 100))
    record.update(recipe=recipe, run_id=f"{recipe}/seed={seed}", constant_prediction_loss=0.6, global_step=100,
                  train_loss=[[10 * (i + 1), loss] for i, loss in enumerate(losses)], **changes)
    return record


def test_the_loss_alarm_replay_counts_the_runs_it_would_stop():
    """Check at 30 of 100 updates, window 10 (one log): the smoothed loss is the loss logged at that update."""
    signal = _load("early_signal")
    falling = [0.7, 0.7, 0.5, 0.5, 0.4, 0.4, 0.3, 0.3, 0.3, 0.3]   # below 0.6 from update 30 on: never fires
    late = [0.7, 0.7, 0.7, 0.65, 0.5, 0.4, 0.3, 0.3, 0.3, 0.3]     # 0.7 at update 30: fires there
    rising = [0.7, 0.5, 0.5, 0.5, 0.5, 0.6, 0.7, 0.7, 0.7, 0.7]    # fires at 60 (0.6 is not below 0.6)
    runs = [_logged(0, falling), _logged(1, late), _logged(2, rising, degenerate_at_end=True),
            _logged(3, late, status="aborted")]  # not finished: left out
    assert [signal.replayed_alarm(r) for r in runs[:3]] == [None, 30, 60]
    assert signal.replayed_alarm(runs[1], check_fraction=0.5) is None  # 0.5 at update 50 and below after
    row = signal.alarm_row(runs)
    assert (row.runs, row.degenerate_fired, row.degenerate, row.healthy_fired, row.healthy) == (3, 1, 1, 1, 2)
    assert (row.first, row.last) == (0.3, 0.6)
    text = signal.alarm_markdown("cell", {"r": row}, 0.3)
    assert "| r | 3 | 1/1 | 1/2 | 30%–60% |" in text
    assert "| r | 1 | 0/0 | 0/1 | never |" in signal.alarm_markdown("cell", {"r": signal.alarm_row(runs[:1])}, 0.3)


def test_the_replay_is_checked_against_the_attempts_of_measured_restarts(tmp_path, capsys):
    signal = _load("early_signal")
    falling = [0.7, 0.7, 0.5, 0.5, 0.4, 0.4, 0.3, 0.3, 0.3, 0.3]
    late = [0.7, 0.7, 0.7, 0.65, 0.5, 0.4, 0.3, 0.3, 0.3, 0.3]
    base = [_logged(0, late, recipe="base"), _logged(1, falling, recipe="base")]

    def attempts(*pairs):
        return {"hf_stable_ft_restarts": {"attempts": [
            {"attempt": k, "seed": seed, "alarm": None if step is None else {"reason": "x", "step": step}}
            for k, (seed, step) in enumerate(pairs)]}}

    # seed 0 measured alarm at 30 (replay: 30), seed 1 measured none (replay: none); seed 2 has no base run
    restarted = [_logged(0, falling, recipe="restart", settings=attempts((0, 30), (1, None))),
                 _logged(1, falling, recipe="restart", settings=attempts((1, 40), (2, None)))]
    pairs = signal.restart_check(restarted, base)
    assert pairs == [(0, 30, 30), (1, None, None), (1, 40, None)]
    assert "agrees whether the alarm fires in 2/3; where both fired, the updates differ by at most 0" in (
        signal.restart_markdown("cell", "restart", "base", pairs))

    cell = tmp_path / "cell"
    cell.mkdir()
    lines = "".join(json.dumps(r) + "\n" for r in base + restarted)
    (cell / "runs.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    assert signal.main([str(cell), "--recipes", "base", "--restarts", "restart=base"]) == 0
    out = capsys.readouterr().out
    assert "| base | 2 | 0/0 | 1/2 | 30% |" in out and "fires in 2/3" in out
    for bad in (["--restarts", "restart"], ["--restarts", "nope=base"], ["--check-fraction", "1.2"]):
        with pytest.raises(SystemExit):
            signal.main([str(cell), "--recipes", "base", *bad])
        assert bad[0] + ":" in capsys.readouterr().err  # the error names the flag
