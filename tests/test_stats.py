"""Statistics against hand-computed values and scipy."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from hf_stable_ft.stats import (
    bootstrap_expected_test,
    compare_to_baseline,
    degenerate_rate_test,
    degenerate_run,
    expected_max_curve,
    expected_max_performance,
    expected_max_std,
    expected_test_at_best_validation,
    holm_adjust,
    levene_test,
    summarize,
    t_test,
)

# ---------------------------------------------------------------- summarize


def test_summarize_known_values():
    s = summarize([1.0, 2.0, 3.0, 4.0], degenerate=[True, False, False, True])
    assert s.n == 4
    assert s.mean == 2.5
    assert s.std == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, ddof=1
    assert s.median == 2.5 and s.min == 1.0 and s.max == 4.0
    assert s.n_degenerate == 2 and s.degenerate_rate == 0.5
    d = s.as_dict()
    assert d["std"] == s.std and set(d) >= {"n", "mean", "std", "median", "min", "max", "n_degenerate"}


def test_summarize_single_and_without_flags():
    s = summarize([0.7])
    assert s.n == 1 and s.mean == 0.7 and math.isnan(s.std)
    assert s.n_degenerate is None and s.degenerate_rate is None


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, float("inf")], [[1.0, 2.0]]])
def test_summarize_rejects_bad_scores(bad):
    with pytest.raises(ValueError):
        summarize(bad)


def test_summarize_flag_length_mismatch():
    with pytest.raises(ValueError, match="flags"):
        summarize([1, 2, 3], degenerate=[True])


# ---------------------------------------------------------------- Dodge et al. 2019


def test_expected_max_by_hand():
    # sorted 1,2,3; n=2: weights (1/3)^2, (2/3)^2-(1/3)^2, 1-(2/3)^2 = 1/9, 3/9, 5/9
    assert expected_max_performance([3, 1, 2], 2) == pytest.approx((1 * 1 + 2 * 3 + 3 * 5) / 9)
    assert expected_max_performance([3, 1, 2], 2) == pytest.approx(22 / 9)


def test_expected_max_limits_and_arrays():
    scores = [0.2, 0.9, 0.5, 0.4]
    assert expected_max_performance(scores, 1) == pytest.approx(np.mean(scores))
    assert expected_max_performance(scores, 10_000) == pytest.approx(0.9)
    out = expected_max_performance(scores, [1, 2, 3])
    assert isinstance(out, np.ndarray) and out.shape == (3,)
    assert np.all(np.diff(out) > 0)  # non-decreasing in n
    assert isinstance(expected_max_performance(scores, np.int64(2)), float)


def test_expected_max_matches_brute_force_enumeration():
    scores = np.array([0.1, 0.3, 0.3, 0.8])
    # all 4^3 equally likely ordered draws of 3 trials
    grid = np.array(np.meshgrid(scores, scores, scores)).reshape(3, -1)
    maxes = grid.max(axis=0)
    assert expected_max_performance(scores, 3) == pytest.approx(maxes.mean())
    assert expected_max_std(scores, 3) == pytest.approx(maxes.std())


def test_expected_max_std_by_hand():
    # n=1: the population std of the scores; n=2 on [1,2,3]: E[X^2] = (1 + 12 + 45)/9
    assert expected_max_std([1, 2, 3], 1) == pytest.approx(np.std([1, 2, 3]))
    assert expected_max_std([1, 2, 3], 2) == pytest.approx(math.sqrt(58 / 9 - (22 / 9) ** 2))
    assert expected_max_std([5, 5, 5], 4) == 0.0


@pytest.mark.parametrize("n", [0, -1, 1.5, [1, 0], [], "3", True])
def test_expected_max_rejects_bad_n(n):
    with pytest.raises(ValueError):
        expected_max_performance([1.0, 2.0], n)


@pytest.mark.parametrize("scores", [[], [1.0, float("nan")]])
def test_expected_max_rejects_bad_scores(scores):
    with pytest.raises(ValueError):
        expected_max_performance(scores, 2)


def test_expected_max_curve():
    c = expected_max_curve([1, 2, 3])
    assert list(c.n_trials) == [1, 2, 3]
    assert c.mean[1] == pytest.approx(22 / 9)
    assert c.method == "dodge2019"
    d = c.as_dict()
    assert d["n_trials"] == [1, 2, 3] and len(d["std"]) == 3


# ---------------------------------------------------------------- Zhang et al. 2021


def test_exact_expected_test_equals_dodge_when_test_is_validation():
    v = [0.3, 0.1, 0.7, 0.5]
    assert expected_test_at_best_validation(v, v, [1, 2, 5]) == pytest.approx(expected_max_performance(v, [1, 2, 5]))


def test_exact_expected_test_by_hand_with_ties():
    # validation 1,1,2: P(max val = 1) = (2/3)^2 = 4/9 -> tied group mean test (0 + 6)/2 = 3;
    # P(max val = 2) = 5/9 -> test 9.  E = 4/9*3 + 5/9*9 = 57/9
    assert expected_test_at_best_validation([1, 1, 2], [0, 6, 9], 2) == pytest.approx(57 / 9)


def test_bootstrap_deterministic_and_k_independent():
    rng = np.random.default_rng(1)
    val, test = rng.normal(size=12), rng.normal(size=12)
    a = bootstrap_expected_test(val, test, [1, 5, 10], n_bootstrap=300, seed=7)
    b = bootstrap_expected_test(val, test, [1, 5, 10], n_bootstrap=300, seed=7)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    c = bootstrap_expected_test(val, test, [5], n_bootstrap=300, seed=7)
    assert c.mean[0] == a.mean[1]  # the estimate for k=5 does not depend on the other k asked for
    d = bootstrap_expected_test(val, test, [1, 5, 10], n_bootstrap=300, seed=8)
    assert not np.array_equal(a.mean, d.mean)


def test_bootstrap_all_ties_k1_is_mean_of_test():
    test = [0.1, 0.4, 0.6, 0.9]
    r = bootstrap_expected_test([0.5] * 4, test, [1, 3, 8], n_bootstrap=2000, seed=0)
    # every sampled run ties on validation: with tie_break="mean" each replicate is the mean of its draws,
    # whose expectation is the mean test score for every k; k=1 is exactly a bootstrap of the test scores.
    np.testing.assert_allclose(r.mean, np.mean(test), atol=0.02)
    assert r.std[0] == pytest.approx(np.std(test), rel=0.05)
    assert r.std[2] < r.std[0]


def test_bootstrap_constant_test_is_exact():
    r = bootstrap_expected_test([0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [1, 2, 4], n_bootstrap=50)
    np.testing.assert_array_equal(r.mean, [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(r.std, [0.0, 0.0, 0.0])
    assert set(r.percentiles) == {2.5, 97.5}


def test_bootstrap_converges_to_exact_expectation():
    val = [0.2, 0.5, 0.5, 0.9, 0.1]
    test = [0.3, 0.2, 0.8, 0.6, 0.0]
    ks = [1, 2, 5, 10]
    r = bootstrap_expected_test(val, test, ks, n_bootstrap=20_000, seed=3)
    np.testing.assert_allclose(r.mean, expected_test_at_best_validation(val, test, ks), atol=0.01)


def test_bootstrap_tie_breaks():
    # validation ties between run 0 (test 0) and run 1 (test 1); large k always samples both
    val, test = [1.0, 1.0, 0.0], [0.0, 1.0, 5.0]
    first = bootstrap_expected_test(val, test, [60], n_bootstrap=200, tie_break="first")
    worst = bootstrap_expected_test(val, test, [60], n_bootstrap=200, tie_break="worst")
    mean = bootstrap_expected_test(val, test, [60], n_bootstrap=200, tie_break="mean")
    assert first.mean[0] == pytest.approx(0.0) and worst.mean[0] == pytest.approx(0.0)
    assert mean.mean[0] == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError):
        bootstrap_expected_test(val, test, [2], tie_break="random")


def test_bootstrap_validates_inputs():
    with pytest.raises(ValueError, match="runs"):
        bootstrap_expected_test([1, 2], [1, 2, 3], [1])
    with pytest.raises(ValueError):
        bootstrap_expected_test([1, 2], [1, float("nan")], [1])
    with pytest.raises(ValueError):
        bootstrap_expected_test([1, 2], [1, 2], [0])
    with pytest.raises(ValueError):
        bootstrap_expected_test([1, 2], [1, 2], [1], n_bootstrap=0)


# ---------------------------------------------------------------- tests of variance / mean

A = [0.61, 0.64, 0.63, 0.60, 0.65, 0.62]
B = [0.0, 0.55, 0.12, 0.60, 0.0, 0.58]


def test_levene_equals_scipy():
    r = levene_test(A, B)
    ref = sps.levene(A, B, center="median")
    assert r.statistic == pytest.approx(ref.statistic) and r.pvalue == pytest.approx(ref.pvalue)
    r_mean = levene_test(A, B, center="mean")
    assert r_mean.pvalue == pytest.approx(sps.levene(A, B, center="mean").pvalue)


def test_welch_equals_scipy():
    r = t_test(A, B)
    ref = sps.ttest_ind(A, B, equal_var=False)
    assert r.statistic == pytest.approx(ref.statistic) and r.pvalue == pytest.approx(ref.pvalue)
    assert r.test == "welch-t"
    assert t_test(A, B, equal_var=True).pvalue == pytest.approx(sps.ttest_ind(A, B).pvalue)


def test_tests_need_two_scores_and_handle_constants():
    with pytest.raises(ValueError, match="at least 2"):
        levene_test([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2"):
        t_test([1.0, 2.0], [3.0])
    assert math.isnan(levene_test([1.0, 1.0], [2.0, 2.0]).pvalue)
    # two recipes that each give one score every run (two collapsed recipes) have no spread to test: undefined, as
    # the docstring says, not "p = 0, significant" (scipy's t is then -inf)
    const = t_test([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert math.isnan(const.pvalue) and math.isnan(const.statistic)
    row = compare_to_baseline({"base": [2.0, 2.0, 2.0], "other": [1.0, 1.0, 1.0]}, "base")["other"]
    assert row["t_p"] is None and row["levene_p"] is None and row["mean_diff"] == -1.0
    # one constant group is fine: Welch's test still has the other's variance
    assert t_test([1.0, 1.0, 1.0], [2.0, 2.5, 3.0]).pvalue == pytest.approx(
        sps.ttest_ind([1.0, 1.0, 1.0], [2.0, 2.5, 3.0], equal_var=False).pvalue)


def test_compare_to_baseline():
    out = compare_to_baseline({"devlin2019": B, "mosbach2021": A, "tiny": [0.5]}, "devlin2019")
    assert set(out) == {"mosbach2021", "tiny"}
    m = out["mosbach2021"]
    assert m["levene_p"] == pytest.approx(sps.levene(A, B).pvalue)
    assert m["t_p"] == pytest.approx(sps.ttest_ind(A, B, equal_var=False).pvalue)
    assert m["mean_diff"] == pytest.approx(np.mean(A) - np.mean(B))
    assert m["std_ratio"] == pytest.approx(np.std(A, ddof=1) / np.std(B, ddof=1))
    assert out["tiny"]["levene_p"] is None and out["tiny"]["t_p"] is None
    with pytest.raises(ValueError, match="baseline"):
        compare_to_baseline({"a": A}, "b")


# ---------------------------------------------------------------- degenerate runs


def test_degenerate_run():
    assert degenerate_run(0.527, 0.527)  # equal to majority accuracy: failed
    assert degenerate_run(0.40, 0.527)
    assert not degenerate_run(0.53, 0.527)
    assert degenerate_run(0.0, 0.0)  # MCC of a constant predictor
    assert degenerate_run(-0.02)  # default baseline 0 (MCC / correlation)
    assert not degenerate_run(0.3)
    assert degenerate_run(None, 0.5) and degenerate_run(float("nan"), 0.5)
    assert degenerate_run(0.53, 0.527, tol=0.01)


def test_holm_adjust_against_hand_computed_values():
    # Holm (1979): sort the m p-values ascending, p(1) <= ... <= p(m); the adjusted p(i) is
    # max over j <= i of min(1, (m - j + 1) * p(j)).
    # 0.01, 0.04, 0.03, 0.005 -> sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04
    # -> running max 0.02, 0.03, 0.06, 0.06, put back in the input order:
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # an undefined test (None or NaN) is not in the family: m = 2 here, 0.3 x 2 = 0.6, then max(0.6, 0.4 x 1)
    out = holm_adjust([0.4, None, 0.3, math.nan])
    assert out[0] == pytest.approx(0.6) and out[2] == pytest.approx(0.6) and out[1] is None and out[3] is None
    assert holm_adjust([0.6, 0.7]) == [1.0, 1.0]  # 0.6 x 2 = 1.2, capped at 1
    assert holm_adjust([0.02, 0.02]) == pytest.approx([0.04, 0.04])
    assert holm_adjust([0.03]) == [0.03] and holm_adjust([]) == []
    with pytest.raises(ValueError, match=r"p_values\[1\].*between 0 and 1"):
        holm_adjust([0.1, 1.5])


def test_compare_to_baseline_adds_holm_adjusted_p_values_over_the_recipes():
    C = [0.5, 0.52, 0.49, 0.55, 0.51, 0.53]
    out = compare_to_baseline({"devlin2019": B, "mosbach2021": A, "other": C, "tiny": [0.5]}, "devlin2019")
    for key in ("t_p", "levene_p"):
        raw = {name: out[name][key] for name in ("mosbach2021", "other")}
        low, high = sorted(raw, key=raw.get)
        # two defined tests (tiny's are undefined): the smaller p doubles, the larger stays, never below the smaller's
        assert out[low][key + "_holm"] == pytest.approx(min(1.0, 2 * raw[low]))
        assert out[high][key + "_holm"] == pytest.approx(max(min(1.0, 2 * raw[low]), raw[high]))
        assert out["tiny"][key + "_holm"] is None


def test_degenerate_rate_test_is_fishers_exact_test_written_out():
    # 6/10 degenerate runs against 1/10: with the margins fixed (10 and 10 runs, 7 degenerate of 20), the number
    # of the recipe's degenerate runs k is hypergeometric, P(k) = C(10,k) C(10,7-k) / C(20,7), C(20,7) = 77520:
    # k = 0..7 -> 120, 2100, 11340, 25200, 25200, 11340, 2100, 120 (/ 77520). Two-sided: every table at most as
    # likely as the observed k = 6 (2100): k = 0, 1, 6, 7.
    recipe = [True] * 6 + [False] * 4
    base = [True] + [False] * 9
    r = degenerate_rate_test(recipe, base)
    assert r.pvalue == pytest.approx((120 + 2100 + 2100 + 120) / 77520)
    assert r.test == "fisher-exact" and r.statistic == pytest.approx((6 * 9) / (4 * 1))  # the odds ratio
    assert degenerate_rate_test([False] * 3, [False] * 5).pvalue == 1.0  # nothing degenerate anywhere
    with pytest.raises(ValueError, match="at least 1"):
        degenerate_rate_test([], [True])


def test_compare_to_baseline_tests_the_degenerate_rate_when_given_the_flags():
    flags = {"devlin2019": [True] + [False] * 9, "bad": [True] * 6 + [False] * 4, "same": [False] * 10}
    scores = {name: list(np.linspace(0.1, 0.5, 10) + i) for i, name in enumerate(flags)}
    out = compare_to_baseline(scores, "devlin2019", degenerate=flags)
    p_bad = (120 + 2100 + 2100 + 120) / 77520
    assert out["bad"]["degenerate_p"] == pytest.approx(p_bad)
    assert out["same"]["degenerate_p"] == pytest.approx(1.0)  # 0/10 vs 1/10: every table is as likely or less
    assert out["bad"]["degenerate_p_holm"] == pytest.approx(2 * p_bad)
    assert out["same"]["degenerate_p_holm"] == pytest.approx(1.0)
    assert "degenerate_p" not in compare_to_baseline(scores, "devlin2019")["bad"]  # no flags, no test
