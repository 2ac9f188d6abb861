"""The demo command: explains how to get data when it is missing, and runs end to end at a tiny size."""

import pytest

from hf_stable_ft.cli import main
from hf_stable_ft.demo import DEMO_RECIPES, run_demo


def test_demo_without_data_explains_how_to_get_glue(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--output", str(tmp_path / "out")])
    assert stop.value.code == 2
    message = capsys.readouterr().err
    assert "GLUE_DIR" in message and "CoLA/train.tsv" in message and "nyu-mll/glue" in message


def test_demo_runs_end_to_end_at_a_tiny_size(glue_data_dir, minilm_path, tmp_path, capsys):
    report = run_demo(seeds=1, train_size=16, output=str(tmp_path / "demo"), data_dir=str(glue_data_dir),
                      evaluations=1, device="cpu")
    assert report.exists() and (tmp_path / "demo" / "boxplot.png").exists()
    out = capsys.readouterr().out
    assert "## Verdict" in out and str(report.resolve()) in out
    runs = (tmp_path / "demo" / "runs.jsonl").read_text().splitlines()
    assert len(runs) == len(DEMO_RECIPES)


def test_demo_warns_on_a_busy_cpu_only(monkeypatch):
    from hf_stable_ft import demo

    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    note = demo._busy_cpu_note("cpu")
    assert note is not None and "load 3.0 on 2 cores" in note
    assert demo._busy_cpu_note("cuda") is None
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert demo._busy_cpu_note("cpu") is None
