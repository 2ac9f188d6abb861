"""The demo command: explains how to get data when it is missing, and runs end to end at a tiny size."""

import json
import os

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
    from hf_stable_ft.report import load_summary, verdict

    printed = verdict(load_summary(tmp_path / "demo"))
    assert printed in out  # the demo prints the report's verdict, which leads with the plain finding
    assert printed.split("\n\n")[1].split(". ")[1].startswith("Degenerate runs")
    assert "p=–" not in printed
    runs = (tmp_path / "demo" / "runs.jsonl").read_text().splitlines()
    assert len(runs) == len(DEMO_RECIPES)
    assert all(json.loads(line)["status"] == "finished" for line in runs)
    if (os.cpu_count() or 1) > 1:  # on a multi-core CPU the runs go through the Ray backend, one thread each
        assert "Runs: ray (" in out and "1 CPU, 0 GPU per run" in out


def test_demo_warns_on_a_busy_cpu_only(monkeypatch):
    from hf_stable_ft import demo

    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    note = demo._busy_cpu_note("cpu")
    assert note is not None and "load 3.0 on 2 cores" in note
    assert demo._busy_cpu_note("cuda") is None
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    assert demo._busy_cpu_note("cpu") is None


def test_demo_evaluates_twice_by_default():
    import inspect

    from hf_stable_ft import demo

    assert demo.DEMO_EVALUATIONS == 2
    assert inspect.signature(run_demo).parameters["evaluations"].default == demo.DEMO_EVALUATIONS


def test_demo_backend_packs_single_threaded_runs_on_the_cpu_cores(monkeypatch):
    from hf_stable_ft import demo
    from hf_stable_ft.sweep_backends import LocalBackend, RayBackend

    pytest.importorskip("ray")
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    ray_backend = demo._demo_backend("auto", "cpu", 9)
    assert isinstance(ray_backend, RayBackend)
    assert ray_backend.cpus_per_run == 1 and ray_backend.max_concurrent == 2
    assert ray_backend.init_kwargs["num_cpus"] == 2
    assert demo._demo_backend("auto", "cpu", 1).__class__ is LocalBackend  # one run: nothing to pack
    assert isinstance(demo._demo_backend("auto", "cuda", 9), LocalBackend)  # GPU runs take seconds
    assert isinstance(demo._demo_backend("local", "cpu", 9), LocalBackend)
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 1)
    assert isinstance(demo._demo_backend("auto", "cpu", 9), LocalBackend)
    with pytest.raises(ValueError, match="backend='threads' is invalid"):
        demo._demo_backend("threads", "cpu", 9)
