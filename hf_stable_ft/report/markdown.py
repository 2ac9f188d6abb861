"""The report's markdown (``report.md``) and its plain-language verdict, from a :class:`SweepSummary`."""

from __future__ import annotations

import json
from collections.abc import Mapping

from .figures import FIGURE_FILES
from .summary import (
    NOT_RECORDED,
    TABLE_TRIALS,
    SweepSummary,
    _digits,
    _fmt,
    _num,
    provenance_line,
)

__all__ = ["verdict", "render_markdown", "SMALL_N"]

SMALL_N = 10  # below this many seeds per recipe, p-values are called weak evidence


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


def _k_range(lo, hi, max_runs) -> str:
    """A bootstrap interval of a runs-to-match number in words: "2–7", "3", "2 to over 100", "over 100"."""
    if lo is None:
        return f"over {max_runs}"
    if hi is None:
        return f"{lo} to over {max_runs}"
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


_BELOW = "whether beyond the seed noise: the test of the means below"


def _match_clause(name: str, base: str, m: Mapping, scale: float, digits: int, base_mean=None,
                  means_test: str = _BELOW) -> str:
    """"one zhang2021 run ≈ 4 devlin2019 runs (95% bootstrap interval: 2–9)" and its 'already' / 'never'
    variants. ``base_mean`` (given where the test of the means finds no difference): one baseline run's mean
    score; where the best-on-validation of many baseline runs levels off at or below it, a 'never' says only
    that the recipe's mean is higher, and the clause says so, naming ``means_test`` for whether that is beyond
    the seed noise."""
    k, max_runs = m.get("k"), m.get("max_runs")
    lo, hi = (list(m.get("interval") or []) + [None, None])[:2]
    ci = f" ({m.get('confidence', 95):g}% bootstrap interval: {_k_range(lo, hi, max_runs)})"
    if k is None:
        p_never = 1.0 - float(m.get("p_within") or 0.0)
        target, asymptote, curve = m.get("target"), m.get("asymptote"), m.get("curve") or []
        if _num(asymptote) is not None and _num(target) is not None and asymptote >= target and curve:
            # the best-on-validation run is better than the target, but drawn too rarely for max_runs to get there
            limit = (f"the best-on-validation of many {base} runs approaches {_fmt(asymptote, scale, digits)} but "
                     f"is still at {_fmt(curve[-1], scale, digits)} after {max_runs} runs")
        else:
            limit = f"the best-on-validation of many {base} runs levels off at {_fmt(asymptote, scale, digits)}"
        text = (f"no number of {base} runs up to {max_runs} reaches one {name} run: one {name} run averages "
                f"{_fmt(target, scale, digits)}, {limit} (never within {max_runs} runs in {p_never:.0%} of "
                "bootstrap resamples over seeds)")
        if _num(base_mean) is not None and _num(asymptote) is not None and asymptote <= base_mean:
            text += (f"; selecting on validation does not raise {base}'s test score here "
                     f"({_fmt(base_mean, scale, digits)} for one run on average, {_fmt(asymptote, scale, digits)} "
                     f"for the best-on-validation of many), so this says only that {name}'s mean is above "
                     f"{base}'s ({means_test})")
        return text
    if k == 1:
        return f"one {base} run already matches one {name} run on average{ci}"
    return f"one {name} run ≈ {k} {base} runs{ci}"


def _mean_differs(versus: Mapping | None) -> bool:
    """Whether Welch's test calls the means different at 5% (on the Holm-adjusted p where there is one)."""
    versus = versus or {}
    p = _num(versus.get("t_p_holm"))
    p = _num(versus.get("t_p")) if p is None else p
    return p is not None and p < 0.05


def _undefined_reason(s: Mapping, bs: Mapping) -> str:
    if s["n"] < 2 or bs["n"] < 2:
        return "it needs at least 2 runs of each recipe"
    if _num(s["std"]) == 0 and _num(bs["std"]) == 0:
        return "neither recipe's score varies from run to run"
    return "the scores have no spread to test"


def _test_phrase(label: str, p, s: Mapping, bs: Mapping, p_holm=None, family: int = 1) -> str:
    """"Welch p=0.003, significant at 5%" or, when the test has no p-value, why, in words. With ``family`` > 1
    tests of this kind against the baseline, significance is judged on the Holm-adjusted ``p_holm``:
    "Welch p=0.040, Holm-adjusted over 3 comparisons p=0.121, not significant"."""
    if _num(p) is None:
        return f"{label}'s test is undefined: {_undefined_reason(s, bs)}"
    if family > 1 and _num(p_holm) is not None:
        return f"{label} p{_p_eq(p)}, Holm-adjusted over {family} comparisons p{_p_eq(p_holm)}{_sig(p_holm)}"
    return f"{label} p{_p_eq(p)}{_sig(p)}"


def _holm_families(summary: SweepSummary) -> dict[str, int] | None:
    """The number of defined tests against the baseline per p-value key (``t_p``, ``levene_p`` and, where the
    summary has it, ``degenerate_p``): the family each Holm adjustment ran over. None for a summary.json written
    before the adjustment existed."""
    rows = [e.vs_baseline for n, e in summary.recipes.items() if n != summary.baseline_recipe and e.vs_baseline]
    if any(_num(r.get(key)) is not None and key + "_holm" not in r for r in rows for key in ("t_p", "levene_p")):
        return None
    keys = ("t_p", "levene_p") + (("degenerate_p",) if any("degenerate_p" in r for r in rows) else ())
    return {key: sum(_num(r.get(key)) is not None for r in rows) for key in keys}


def _p_cell(cmp_: Mapping, key: str, families: dict[str, int] | None) -> str:
    """A table's p-value: "0.040", or "0.040 (0.121)" with the Holm-adjusted value when there are several."""
    text = _fmt_p(cmp_.get(key))
    if families and families.get(key, 0) > 1 and _num(cmp_.get(key + "_holm")) is not None:
        text += f" ({_fmt_p(cmp_.get(key + '_holm'))})"
    return text


def _verdict_and_caveats(summary: SweepSummary) -> list[str]:
    """[the verdict's text (paragraphs separated by blank lines), its caveats]."""
    scale, digits = summary.display_scale, _digits(summary)
    base = summary.baseline_recipe
    recipes = summary.recipes
    b = recipes[base]
    ns = sorted({e.n_runs for e in recipes.values() if e.n_runs})
    split = summary.split
    metric = summary.metric
    seeds = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    head = [f"{len(recipes)} recipe(s), {seeds} seeds each, {metric} on the {split} split"
            + (f" (×{scale:g})" if scale != 1 else "") + f"; baseline: {base}."]
    scored = {n: e.summary for n, e in recipes.items() if e.summary is not None}
    if scored:
        head.append("Degenerate runs (best validation score not above the majority class — the model learned "
                    "nothing beyond predicting one class): "
                    + ", ".join(f"{n} {s['n_degenerate']}/{s['n']}" for n, s in scored.items()) + ".")
    if b.summary is None:
        return [" ".join(head), f"The baseline {base} has no counted runs, so nothing is compared against it."]

    # the plain finding: how many baseline runs one run of each recipe is worth
    settings = summary.runs_to_match_settings or {}
    baselines = [n for n in settings.get("baselines", []) if n in recipes]
    better, no_better = [], []
    for name, e in recipes.items():
        found = e.runs_to_match or {}
        if name == base or base not in found:
            continue
        if found[base].get("k") == 1:
            no_better.append(name)
            continue
        clauses = []
        for b_name in (b for b in baselines if b in found and b != name):
            if b_name == base:  # the Holm-adjusted test of the means is in the statistics below
                differs, means_test = _mean_differs(e.vs_baseline), _BELOW
            else:  # welch_p is absent from a summary.json written before it existed: no qualification then
                p = _num(found[b_name].get("welch_p"))
                differs, means_test = p is None or p < 0.05, f"Welch p{_p_eq(p)} against {b_name}, not significant"
            b_mean = None if differs else (recipes[b_name].summary or {}).get("mean")
            clauses.append(_match_clause(name, b_name, found[b_name], scale, digits, b_mean, means_test))
        text = "; ".join(clauses)
        better.append(text[0].upper() + text[1:] + ".")
    head += better
    if no_better:
        head.append(f"One {base} run already matches one run of {', '.join(no_better)} on average.")
    if better or no_better:
        picked = ("best-on-validation run is expected to score at least one recipe run's mean test score (Zhang et "
                  "al. 2021's selection)" if split == "test" else
                  "expected best validation score (Dodge et al. 2019; no test split) reaches one recipe run's mean")
        head.append(f"(≈ N runs: the fewest baseline runs whose {picked}; intervals: bootstrap over the seeds of both "
                    "recipes.)")

    bs = b.summary
    families = _holm_families(summary)
    size = families or {"t_p": 1, "levene_p": 1}
    stats_lines = []
    n_tests = 0
    for name, e in recipes.items():
        if name == base or e.summary is None:
            continue
        s, cmp_ = e.summary, e.vs_baseline or {}
        n_tests += 1
        if s["n"] < 2 or bs["n"] < 2:
            stats_lines.append(f"**{name}** vs {base}: mean {_fmt(s['mean'], scale, digits)} vs "
                               f"{_fmt(bs['mean'], scale, digits)} (no Welch or Levene test: they need at least 2 "
                               "runs of each recipe).")
            continue
        stats_lines.append(
            f"**{name}** vs {base}: mean {_fmt(s['mean'], scale, digits)} vs {_fmt(bs['mean'], scale, digits)} "
            f"({_test_phrase('Welch', cmp_.get('t_p'), s, bs, cmp_.get('t_p_holm'), size['t_p'])}); std "
            f"{_fmt(s['std'], scale, digits)} vs {_fmt(bs['std'], scale, digits)} "
            f"({_test_phrase('Levene', cmp_.get('levene_p'), s, bs, cmp_.get('levene_p_holm'), size['levene_p'])})"
            + (f"; degenerate {s['n_degenerate']}/{s['n']} vs {bs['n_degenerate']}/{bs['n']} ("
               + _test_phrase('Fisher', cmp_['degenerate_p'], s, bs, cmp_.get('degenerate_p_holm'),
                              size.get('degenerate_p', 1)) + ")" if 'degenerate_p' in cmp_ else "") + ".")
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
        stats_lines.append(line)
    caveats = []
    if ns and ns[0] < SMALL_N:
        caveats.append(f"With {seeds} seeds per recipe these numbers are weak evidence: small samples miss real "
                       "differences and make chance ones look large (the papers used 20–25 seeds); numbers of "
                       "baseline runs above the seeds run extrapolate from them.")
    if n_tests > 1 and families is None:
        caveats.append(f"The {n_tests} comparisons are not corrected for multiple testing.")
    elif n_tests > 1:
        caveats.append(f"With {n_tests} recipes compared with {base}, significance is judged on Holm-adjusted "
                       "p-values (Holm 1979; each test over its own comparisons), which keep the chance of any "
                       "false \"significant\" among them at 5%.")
    caveats.append("A p-value above 0.05 means no evidence of a difference, not evidence of equality.")
    paragraphs = [" ".join(head)] + ([" ".join(stats_lines)] if stats_lines else [])
    return ["\n\n".join(paragraphs), " ".join(caveats)]


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
    restarted = entry.get("restarted")
    if restarted:  # restart_degenerate_runs: never shown as a first-try success
        seeds = ", ".join(str(s) for s in restarted.get("failed_seeds") or []) or "?"
        parts.append(f"restarted after {restarted['failed_attempts']} degenerate attempt(s) (seed(s) {seeds}); the "
                     f"model scored is seed {restarted.get('returned_seed', '?')}'s"
                     + ("" if restarted.get("healthy") else ", still degenerate"))
    return "; ".join(parts)


def _sig(p) -> str:
    p = _num(p)
    if p is None:
        return ", undefined"
    return ", significant at 5%" if p < 0.05 else ", not significant"


def verdict(summary: SweepSummary | Mapping) -> str:
    """The report's ``## Verdict`` section (markdown). First the plain finding: how many runs of each recipe were
    degenerate and how many baseline runs one run of each recipe is worth ("one zhang2021 run ≈ 4 devlin2019
    runs", or that no number of them up to the limit reaches it; :func:`hf_stable_ft.stats.runs_to_match`); then
    a paragraph of statistics (mean and std against the baseline with their p-values, saying so in words when a
    test is undefined, and the leaders); its caveats in italics; and the summary's notes as quotes. ``summary`` is a :class:`SweepSummary` or its dict view (``summary.json``)."""
    if not isinstance(summary, SweepSummary):
        summary = SweepSummary.from_dict(summary)
    text, caveats = _verdict_and_caveats(summary)
    lines = ["## Verdict", "", text, "", f"*{caveats}*"]
    for note in summary.notes:
        lines += ["", f"> {note}"]
    for name, changed in (summary.settings_within_recipe or {}).items():
        parts = "; ".join(f"{key} " + ", ".join(f"{entry['value']} (seeds {_seed_ranges(entry['seeds'])})"
                                                for entry in entries) for key, entries in changed.items())
        lines += ["", f"> **{name}'s runs were not all trained alike: {parts}. They are pooled in every number of "
                      f"this report.**"]
    return "\n".join(lines)


def _seed_ranges(seeds: list) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0–2, 5, 7–8"``."""
    known = sorted(s for s in seeds if isinstance(s, int))
    spans: list[list[int]] = []
    for seed in known:
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    text = [f"{a}–{b}" if b > a else f"{a}" for a, b in spans]
    return ", ".join(text + ["unknown"] * (len(seeds) > len(known)))


def render_markdown(summary: SweepSummary, figures: dict, skipped: dict) -> str:
    """``report.md``: the verdict, the statistics tables, the figures drawn (``{key: file}``) and those skipped
    (``{key: why}``), aborted / alarmed / failed runs, the settings that differ and every run."""
    scale, digits = summary.display_scale, _digits(summary)
    split, metric = summary.split, summary.metric
    unit = f" ×{scale:g}" if scale != 1 else ""
    base = summary.baseline_recipe
    L = [f"# Stability report{': ' + summary.task if summary.task else ''}", ""]
    L += verdict(summary).split("\n") + [""]

    L += [f"## Results ({metric}, {split} split{unit})", ""]
    families = _holm_families(summary)
    holm = " (Holm)" if families and max(families.values()) > 1 else ""
    fisher = bool(families and "degenerate_p" in families)
    what = ("test score of the checkpoint that was best on validation" if split == "test"
            else "best validation score")
    L += [f"Each run is represented by its {what}; aborted runs count as degenerate with their last "
          "evaluated score. Std is the sample std over seeds (ddof=1). "
          f"E[max val] @n: Dodge et al. (2019) expected best validation score after n trials"
          + ("; E[test] @k: Zhang et al. (2021) bootstrap expected test score of the best-on-validation run "
             f"among k trials ({summary.n_bootstrap} resamples, seed {summary.bootstrap_seed})"
             if split == "test" else "")
          + f". p-values vs **{base}**: Levene (Brown–Forsythe, median-centred) for the spread, Welch's t-test "
          "for the mean" + (", Fisher's exact test for the share of degenerate runs" if fisher else "") + (", each test's own p-value with the Holm-adjusted one over the recipes in brackets"
                            if holm else "")
          + ". Values for n or k above the number of seeds extrapolate from the observed runs.", ""]
    ks = "/".join(str(k) for k in TABLE_TRIALS)
    head = ["recipe", "n", "mean ± std", "median", "max", "min", "degenerate", f"E[max val] @{ks}"]
    if split == "test":
        head.append(f"E[test] @{ks}")
    head += [f"Levene p{holm}", f"Welch p{holm}"] + ([f"degenerate: Fisher p{holm}"] if fisher else [])
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in summary.recipes.items():
        s = e.summary
        label = f"**{_md(name)}** (baseline)" if name == base else _md(name)
        if s is None:
            L.append("| " + " | ".join([label, "0"] + ["–"] * (len(head) - 2)) + " |")
            continue
        cells = [label, str(s["n"]), f"{_fmt(s['mean'], scale, digits)} ± {_fmt(s['std'], scale, digits)}",
                 _fmt(s["median"], scale, digits), _fmt(s["max"], scale, digits), _fmt(s["min"], scale, digits),
                 f"{s['n_degenerate']}/{s['n']}" + (f" ({e.n_aborted} aborted)" if e.n_aborted else ""),
                 " / ".join(_fmt(v, scale, digits) for v in e.expected_max_validation["mean"])]
        if split == "test":
            cells.append(" / ".join(_fmt(v, scale, digits) for v in e.expected_test["mean"]))
        cmp_ = e.vs_baseline or {}
        cells += ["–" if name == base else _p_cell(cmp_, "levene_p", families),
                  "–" if name == base else _p_cell(cmp_, "t_p", families)]
        if fisher:
            cells.append("–" if name == base else _p_cell(cmp_, "degenerate_p", families))
        L.append("| " + " | ".join(cells) + " |")
    L.append("")

    if split == "test":
        L += [f"Validation split (best validation score per run{unit}):", "",
              "| recipe | n | mean ± std | median | max | min |", "|---|---|---|---|---|---|"]
        for name, e in summary.recipes.items():
            v = e.validation_summary
            if v is None:
                continue
            L.append(f"| {_md(name)} | {v['n']} | {_fmt(v['mean'], scale, digits)} ± {_fmt(v['std'], scale, digits)}"
                     f" | {_fmt(v['median'], scale, digits)} | {_fmt(v['max'], scale, digits)}"
                     f" | {_fmt(v['min'], scale, digits)} |")
        L.append("")

    mb = summary.majority_baseline
    L += [f"Majority-class baseline: validation {_fmt(mb['validation'], scale, digits)}, "
          f"test {_fmt(mb['test'], scale, digits)}. A run is degenerate when its best validation score is not above "
          "the validation baseline (Mosbach et al. 2021's threshold, on the checkpoint Zhang et al. 2021's protocol "
          "keeps), or when it was aborted.", ""]

    prov = summary.provenance
    where = _md(provenance_line(prov))
    if prov:
        L += ["## Provenance", "", f"Where and with what the runs were trained: {where}.", ""]
        sweeps = prov.get("sweeps") or []
        if sweeps:
            L += ["Sweeps run into this directory (`sweep.json`), oldest first:", ""]
            L += [f"- {_md(s.get('started') or 'start not recorded')}: "
                  + (f"`{s['command']}`" if s.get("command") else "command not recorded (an older sweep.json)")
                  for s in sweeps]
            L.append("")

    if figures or skipped:
        L += ["## Figures", ""]
        if prov:
            L += [f"*Runs of every figure: {where} (the same line is under each PNG).*", ""]
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

    aborted = [(name, r) for name, e in summary.recipes.items() for r in e.runs if r["status"] == "aborted"]
    if aborted:
        L += ["## Aborted runs (counted as degenerate)", "", "| run | score | reason |", "|---|---|---|"]
        for _name, r in aborted:
            L.append(f"| {_md(r['run_id'])} | {_fmt(r[split], scale, digits)} ({_md(r['score_source'])}) | "
                     f"{_md(r['abort_reason'] or '–')} |")
        L.append("")
    if summary.alarms:
        L += ["## Alarms", "", "Every run that raised the degenerate-run alarm, logged a non-finite training loss or was restarted "
              "(restart_degenerate_runs), "
              "whatever its status (a finished run keeps its score).", "",
              "| run | status | alarm |", "|---|---|---|"]
        for entry in summary.alarms:
            L.append(f"| {_md(entry['run_id'])} | {_md(entry['status'])} | {_md(_alarm_text(entry))} |")
        L.append("")
    if summary.not_counted:
        L += ["## Failed runs (not counted)", "", "| run | status | error |", "|---|---|---|"]
        for r in summary.not_counted:
            err = (r["error"] or "–").strip().splitlines()
            err = err[-1] if err else "–"  # the last line of a traceback names the exception
            L.append(f"| {_md(r['run_id'])} | {_md(r['status'])} | {_md(err[:300])} |")
        L.append("")

    diff = summary.settings_that_differ
    if diff:
        names = list(summary.recipes)
        L += ["## Settings that differ between recipes", "", "| setting | " + " | ".join(map(_md, names)) + " |",
              "|" + "---|" * (len(names) + 1)]
        missing = False
        for key, vals in diff.items():
            cells = []
            for n in names:
                value = vals.get(n, NOT_RECORDED)
                missing |= value == NOT_RECORDED
                cells.append("–" if value == NOT_RECORDED else _md(json.dumps(value, default=str)))
            L.append(f"| {_md(key)} | " + " | ".join(cells) + " |")
        L.append("")
        if missing:
            L += [("*–: not in that recipe's records: a stock `Trainer` run's `TrainingArguments` have no "
                   "hf_stable_ft fields, and records written before a field existed lack it. A setting is listed when "
                   "its recorded values differ.*"), ""]

    L += ["## All runs", "", f"| run | status | validation{unit} | test{unit} | degenerate | wall time (s) |",
          "|---|---|---|---|---|---|"]
    for e in summary.recipes.values():
        for r in e.runs:
            wt = r["wall_time_s"]
            L.append(f"| {_md(r['run_id'])} | {r['status']} | {_fmt(r['validation'], scale, digits)} | "
                     f"{_fmt(r['test'], scale, digits)} | {'yes' if r['degenerate'] else 'no'} | "
                     f"{'–' if wt is None else f'{wt:.0f}'} |")
    L += ["", "Machine-readable statistics: [summary.json](summary.json).", ""]
    return "\n".join(L)
