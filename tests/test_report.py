"""The sweep report: loading runs.jsonl, statistics, markdown, figures."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from hf_stable_ft.report import FIGURE_FILES, load_runs, summarize_runs, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(recipe, seed, *, score, degenerate=False, status="finished", with_test=True, diagnostics=True,
             n_layers=4, steps=10, rng=None):
    """A synthetic run record in the sweep runner's schema (CoLA-like, MCC, majority baseline 0)."""
    rng = rng or np.random.default_rng(seed)
    n_steps = steps if status == "finished" else 3
    history = []
    for i in range(1, n_steps + 1):
        v = score * i / n_steps + rng.normal(0, 0.01)
        history.append({"step": 10 * i, "epoch": i / 3, "validation": float(v),
                        "test": float(v + rng.normal(0, 0.02)) if with_test else None})
    best = max(history, key=lambda e: e["validation"])
    loss0 = 0.62
    train_loss = [[10 * i, float((loss0 if degenerate else loss0 * (1 - 0.8 * i / steps)) + rng.normal(0, 0.02))]
                  for i in range(1, n_steps + 1)]
    groups = ["embeddings"] + [f"layer.{i}" for i in range(n_layers)] + ["pooler", "head"]
    diag = {}
    if diagnostics:
        grad, l2 = {}, {}
        for depth, g in enumerate(groups):
            scale = 10 ** (-3 + depth / len(groups) * 3) if degenerate else 1.0
            grad[g] = [[10 * i, float(scale * np.exp(rng.normal(0, 0.2)))] for i in range(1, n_steps + 1)]
            l2[g] = [[10 * i, float(0.1 * i * (1 + depth))] for i in range(1, n_steps + 1)]
        diag = {"grad_norm": grad, "l2_from_init": l2}
    return {
        "run_id": f"{recipe}/seed={seed}", "recipe": recipe, "seed": seed, "task": "cola", "status": status,
        "primary_metric": "matthews_correlation",
        "majority_baseline": {"validation": 0.0, "test": 0.0 if with_test else None},
        "settings": {"learning_rate": 2e-5, "num_train_epochs": 3 if recipe == "devlin2019" else 20,
                     "bias_correction": recipe != "devlin2019", "seed": seed},
        "eval_history": history,
        "best_validation": best["validation"], "test_at_best_validation": best["test"],
        "final_validation": history[-1]["validation"], "final_test": history[-1]["test"],
        "train_loss": train_loss, "diagnostics": diag, "degenerate": degenerate,
        "abort_reason": "loss not below constant-prediction loss at step 30" if status == "aborted" else None,
        "wall_time_s": 12.5, "device": "cpu", "error": None,
    }


def make_sweep(tmp_path, *, with_test=True, corrupt=True, diagnostics=True, n_seeds=4, n_layers=4):
    """3 recipes × n seeds: devlin2019 has one degenerate and one aborted run; one failed run; a corrupt line."""
    lines = []
    for seed in range(n_seeds):
        if seed == 1:
            lines.append(make_run("devlin2019", seed, score=0.0, degenerate=True, with_test=with_test,
                                  diagnostics=diagnostics, n_layers=n_layers))
        elif seed == 2:
            lines.append(make_run("devlin2019", seed, score=0.05, degenerate=True, status="aborted",
                                  with_test=with_test, diagnostics=diagnostics, n_layers=n_layers))
        else:
            lines.append(make_run("devlin2019", seed, score=0.45 + 0.05 * seed, with_test=with_test,
                                  diagnostics=diagnostics, n_layers=n_layers))
    for seed in range(n_seeds):
        lines.append(make_run("mosbach2021", seed, score=0.60 + 0.01 * seed, with_test=with_test,
                              diagnostics=diagnostics, n_layers=n_layers))
    for seed in range(n_seeds):
        lines.append(make_run("zhang2021_reinit", seed, score=0.58 + 0.015 * seed, with_test=with_test,
                              diagnostics=diagnostics, n_layers=n_layers))
    text = [json.dumps(r) for r in lines]
    text.insert(5, json.dumps({"run_id": "zhang2021_reinit/seed=99", "recipe": "zhang2021_reinit", "seed": 99,
                               "status": "failed", "error": "Traceback ...\nRuntimeError: CUDA out of memory"}))
    if corrupt:
        text.insert(7, '{"run_id": "mosbach2021/seed=7", "recipe": ')  # truncated write -> line 8
    (tmp_path / "runs.jsonl").write_text("\n".join(text) + "\n")
    return tmp_path


# ---------------------------------------------------------------- load_runs


def test_corrupt_line_raises_with_line_number(tmp_path):
    make_sweep(tmp_path)
    with pytest.raises(ValueError, match=r"runs.jsonl, line 8"):
        load_runs(tmp_path)
    with pytest.raises(ValueError, match="line 8"):
        write_report(tmp_path, figures=False)


def test_skip_corrupt_warns_and_skips(tmp_path):
    make_sweep(tmp_path)
    with pytest.warns(UserWarning, match=r"lines \[8\]"):
        runs = load_runs(tmp_path / "runs.jsonl", skip_corrupt=True)
    assert len(runs) == 13  # 12 runs + 1 failed


def test_records_need_a_recipe(tmp_path):
    (tmp_path / "runs.jsonl").write_text('{"run_id": "a/seed=0", "recipe": "a", "status": "failed"}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 3"):
        load_runs(tmp_path)
    (tmp_path / "runs.jsonl").write_text('{"seed": 1}\n')
    with pytest.raises(ValueError, match="line 1.*recipe"):
        load_runs(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_runs(tmp_path / "missing")


# ---------------------------------------------------------------- the full report


def test_full_report(tmp_path):
    make_sweep(tmp_path)
    with pytest.warns(UserWarning, match="corrupt"):
        path = write_report(tmp_path, skip_corrupt=True)
    assert path == tmp_path / "report.md"
    md = path.read_text()
    for fname in FIGURE_FILES.values():
        png = tmp_path / fname
        assert png.stat().st_size > 1000, fname
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"]({fname})" in md  # relative link
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["split"] == "test" and summary["baseline_recipe"] == "devlin2019"
    assert summary["display_scale"] == 100
    dev = summary["recipes"]["devlin2019"]
    assert dev["n_runs"] == 4 and dev["n_aborted"] == 1
    assert dev["summary"]["n_degenerate"] == 2  # the aborted run counts as degenerate, not dropped
    assert summary["recipes"]["zhang2021_reinit"]["n_failed"] == 1
    assert [r["run_id"] for r in summary["not_counted"]] == ["zhang2021_reinit/seed=99"]
    mos = summary["recipes"]["mosbach2021"]
    assert mos["vs_baseline"]["levene_p"] is not None and mos["vs_baseline"]["t_p"] is not None
    assert mos["expected_test"]["n_trials"] == [1, 5, 10]
    assert summary["recipes"]["devlin2019"]["vs_baseline"] is None
    assert summary["settings_that_differ"]["num_train_epochs"]["mosbach2021"] == 20
    assert "seed" not in summary["settings_that_differ"]
    # the aborted run's score is its last evaluation
    aborted = [r for r in dev["runs"] if r["status"] == "aborted"][0]
    assert aborted["score_source"] == "last evaluation"
    # markdown: table, verdict with counts and caveat, failed-runs section with the error's last line
    assert "| **devlin2019** (baseline) | 4 |" in md
    assert "devlin2019 2/4, mosbach2021 0/4, zhang2021_reinit 0/4." in md
    assert "weak evidence" in md and "4 seeds" in md
    assert "RuntimeError: CUDA out of memory" in md
    assert "## Aborted runs" in md and "constant-prediction loss" in md
    assert "E[test] @1/5/10" in md


def test_summary_statistics_match_stats_module(tmp_path):
    from scipy import stats as sps

    make_sweep(tmp_path, corrupt=False)
    summary = summarize_runs(load_runs(tmp_path))
    dev = [r["test"] for r in summary["recipes"]["devlin2019"]["runs"]]
    mos = [r["test"] for r in summary["recipes"]["mosbach2021"]["runs"]]
    s = summary["recipes"]["mosbach2021"]["summary"]
    assert s["mean"] == pytest.approx(np.mean(mos)) and s["std"] == pytest.approx(np.std(mos, ddof=1))
    assert summary["recipes"]["mosbach2021"]["vs_baseline"]["levene_p"] == pytest.approx(sps.levene(mos, dev).pvalue)
    # deterministic
    assert summarize_runs(load_runs(tmp_path)) == summary


def test_no_test_split_reports_validation(tmp_path):
    make_sweep(tmp_path, with_test=False, corrupt=False, diagnostics=False)
    path = write_report(tmp_path, baseline_recipe="mosbach2021")
    md = path.read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["split"] == "validation" and summary["baseline_recipe"] == "mosbach2021"
    assert "validation split" in md and "No test split" in md
    assert summary["recipes"]["devlin2019"]["expected_test"] is None
    assert "E[test]" not in md
    for key in ("boxplot", "train_loss", "expected_performance"):
        assert (tmp_path / FIGURE_FILES[key]).read_bytes()[:8] == PNG_MAGIC
    # diagnostics were off: those figures are skipped and the report says why
    assert not (tmp_path / FIGURE_FILES["grad_norms"]).exists()
    assert not (tmp_path / FIGURE_FILES["l2_from_init"]).exists()
    assert "diagnostics were off" in md


def test_baseline_errors_and_no_figures(tmp_path):
    make_sweep(tmp_path, corrupt=False)
    with pytest.raises(ValueError, match="not in the sweep"):
        write_report(tmp_path, baseline_recipe="nope")
    write_report(tmp_path, figures=False)
    assert not any((tmp_path / f).exists() for f in FIGURE_FILES.values())
    assert "## Figures" not in (tmp_path / "report.md").read_text()


def test_default_baseline_is_first_recipe_without_devlin(tmp_path):
    lines = [make_run("b_recipe", s, score=0.5 + 0.01 * s, diagnostics=False) for s in range(3)]
    lines += [make_run("a_recipe", s, score=0.6 + 0.02 * s, diagnostics=False) for s in range(3)]
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    summary = summarize_runs(load_runs(tmp_path))
    assert summary["baseline_recipe"] == "b_recipe"
    assert list(summary["recipes"]) == ["b_recipe", "a_recipe"]


def test_duplicate_run_ids_keep_the_last(tmp_path):
    first = {**make_run("r", 0, score=0.5, diagnostics=False), "status": "failed", "error": "boom"}
    retry = make_run("r", 0, score=0.5, diagnostics=False)
    other = make_run("r", 1, score=0.6, diagnostics=False)
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in (first, other, retry)))
    with pytest.warns(UserWarning, match="repeat"):
        write_report(tmp_path, figures=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["recipes"]["r"]["n_runs"] == 2 and summary["not_counted"] == []


def test_aborted_without_evaluation_uses_majority_baseline_and_missing_flag(tmp_path):
    aborted = make_run("r", 0, score=0.5, status="aborted", diagnostics=False)
    aborted["eval_history"] = []
    aborted["majority_baseline"] = {"validation": 0.52, "test": 0.5}
    unflagged = make_run("r", 1, score=0.4, diagnostics=False)
    del unflagged["degenerate"]
    unflagged["majority_baseline"] = {"validation": 0.52, "test": 0.5}
    ok = make_run("r", 2, score=0.8, diagnostics=False)
    ok["majority_baseline"] = {"validation": 0.52, "test": 0.5}
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in (aborted, unflagged, ok)))
    summary = summarize_runs(load_runs(tmp_path))
    runs = {r["seed"]: r for r in summary["recipes"]["r"]["runs"]}
    assert runs[0]["validation"] == 0.52 and runs[0]["test"] == 0.5 and runs[0]["degenerate"]
    assert runs[1]["degenerate"]  # best validation (about 0.4) is not above the majority baseline 0.52
    assert not runs[2]["degenerate"]
    assert summary["recipes"]["r"]["summary"]["n_degenerate"] == 2
    assert math.isclose(summary["display_scale"], 100)


def test_single_seed_recipe_has_no_p_values(tmp_path):
    lines = [make_run("devlin2019", s, score=0.5 + 0.01 * s, diagnostics=False) for s in range(3)]
    lines.append(make_run("solo", 0, score=0.6, diagnostics=False))
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    md = write_report(tmp_path, figures=True).read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    solo = summary["recipes"]["solo"]
    assert solo["summary"]["std"] is None and solo["vs_baseline"]["levene_p"] is None
    assert "no Welch or Levene test: they need at least 2 runs of each recipe" in md


def test_recipe_colours_never_use_the_degenerate_red():
    from matplotlib.colors import to_rgba

    from hf_stable_ft.report.figures import _colors

    colours = _colors(12)
    assert to_rgba("tab:red") not in colours
    assert len(set(colours[:9])) == 9


def test_verdict_does_not_call_an_all_degenerate_recipe_the_most_stable(tmp_path):
    runs = [make_run("devlin2019", s, score=0.0, degenerate=True, diagnostics=False) for s in range(3)]
    runs += [make_run("debiased", s, score=0.3 + 0.05 * s, diagnostics=False) for s in range(3)]
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    md = write_report(tmp_path, figures=False).read_text()
    verdict = md[md.index("## Verdict"): md.index("## Results")]
    assert "lowest std: debiased" in verdict and "(devlin2019: all degenerate)" in verdict


def test_verdict_is_the_report_section_and_reads_from_summary_json(tmp_path):
    from hf_stable_ft.report import load_summary, summarize_sweep, verdict

    make_sweep(tmp_path, corrupt=False, with_test=False)
    md = write_report(tmp_path, figures=False).read_text()
    section = md[md.index("## Verdict"): md.index("\n## Results")].strip()
    assert verdict(load_summary(tmp_path)) == section  # what the demo prints
    assert "> No test split" in section and "devlin2019 2/4, mosbach2021 0/4" in section
    assert "Dodge et al. 2019; no test split" in section  # runs-to-match on validation scores, said so
    summary = summarize_sweep(load_runs(tmp_path))
    assert verdict(summary) == verdict(summary.as_dict()) == section
    assert summary.as_dict() == summarize_runs(load_runs(tmp_path))


def test_layer_groups_are_drawn_bottom_to_top_whatever_the_file_order():
    from hf_stable_ft.diagnostics import group_order

    sorted_keys = sorted(["embeddings"] + [f"layer.{i}" for i in range(12)] + ["pooler", "head"])
    assert sorted_keys[:3] == ["embeddings", "head", "layer.0"]  # what runs.jsonl's sorted keys hold
    assert group_order(sorted_keys) == ["embeddings"] + [f"layer.{i}" for i in range(12)] + ["pooler", "head"]
    assert group_order(["head", "all", "head"]) == ["all", "head"]


# ---------------------------------------------------------------- the headline: runs-to-match


def _pairs(summary, recipe, split="test"):
    runs = summary["recipes"][recipe]["runs"]
    return [r["validation"] for r in runs], [r[split] for r in runs]


def test_summary_runs_to_match_is_the_stats_function_on_the_counted_runs(tmp_path):
    from hf_stable_ft.stats import runs_to_match

    make_sweep(tmp_path, corrupt=False)
    summary = summarize_runs(load_runs(tmp_path), n_bootstrap=200, seed=3)
    assert summary["runs_to_match_settings"]["baselines"] == ["devlin2019"]  # no stock recipe in this sweep
    assert summary["runs_to_match_settings"]["max_runs"] == 100
    base_val, base_test = _pairs(summary, "devlin2019")
    for name in ("mosbach2021", "zhang2021_reinit"):
        got = summary["recipes"][name]["runs_to_match"]["devlin2019"]
        want = runs_to_match(base_val, base_test, _pairs(summary, name)[1], max_runs=100, n_bootstrap=200,
                             seed=3).as_dict()
        want.pop("curve")
        welch = stats.ttest_ind(_pairs(summary, name)[1], base_test, equal_var=False).pvalue  # the means' own test
        assert got.pop("welch_p") == pytest.approx(welch)
        assert got == want
    assert summary["recipes"]["devlin2019"]["runs_to_match"] is None  # not matched against itself


def _learner_runs(recipe, test_scores, val_offset=0.0):
    """Finished runs with the given test scores (validation = test + offset), no diagnostics."""
    runs = []
    for seed, t in enumerate(test_scores):
        r = make_run(recipe, seed, score=0.3, diagnostics=False)
        r["best_validation"], r["test_at_best_validation"] = t + val_offset, t
        r["degenerate"] = t + val_offset <= 0.0
        runs.append(r)
    return runs


def test_verdict_leads_with_degenerate_counts_and_runs_to_match(tmp_path):
    # devlin2019: the run best on validation (0.4) has test 0.40; E_k = 0.4 * (1 - 0.75**k): 0.1, 0.175, 0.231 ...
    # one "good" run averages 0.2 -> k = 3 (0.175 < 0.2 <= 0.23125); stock is always 0 -> never reaches it.
    runs = _learner_runs("devlin2019", [0.0, 0.0, 0.0, 0.4])
    runs[1]["best_validation"], runs[2]["best_validation"] = 0.01, 0.02  # distinct validation scores, order kept
    runs += _learner_runs("good", [0.1, 0.3, 0.2, 0.2])
    runs += _learner_runs("stock", [0.0, 0.0, 0.0, 0.0])
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    md = write_report(tmp_path, figures=False).read_text()
    section = md[md.index("## Verdict"): md.index("\n## Results")]
    lead, stats = section.split("\n\n")[1:3]
    assert "Degenerate runs" in lead and "devlin2019 3/4, good 0/4, stock 4/4" in lead
    assert "One good run ≈ 3 devlin2019 runs (95% bootstrap interval:" in lead
    assert "no number of stock runs up to 100 reaches one good run" in lead
    assert "One devlin2019 run already matches one run of stock on average." in lead
    assert "Welch" not in lead and "Welch p=" in stats  # the statistics come after the plain finding
    summary = json.loads((tmp_path / "summary.json").read_text())
    good = summary["recipes"]["good"]["runs_to_match"]
    assert good["devlin2019"]["k"] == 3 and good["devlin2019"]["target"] == pytest.approx(0.2)
    assert good["stock"]["k"] is None and good["stock"]["never"] and good["stock"]["asymptote"] == 0.0


def test_verdict_says_plainly_when_a_test_is_undefined(tmp_path):
    runs = _learner_runs("devlin2019", [0.0, 0.0, 0.0])
    runs += _learner_runs("stock", [0.0, 0.0, 0.0])
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    md = write_report(tmp_path, figures=False).read_text()
    section = md[md.index("## Verdict"): md.index("\n## Results")]
    assert "p=–" not in section and ", undefined)" not in section  # the run-on form the issue quoted
    assert ("mean 0.000 vs 0.000 (Welch's test is undefined: neither recipe's score varies from run to run)"
            in section)
    assert "Levene's test is undefined: neither recipe's score varies from run to run" in section
    assert "One devlin2019 run already matches one run of stock on average." in section


def test_verdict_judges_significance_on_holm_adjusted_p_values(tmp_path):
    from scipy import stats as sps

    base = [0.30, 0.32, 0.34, 0.36, 0.38]
    scores = {"close": [0.35, 0.37, 0.39, 0.41, 0.40],  # Welch p = 0.040 alone: "significant" before the fix
              "same": [0.31, 0.33, 0.35, 0.37, 0.36], "far": [0.60, 0.62, 0.63, 0.61, 0.64]}
    runs = _learner_runs("devlin2019", base)
    for name, s in scores.items():
        runs += _learner_runs(name, s)
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    md = write_report(tmp_path, figures=False).read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    raw = {n: sps.ttest_ind(s, base, equal_var=False).pvalue for n, s in scores.items()}
    assert raw["far"] < raw["close"] < 0.05 < raw["same"]
    # Holm over the 3 Welch tests, written out: far x3, close x2, same x1 (each at least the one before)
    holm = {"far": 3 * raw["far"], "close": 2 * raw["close"]}
    holm["same"] = max(holm["close"], raw["same"])
    for name in scores:
        assert summary["recipes"][name]["vs_baseline"]["t_p_holm"] == pytest.approx(holm[name])
    section = md[md.index("## Verdict"): md.index("\n## Results")]
    assert (f"(Welch p={raw['close']:.3f}, Holm-adjusted over 3 comparisons p={holm['close']:.3f}, not significant)"
            in section)
    assert "(Welch p<0.001, Holm-adjusted over 3 comparisons p<0.001, significant at 5%)" in section
    assert "not corrected for multiple testing" not in section
    assert "judged on Holm-adjusted p-values" in section
    table = md[md.index("## Results"):]
    assert f"| {raw['close']:.3f} ({holm['close']:.3f}) |" in table  # Welch p (Holm) column


def test_verdict_tests_the_degenerate_rate(tmp_path):
    # devlin2019 1/10 degenerate, "bad" 6/10: Fisher's exact p = 4440 / 77520 (written out in test_stats)
    runs = _learner_runs("devlin2019", [0.0] + [0.3 + 0.01 * i for i in range(9)])
    runs += _learner_runs("bad", [0.0] * 6 + [0.3, 0.31, 0.32, 0.33])
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    md = write_report(tmp_path, figures=False).read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["recipes"]["bad"]["vs_baseline"]["degenerate_p"] == pytest.approx(4440 / 77520)
    section = md[md.index("## Verdict"): md.index("\n## Results")]
    assert "degenerate 6/10 vs 1/10 (Fisher p=0.057, not significant)" in section
    assert "| 0.057 |" in md[md.index("## Results"):]  # the degenerate-rate column, one comparison: no Holm


def test_summary_json_without_runs_to_match_still_loads(tmp_path):
    from hf_stable_ft.report import SweepSummary, verdict

    make_sweep(tmp_path, corrupt=False)
    data = summarize_runs(load_runs(tmp_path), n_bootstrap=50)
    old = json.loads(json.dumps(data))
    del old["runs_to_match_settings"]
    for entry in old["recipes"].values():
        del entry["runs_to_match"]
        for key in ("t_p_holm", "levene_p_holm"):
            (entry["vs_baseline"] or {}).pop(key, None)
    text = verdict(SweepSummary.from_dict(old))  # a summary.json written before runs-to-match and Holm existed
    assert "Degenerate runs" in text and "≈ N runs" not in text and "Welch p=" in text
    assert "not corrected for multiple testing" in text and "Holm" not in text
    assert "Holm-adjusted over 2 comparisons" in verdict(SweepSummary.from_dict(data))
    new = verdict(SweepSummary.from_dict(data))
    assert "devlin2019 run" in new and "≈ N runs" in new
    assert set(data) >= set(old) and all(set(data["recipes"][n]) >= set(e) for n, e in old["recipes"].items())


def test_settings_table_shows_what_recipes_changed_not_record_versions(tmp_path):
    """Records without a field (a stock Trainer run, or written before the field existed) show "–", not a null
    that reads like a setting; the nested settings record and the recipe's field list are left out (their content
    is in the flat fields)."""
    runs = []
    for seed in range(2):
        old = make_run("devlin2019", seed, score=0.4 + 0.01 * seed)
        old["settings"] = {"learning_rate": 1e-4, "adam_bias_correction": False,
                           "recipe_fields": {"stability_recipe": "devlin2019"}}
        runs.append(old)
        for name, decay in (("ema0.99", 0.99), ("base", 0.999)):
            new = make_run(name, seed, score=0.5 + 0.01 * seed)
            new["settings"] = {"learning_rate": 1e-4, "adam_bias_correction": True, "ema_decay": decay,
                               "child_tuning_p": 0.3, "recipe_fields": {"ema_decay": decay},
                               "hf_stable_ft": {"settings": {"ema_decay": {"value": decay, "source": "explicit"}}}}
            runs.append(new)
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    write_report(tmp_path)
    differ = json.loads((tmp_path / "summary.json").read_text())["settings_that_differ"]
    assert set(differ) == {"adam_bias_correction", "ema_decay"}  # child_tuning_p: 0.3 wherever it is recorded
    assert differ["ema_decay"] == {"devlin2019": "not recorded", "ema0.99": 0.99, "base": 0.999}
    md = (tmp_path / "report.md").read_text()
    assert "| ema_decay | – | 0.99 | 0.999 |" in md
    assert "–: not in that recipe's records: a stock `Trainer` run" in md
    assert "| recipe_fields |" not in md and "| hf_stable_ft |" not in md


def test_a_recipe_whose_runs_were_trained_with_different_settings_is_named_in_the_verdict(tmp_path):
    """Reported (2026-12-04): a committed cell resumed after a release changed mosbach2021's Adam epsilon pooled
    seeds 0-4 (epsilon 1e-8) with seeds 5-10 (1e-6) under one name, and the report compared only each recipe's first
    run, so nothing said so. A setting recorded in every run of a recipe with more than one value is named, with
    its seeds; a setting some runs lack (written before it existed), that only changes logging, or a run's own
    restart record (reported 2026-12-06: every `zhang+restart2` seed was named "not trained alike") is not."""
    runs = []
    for seed in range(5):
        for name in ("devlin2019", "mosbach2021"):
            run = make_run(name, seed, score=0.3 + 0.01 * seed)
            run["settings"] = {"learning_rate": 2e-5, "adam_epsilon": 1e-8 if seed < 2 or name == "devlin2019"
                               else 1e-6, "seed": seed, "output_dir": f"/tmp/{seed}",
                               "logging_nan_inf_filter": seed < 2, **({"ema_decay": 0.999} if seed >= 2 else {}),
                               # each run's own restart record (its seeds, its attempts) is not a setting
                               "hf_stable_ft_restarts": {"base_seed": seed, "attempts": [{"seed": seed}]}}
            runs.append(run)
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    write_report(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings_within_recipe"] == {
        "mosbach2021": {"adam_epsilon": [{"value": 1e-8, "seeds": [0, 1]}, {"value": 1e-6, "seeds": [2, 3, 4]}]}}
    verdict = (tmp_path / "report.md").read_text().split("## Results")[0]
    assert ("mosbach2021's runs were not all trained alike: adam_epsilon 1e-08 (seeds 0–1), 1e-06 (seeds 2–4). "
            "They are pooled in every number of this report." in verdict)
    assert "devlin2019's runs were not" not in verdict


def test_each_figure_carries_the_provenance_line(tmp_path):
    """A PNG copied out of the report still names where and with what its runs were trained: the line is drawn
    under the plot, which makes the image taller than the same plot without it."""
    import struct

    from hf_stable_ft.report.figures import _plot_boxplot
    from hf_stable_ft.report.summary import load_summary, provenance_line

    make_sweep(tmp_path, corrupt=False)
    lines = []
    for line in (tmp_path / "runs.jsonl").read_text().splitlines():
        record = json.loads(line)
        record["device"] = "cpu (x86_64, 2 cores)"
        record["environment"] = {"finished_at": "2026-12-02T05:00:00Z", "hf_stable_ft": "0.1.0", "torch": "2.13.0",
                                 "transformers": "5.24.0", "python": "3.11.9"}
        lines.append(json.dumps(record))
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    write_report(tmp_path)
    summary = load_summary(tmp_path)
    line = provenance_line(summary.provenance)
    assert line == ("cpu (x86_64, 2 cores) · 2026-12-02 · hf_stable_ft 0.1.0 · torch 2.13.0 · transformers 5.24.0 · "
                    "python 3.11.9")
    assert f"*Runs of every figure: {line}" in (tmp_path / "report.md").read_text()

    def png_size(path):
        width, height = struct.unpack(">II", path.read_bytes()[16:24])
        return width, height

    _plot_boxplot(summary, tmp_path / "plain.png")  # the same figure without the line
    assert png_size(tmp_path / FIGURE_FILES["boxplot"])[1] > png_size(tmp_path / "plain.png")[1]


def test_the_statistics_do_not_depend_on_the_order_of_the_records():
    """Reported defect (2026-12-05): the same ten runs, appended in another order by a resumed sweep, gave another
    bootstrap E[test] @1 (-2.0 vs -1.8 ×100): the resampling drew run indices in file order. Runs are now taken in
    seed order within each recipe, so the report is a function of the runs, not of how they were appended."""
    rng = np.random.default_rng(3)
    records = [make_run(recipe, seed, score=float(rng.uniform(0.0, 0.4)), degenerate=bool(seed % 4 == 0))
               for recipe in ("devlin2019", "zhang2021") for seed in range(8)]
    shuffled = [records[i] for i in np.random.default_rng(0).permutation(len(records))]
    first, second = summarize_runs(records), summarize_runs(shuffled)
    for name in ("devlin2019", "zhang2021"):
        a, b = first["recipes"][name], second["recipes"][name]
        assert a["expected_test"] == b["expected_test"] and a["expected_test_curve"] == b["expected_test_curve"]
        assert a["runs_to_match"] == b["runs_to_match"]
        assert [r["seed"] for r in b["runs"]] == list(range(8))


def test_a_report_of_some_recipes_against_another_baseline_goes_to_its_own_directory(tmp_path):
    """``write_report(dir, baseline_recipe=B, recipes=[...], output_dir=OUT)``: the named recipes' runs only, tested
    against B, written to OUT; the directory's own report is left as it was. (The stability study asks whether a
    stabiliser adds anything on top of ``zhang2021``, a question the devlin2019-baseline report cannot answer.)"""
    from scipy import stats as sps

    (tmp_path / "sweep").mkdir()
    sweep = make_sweep(tmp_path / "sweep", corrupt=False)
    write_report(sweep, figures=False)
    before = {name: (sweep / name).read_text() for name in ("report.md", "summary.json")}
    path = write_report(sweep, baseline_recipe="mosbach2021", recipes=["mosbach2021", "zhang2021_reinit"],
                        output_dir=tmp_path / "vs_mosbach", figures=False)
    assert path == tmp_path / "vs_mosbach" / "report.md"
    assert {name: (sweep / name).read_text() for name in before} == before
    summary = json.loads((tmp_path / "vs_mosbach" / "summary.json").read_text())
    assert summary["baseline_recipe"] == "mosbach2021" and list(summary["recipes"]) == ["mosbach2021", "zhang2021_reinit"]
    mos = [r["test"] for r in summary["recipes"]["mosbach2021"]["runs"]]
    zhang = [r["test"] for r in summary["recipes"]["zhang2021_reinit"]["runs"]]
    row = summary["recipes"]["zhang2021_reinit"]["vs_baseline"]
    assert row["t_p"] == pytest.approx(sps.ttest_ind(zhang, mos, equal_var=False).pvalue)
    assert row["t_p_holm"] == pytest.approx(row["t_p"])  # one comparison: Holm changes nothing
    assert any("mosbach2021, zhang2021_reinit" in note and "devlin2019" in note for note in summary["notes"])
    assert "mosbach2021, zhang2021_reinit" in path.read_text()


def test_a_report_of_some_recipes_refuses_unknown_ones_and_a_baseline_left_out(tmp_path):
    (tmp_path / "sweep").mkdir()
    sweep = make_sweep(tmp_path / "sweep", corrupt=False)
    with pytest.raises(ValueError, match=r"recipes: \['nope'\] .*not in the records.*devlin2019.*mosbach2021"):
        write_report(sweep, recipes=["mosbach2021", "nope"], output_dir=tmp_path / "out", figures=False)
    with pytest.raises(ValueError, match=r"baseline_recipe 'devlin2019' .*not among recipes"):
        write_report(sweep, baseline_recipe="devlin2019", recipes=["mosbach2021"], output_dir=tmp_path / "out",
                     figures=False)
    with pytest.raises(ValueError, match=r"recipes=\[\] .*at least one"):
        write_report(sweep, recipes=[], output_dir=tmp_path / "out", figures=False)
    assert not (tmp_path / "out").exists()


def test_the_report_command_takes_recipes_and_an_output(tmp_path, capsys):
    from hf_stable_ft.cli import main

    (tmp_path / "sweep").mkdir()
    sweep = make_sweep(tmp_path / "sweep", corrupt=False)
    assert main(["report", str(sweep), "--baseline", "mosbach2021", "--recipes", "mosbach2021,zhang2021_reinit",
                 "--output", str(tmp_path / "vs"), "--no-figures"]) == 0
    assert json.loads((tmp_path / "vs" / "summary.json").read_text())["baseline_recipe"] == "mosbach2021"
    assert not (sweep / "report.md").exists()
    with pytest.raises(SystemExit) as stop:
        main(["report", str(sweep), "--recipes", "mosbach2021,nope", "--output", str(tmp_path / "bad")])
    assert stop.value.code == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_verdict_says_when_never_matching_comes_from_validation_selection_not_a_better_recipe(tmp_path):
    """Seen on CPU CoLA 1k (zhang+swa0.75 vs zhang2021, 8 seeds): "no number of zhang2021 runs up to 100 reaches
    one zhang+swa0.75 run" with means of 17.2 vs 16.9 (Welch p=0.82) — because the best-on-validation of many
    zhang2021 runs scores lower on test (13.8) than one run does on average. The verdict must say that this
    follows from the selection, not claim a better recipe."""
    # baseline: validation ranks the runs opposite to test, so picking the best on validation picks test 0.1
    runs = _learner_runs("base", [0.4, 0.3, 0.2, 0.1])
    for r in runs:
        r["best_validation"] = 0.5 - r["test_at_best_validation"]
    runs += _learner_runs("same", [0.26, 0.24, 0.25, 0.27])
    runs += _learner_runs("better", [0.60, 0.62, 0.61, 0.63])  # a difference the test of the means finds
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    md = write_report(tmp_path, figures=False).read_text()
    lead = md[md.index("## Verdict"): md.index("\n## Results")].split("\n\n")[1]
    assert "No number of base runs up to 100 reaches one same run" in lead
    assert "No number of base runs up to 100 reaches one better run" in lead
    assert "says only that better's mean" not in lead and lead.count("does not raise base's test score") == 1
    assert ("selecting on validation does not raise base's test score here (25.0 for one run on average, 10.0 "
            "for the best-on-validation of many), so this says only that same's mean is above base's (whether "
            "beyond the seed noise: the test of the means below)") in lead


def test_verdict_qualifies_a_never_against_the_stock_baseline_when_the_means_do_not_differ(tmp_path):
    """Seen on CPU SST-2 1k (zhang+r3f1 vs stock, 10 seeds): "no number of stock runs up to 100 reaches one
    zhang+r3f1 run" with means of 80.0 vs 79.5 (Welch p=0.077) — because stock's best-on-validation of many runs
    scores lower on test (79.2) than one stock run does on average. The primary baseline's clause said so; the
    stock clause did not. It must, with the test of the means against stock, and only where that test finds no
    difference."""
    def inverted(recipe):  # validation ranks the runs opposite to test: the best on validation has test 0.1
        runs = _learner_runs(recipe, [0.4, 0.3, 0.2, 0.1])
        for r in runs:
            r["best_validation"] = 0.5 - r["test_at_best_validation"]
        return runs

    runs = inverted("devlin2019") + inverted("stock")
    runs += _learner_runs("same", [0.26, 0.24, 0.25, 0.27])
    runs += _learner_runs("better", [0.60, 0.62, 0.61, 0.63])
    (tmp_path / "runs.jsonl").write_text("\n".join(json.dumps(r) for r in runs) + "\n")
    md = write_report(tmp_path, figures=False).read_text()
    lead = md[md.index("## Verdict"): md.index("\n## Results")].split("\n\n")[1]
    assert "no number of stock runs up to 100 reaches one same run" in lead
    assert "no number of stock runs up to 100 reaches one better run" in lead
    welch = stats.ttest_ind([0.26, 0.24, 0.25, 0.27], [0.4, 0.3, 0.2, 0.1], equal_var=False).pvalue
    assert welch > 0.05
    assert ("selecting on validation does not raise stock's test score here (25.0 for one run on average, 10.0 "
            "for the best-on-validation of many), so this says only that same's mean is above stock's (Welch "
            f"p={welch:.3f} against stock, not significant)") in lead
    assert "says only that better's mean" not in lead
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["recipes"]["same"]["runs_to_match"]["stock"]["welch_p"] == pytest.approx(welch)
