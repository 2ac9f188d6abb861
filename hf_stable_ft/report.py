"""Statistics tables, figures and a plain-language verdict for a sweep directory.

A sweep writes one JSON object per run to ``DIR/runs.jsonl`` (schema below). :func:`write_report` reads it
and writes ``DIR/report.md``, ``DIR/summary.json`` and PNG figures next to them:

* ``boxplot.png`` — scores per recipe, seeds as dots, the majority-class baseline as a line
  (Mosbach et al. 2021 Fig. 1, Zhang et al. 2021 Fig. 2);
* ``train_loss.png`` — training loss over steps, mean and min–max band over seeds (Zhang et al. Fig. 3);
* ``expected_performance.png`` — expected performance vs number of random trials, ± std (Zhang et al. Fig. 4,
  Dodge et al. 2019);
* ``grad_norms.png`` — per-layer gradient norms of the worst and the best run (Mosbach et al. Fig. 4);
* ``l2_from_init.png`` — L2 distance from the initial weights per layer group at the end of training
  (Zhang et al. Fig. 7).

The last two need the diagnostics callback's output and are skipped (and the report says so) without it.

Which score represents a run
----------------------------
* The reported split is **test** when every counted run has a test score, otherwise **validation** (the
  report says which). A finished run's validation score is ``best_validation`` (early stopping: the best
  evaluation, as in Zhang et al.) and its test score ``test_at_best_validation`` — the test score of the
  checkpoint that was best on validation. Fallbacks: ``final_validation`` / ``final_test``.
* **Aborted** runs (stopped early as degenerate, Dodge et al. 2020) are counted, never dropped: they are
  degenerate by definition, and their score is their *last* evaluated validation score (and that
  evaluation's test score); with no evaluation at all, the majority-class baseline of the split. Mean, std
  and the p-values include them, as the papers' numbers include failed runs.
* A finished run is degenerate when the runner's ``degenerate`` flag says so; when the flag is missing, by
  :func:`hf_stable_ft.stats.degenerate_record` — the definition sweeps store: its best validation score is not
  above the validation majority baseline (Mosbach et al. 2021's threshold on the checkpoint Zhang et al. 2021's
  protocol keeps).
* **Alarms** — the degenerate-run alarm (``diagnostics.degenerate_alarm``) and a non-finite training loss
  (``nonfinite_loss_step``, or "nan"/"inf" in ``train_loss``) — are listed for every run, finished ones too.
* All records must be of one task (a ValueError names the tasks otherwise).
* **Failed** runs (status ``failed``: an exception, not a bad seed) and records with an unknown status are
  not counted; they are listed separately with their error.
* If one ``run_id`` appears on several lines (a resumed sweep), the last line wins and a warning says so.

runs.jsonl record (keys other than ``run_id`` and ``recipe`` are optional)::

    {"run_id", "recipe", "seed", "task", "status": "finished" | "aborted" | "failed", "primary_metric",
     "majority_baseline": {"validation", "test"}, "settings": {...},
     "eval_history": [{"step", "epoch", "validation", "test"}, ...],
     "best_validation", "test_at_best_validation", "final_validation", "final_test",
     "train_loss": [[step, loss], ...]  (a non-finite loss as "nan" / "inf" / "-inf"), "nonfinite_loss_step",
     "diagnostics": {"grad_norm": {group: [[step, v], ...]}, "l2_from_init": {group: [[step, v], ...]}},
     "degenerate", "abort_reason", "wall_time_s", "device", "error"}
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from .stats import (
    bootstrap_expected_test,
    compare_to_baseline,
    degenerate_record,
    expected_max_curve,
    summarize,
)

__all__ = ["RUNS_FILE", "load_runs", "summarize_runs", "write_report", "FIGURE_FILES"]

RUNS_FILE = "runs.jsonl"
FIGURE_FILES = {
    "boxplot": "boxplot.png",
    "train_loss": "train_loss.png",
    "expected_performance": "expected_performance.png",
    "grad_norms": "grad_norms.png",
    "l2_from_init": "l2_from_init.png",
}
TABLE_TRIALS = (1, 5, 10)
DEFAULT_BASELINE = "devlin2019"
SMALL_N = 10  # below this many seeds per recipe, p-values are called weak evidence
DPI = 120


# --------------------------------------------------------------------------------------------------------
# loading


def load_runs(path, skip_corrupt: bool = False) -> list[dict]:
    """Run records from a ``runs.jsonl`` file (or a sweep directory containing one), in file order.

    A line that is not a JSON object with a ``recipe`` and a ``run_id`` is corrupt: ValueError naming the file
    and the line number, unless ``skip_corrupt=True``, in which case such lines are skipped with one warning that
    lists their line numbers. Blank lines are ignored.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RUNS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no run records at {path}")
    records, corrupt = [], []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            problem = None
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                problem = f"invalid JSON ({exc.msg} at column {exc.colno})"
            else:
                if not isinstance(rec, dict):
                    problem = f"expected a JSON object, got {type(rec).__name__}"
                elif not isinstance(rec.get("recipe"), str) or not rec["recipe"]:
                    problem = "no 'recipe' name"
                elif not isinstance(rec.get("run_id"), str) or not rec["run_id"]:
                    problem = ("no 'run_id'; add \"run_id\": \"<recipe>/seed=<seed>\" or remove the line "
                               "(--skip-corrupt skips it)")
            if problem is not None:
                if not skip_corrupt:
                    raise ValueError(f"{path}, line {lineno}: corrupt run record: {problem}")
                corrupt.append(lineno)
                continue
            records.append(rec)
    if corrupt:
        warnings.warn(f"{path}: skipped corrupt run records on lines {corrupt}", stacklevel=2)
    return records


def _dedupe(records: list[dict]) -> list[dict]:
    """Keep the last record of each run_id (a resumed sweep re-appends retried runs)."""
    keyed: dict[str, dict] = {}
    for i, rec in enumerate(records):
        rid = rec.get("run_id") or f"{rec['recipe']}/seed={rec.get('seed', f'#{i}')}"
        keyed.pop(rid, None)  # re-insert so the position is the last occurrence
        keyed[rid] = {**rec, "run_id": rid}
    n_dup = len(records) - len(keyed)
    if n_dup:
        warnings.warn(f"{n_dup} run record(s) repeat an earlier run_id; the last record of each run is used",
                      stacklevel=3)
    # recipe order stays the order of first appearance in the file
    order = list(dict.fromkeys(r["recipe"] for r in records))
    return sorted(keyed.values(), key=lambda r: order.index(r["recipe"]))


# --------------------------------------------------------------------------------------------------------
# per-run scores


def _num(x):
    """float(x) for a finite number, else None."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _baseline(rec: dict, split: str):
    mb = rec.get("majority_baseline")
    return _num(mb.get(split)) if isinstance(mb, dict) else None


def _score_run(rec: dict) -> dict:
    """The run's row: kind (counted / failed), validation and test scores, degenerate flag."""
    status = rec.get("status") or "finished"
    row = {
        "run_id": rec["run_id"], "recipe": rec["recipe"], "seed": rec.get("seed"), "status": status,
        "validation": None, "test": None, "degenerate": None, "counted": False,
        "abort_reason": rec.get("abort_reason"), "error": rec.get("error"),
        "wall_time_s": _num(rec.get("wall_time_s")), "score_source": None,
    }
    history = [e for e in (rec.get("eval_history") or []) if isinstance(e, dict)]
    if status == "aborted":
        evaluated = [e for e in history if _num(e.get("validation")) is not None]
        if evaluated:
            last = evaluated[-1]
            row["validation"], row["test"] = _num(last.get("validation")), _num(last.get("test"))
            row["score_source"] = "last evaluation"
        else:
            row["validation"], row["test"] = _baseline(rec, "validation"), _baseline(rec, "test")
            row["score_source"] = "majority baseline (no evaluation before abort)"
        row["degenerate"] = True
        row["counted"] = True
        if row["validation"] is None:
            row["counted"] = False
            row["error"] = row["error"] or "aborted before any evaluation and no majority baseline recorded"
        return row
    if status != "finished":
        return row
    val, test = _num(rec.get("best_validation")), _num(rec.get("test_at_best_validation"))
    row["score_source"] = "best validation"
    if val is None:
        val, test = _num(rec.get("final_validation")), _num(rec.get("final_test"))
        row["score_source"] = "final evaluation"
    if val is None:
        row["error"] = row["error"] or "finished without a validation score"
        return row
    row["validation"], row["test"] = val, test
    flag = rec.get("degenerate")
    row["degenerate"] = flag if isinstance(flag, bool) else bool(degenerate_record(rec))
    row["counted"] = True
    return row


# --------------------------------------------------------------------------------------------------------
# statistics of a sweep


def _most_common(values, default=None):
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else default


def _clean(obj):
    """JSON-safe copy: NaN/inf -> None, numpy scalars/arrays -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def summarize_runs(records: list[dict], baseline_recipe: str | None = None, *, n_bootstrap: int = 1000,
                   seed: int = 0, scale: float | None = None) -> dict:
    """All statistics of a sweep as a JSON-ready dict (what ``summary.json`` holds).

    Args:
        records: run records as returned by :func:`load_runs`.
        baseline_recipe: the recipe the others are tested against; default ``"devlin2019"`` if present,
            else the first recipe in file order.
        n_bootstrap, seed: Zhang et al. bootstrap settings (deterministic for a fixed seed).
        scale: display factor for the report (100 shows fractions as percentages, like the papers); default:
            100 when every score and baseline lies in [-1, 1], else 1. Statistics in the result stay in the
            units of the records.
    """
    records = _dedupe(list(records))
    if not records:
        raise ValueError("no run records")
    tasks = Counter(str(r["task"]) for r in records if r.get("task"))
    if len({t.casefold() for t in tasks}) > 1:
        listed = ", ".join(f"{t}: {n} run{'s' if n > 1 else ''}" for t, n in tasks.items())
        raise ValueError(f"the records hold runs of {len(tasks)} tasks ({listed}); a report compares recipes on one "
                         "task: give each task's sweep its own directory")
    rows = [_score_run(r) for r in records]
    recipes = list(dict.fromkeys(r["recipe"] for r in rows))
    counted = [r for r in rows if r["counted"]]
    not_counted = [r for r in rows if not r["counted"]]
    if not counted:
        raise ValueError("no finished or aborted run has a score: nothing to summarize "
                         f"({len(not_counted)} failed run(s))")
    split = "test" if all(r["test"] is not None for r in counted) else "validation"
    notes = []
    if split == "validation":
        n_with_test = sum(r["test"] is not None for r in counted)
        notes.append("No test split: statistics are on the validation split." if n_with_test == 0 else
                     f"Only {n_with_test} of {len(counted)} runs have a test score: statistics are on the "
                     "validation split.")

    if baseline_recipe is None:
        baseline_recipe = DEFAULT_BASELINE if DEFAULT_BASELINE in recipes else recipes[0]
    elif baseline_recipe not in recipes:
        raise ValueError(f"baseline recipe {baseline_recipe!r} is not in the sweep; recipes: {recipes}")

    majority = {s: _most_common([_baseline(r, s) for r in records]) for s in ("validation", "test")}
    distinct = {s: {b for b in (_baseline(r, s) for r in records) if b is not None} for s in majority}
    if len(distinct[split]) > 1:
        notes.append(f"Runs disagree on the majority baseline of the {split} split ({sorted(distinct[split])}); "
                     f"the figures show the most common value, {majority[split]}.")

    if scale is None:
        values = [abs(v) for r in counted for v in (r["validation"], r["test"]) if v is not None]
        values += [abs(v) for v in majority.values() if v is not None]
        scale = 100.0 if values and max(values) <= 1.0 else 1.0

    n_max = max(sum(1 for r in counted if r["recipe"] == name) for name in recipes)
    curve_ks = np.arange(1, max(max(TABLE_TRIALS), n_max) + 1)
    per_recipe, scores_by_recipe = {}, {}
    for name in recipes:
        mine = [r for r in rows if r["recipe"] == name]
        got = [r for r in mine if r["counted"]]
        entry = {
            "n_runs": len(got),
            "n_finished": sum(r["status"] == "finished" for r in got),
            "n_aborted": sum(r["status"] == "aborted" for r in got),
            "n_failed": len(mine) - len(got),
            "summary": None, "validation_summary": None,
            "expected_max_validation": None, "expected_max_validation_curve": None,
            "expected_test": None, "expected_test_curve": None, "vs_baseline": None,
            "runs": [{k: r[k] for k in ("run_id", "seed", "status", "validation", "test", "degenerate",
                                        "abort_reason", "wall_time_s", "score_source")} for r in got],
        }
        if got:
            scores = [r[split] for r in got]
            degen = [r["degenerate"] for r in got]
            scores_by_recipe[name] = scores
            entry["summary"] = summarize(scores, degen).as_dict()
            val = [r["validation"] for r in got]
            if split == "test":
                entry["validation_summary"] = summarize(val, degen).as_dict()
            entry["expected_max_validation"] = expected_max_curve(val, TABLE_TRIALS).as_dict()
            entry["expected_max_validation_curve"] = expected_max_curve(val, curve_ks).as_dict()
            if split == "test":
                test = [r["test"] for r in got]
                full = bootstrap_expected_test(val, test, curve_ks, n_bootstrap=n_bootstrap, seed=seed)
                entry["expected_test_curve"] = full.as_dict()
                idx = [int(np.flatnonzero(full.n_trials == k)[0]) for k in TABLE_TRIALS]
                table = full.as_dict()
                entry["expected_test"] = {
                    "method": table["method"], "n_trials": list(TABLE_TRIALS),
                    "mean": [table["mean"][i] for i in idx], "std": [table["std"][i] for i in idx],
                    "percentiles": {q: [v[i] for i in idx] for q, v in table["percentiles"].items()},
                }
        per_recipe[name] = entry
    if baseline_recipe in scores_by_recipe:
        for name, row in compare_to_baseline(scores_by_recipe, baseline_recipe).items():
            per_recipe[name]["vs_baseline"] = row
    else:
        notes.append(f"The baseline recipe {baseline_recipe!r} has no counted runs: no p-values.")

    settings = {name: next((r.get("settings") for r in records if r["recipe"] == name
                            and isinstance(r.get("settings"), dict)), None) for name in recipes}
    return _clean({
        "task": _most_common([r.get("task") for r in records]),
        "metric": _most_common([r.get("primary_metric") for r in records], "score"),
        "split": split,
        "display_scale": scale,
        "majority_baseline": majority,
        "baseline_recipe": baseline_recipe,
        "recipes": per_recipe,
        "not_counted": [{k: r[k] for k in ("run_id", "recipe", "seed", "status", "error")} for r in not_counted],
        "alarms": [a for a in (_alarm(r) for r in records) if a is not None],
        "settings_that_differ": _differing_settings(settings),
        "n_bootstrap": n_bootstrap,
        "bootstrap_seed": seed,
        "std_ddof": 1,
        "levene_center": "median",
        "notes": notes,
    })


def _nonfinite_loss_step(rec: dict):
    step = rec.get("nonfinite_loss_step")
    if step is not None:
        return step
    for point in rec.get("train_loss") or []:  # records without the key: a loss kept as "nan" / "inf"
        if isinstance(point, (list, tuple)) and len(point) >= 2 and isinstance(point[1], str) \
                and point[1].lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
            return point[0]
    return None


def _alarm(rec: dict) -> dict | None:
    """The run's alarms (degenerate-run alarm, non-finite training loss), whatever its status; None if none."""
    diagnostics = rec.get("diagnostics")
    alarm = diagnostics.get("degenerate_alarm") if isinstance(diagnostics, dict) else None
    alarm = alarm if isinstance(alarm, dict) else None
    nonfinite = _nonfinite_loss_step(rec)
    if alarm is None and nonfinite is None:
        return None
    return {"run_id": rec["run_id"], "recipe": rec["recipe"], "seed": rec.get("seed"),
            "status": rec.get("status") or "finished", "degenerate_alarm": alarm, "nonfinite_loss_step": nonfinite}


def _alarm_text(entry: dict) -> str:
    parts = []
    alarm = entry["degenerate_alarm"]
    if alarm is not None:
        text = f"degenerate alarm `{alarm.get('reason', '?')}` at step {alarm.get('step', '?')}"
        loss, constant = _num(alarm.get("train_loss")), _num(alarm.get("constant_prediction_loss"))
        if loss is not None and constant is not None:
            text += f" (training loss {loss:.4g}, constant-prediction loss {constant:.4g})"
        text += "; training stopped" if alarm.get("aborted") else "; training went on"
        parts.append(text)
    if entry["nonfinite_loss_step"] is not None:
        parts.append(f"non-finite training loss from step {entry['nonfinite_loss_step']}")
    return "; ".join(parts)


def _differing_settings(settings: dict) -> dict:
    """{key: {recipe: value}} for settings whose value is not the same in every recipe's first run."""
    have = {k: v for k, v in settings.items() if v}
    if len(have) < 2:
        return {}
    keys = list(dict.fromkeys(k for s in have.values() for k in s))
    ignore = {"seed", "output_dir", "run_name", "logging_dir", "data_seed"}
    out = {}
    for key in keys:
        if key in ignore:
            continue
        vals = {name: s.get(key) for name, s in have.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in vals.values()}) > 1:
            out[key] = vals
    return out


# --------------------------------------------------------------------------------------------------------
# markdown


def _fmt(x, scale: float, digits: int) -> str:
    x = _num(x)
    return "–" if x is None else f"{x * scale:.{digits}f}"


def _fmt_p(p) -> str:
    p = _num(p)
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _p_eq(p) -> str:
    """"=0.012" or "<0.001" (for "p=0.012" / "p<0.001" in prose)."""
    text = _fmt_p(p)
    return text if text.startswith("<") else f"={text}"


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _digits(summary: dict) -> int:
    scale = summary["display_scale"]
    vals = [abs(v) * scale for e in summary["recipes"].values() for r in e["runs"]
            for v in (r["validation"], r["test"]) if v is not None]
    return 1 if vals and max(vals) >= 2 else 3


def _verdict(summary: dict) -> list[str]:
    scale, digits = summary["display_scale"], _digits(summary)
    base = summary["baseline_recipe"]
    recipes = summary["recipes"]
    b = recipes[base]
    ns = sorted({e["n_runs"] for e in recipes.values() if e["n_runs"]})
    split = summary["split"]
    metric = summary["metric"]
    seeds = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    out = [f"{len(recipes)} recipe(s), {seeds} seeds each, {metric} on the {split} split"
           + (f" (×{scale:g})" if scale != 1 else "") + f"; baseline: {base}."]
    if b["summary"] is None:
        return [" ".join(out), f"The baseline {base} has no counted runs, so nothing is compared against it."]
    bs = b["summary"]
    n_tests = 0
    for name, e in recipes.items():
        if name == base or e["summary"] is None:
            continue
        s, cmp_ = e["summary"], e["vs_baseline"] or {}
        n_tests += 1
        parts = [f"**{name}** had {s['n_degenerate']}/{s['n']} degenerate runs vs {bs['n_degenerate']}/{bs['n']} "
                 f"for {base}"]
        mean_sig = _sig(cmp_.get("t_p"))
        parts.append(f"its mean was {_fmt(s['mean'], scale, digits)} vs {_fmt(bs['mean'], scale, digits)} "
                     f"(Welch p{_p_eq(cmp_.get('t_p'))}{mean_sig})")
        std_sig = _sig(cmp_.get("levene_p"))
        parts.append(f"its std was {_fmt(s['std'], scale, digits)} vs {_fmt(bs['std'], scale, digits)} "
                     f"(Levene p{_p_eq(cmp_.get('levene_p'))}{std_sig})")
        out.append("; ".join(parts) + ".")
    scored = {n: e["summary"] for n, e in recipes.items() if e["summary"] is not None}
    if len(scored) > 1:
        def leaders(items: dict, key: str, pick) -> str:
            target = pick(v[key] for v in items.values())
            names = [n for n, v in items.items() if v[key] == target]
            return " and ".join(names)

        top = leaders(scored, "mean", max)
        line = f"Highest mean: {top} ({_fmt(max(s['mean'] for s in scored.values()), scale, digits)})"
        # a recipe whose every run is degenerate has a small std because it learned nothing, not because it is stable
        with_std = {n: s for n, s in scored.items()
                    if _num(s["std"]) is not None and s["n_degenerate"] < s["n"]}
        if with_std:
            low = min(s["std"] for s in with_std.values())
            line += f"; lowest std: {leaders(with_std, 'std', min)} ({_fmt(low, scale, digits)})"
        all_degenerate = [n for n, s in scored.items() if s["n"] and s["n_degenerate"] == s["n"]]
        if all_degenerate and with_std:
            line += f" among recipes with a non-degenerate run ({' and '.join(all_degenerate)}: all degenerate)"
        if len({s["degenerate_rate"] for s in scored.values()}) > 1:
            low_rate = min(s["degenerate_rate"] for s in scored.values())
            few = " and ".join(f"{n} ({s['n_degenerate']}/{s['n']})" for n, s in scored.items()
                               if s["degenerate_rate"] == low_rate)
            line += f"; fewest degenerate runs: {few}."
        else:
            line += "; every recipe had the same share of degenerate runs."
        out.append(line)
    caveats = []
    if ns and ns[0] < SMALL_N:
        caveats.append(f"With {seeds} seeds per recipe these p-values are weak evidence: small samples miss real "
                       "differences and make chance ones look large (the papers used 20–25 seeds).")
    if n_tests > 1:
        caveats.append(f"The {n_tests} comparisons are not corrected for multiple testing.")
    caveats.append("A p-value above 0.05 means no evidence of a difference, not evidence of equality.")
    return [" ".join(out), " ".join(caveats)]


def _sig(p) -> str:
    p = _num(p)
    if p is None:
        return ", undefined"
    return ", significant at 5%" if p < 0.05 else ", not significant"


def _render_markdown(summary: dict, figures: dict, skipped: dict) -> str:
    scale, digits = summary["display_scale"], _digits(summary)
    split, metric = summary["split"], summary["metric"]
    unit = f" ×{scale:g}" if scale != 1 else ""
    base = summary["baseline_recipe"]
    L = [f"# Stability report{': ' + summary['task'] if summary.get('task') else ''}", ""]
    verdict, caveats = _verdict(summary)
    L += ["## Verdict", "", verdict, "", f"*{caveats}*", ""]
    for note in summary["notes"]:
        L += [f"> {note}", ""]

    L += [f"## Results ({metric}, {split} split{unit})", ""]
    what = ("test score of the checkpoint that was best on validation" if split == "test"
            else "best validation score")
    L += [f"Each run is represented by its {what}; aborted runs count as degenerate with their last "
          "evaluated score. Std is the sample std over seeds (ddof=1). "
          f"E[max val] @n: Dodge et al. (2019) expected best validation score after n trials"
          + ("; E[test] @k: Zhang et al. (2021) bootstrap expected test score of the best-on-validation run "
             f"among k trials ({summary['n_bootstrap']} resamples, seed {summary['bootstrap_seed']})"
             if split == "test" else "")
          + f". p-values vs **{base}**: Levene (Brown–Forsythe, median-centred) for the spread, Welch's t-test "
          "for the mean. Values for n or k above the number of seeds extrapolate from the observed runs.", ""]
    ks = "/".join(str(k) for k in TABLE_TRIALS)
    head = ["recipe", "n", "mean ± std", "median", "max", "min", "degenerate", f"E[max val] @{ks}"]
    if split == "test":
        head.append(f"E[test] @{ks}")
    head += ["Levene p", "Welch p"]
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in summary["recipes"].items():
        s = e["summary"]
        label = f"**{_md(name)}** (baseline)" if name == base else _md(name)
        if s is None:
            L.append("| " + " | ".join([label, "0"] + ["–"] * (len(head) - 2)) + " |")
            continue
        cells = [label, str(s["n"]), f"{_fmt(s['mean'], scale, digits)} ± {_fmt(s['std'], scale, digits)}",
                 _fmt(s["median"], scale, digits), _fmt(s["max"], scale, digits), _fmt(s["min"], scale, digits),
                 f"{s['n_degenerate']}/{s['n']}" + (f" ({e['n_aborted']} aborted)" if e["n_aborted"] else ""),
                 " / ".join(_fmt(v, scale, digits) for v in e["expected_max_validation"]["mean"])]
        if split == "test":
            cells.append(" / ".join(_fmt(v, scale, digits) for v in e["expected_test"]["mean"]))
        cmp_ = e["vs_baseline"] or {}
        cells += ["–" if name == base else _fmt_p(cmp_.get("levene_p")),
                  "–" if name == base else _fmt_p(cmp_.get("t_p"))]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")

    if split == "test":
        L += [f"Validation split (best validation score per run{unit}):", "",
              "| recipe | n | mean ± std | median | max | min |", "|---|---|---|---|---|---|"]
        for name, e in summary["recipes"].items():
            v = e["validation_summary"]
            if v is None:
                continue
            L.append(f"| {_md(name)} | {v['n']} | {_fmt(v['mean'], scale, digits)} ± {_fmt(v['std'], scale, digits)}"
                     f" | {_fmt(v['median'], scale, digits)} | {_fmt(v['max'], scale, digits)}"
                     f" | {_fmt(v['min'], scale, digits)} |")
        L.append("")

    mb = summary["majority_baseline"]
    L += [f"Majority-class baseline: validation {_fmt(mb['validation'], scale, digits)}, "
          f"test {_fmt(mb['test'], scale, digits)}. A run is degenerate when its best validation score is not above "
          "the validation baseline (Mosbach et al. 2021's threshold, on the checkpoint Zhang et al. 2021's protocol "
          "keeps), or when it was aborted.", ""]

    if figures or skipped:
        L += ["## Figures", ""]
        captions = {
            "boxplot": "Scores per recipe; each dot is one seed (× = aborted, red = degenerate); dashed line: "
                       "majority-class baseline.",
            "train_loss": "Training loss, mean over seeds with the min–max range shaded.",
            "expected_performance": "Expected performance of the selected run vs the number of random trials, "
                                    "± one std (dashed beyond the number of seeds run).",
            "grad_norms": "Gradient L2 norm per layer group over training, worst vs best run (log scale).",
            "l2_from_init": "L2 distance of each layer group from its initial weights at the end of training; "
                            "mean over finished seeds, bars span min–max.",
        }
        for key, fname in figures.items():
            L += [f"![{key}]({fname})", "", f"*{captions[key]}*", ""]
        for key, why in skipped.items():
            L += [f"- `{FIGURE_FILES[key]}` not drawn: {why}"]
        if skipped:
            L.append("")

    aborted = [(name, r) for name, e in summary["recipes"].items() for r in e["runs"] if r["status"] == "aborted"]
    if aborted:
        L += ["## Aborted runs (counted as degenerate)", "", "| run | score | reason |", "|---|---|---|"]
        for _name, r in aborted:
            L.append(f"| {_md(r['run_id'])} | {_fmt(r[split], scale, digits)} ({_md(r['score_source'])}) | "
                     f"{_md(r['abort_reason'] or '–')} |")
        L.append("")
    if summary.get("alarms"):
        L += ["## Alarms", "", "Every run that raised the degenerate-run alarm or logged a non-finite training loss, "
              "whatever its status (a finished run keeps its score).", "",
              "| run | status | alarm |", "|---|---|---|"]
        for entry in summary["alarms"]:
            L.append(f"| {_md(entry['run_id'])} | {_md(entry['status'])} | {_md(_alarm_text(entry))} |")
        L.append("")
    if summary["not_counted"]:
        L += ["## Failed runs (not counted)", "", "| run | status | error |", "|---|---|---|"]
        for r in summary["not_counted"]:
            err = (r["error"] or "–").strip().splitlines()
            err = err[-1] if err else "–"  # the last line of a traceback names the exception
            L.append(f"| {_md(r['run_id'])} | {_md(r['status'])} | {_md(err[:300])} |")
        L.append("")

    diff = summary["settings_that_differ"]
    if diff:
        names = list(summary["recipes"])
        L += ["## Settings that differ between recipes", "", "| setting | " + " | ".join(map(_md, names)) + " |",
              "|" + "---|" * (len(names) + 1)]
        for key, vals in diff.items():
            L.append(f"| {_md(key)} | " + " | ".join(_md(json.dumps(vals.get(n), default=str)) for n in names) + " |")
        L.append("")

    L += ["## All runs", "", f"| run | status | validation{unit} | test{unit} | degenerate | wall time (s) |",
          "|---|---|---|---|---|---|"]
    for e in summary["recipes"].values():
        for r in e["runs"]:
            wt = r["wall_time_s"]
            L.append(f"| {_md(r['run_id'])} | {r['status']} | {_fmt(r['validation'], scale, digits)} | "
                     f"{_fmt(r['test'], scale, digits)} | {'yes' if r['degenerate'] else 'no'} | "
                     f"{'–' if wt is None else f'{wt:.0f}'} |")
    L += ["", "Machine-readable statistics: [summary.json](summary.json).", ""]
    return "\n".join(L)


# --------------------------------------------------------------------------------------------------------
# figures


def _group_key(name: str, position: int):
    """Bottom-to-top order of a layer group name: embeddings, layer.0 … layer.N, others, pooler, head."""
    low = name.lower()
    m = re.search(r"(\d+)$", low)
    if "embed" in low:
        return (0, 0, position)
    if m and ("layer" in low or "block" in low):
        return (1, int(m.group(1)), position)
    if "pooler" in low:
        return (3, 0, position)
    if "head" in low or "classifier" in low:
        return (4, 0, position)
    return (2, 0, position)


def _ordered_groups(dicts) -> list[str]:
    seen = list(dict.fromkeys(g for d in dicts for g in d))
    return sorted(seen, key=lambda g: _group_key(g, seen.index(g)))


def _series(pairs):
    """[[step, value], ...] -> (steps, values) float arrays, non-finite values dropped, sorted by step."""
    arr = []
    for p in pairs or []:
        if isinstance(p, (list, tuple)) and len(p) >= 2:
            s, v = _num(p[0]), _num(p[1])
            if s is not None and v is not None:
                arr.append((s, v))
    arr.sort()
    return np.array([a[0] for a in arr]), np.array([a[1] for a in arr])


def _new_figure(width: float, height: float, ncols: int = 1, sharey: bool = False):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("figures need matplotlib: pip install 'hf_stable_ft[report]' "
                          "(or call write_report(..., figures=False))") from exc
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, sharey=sharey, squeeze=False)[0]
    return fig, axes


def _colors(n: int):
    from matplotlib import colormaps

    # tab10 without its red (index 3): red marks degenerate seeds in the box plot.
    palette = [colormaps["tab10"](i) for i in range(10) if i != 3]
    return [palette[i % len(palette)] for i in range(n)]


def _ylabel(summary: dict, split: str | None = None) -> str:
    split = split or summary["split"]
    scale = summary["display_scale"]
    return f"{summary['metric']} ({split}" + (f", ×{scale:g})" if scale != 1 else ")")


def _plot_boxplot(summary: dict, path: Path):
    from matplotlib.lines import Line2D

    scale, split = summary["display_scale"], summary["split"]
    names = [n for n, e in summary["recipes"].items() if e["runs"]]
    fig, (ax,) = _new_figure(max(5.0, 1.3 * len(names) + 2.5), 4.6)
    colors = _colors(len(names))
    data = [[r[split] * scale for r in summary["recipes"][n]["runs"]] for n in names]
    pos = np.arange(1, len(names) + 1)
    ax.boxplot(data, positions=pos, widths=0.55, showfliers=False, medianprops={"color": "black"},
               patch_artist=True, boxprops={"facecolor": "none"})
    rng = np.random.default_rng(0)
    for i, n in enumerate(names):
        for r in summary["recipes"][n]["runs"]:
            x = pos[i] + rng.uniform(-0.16, 0.16)
            col = "tab:red" if r["degenerate"] else colors[i]
            marker = "x" if r["status"] == "aborted" else "o"
            ax.scatter([x], [r[split] * scale], s=30, marker=marker, color=col, alpha=0.85, zorder=3,
                       linewidths=1.5 if marker == "x" else 0.5, edgecolors=None if marker == "x" else "black")
    base = summary["majority_baseline"].get(split)
    handles = [Line2D([], [], marker="o", ls="", color="grey", markeredgecolor="black", label="seed"),
               Line2D([], [], marker="o", ls="", color="tab:red", markeredgecolor="black", label="degenerate seed"),
               Line2D([], [], marker="x", ls="", color="tab:red", label="aborted seed")]
    if base is not None:
        ax.axhline(base * scale, color="grey", ls="--", lw=1.2, zorder=1)
        handles.append(Line2D([], [], color="grey", ls="--", label=f"majority baseline ({base * scale:g})"))
    ax.set_xticks(pos, [f"{n}\n(n={len(d)})" for n, d in zip(names, data)])
    ax.set_ylabel(_ylabel(summary))
    ax.set_title(f"{summary.get('task') or 'sweep'}: {summary['metric']} over seeds, per recipe")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.8)
    fig.savefig(path, dpi=DPI)


def _plot_train_loss(records: list[dict], recipes: list[str], path: Path) -> bool:
    fig, (ax,) = _new_figure(7.0, 4.4)
    drawn = False
    for color, name in zip(_colors(len(recipes)), recipes):
        runs = [_series(r.get("train_loss")) for r in records if r["recipe"] == name]
        runs = [(s, v) for s, v in runs if s.size]
        if not runs:
            continue
        grid = np.unique(np.concatenate([s for s, _ in runs]))
        mat = np.full((len(runs), grid.size), np.nan)
        for j, (s, v) in enumerate(runs):
            inside = (grid >= s[0]) & (grid <= s[-1])  # no extrapolation past a run's last logged step
            mat[j, inside] = np.interp(grid[inside], s, v)
        count = np.sum(~np.isnan(mat), axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, lo, hi = np.nanmean(mat, 0), np.nanmin(mat, 0), np.nanmax(mat, 0)
        ok = count > 0
        ax.plot(grid[ok], mean[ok], color=color, lw=1.6, label=f"{name} (n={len(runs)})", zorder=3)
        ax.fill_between(grid[ok], lo[ok], hi[ok], color=color, alpha=0.18, lw=0, zorder=1)
        drawn = True
    if not drawn:
        return False
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss over seeds (line: mean, band: min–max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=DPI)
    return True


def _plot_expected(summary: dict, path: Path):
    scale = summary["display_scale"]
    test = summary["split"] == "test"
    fig, (ax,) = _new_figure(7.0, 4.4)
    names = [n for n, e in summary["recipes"].items() if e["runs"]]
    for color, name in zip(_colors(len(names)), names):
        e = summary["recipes"][name]
        curve = e["expected_test_curve"] if test else e["expected_max_validation_curve"]
        k = np.asarray(curve["n_trials"])
        m = np.asarray(curve["mean"], dtype=float) * scale
        sd = np.asarray(curve["std"], dtype=float) * scale
        n = e["n_runs"]
        inside = k <= n
        ax.plot(k[inside], m[inside], color=color, lw=1.8, marker="o", ms=3, label=f"{name} (n={n})", zorder=3)
        if (~inside).any():
            tail = k >= n
            ax.plot(k[tail], m[tail], color=color, lw=1.4, ls="--", zorder=3)
        ax.fill_between(k, m - sd, m + sd, color=color, alpha=0.15, lw=0, zorder=1)
    ax.set_xlabel("number of random trials (seeds) k")
    if test:
        ax.set_ylabel(f"expected {_ylabel(summary, 'test')}")
        ax.set_title("Expected test score of the best-on-validation run\n(bootstrap, Zhang et al. 2021; band: ± std)",
                     fontsize=10)
    else:
        ax.set_ylabel(f"expected max {_ylabel(summary, 'validation')}")
        ax.set_title("Expected best validation score after k trials\n(Dodge et al. 2019; band: ± std)",
                     fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=DPI)


def _diag(rec: dict, key: str) -> dict:
    d = rec.get("diagnostics")
    d = d.get(key) if isinstance(d, dict) else None
    return {g: v for g, v in d.items() if _series(v)[0].size} if isinstance(d, dict) else {}


def _depth_colorbar(fig, axes, groups: list[str]):
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm

    cmap = colormaps["viridis"].resampled(len(groups))
    norm = BoundaryNorm(np.arange(len(groups) + 1) - 0.5, len(groups))
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), pad=0.02, aspect=30)
    step = max(1, int(math.ceil(len(groups) / 14)))
    ticks = sorted(set(range(0, len(groups), step)) | {len(groups) - 1})
    cb.set_ticks(ticks, labels=[groups[i] for i in ticks])
    cb.ax.tick_params(labelsize=7)
    cb.set_label("layer group (bottom → top)")
    return [cmap(i) for i in range(len(groups))]


def _plot_grad_norms(summary: dict, records: list[dict], path: Path):
    """Worst and best counted run that has gradient-norm diagnostics; None if there is none."""
    split, scale = summary["split"], summary["display_scale"]
    by_id = {r["run_id"]: r for r in records}
    cands = [(r, by_id[r["run_id"]]) for e in summary["recipes"].values() for r in e["runs"]
             if _diag(by_id[r["run_id"]], "grad_norm")]
    if not cands:
        return None
    # worst: a degenerate run that trained to the end (an aborted one has only a few steps), lowest score;
    # best: a non-degenerate finished run with the highest score
    worst = min(cands, key=lambda c: (not c[0]["degenerate"], c[0]["status"] == "aborted", c[0][split]))
    best = max(cands, key=lambda c: (not c[0]["degenerate"], c[0]["status"] != "aborted", c[0][split]))
    picks = [("worst", worst)] + ([("best", best)] if best[0]["run_id"] != worst[0]["run_id"] else [])
    diags = [_diag(rec, "grad_norm") for _, (_, rec) in picks]
    groups = _ordered_groups(diags)
    fig, axes = _new_figure(5.2 * len(picks) + 1.2, 4.4, ncols=len(picks), sharey=True)
    colors = _depth_colorbar(fig, axes, groups)
    for ax, (label, (row, rec)), diag in zip(axes, picks, diags):
        for g, c in zip(groups, colors):
            s, v = _series(diag.get(g))
            pos = v > 0  # log scale
            if pos.any():
                ax.plot(s[pos], v[pos], color=c, lw=1.1)
        ax.set_yscale("log")
        state = "aborted" if row["status"] == "aborted" else ("degenerate" if row["degenerate"] else "ok")
        value = _fmt(row[split], scale, _digits(summary))
        ax.set_title(f"{label}: {row['run_id']}\n{summary['metric']} = {value} ({state})", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("gradient L2 norm (log)")
    fig.suptitle("Per-layer gradient norms, worst vs best run (cf. Mosbach et al. 2021, Fig. 4)", fontsize=10)
    fig.savefig(path, dpi=DPI)
    return [row["run_id"] for _, (row, _) in picks]


def _plot_l2(summary: dict, records: list[dict], path: Path) -> bool:
    by_id = {r["run_id"]: r for r in records}
    per_recipe = {}
    for name, e in summary["recipes"].items():
        finished = [r for r in e["runs"] if r["status"] == "finished"] or e["runs"]
        diags = [d for d in (_diag(by_id[r["run_id"]], "l2_from_init") for r in finished) if d]
        if diags:
            per_recipe[name] = diags
    if not per_recipe:
        return False
    groups = _ordered_groups(d for diags in per_recipe.values() for d in diags)
    x = np.arange(len(groups))
    fig, (ax,) = _new_figure(max(6.5, 0.32 * len(groups) + 3), 4.6)
    names = list(summary["recipes"])
    colors = dict(zip(names, _colors(len(names))))
    width = 0.25 / max(1, len(per_recipe))
    for j, (name, diags) in enumerate(per_recipe.items()):
        end = np.full((len(diags), len(groups)), np.nan)
        for i, d in enumerate(diags):
            for gi, g in enumerate(groups):
                s, v = _series(d.get(g))
                if v.size:
                    end[i, gi] = v[-1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, lo, hi = np.nanmean(end, 0), np.nanmin(end, 0), np.nanmax(end, 0)
        ok = ~np.isnan(mean)
        xs = x + (j - (len(per_recipe) - 1) / 2) * width
        ax.errorbar(xs[ok], mean[ok], yerr=[mean[ok] - lo[ok], hi[ok] - mean[ok]], color=colors[name],
                    marker="o", ms=4, lw=1.4, capsize=2, label=f"{name} (n={len(diags)})")
    ax.set_xticks(x, groups, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("layer group (bottom → top)")
    ax.set_ylabel("L2 distance from initial weights")
    ax.set_title("Distance from initialisation at the end of training (cf. Zhang et al. 2021, Fig. 7)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=DPI)
    return True


def _make_figures(summary: dict, records: list[dict], out: Path) -> tuple[dict, dict]:
    made, skipped = {}, {}
    _plot_boxplot(summary, out / FIGURE_FILES["boxplot"])
    made["boxplot"] = FIGURE_FILES["boxplot"]
    counted_ids = {r["run_id"] for e in summary["recipes"].values() for r in e["runs"]}
    counted = [r for r in records if r["run_id"] in counted_ids]
    if _plot_train_loss(counted, list(summary["recipes"]), out / FIGURE_FILES["train_loss"]):
        made["train_loss"] = FIGURE_FILES["train_loss"]
    else:
        skipped["train_loss"] = "no run recorded a training loss"
    _plot_expected(summary, out / FIGURE_FILES["expected_performance"])
    made["expected_performance"] = FIGURE_FILES["expected_performance"]
    picked = _plot_grad_norms(summary, counted, out / FIGURE_FILES["grad_norms"])
    if picked:
        made["grad_norms"] = FIGURE_FILES["grad_norms"]
        summary["grad_norm_runs"] = picked
    else:
        skipped["grad_norms"] = "no run has gradient-norm diagnostics (diagnostics were off)"
    if _plot_l2(summary, counted, out / FIGURE_FILES["l2_from_init"]):
        made["l2_from_init"] = FIGURE_FILES["l2_from_init"]
    else:
        skipped["l2_from_init"] = "no run has L2-from-init diagnostics (diagnostics were off)"
    return made, skipped


# --------------------------------------------------------------------------------------------------------
# entry point


def write_report(run_dir, baseline_recipe: str | None = None, figures: bool = True, *,
                 skip_corrupt: bool = False, n_bootstrap: int = 1000, seed: int = 0,
                 scale: float | None = None) -> Path:
    """Write ``report.md``, ``summary.json`` and the PNG figures for the sweep in ``run_dir``.

    Args:
        run_dir: directory holding ``runs.jsonl``; the report is written next to it.
        baseline_recipe: recipe the others are compared with (default ``devlin2019`` if present, else the
            first recipe in the file).
        figures: draw the PNGs (needs matplotlib; stale PNGs of a previous report are removed either way).
        skip_corrupt: skip corrupt lines of runs.jsonl with a warning instead of raising ValueError.
        n_bootstrap, seed: Zhang et al. bootstrap settings.
        scale: display factor (see :func:`summarize_runs`).

    Returns:
        the path of ``report.md``.
    """
    out = Path(run_dir)
    records = _dedupe(load_runs(out, skip_corrupt=skip_corrupt))
    summary = summarize_runs(records, baseline_recipe, n_bootstrap=n_bootstrap, seed=seed, scale=scale)
    for fname in FIGURE_FILES.values():  # never leave a previous report's figure next to this one
        (out / fname).unlink(missing_ok=True)
    made, skipped = _make_figures(summary, records, out) if figures else ({}, {})
    summary["figures"] = made
    (out / "summary.json").write_text(json.dumps(_clean(summary), indent=2) + "\n", encoding="utf-8")
    path = out / "report.md"
    path.write_text(_render_markdown(summary, made, skipped), encoding="utf-8")
    return path
