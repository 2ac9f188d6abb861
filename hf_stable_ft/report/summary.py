"""Which score represents a run, and the statistics of a sweep: :class:`SweepSummary` (what ``summary.json`` holds).

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
* A finished run is degenerate when its record says so (:attr:`hf_stable_ft.records.RunRecord.degenerate`: the
  sweep's flag, or :func:`hf_stable_ft.stats.degenerate_record` for a record read without one — its best
  validation score is not above the validation majority baseline, Mosbach et al. 2021's threshold on the
  checkpoint Zhang et al. 2021's protocol keeps).
* **Alarms** — the degenerate-run alarm (``diagnostics.degenerate_alarm``) and a non-finite training loss
  (``nonfinite_loss_step``, or "nan"/"inf" in ``train_loss``) — are listed for every run, finished ones too.
* All records must be of one task (a ValueError names the tasks otherwise).
* **Failed** runs (status ``failed``: an exception, not a bad seed) and records with an unknown status are
  not counted; they are listed separately with their error.
* If one ``run_id`` appears on several lines (a resumed sweep), the last line wins and a warning says so.

The headline number
-------------------
For every recipe, :func:`hf_stable_ft.stats.runs_to_match` against the baseline recipe and, when the sweep has it,
``stock`` (the stock ``Trainer`` defaults): the fewest baseline runs whose best-on-validation run is expected to
score at least one run of the recipe (its mean score), with a 95% bootstrap interval over the seeds of both, up to
:data:`MATCH_MAX_RUNS` runs. Stored as each recipe's ``runs_to_match`` (``{baseline: {...}}``); how it was computed
is ``runs_to_match_settings``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..records import (
    ENVIRONMENT_PACKAGES,
    RunRecord,
    json_safe,
    latest_by_run_id,
    read_records,
)
from ..restarts import RESTARTS_KEY  # the key of a run's restart record in its settings
from ..stats import _finite as _num  # float(x) for a finite number, else None
from ..stats import (
    bootstrap_expected_test,
    compare_to_baseline,
    expected_max_curve,
    runs_to_match,
    summarize,
    t_test,
)

__all__ = ["RunScore", "RecipeSummary", "SweepSummary", "load_runs", "score_run", "summarize_sweep",
           "summarize_runs", "load_summary", "SUMMARY_FILE", "TABLE_TRIALS", "DEFAULT_BASELINE", "STOCK_RECIPE",
           "MATCH_MAX_RUNS"]

SUMMARY_FILE = "summary.json"
TABLE_TRIALS = (1, 5, 10)
DEFAULT_BASELINE = "devlin2019"
#: The stock ``Trainer`` defaults: a second baseline for the runs-to-match number when the sweep has it.
STOCK_RECIPE = "stock"
#: The most baseline runs the runs-to-match number considers ("no number of runs up to this reaches it").
MATCH_MAX_RUNS = 100


def load_runs(path, skip_corrupt: bool = False) -> list[dict]:
    """Run records from a ``runs.jsonl`` file (or a sweep directory containing one), in file order, as dicts
    (:meth:`hf_stable_ft.records.RunRecord.to_dict`: keys an older record lacks take their defaults).

    A line that is not a run record (a JSON object with a ``run_id`` and a ``recipe``, which a ``run_id`` of the
    form ``"<recipe>/seed=<seed>"`` also gives) is corrupt: ValueError naming the file and the line number, unless
    ``skip_corrupt=True``, in which case such lines are skipped with one warning that lists their line numbers
    (:func:`hf_stable_ft.records.read_records`, ``on_corrupt="raise"`` / ``"skip"``). Blank lines are ignored.
    """
    return [r.to_dict() for r in read_records(path, on_corrupt="skip" if skip_corrupt else "raise")]


def _latest(records: list[RunRecord]) -> list[RunRecord]:
    """The last record of each run_id (a resumed sweep re-appends retried runs), recipes in order of appearance."""
    latest = latest_by_run_id(records)
    n_dup = len(records) - len(latest)
    if n_dup:
        warnings.warn(f"{n_dup} run record(s) repeat an earlier run_id; the last record of each run is used",
                      stacklevel=3)
    order = list(dict.fromkeys(r.recipe for r in records))
    return sorted(latest.values(), key=lambda r: order.index(r.recipe))


def _as_records(records: Iterable[RunRecord | Mapping]) -> list[RunRecord]:
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, RunRecord):
            if not rec.get("run_id") and rec.get("recipe"):  # a hand-made record: named like a sweep's
                rec = {**rec, "run_id": f"{rec['recipe']}/seed={rec.get('seed', f'#{i}')}"}
            rec = RunRecord.from_dict(dict(rec))
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------------------------
# per-run scores


def _baseline(rec: RunRecord, split: str):
    mb = rec.majority_baseline
    return _num(mb.get(split)) if isinstance(mb, dict) else None


def _fmt(x, scale: float, digits: int) -> str:
    x = _num(x)
    return "–" if x is None else f"{x * scale:.{digits}f}"


def _digits(summary: SweepSummary) -> int:
    scale = summary.display_scale
    vals = [abs(v) * scale for e in summary.recipes.values() for r in e.runs
            for v in (r["validation"], r["test"]) if v is not None]
    return 1 if vals and max(vals) >= 2 else 3


@dataclasses.dataclass
class RunScore:
    """The score that represents one run in the statistics, and whether it is counted."""

    run_id: str
    recipe: str
    seed: Any
    status: str
    validation: float | None = None
    test: float | None = None
    degenerate: bool | None = None
    counted: bool = False
    abort_reason: str | None = None
    error: str | None = None
    wall_time_s: float | None = None
    #: "best validation", "final evaluation", "last evaluation" (aborted) or the majority-baseline fallback.
    score_source: str | None = None

    def row(self) -> dict[str, Any]:
        """The run's entry in a recipe's ``runs`` list of ``summary.json``."""
        return {k: getattr(self, k) for k in ("run_id", "seed", "status", "validation", "test", "degenerate",
                                              "abort_reason", "wall_time_s", "score_source")}


def score_run(rec: RunRecord) -> RunScore:
    """The run's score: kind (counted / failed), validation and test scores, degenerate flag."""
    row = RunScore(run_id=rec.run_id, recipe=rec.recipe, seed=rec.seed, status=rec.status,
                   abort_reason=rec.abort_reason, error=rec.error, wall_time_s=_num(rec.wall_time_s))
    history = [e for e in (rec.eval_history or []) if isinstance(e, dict)]
    if rec.status == "aborted":
        evaluated = [e for e in history if _num(e.get("validation")) is not None]
        if evaluated:
            last = evaluated[-1]
            row.validation, row.test = _num(last.get("validation")), _num(last.get("test"))
            row.score_source = "last evaluation"
        else:
            row.validation, row.test = _baseline(rec, "validation"), _baseline(rec, "test")
            row.score_source = "majority baseline (no evaluation before abort)"
        row.degenerate = True
        row.counted = row.validation is not None
        if not row.counted:
            row.error = row.error or "aborted before any evaluation and no majority baseline recorded"
        return row
    if rec.status != "finished":
        return row
    val, test = _num(rec.best_validation), _num(rec.test_at_best_validation)
    row.score_source = "best validation"
    if val is None:
        val, test = _num(rec.final_validation), _num(rec.final_test)
        row.score_source = "final evaluation"
    if val is None:
        row.error = row.error or "finished without a validation score"
        return row
    row.validation, row.test = val, test
    row.degenerate = bool(rec.degenerate)
    row.counted = True
    return row


# --------------------------------------------------------------------------------------------------------
# statistics of a sweep


@dataclasses.dataclass
class RecipeSummary:
    """The statistics of one recipe's counted runs (the ``stats`` results as their ``as_dict()``)."""

    n_runs: int
    n_finished: int
    n_aborted: int
    n_failed: int
    summary: dict | None = None
    validation_summary: dict | None = None
    expected_max_validation: dict | None = None
    expected_max_validation_curve: dict | None = None
    expected_test: dict | None = None
    expected_test_curve: dict | None = None
    vs_baseline: dict | None = None
    #: ``{baseline: runs-to-match}`` against each match baseline (:attr:`SweepSummary.runs_to_match_settings`):
    #: :meth:`hf_stable_ft.stats.RunsToMatch.as_dict` without the curve — ``k`` (None: never within
    #: ``max_runs``), ``interval``, ``p_within``, ``target``, ``asymptote``, ...
    runs_to_match: dict | None = None
    #: :meth:`RunScore.row` of every counted run.
    runs: list[dict] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SweepSummary:
    """All statistics of a sweep; :meth:`as_dict` is ``summary.json`` (statistics in the units of the records)."""

    task: str | None
    metric: str
    #: "test" when every counted run has a test score, else "validation".
    split: str
    #: Display factor of the report (100: fractions shown as percentages).
    display_scale: float
    majority_baseline: dict[str, float | None]
    baseline_recipe: str
    recipes: dict[str, RecipeSummary]
    #: Failed runs (and unknown statuses): ``{"run_id", "recipe", "seed", "status", "error"}``.
    not_counted: list[dict]
    #: Runs with a degenerate-run alarm or a non-finite loss: ``{"run_id", "recipe", "seed", "status",
    #: "degenerate_alarm", "nonfinite_loss_step"}``.
    alarms: list[dict]
    #: ``{setting: {recipe: value}}`` for settings not the same in every recipe's first run.
    settings_that_differ: dict[str, dict]
    n_bootstrap: int
    bootstrap_seed: int
    std_ddof: int
    levene_center: str
    notes: list[str]
    #: Set by the report: the runs of the gradient-norm figure, and the figures drawn.
    grad_norm_runs: list[str] | None = None
    figures: dict[str, str] | None = None
    #: How the runs-to-match numbers were computed: ``{"baselines": [...], "max_runs", "n_bootstrap", "seed",
    #: "confidence", "selection"}`` (None in a summary written before they existed).
    runs_to_match_settings: dict | None = None
    #: Where and with what the runs were trained (:func:`provenance`): ``{"n_runs", "devices": {device: runs},
    #: "first", "last" (UTC dates), "versions": {package: {version: runs}}, "not_recorded"}``, and from the
    #: directory's ``sweep.json`` ``"sweeps": [{"started", "command"}]`` (None in a summary written before it).
    provenance: dict | None = None
    #: ``{recipe: {setting: [{"value", "seeds"}]}}`` for settings recorded in every run of a recipe with more than
    #: one value (runs of one name trained alike or not: a cell resumed after a recipe changed); None in a summary
    #: written before it existed.
    settings_within_recipe: dict | None = None

    def as_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["recipes"] = {name: entry.as_dict() for name, entry in self.recipes.items()}
        for key in ("grad_norm_runs", "figures"):
            if values[key] is None:
                del values[key]
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepSummary:
        """The summary of :meth:`as_dict` (or of a ``summary.json``)."""
        values = dict(data)
        values["recipes"] = {name: RecipeSummary(**entry) for name, entry in data["recipes"].items()}
        return cls(**values)


def load_summary(run_dir) -> SweepSummary:
    """The :class:`SweepSummary` that :func:`hf_stable_ft.report.write_report` wrote to ``run_dir/summary.json``."""
    return SweepSummary.from_dict(json.loads((Path(run_dir) / SUMMARY_FILE).read_text(encoding="utf-8")))


def _most_common(values, default=None):
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else default


def summarize_sweep(records: Iterable[RunRecord | Mapping], baseline_recipe: str | None = None, *,
                    n_bootstrap: int = 1000, seed: int = 0, scale: float | None = None) -> SweepSummary:
    """All statistics of a sweep (see :func:`summarize_runs`, which returns the same as a dict)."""
    records = _latest(_as_records(records))
    if not records:
        raise ValueError("no run records")
    tasks = Counter(str(r.task) for r in records if r.task)
    if len({t.casefold() for t in tasks}) > 1:
        listed = ", ".join(f"{t}: {n} run{'s' if n > 1 else ''}" for t, n in tasks.items())
        raise ValueError(f"the records hold runs of {len(tasks)} tasks ({listed}); a report compares recipes on one "
                         "task: give each task's sweep its own directory")
    rows = [score_run(r) for r in records]
    recipes = list(dict.fromkeys(r.recipe for r in rows))
    # seed order within each recipe: the bootstrap resamples run indices, so the file's order must not matter
    position = {name: i for i, name in enumerate(recipes)}
    rows.sort(key=lambda r: (position[r.recipe], r.seed is None, r.seed if r.seed is not None else 0, r.run_id))
    counted = [r for r in rows if r.counted]
    not_counted = [r for r in rows if not r.counted]
    if not counted:
        raise ValueError("no finished or aborted run has a score: nothing to summarize "
                         f"({len(not_counted)} failed run(s))")
    split = "test" if all(r.test is not None for r in counted) else "validation"
    notes = []
    if split == "validation":
        n_with_test = sum(r.test is not None for r in counted)
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
        values = [abs(v) for r in counted for v in (r.validation, r.test) if v is not None]
        values += [abs(v) for v in majority.values() if v is not None]
        scale = 100.0 if values and max(values) <= 1.0 else 1.0

    n_max = max(sum(1 for r in counted if r.recipe == name) for name in recipes)
    curve_ks = np.arange(1, max(max(TABLE_TRIALS), n_max) + 1)
    per_recipe, scores_by_recipe, degenerate_by_recipe = {}, {}, {}
    for name in recipes:
        mine = [r for r in rows if r.recipe == name]
        got = [r for r in mine if r.counted]
        entry = RecipeSummary(
            n_runs=len(got), n_finished=sum(r.status == "finished" for r in got),
            n_aborted=sum(r.status == "aborted" for r in got), n_failed=len(mine) - len(got),
            runs=[r.row() for r in got],
        )
        if got:
            scores = [getattr(r, split) for r in got]
            degen = [r.degenerate for r in got]
            scores_by_recipe[name] = scores
            degenerate_by_recipe[name] = degen
            entry.summary = summarize(scores, degen).as_dict()
            val = [r.validation for r in got]
            if split == "test":
                entry.validation_summary = summarize(val, degen).as_dict()
            entry.expected_max_validation = expected_max_curve(val, TABLE_TRIALS).as_dict()
            entry.expected_max_validation_curve = expected_max_curve(val, curve_ks).as_dict()
            if split == "test":
                test = [r.test for r in got]
                full = bootstrap_expected_test(val, test, curve_ks, n_bootstrap=n_bootstrap, seed=seed)
                entry.expected_test_curve = full.as_dict()
                idx = [int(np.flatnonzero(full.n_trials == k)[0]) for k in TABLE_TRIALS]
                table = full.as_dict()
                entry.expected_test = {
                    "method": table["method"], "n_trials": list(TABLE_TRIALS),
                    "mean": [table["mean"][i] for i in idx], "std": [table["std"][i] for i in idx],
                    "percentiles": {q: [v[i] for i in idx] for q, v in table["percentiles"].items()},
                }
        per_recipe[name] = entry
    if baseline_recipe in scores_by_recipe:
        for name, row in compare_to_baseline(scores_by_recipe, baseline_recipe,
                                             degenerate=degenerate_by_recipe).items():
            per_recipe[name].vs_baseline = row
    else:
        notes.append(f"The baseline recipe {baseline_recipe!r} has no counted runs: no p-values.")

    # the headline: one run of each recipe is worth how many runs of each baseline (Zhang et al.'s selection)
    match_baselines = [b for b in dict.fromkeys([baseline_recipe, STOCK_RECIPE]) if b in scores_by_recipe]
    pairs = {name: ([r.validation for r in rows if r.recipe == name and r.counted],
                    [getattr(r, split) for r in rows if r.recipe == name and r.counted]) for name in scores_by_recipe}
    for name in scores_by_recipe:
        found = {}
        for base in match_baselines:
            if base == name:
                continue
            res = runs_to_match(*pairs[base], pairs[name][1], max_runs=MATCH_MAX_RUNS, n_bootstrap=n_bootstrap,
                                seed=seed).as_dict()
            res.pop("curve")
            # the means' own test against this baseline (unadjusted), so a "never" can say whether it is noise
            mine, theirs = scores_by_recipe[name], scores_by_recipe[base]
            res["welch_p"] = t_test(mine, theirs).pvalue if len(mine) >= 2 and len(theirs) >= 2 else None
            found[base] = res
        per_recipe[name].runs_to_match = found or None

    settings = {name: next((r.settings for r in records if r.recipe == name and isinstance(r.settings, dict)), None)
                for name in recipes}
    summary = SweepSummary(
        task=_most_common([r.task for r in records]),
        metric=_most_common([r.primary_metric for r in records], "score"),
        split=split, display_scale=scale, majority_baseline=majority, baseline_recipe=baseline_recipe,
        recipes=per_recipe,
        not_counted=[{k: getattr(r, k) for k in ("run_id", "recipe", "seed", "status", "error")} for r in not_counted],
        alarms=[a for a in (_alarm(r) for r in records) if a is not None],
        settings_that_differ=_differing_settings(settings),
        settings_within_recipe=_settings_within_recipe(records, recipes),
        provenance=provenance(records),
        n_bootstrap=n_bootstrap, bootstrap_seed=seed, std_ddof=1, levene_center="median", notes=notes,
        runs_to_match_settings={
            "baselines": match_baselines, "max_runs": MATCH_MAX_RUNS, "n_bootstrap": n_bootstrap, "seed": seed,
            "confidence": 95.0,
            "selection": ("test score of the best-on-validation run (Zhang et al. 2021)" if split == "test" else
                          "best validation score (Dodge et al. 2019): no test split"),
        },
    )
    return SweepSummary.from_dict(json_safe(summary.as_dict()))  # JSON-ready: NaN -> None, numpy -> Python


def summarize_runs(records: list[dict], baseline_recipe: str | None = None, *, n_bootstrap: int = 1000,
                   seed: int = 0, scale: float | None = None) -> dict:
    """All statistics of a sweep as a JSON-ready dict (what ``summary.json`` holds; :meth:`SweepSummary.as_dict`).

    Args:
        records: run records as returned by :func:`load_runs` (dicts or :class:`~hf_stable_ft.records.RunRecord`).
        baseline_recipe: the recipe the others are tested against; default ``"devlin2019"`` if present,
            else the first recipe in file order.
        n_bootstrap, seed: Zhang et al. bootstrap settings (deterministic for a fixed seed).
        scale: display factor for the report (100 shows fractions as percentages, like the papers); default:
            100 when every score and baseline lies in [-1, 1], else 1. Statistics in the result stay in the
            units of the records.
    """
    return summarize_sweep(records, baseline_recipe, n_bootstrap=n_bootstrap, seed=seed, scale=scale).as_dict()


def _nonfinite_loss_step(rec: RunRecord):
    if rec.nonfinite_loss_step is not None:
        return rec.nonfinite_loss_step
    for point in rec.train_loss or []:  # records without the key: a loss kept as "nan" / "inf"
        if isinstance(point, (list, tuple)) and len(point) >= 2 and isinstance(point[1], str) \
                and point[1].lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
            return point[0]
    return None


def _alarm(rec: RunRecord) -> dict | None:
    """The run's alarms (degenerate-run alarm, non-finite training loss), whatever its status; None if none."""
    diagnostics = rec.diagnostics
    alarm = diagnostics.get("degenerate_alarm") if isinstance(diagnostics, dict) else None
    alarm = alarm if isinstance(alarm, dict) else None
    nonfinite = _nonfinite_loss_step(rec)
    restarts = rec.settings.get(RESTARTS_KEY) if isinstance(rec.settings, dict) else None
    restarted = None
    if isinstance(restarts, dict) and restarts.get("failed_attempts"):
        attempts = restarts.get("attempts") or []
        returned = next((a for a in attempts if a.get("attempt") == restarts.get("returned_attempt")), {})
        restarted = {"failed_attempts": restarts["failed_attempts"],
                     "failed_seeds": [a.get("seed") for a in attempts if a.get("degenerate")],
                     "returned_seed": returned.get("seed"), "healthy": restarts.get("healthy")}
    if alarm is None and nonfinite is None and restarted is None:
        return None
    return {"run_id": rec.run_id, "recipe": rec.recipe, "seed": rec.seed, "status": rec.status,
            "degenerate_alarm": alarm, "nonfinite_loss_step": nonfinite, "restarted": restarted}


def provenance(records: Iterable[RunRecord]) -> dict[str, Any]:
    """Where and with what ``records`` were trained: the devices (runs per device), the first and last UTC date
    of the runs whose record has an ``environment``, the versions of :data:`~hf_stable_ft.records.ENVIRONMENT_PACKAGES`
    (runs per version) and how many records have no ``environment`` (written before records kept one)."""
    records = list(records)
    envs = [r.environment for r in records if isinstance(r.environment, Mapping)]
    dates = sorted(str(e["finished_at"])[:10] for e in envs if e.get("finished_at"))
    versions = {}
    for package in ENVIRONMENT_PACKAGES:
        counts = Counter(str(e[package]) for e in envs if e.get(package) is not None)
        if counts:
            versions[package] = dict(sorted(counts.items()))
    return {"n_runs": len(records), "devices": dict(Counter(r.device or "not recorded" for r in records)),
            "first": dates[0] if dates else None, "last": dates[-1] if dates else None, "versions": versions,
            "not_recorded": len(records) - len(envs)}


def provenance_line(p: Mapping[str, Any] | None) -> str:
    """:func:`provenance` in one line: devices, UTC dates, versions and what was not recorded ("" for None)."""
    if not p:
        return ""

    def runs(n):
        return f"{n} run{'s' if n != 1 else ''}"

    devices = p.get("devices") or {}
    parts = ["; ".join(f"{d} ({runs(n)})" if len(devices) > 1 else d for d, n in devices.items())]
    if p.get("first"):
        parts.append(p["first"] if p["first"] == p["last"] else f"{p['first']} to {p['last']}")
    for package, counts in (p.get("versions") or {}).items():
        parts.append(f"{package} " + (", ".join(f"{v} ({runs(n)})" for v, n in counts.items()) if len(counts) > 1
                                      else next(iter(counts))))
    if p.get("not_recorded"):
        parts.append(f"date and versions not recorded for {p['not_recorded']} of {runs(p['n_runs'])} (records "
                     "written before they kept them)")
    return " · ".join(x for x in parts if x)


#: Settings the "differ" table leaves out: per-run values (a run's restart record, ``RESTARTS_KEY``, holds its own
#: seeds and attempts), and the nested records whose content the flat fields already show (``hf_stable_ft``: the
#: settings record with each field's source; ``recipe_fields``: the recipe's explicit fields).
_NOT_COMPARED = {"seed", "output_dir", "run_name", "logging_dir", "data_seed", "hf_stable_ft", "recipe_fields",
                 RESTARTS_KEY}

#: How the "differ" table shows a setting a recipe's records do not hold (a stock ``TrainingArguments`` run has no
#: hf_stable_ft fields; records written before a field existed lack it).
NOT_RECORDED = "not recorded"


def _settings_within_recipe(records, recipes) -> dict:
    """``{recipe: {setting: [{"value", "seeds"}]}}``: the settings recorded in *every* run of a recipe that do not
    have one value across them, each value with the seeds trained with it (in order of first seed). A setting some
    runs lack (written before it existed) is not a change the records show; ``logging_*`` fields change only what
    is logged, and :data:`_NOT_COMPARED` fields differ by design."""
    out = {}
    for name in recipes:
        runs = [r for r in records if r.recipe == name and isinstance(r.settings, dict)]
        if len(runs) < 2:
            continue
        shared = set.intersection(*(set(r.settings) for r in runs)) - _NOT_COMPARED
        changed = {}
        for key in sorted(k for k in shared if not k.startswith("logging_")):
            by_value: dict[str, tuple] = {}
            for run in sorted(runs, key=lambda r: (r.seed is None, r.seed)):
                text = json.dumps(run.settings[key], sort_keys=True, default=str)
                by_value.setdefault(text, (run.settings[key], []))[1].append(run.seed)
            if len(by_value) > 1:
                changed[key] = [{"value": value, "seeds": seeds} for value, seeds in by_value.values()]
        if changed:
            out[name] = changed
    return out


def _differing_settings(settings: dict) -> dict:
    """{key: {recipe: value}} for settings recorded with more than one value across the recipes' first runs.

    A recipe whose records lack the key (a stock ``Trainer`` run, or records written before the field existed)
    shows :data:`NOT_RECORDED`; it is not counted as a value of its own, since the record does not say it."""
    have = {k: v for k, v in settings.items() if v}
    if len(have) < 2:
        return {}
    keys = list(dict.fromkeys(k for s in have.values() for k in s))
    out = {}
    for key in keys:
        if key in _NOT_COMPARED:
            continue
        recorded = {name: s[key] for name, s in have.items() if key in s}
        if len({json.dumps(v, sort_keys=True, default=str) for v in recorded.values()}) > 1:
            out[key] = {name: recorded.get(name, NOT_RECORDED) for name in have}
    return out
