"""runs_to_match: "one recipe run ≈ k baseline runs", against written-out references."""

import numpy as np
import pytest

from hf_stable_ft.stats import (
    bootstrap_expected_test,
    expected_max_performance,
    expected_test_at_best_validation,
    runs_to_match,
)

# Baseline: only the run best on validation (val 4) is any good on test (10), so with k runs drawn with
# replacement E_b(k) = 10 * P(the best run is among them) = 10 * (1 - (3/4)^k): 2.5, 4.375, 5.78125, 6.8359375, ...
VAL, TEST = [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 10.0]


def test_curve_and_k_match_the_closed_form():
    res = runs_to_match(VAL, TEST, 5.0, max_runs=20, n_bootstrap=50)
    ks = np.arange(1, 21)
    np.testing.assert_allclose(res.curve, 10 * (1 - 0.75 ** ks), rtol=1e-12)
    assert res.k == 3  # 4.375 < 5 <= 5.78125
    assert not res.never and res.asymptote == 10.0 and res.target == 5.0
    # a target hit exactly at k = 5 (up to rounding) is reached at 5, and one just above it at 6
    exact5 = 10 * (1 - 0.75 ** 5)
    assert runs_to_match(VAL, TEST, exact5, max_runs=20, n_bootstrap=10).k == 5
    assert runs_to_match(VAL, TEST, exact5 + 1e-6, max_runs=20, n_bootstrap=10).k == 6
    # a target at or below one baseline run's mean (2.5) needs one run
    assert runs_to_match(VAL, TEST, 2.5, n_bootstrap=10).k == 1
    assert runs_to_match(VAL, TEST, -3.0, n_bootstrap=10).k == 1


def test_target_is_the_mean_of_the_recipes_scores():
    res = runs_to_match(VAL, TEST, [4.0, 6.0], max_runs=20, n_bootstrap=50)
    assert res.target == 5.0 and res.k == 3 and res.n_recipe == 2 and res.n_baseline == 4


def test_never_when_the_curve_plateaus_below():
    # best on validation has test 0: E_b(k) = 5 * (2/3)^k falls from 3.33 towards 0
    val, test = [1.0, 2.0, 3.0], [5.0, 5.0, 0.0]
    res = runs_to_match(val, test, 4.0, max_runs=30, n_bootstrap=50)
    np.testing.assert_allclose(res.curve, 5 * (2 / 3) ** np.arange(1, 31), rtol=1e-12)
    assert res.k is None and res.never and res.asymptote == 0.0
    d = res.as_dict()
    assert d["k"] is None and d["never"] is True and "curve" in d and len(d["curve"]) == 30
    # max_runs bounds the search: k = 3 is "never" within 2 runs
    assert runs_to_match(VAL, TEST, 5.0, max_runs=2, n_bootstrap=10).k is None


def test_curve_is_the_exact_zhang_expectation_and_the_bootstrap_converges_to_it():
    rng = np.random.default_rng(1)
    val = np.round(rng.normal(size=9), 1)  # rounded: ties in validation
    test = val + rng.normal(0, 0.5, size=9)
    res = runs_to_match(val, test, 0.0, max_runs=12, n_bootstrap=10)
    ks = np.arange(1, 13)
    np.testing.assert_allclose(res.curve, expected_test_at_best_validation(val, test, ks), rtol=1e-12)
    boot = bootstrap_expected_test(val, test, ks, n_bootstrap=40000, seed=2)
    assert np.all(np.abs(boot.mean - res.curve) < 4 * boot.std / np.sqrt(40000) + 1e-12)
    # with validation = test it is Dodge et al.'s expected maximum
    same = runs_to_match(val, val, 0.0, max_runs=12, n_bootstrap=10)
    np.testing.assert_allclose(same.curve, expected_max_performance(val, ks), rtol=1e-12)


def test_bootstrap_share_within_matches_a_worked_example():
    # baseline runs (val 1, test 0) and (val 2, test 10); a resample of 2 runs is
    #   both the first (1/4): E_b(k) = 0;  both the second (1/4): 10;  one of each (1/2): 10 * (1 - 0.5^k).
    # Target fixed at 5: never only in the first case -> P(within) = 3/4; k = 1 in the others.
    res = runs_to_match([1.0, 2.0], [0.0, 10.0], 5.0, max_runs=10, n_bootstrap=20000, seed=4)
    assert res.k == 1 and res.p_within == pytest.approx(0.75, abs=0.015)
    assert res.interval == (1, None)  # 95%: from 1 to "never"
    assert runs_to_match([1.0, 2.0], [0.0, 10.0], 5.0, max_runs=10, n_bootstrap=20000, seed=4,
                         confidence=40).interval == (1, 1)
    # Recipe scores (0, 10) resampled too: its mean is 0 (1/4), 5 (1/2) or 10 (1/4). Mean 0: always reached;
    # mean 5: never in 1/4; mean 10 (k <= 10): reached only when both baseline draws are the second run (1/4).
    # P(never) = 1/2 * 1/4 + 1/4 * 3/4 = 5/16.
    res = runs_to_match([1.0, 2.0], [0.0, 10.0], [0.0, 10.0], max_runs=10, n_bootstrap=20000, seed=4)
    assert res.k == 1 and res.p_within == pytest.approx(11 / 16, abs=0.015)


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    val, test, rec = rng.normal(size=7), rng.normal(size=7), rng.normal(0.5, 1, size=6)
    a = runs_to_match(val, test, rec, n_bootstrap=300, seed=9).as_dict()
    assert a == runs_to_match(val, test, rec, n_bootstrap=300, seed=9).as_dict()
    assert a["interval"][0] is None or a["interval"][0] <= (a["k"] or 101)


@pytest.mark.parametrize("kwargs", [{"max_runs": 0}, {"max_runs": 2.5}, {"n_bootstrap": 0}, {"confidence": 100},
                                    {"confidence": 0}])
def test_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        runs_to_match(VAL, TEST, 5.0, **kwargs)


def test_rejects_bad_scores():
    with pytest.raises(ValueError, match="4 runs but test_scores has 3"):
        runs_to_match(VAL, TEST[:3], 5.0)
    with pytest.raises(ValueError, match="finite"):
        runs_to_match(VAL, TEST, float("nan"))
    with pytest.raises(ValueError, match="recipe_test is empty"):
        runs_to_match(VAL, TEST, [])


def test_the_never_clause_says_whether_the_baseline_levels_off_below_or_is_just_too_slow():
    from hf_stable_ft.report.markdown import _match_clause

    # a baseline whose best-on-validation run (test 0.9) beats the target 0.88 but is drawn so rarely that 100
    # runs do not get there: "levels off at 90" would contradict "never reaches 88"
    val = np.arange(40.0)
    test = np.r_[np.full(39, 0.5 * 39 / 39), 0.9]
    res = runs_to_match(val, test, 0.88, max_runs=100, n_bootstrap=50).as_dict()
    assert res["k"] is None and res["asymptote"] == pytest.approx(0.9) and res["curve"][-1] < 0.88
    text = _match_clause("rec", "base", res, 100.0, 1)
    assert "levels off" not in text
    assert "approaches 90.0" in text and f"{100 * res['curve'][-1]:.1f} after 100 runs" in text
    # below the target: it levels off short of it
    low = runs_to_match(val, np.r_[np.full(39, 0.5), 0.6], 0.88, max_runs=100, n_bootstrap=50).as_dict()
    assert "levels off at 60.0" in _match_clause("rec", "base", low, 100.0, 1)
