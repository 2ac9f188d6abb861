"""Statistics tables, figures and a plain-language verdict for a sweep directory.

A sweep writes one JSON object per run to ``DIR/runs.jsonl`` (the schema is
:class:`hf_stable_ft.records.RunRecord`). :func:`write_report` reads it and writes ``DIR/report.md``,
``DIR/summary.json`` and PNG figures next to them. One module a job:

* :mod:`~hf_stable_ft.report.summary` — which score represents a run (:func:`score_run`) and the statistics of a
  sweep (:class:`SweepSummary`; :func:`summarize_runs` returns its dict view, what ``summary.json`` holds);
* :mod:`~hf_stable_ft.report.markdown` — ``report.md`` and :func:`verdict`, the plain-language verdict;
* :mod:`~hf_stable_ft.report.figures` — the five figures (:data:`FIGURE_FILES`), the only importer of matplotlib.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..records import RUNS_FILE, SWEEP_FILE, read_records
from .figures import FIGURE_FILES, make_figures
from .markdown import render_markdown, verdict
from .summary import (
    SUMMARY_FILE,
    RecipeSummary,
    RunScore,
    SweepSummary,
    _latest,
    load_runs,
    load_summary,
    score_run,
    summarize_runs,
    summarize_sweep,
)

__all__ = ["RUNS_FILE", "load_runs", "summarize_runs", "write_report", "FIGURE_FILES", "SweepSummary",
           "RecipeSummary", "RunScore", "summarize_sweep", "score_run", "load_summary", "verdict"]


def write_report(run_dir, baseline_recipe: str | None = None, figures: bool = True, *,
                 recipes: Sequence[str] | None = None, output_dir=None,
                 skip_corrupt: bool = False, n_bootstrap: int = 1000, seed: int = 0,
                 scale: float | None = None) -> Path:
    """Write ``report.md``, ``summary.json`` and the PNG figures for the sweep in ``run_dir``.

    Args:
        run_dir: directory holding ``runs.jsonl``; the report is written next to it (or to ``output_dir``).
        baseline_recipe: recipe the others are compared with (default ``devlin2019`` if present, else the
            first recipe in the file; with ``recipes``, the first of them).
        figures: draw the PNGs (needs matplotlib; stale PNGs of a previous report are removed either way).
        recipes: report only these recipe labels' runs (the Holm adjustment then counts only their comparisons),
            e.g. ``["zhang2021", "zhang+swa0.75"]`` with ``baseline_recipe="zhang2021"``: does a technique add
            anything on top of a preset. The report says which recipes of the records it leaves out.
        output_dir: where to write (created if missing); default ``run_dir``. Give one with ``recipes`` to keep
            the directory's own report.
        skip_corrupt: skip corrupt lines of runs.jsonl with a warning instead of raising ValueError.
        n_bootstrap, seed: Zhang et al. bootstrap settings.
        scale: display factor (see :func:`summarize_runs`).

    Returns:
        the path of ``report.md``.
    """
    source = Path(run_dir)
    out = source if output_dir is None else Path(output_dir)
    records = _latest(read_records(source, on_corrupt="skip" if skip_corrupt else "raise"))
    left_out: list[str] = []
    if recipes is not None:
        records, left_out = _only_recipes(records, recipes, baseline_recipe)
        baseline_recipe = baseline_recipe or records[0].recipe
    summary = summarize_sweep(records, baseline_recipe, n_bootstrap=n_bootstrap, seed=seed, scale=scale)
    if left_out:
        summary.notes.append(f"Only the recipes {', '.join(dict.fromkeys(r.recipe for r in records))} of {source}'s "
                             f"records; left out: {', '.join(left_out)}.")
    out.mkdir(parents=True, exist_ok=True)
    for fname in FIGURE_FILES.values():  # never leave a previous report's figure next to this one
        (out / fname).unlink(missing_ok=True)
    made, skipped = make_figures(summary, records, out) if figures else ({}, {})
    summary.figures = made
    if summary.provenance is not None:
        summary.provenance["sweeps"] = _sweeps_started(source)
    (out / SUMMARY_FILE).write_text(json.dumps(summary.as_dict(), indent=2) + "\n", encoding="utf-8")
    path = out / "report.md"
    path.write_text(render_markdown(summary, made, skipped), encoding="utf-8")
    return path


def _only_recipes(records: list, recipes: Sequence[str], baseline_recipe: str | None) -> tuple[list, list[str]]:
    """The records of ``recipes`` (in that order) and the labels left out; ValueError, before anything is written,
    for an empty list, a label the records lack (naming the ones they hold) or a baseline not among ``recipes``."""
    if isinstance(recipes, str):
        recipes = [recipes]
    recipes = list(dict.fromkeys(recipes))
    held = list(dict.fromkeys(r.recipe for r in records))
    if not recipes:
        raise ValueError(f"recipes=[] reports nothing; give at least one of the records' recipes: {held}")
    unknown = [r for r in recipes if r not in held]
    if unknown:
        raise ValueError(f"recipes: {unknown} are not in the records; they hold {held}")
    if baseline_recipe is not None and baseline_recipe not in recipes:
        raise ValueError(f"baseline_recipe {baseline_recipe!r} is not among recipes {recipes}: add it, or pick "
                         "one of them")
    order = {name: i for i, name in enumerate(recipes)}
    kept = sorted((r for r in records if r.recipe in order), key=lambda r: order[r.recipe])
    return kept, [r for r in held if r not in order]


def _sweeps_started(out: Path) -> list[dict]:
    """``[{"started", "command"}]`` of each sweep the directory's ``sweep.json`` records (``command``: None for a
    sweep started before sweep.json kept it); ``[]`` without a readable sweep.json."""
    try:
        history = json.loads((out / SWEEP_FILE).read_text(encoding="utf-8")).get("history") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [{"started": h.get("started"), "command": h.get("command")} for h in history if isinstance(h, dict)]
