"""Statistics over fine-tuning runs with different random seeds.

Plain functions on sequences of scores (one score per seed), built on numpy and scipy. They implement
the statistics used by the papers this package reproduces (see ``shared/design/papers.md``):

* :func:`summarize` — n, mean, sample std (``ddof=1``), median, min, max and the share of degenerate runs,
  the columns of Mosbach et al. (2021) Table 1 and Zhang et al. (2021) Table 1.
* :func:`expected_max_performance` / :func:`expected_max_std` / :func:`expected_max_curve` — Dodge et al.
  (2019, "Show Your Work"): the expected best validation score after ``n`` random trials, estimated from
  ``N`` observed scores.
* :func:`expected_test_at_best_validation` (exact) and :func:`bootstrap_expected_test` (Zhang et al. 2021,
  Fig. 4): the expected *test* score of the run that is best on *validation* among ``k`` trials.
* :func:`runs_to_match` — the headline number: how many runs of a baseline it takes for the expected test
  score of its best-on-validation run to reach the mean of one run of a recipe ("one recipe run ≈ k baseline
  runs"), with a bootstrap over seeds for its uncertainty.
* :func:`levene_test`, :func:`t_test`, :func:`compare_to_baseline` — do two recipes differ in spread
  (Levene / Brown–Forsythe) or in mean (Welch's t-test)? :func:`degenerate_rate_test` — in the share of degenerate
  runs (Fisher's exact test)? :func:`holm_adjust` — the same p-values corrected for
  comparing several recipes with one baseline (Holm 1979).
* :func:`degenerate_record` / :func:`degenerate_run` — the package's one definition of a degenerate run: its
  best validation score (the checkpoint Zhang et al. 2021's protocol keeps) is not above the majority
  classifier's (Mosbach et al. 2021's failed-run threshold); aborted runs are degenerate.

Scores are taken in the units they are given (fractions or percentages); every function is scale-free
except that the degenerate threshold must be in the same units as the score.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats as _sps

__all__ = [
    "Summary",
    "summarize",
    "expected_max_performance",
    "expected_max_std",
    "expected_max_curve",
    "expected_test_at_best_validation",
    "ExpectedPerformance",
    "bootstrap_expected_test",
    "RunsToMatch",
    "runs_to_match",
    "TestResult",
    "levene_test",
    "t_test",
    "compare_to_baseline",
    "degenerate_rate_test",
    "holm_adjust",
    "degenerate_run",
    "degenerate_record",
    "degenerate_score",
    "constant_prediction_loss",
]


# --------------------------------------------------------------------------------------------------------
# validation helpers


def _as_scores(scores, name: str = "scores") -> np.ndarray:
    """1-D float array of finite values, at least one; raises ValueError otherwise."""
    arr = np.asarray(scores, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a one-dimensional sequence of scores, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one score")
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr)).tolist()
        raise ValueError(f"{name} must be finite; non-finite values at positions {bad}")
    return arr


def _as_trials(n, name: str = "n") -> tuple[np.ndarray, bool]:
    """Integer array of trial counts >= 1 and whether the input was a scalar."""
    scalar = np.ndim(n) == 0
    arr = np.atleast_1d(np.asarray(n))
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be integer(s) >= 1, got {n!r}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must be integer(s) >= 1, got {n!r}")
    arr = arr.astype(np.int64)
    if np.any(arr < 1):
        raise ValueError(f"{name} must be >= 1, got {n!r}")
    return arr, scalar


# --------------------------------------------------------------------------------------------------------
# summary


@dataclass(frozen=True)
class Summary:
    """Descriptive statistics of one recipe's scores over seeds (see :func:`summarize`)."""

    n: int
    mean: float
    std: float
    median: float
    min: float
    max: float
    n_degenerate: int | None = None
    degenerate_rate: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(scores, degenerate=None) -> Summary:
    """Mean, spread and failure rate of the scores of one recipe over seeds.

    ``std`` is the *sample* standard deviation (``ddof=1``, NaN when ``n == 1``), the "std over seeds"
    reported by Mosbach et al. (2021) and Zhang et al. (2021). Degenerate (failed) runs are part of
    ``scores``: the papers' mean and std include them.

    Args:
        scores: one finite score per run.
        degenerate: optional booleans, one per run (see :func:`degenerate_run`); when given, the result
            carries ``n_degenerate`` and ``degenerate_rate`` (= n_degenerate / n), otherwise both are None.
    """
    arr = _as_scores(scores)
    n_deg = rate = None
    if degenerate is not None:
        deg = np.asarray(degenerate, dtype=bool).reshape(-1)
        if deg.shape != arr.shape:
            raise ValueError(f"degenerate has {deg.size} flags for {arr.size} scores")
        n_deg = int(deg.sum())
        rate = n_deg / arr.size
    return Summary(
        n=int(arr.size),
        mean=float(arr.mean()),
        std=float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
        median=float(np.median(arr)),
        min=float(arr.min()),
        max=float(arr.max()),
        n_degenerate=n_deg,
        degenerate_rate=rate,
    )


# --------------------------------------------------------------------------------------------------------
# Dodge et al. 2019: expected maximum performance


def _max_weights(n_obs: int, trials: np.ndarray) -> np.ndarray:
    """w[t, i] = P(max of trials[t] draws = v(i+1)) = ((i+1)/N)^n − (i/N)^n, shape (len(trials), N)."""
    i = np.arange(n_obs + 1, dtype=float) / n_obs  # 0, 1/N, ..., 1
    cdf = i[None, :] ** trials[:, None].astype(float)  # P(max <= v(i)) = (i/N)^n
    return np.diff(cdf, axis=1)


def expected_max_performance(scores, n):
    """Expected maximum score after ``n`` random trials (Dodge et al. 2019, "Show Your Work").

    With the ``N`` observed scores sorted, v(1) ≤ … ≤ v(N), and ``n`` trials drawn i.i.d. with replacement
    from them, ``P(max ≤ v(i)) = (i/N)^n`` and::

        E[max_n] = Σ_i v(i) · [(i/N)^n − ((i−1)/N)^n]

    ``n = 1`` gives the mean; ``n → ∞`` tends to the largest observed score. Values of ``n`` above ``N``
    are allowed but only extrapolate the empirical distribution (the best seed you have is the ceiling).
    Ties need no special handling.

    Args:
        scores: observed scores, one per trial (finite, non-empty); Dodge uses validation scores.
        n: number of trials, an int >= 1 or an array of them.

    Returns:
        a float for a scalar ``n``, otherwise a float array shaped like ``n``.
    """
    v = np.sort(_as_scores(scores))
    trials, scalar = _as_trials(n)
    out = _max_weights(v.size, trials) @ v
    return float(out[0]) if scalar else out.reshape(np.shape(n))


def expected_max_std(scores, n):
    """Standard deviation of the maximum of ``n`` trials under the same model as
    :func:`expected_max_performance` (Dodge et al. 2019 plot E[max] ± this std)::

        Var[max_n] = Σ_i v(i)² · w_i − (Σ_i v(i) · w_i)²,   w_i = (i/N)^n − ((i−1)/N)^n
    """
    v = np.sort(_as_scores(scores))
    trials, scalar = _as_trials(n)
    w = _max_weights(v.size, trials)
    mean = w @ v
    var = np.clip(w @ (v * v) - mean * mean, 0.0, None)  # clip rounding noise below zero
    out = np.sqrt(var)
    return float(out[0]) if scalar else out.reshape(np.shape(n))


@dataclass(frozen=True)
class ExpectedPerformance:
    """Expected performance as a function of the number of trials.

    Attributes:
        n_trials: the trial counts (x axis).
        mean, std: expectation and standard deviation of the selected run's score at each count.
        percentiles: {q: values} for the bootstrap estimate (empty for the analytic one).
        method: "dodge2019" (expected max validation, analytic) or "zhang2021-bootstrap".
    """

    n_trials: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    method: str
    percentiles: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "n_trials": [int(k) for k in self.n_trials],
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
            "percentiles": {str(q): [float(x) for x in v] for q, v in self.percentiles.items()},
        }


def expected_max_curve(scores, ns=None) -> ExpectedPerformance:
    """Dodge et al. (2019) expected-max curve: E[max_n] and its std for each ``n`` in ``ns``
    (default ``1 … N``)."""
    v = _as_scores(scores)
    trials, _ = _as_trials(np.arange(1, v.size + 1) if ns is None else ns, "ns")
    trials = trials.reshape(-1)
    return ExpectedPerformance(
        n_trials=trials,
        mean=np.asarray(expected_max_performance(v, trials), dtype=float),
        std=np.asarray(expected_max_std(v, trials), dtype=float),
        method="dodge2019",
    )


# --------------------------------------------------------------------------------------------------------
# Zhang et al. 2021: expected test performance of the best-on-validation run


def _paired(validation_scores, test_scores) -> tuple[np.ndarray, np.ndarray]:
    val = _as_scores(validation_scores, "validation_scores")
    test = _as_scores(test_scores, "test_scores")
    if val.shape != test.shape:
        raise ValueError(f"validation_scores has {val.size} runs but test_scores has {test.size}")
    return val, test


def expected_test_at_best_validation(validation_scores, test_scores, n):
    """Exact expectation of what :func:`bootstrap_expected_test` estimates (with ``tie_break="mean"``).

    Sample ``n`` runs with replacement, keep the one best on validation, report its test score. Grouping
    runs by distinct validation value u(1) < … < u(G), with c(g) runs at or below u(g)::

        E[test] = Σ_g mean(test | validation = u(g)) · [(c(g)/N)^n − (c(g−1)/N)^n]

    Without ties this is the Dodge formula with the test scores ordered by validation; with all test
    scores equal to the validation scores it *is* :func:`expected_max_performance`.
    """
    val, test = _paired(validation_scores, test_scores)
    trials, scalar = _as_trials(n)
    uniq, inverse, counts = np.unique(val, return_inverse=True, return_counts=True)
    group_mean = np.bincount(inverse, weights=test) / counts
    cdf = np.concatenate([[0.0], np.cumsum(counts)]) / val.size
    w = np.diff(cdf[None, :] ** trials[:, None].astype(float), axis=1)
    out = w @ group_mean
    return float(out[0]) if scalar else out.reshape(np.shape(n))


_TIE_BREAKS = ("mean", "first", "worst")


def bootstrap_expected_test(
    validation_scores,
    test_scores,
    n_trials,
    n_bootstrap: int = 1000,
    seed: int = 0,
    *,
    percentiles: Sequence[float] = (2.5, 97.5),
    tie_break: str = "mean",
) -> ExpectedPerformance:
    """Expected test score of the best-on-validation run among ``k`` trials, by bootstrap (Zhang et al.
    2021, Fig. 4: "sample k of the trained models with replacement, select the best on validation, record
    its test score, repeat 1000 times").

    Args:
        validation_scores, test_scores: one pair per run (the run's best validation score and its test score
            at that checkpoint), finite.
        n_trials: the ``k`` values, an int >= 1 or a sequence of them.
        n_bootstrap: bootstrap repetitions per ``k``.
        seed: the result is a deterministic function of the inputs and ``seed``. Each ``k`` draws from its
            own generator seeded by ``(seed, k)``, so the estimate for a ``k`` does not depend on which
            other ``k`` values were asked for.
        percentiles: percentiles of the bootstrap distribution to return (e.g. a 95% interval).
        tie_break: which of several sampled runs with the same (maximal) validation score is selected:

            * ``"mean"`` (default) — the average test score of the tied draws, i.e. the expectation of
              picking one of them uniformly at random. Independent of the order of the runs; its mean
              converges to :func:`expected_test_at_best_validation`.
            * ``"first"`` — the run listed first in the input (like ``numpy.argmax``).
            * ``"worst"`` — the lowest test score among them (pessimistic).

    Returns:
        :class:`ExpectedPerformance` with, for each ``k``, the bootstrap mean, std (``ddof=0``, the spread of
        the bootstrap distribution) and the requested percentiles.
    """
    val, test = _paired(validation_scores, test_scores)
    trials, _ = _as_trials(n_trials, "n_trials")
    trials = trials.reshape(-1)
    if int(n_bootstrap) < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    if tie_break not in _TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {_TIE_BREAKS}, got {tie_break!r}")
    qs = [float(q) for q in percentiles]
    if any(not 0.0 <= q <= 100.0 for q in qs):
        raise ValueError(f"percentiles must lie in [0, 100], got {list(percentiles)}")

    n_runs = val.size
    means, stds, pct = [], [], {q: [] for q in qs}
    for k in trials:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(k)]))
        idx = rng.integers(0, n_runs, size=(int(n_bootstrap), int(k)))
        v = val[idx]
        tied = v == v.max(axis=1, keepdims=True)
        if tie_break == "mean":
            picked = np.where(tied, test[idx], 0.0).sum(axis=1) / tied.sum(axis=1)
        elif tie_break == "first":
            picked = test[np.where(tied, idx, n_runs).min(axis=1)]
        else:
            picked = np.where(tied, test[idx], np.inf).min(axis=1)
        means.append(picked.mean())
        stds.append(picked.std())
        for q in qs:
            pct[q].append(np.percentile(picked, q))
    return ExpectedPerformance(
        n_trials=trials,
        mean=np.asarray(means),
        std=np.asarray(stds),
        method="zhang2021-bootstrap",
        percentiles={q: np.asarray(v) for q, v in pct.items()},
    )


# --------------------------------------------------------------------------------------------------------
# the headline number: how many baseline runs one recipe run is worth


@dataclass(frozen=True)
class RunsToMatch:
    """The result of :func:`runs_to_match` (all scores in the units of the inputs).

    Attributes:
        k: the smallest number of baseline runs whose expected best-on-validation test score reaches
            ``target``; None when no ``k <= max_runs`` does ("never within max_runs").
        target: the recipe's expected test score with one run (its mean test score).
        max_runs: the largest ``k`` considered.
        curve: the baseline's expected test score of the best-on-validation run for ``k = 1 … max_runs``.
        asymptote: the limit of ``curve`` as ``k → ∞``: the mean test score of the baseline runs with the
            highest validation score. When it is below ``target`` (and ``k`` is None), no number of baseline
            runs reaches one recipe run on the observed runs.
        interval: the ``confidence``% bootstrap interval ``[low, high]`` of ``k``; an end is None when it is
            "never within max_runs".
        p_within: the share of bootstrap resamples in which some ``k <= max_runs`` reaches the target.
        n_baseline, n_recipe: runs behind the estimate (``n_recipe`` is None for a scalar target).
    """

    k: int | None
    target: float
    max_runs: int
    curve: np.ndarray
    asymptote: float
    interval: tuple
    p_within: float
    confidence: float
    n_bootstrap: int
    seed: int
    n_baseline: int
    n_recipe: int | None
    method: str = "zhang2021-expected-test, bootstrap over seeds"

    @property
    def never(self) -> bool:
        """True when no number of baseline runs up to ``max_runs`` reaches the target."""
        return self.k is None

    def as_dict(self) -> dict:
        return {
            "k": self.k, "never": self.never, "target": float(self.target), "max_runs": int(self.max_runs),
            "asymptote": float(self.asymptote), "interval": [None if x is None else int(x) for x in self.interval],
            "p_within": float(self.p_within), "confidence": float(self.confidence),
            "n_bootstrap": int(self.n_bootstrap), "seed": int(self.seed), "n_baseline": int(self.n_baseline),
            "n_recipe": None if self.n_recipe is None else int(self.n_recipe), "method": self.method,
            "curve": [float(x) for x in self.curve],
        }


def _best_of_k_curves(counts: np.ndarray, group_of: np.ndarray, n_groups: int, test: np.ndarray,
                      ks: np.ndarray) -> np.ndarray:
    """Exact expected test score of the best-on-validation run among k draws, for many weighted samples.

    ``counts[b, i]`` is how often run i appears in sample b (a bootstrap resample; all ones for the observed
    runs); ``group_of[i]`` is the rank of run i's validation score among the distinct ones. The formula of
    :func:`expected_test_at_best_validation`, per sample: shape ``(len(counts), len(ks))``.
    """
    onehot = np.zeros((group_of.size, n_groups))
    onehot[np.arange(group_of.size), group_of] = 1.0
    m = counts @ onehot  # draws per validation group
    s = (counts * test[None, :]) @ onehot  # sum of their test scores
    n = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        group_mean = np.where(m > 0, s / np.where(m > 0, m, 1.0), 0.0)
    cdf = np.concatenate([np.zeros_like(n), np.cumsum(m, axis=1)], axis=1) / n  # (B, G+1)
    w = np.diff(cdf[:, None, :] ** ks[None, :, None].astype(float), axis=2)  # (B, K, G)
    return np.einsum("bkg,bg->bk", w, group_mean)


def _first_reaching(curves: np.ndarray, targets: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Per row, the first k whose curve value reaches the target (up to rounding); max(ks) + 1 when none."""
    tol = 1e-9 * np.maximum(1.0, np.abs(targets))
    hit = curves >= (targets - tol)[:, None]
    first = np.argmax(hit, axis=1)
    return np.where(hit.any(axis=1), ks[first], ks[-1] + 1)


def runs_to_match(
    baseline_validation,
    baseline_test,
    recipe_test,
    *,
    max_runs: int = 100,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 95.0,
) -> RunsToMatch:
    """How many runs of a baseline one run of a recipe is worth: "one recipe run ≈ k baseline runs".

    Definition. Let ``E_b(k)`` be the expected test score of the baseline run that is best on validation
    among ``k`` runs drawn with replacement from the observed ones — Zhang et al. (2021, Fig. 4)'s expected
    test performance, whose bootstrap estimate is :func:`bootstrap_expected_test`; here its exact value
    :func:`expected_test_at_best_validation` (the bootstrap's limit, so the number does not depend on
    bootstrap noise), which with validation = test is Dodge et al. (2019)'s expected maximum. Let
    ``T = E_r(1)`` be the recipe's expected test score with one run, i.e. the mean of its test scores.
    Then::

        k* = min { k in 1 … max_runs : E_b(k) >= T }      (None: "never within max_runs")

    ``k* = 1`` means one baseline run already matches the recipe on average. ``E_b(k)`` need not grow with
    ``k`` (validation can pick a run that is worse on test) and tends to the mean test score of the baseline
    runs with the highest validation score (``asymptote``); when that is below ``T`` the baseline's curve
    plateaus below the recipe and no number of runs closes the gap. Values of ``k`` above the number of
    baseline seeds extrapolate from the observed runs: the best observed run is the ceiling.

    Uncertainty: a bootstrap over seeds of both recipes — resample the baseline's (validation, test) pairs
    and the recipe's test scores with replacement, ``n_bootstrap`` times, and recompute ``k*`` on each
    resample. ``interval`` is the central ``confidence``% interval of that distribution (counting "never"
    as above ``max_runs``) and ``p_within`` the share of resamples in which some ``k <= max_runs`` suffices.

    Args:
        baseline_validation, baseline_test: one pair per baseline run (best validation score and the test
            score at that checkpoint).
        recipe_test: the recipe's test scores, one per run — or a single number, the target itself (then only
            the baseline is resampled and ``n_recipe`` is None).
        max_runs: the largest number of baseline runs considered (>= 1).
        n_bootstrap: bootstrap resamples for the interval (>= 1).
        seed: the result is a deterministic function of the inputs and ``seed``.
        confidence: width of the interval, in percent (0 < confidence < 100).

    Returns:
        :class:`RunsToMatch`.
    """
    val, test = _paired(baseline_validation, baseline_test)
    if np.ndim(recipe_test) == 0:
        recipe = None
        target = float(recipe_test)
        if not math.isfinite(target):
            raise ValueError(f"recipe_test must be finite, got {recipe_test!r}")
    else:
        recipe = _as_scores(recipe_test, "recipe_test")
        target = float(recipe.mean())
    if isinstance(max_runs, bool) or int(max_runs) != max_runs or int(max_runs) < 1:
        raise ValueError(f"max_runs must be an integer >= 1, got {max_runs!r}")
    if isinstance(n_bootstrap, bool) or int(n_bootstrap) != n_bootstrap or int(n_bootstrap) < 1:
        raise ValueError(f"n_bootstrap must be an integer >= 1, got {n_bootstrap!r}")
    if not 0.0 < float(confidence) < 100.0:
        raise ValueError(f"confidence must lie strictly between 0 and 100, got {confidence!r}")
    max_runs, n_bootstrap = int(max_runs), int(n_bootstrap)

    ks = np.arange(1, max_runs + 1)
    uniq, group_of = np.unique(val, return_inverse=True)
    group_of = group_of.reshape(-1)
    curve = _best_of_k_curves(np.ones((1, val.size)), group_of, uniq.size, test, ks)[0]
    k_hat = int(_first_reaching(curve[None, :], np.array([target]), ks)[0])
    asymptote = float(test[val == uniq[-1]].mean())

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x52544D]))  # "RTM"
    k_boot = np.empty(n_bootstrap, dtype=np.int64)
    chunk = max(1, min(n_bootstrap, 4_000_000 // max(1, max_runs * uniq.size)))
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        counts = rng.multinomial(val.size, np.full(val.size, 1.0 / val.size), size=b).astype(float)
        if recipe is None:
            targets = np.full(b, target)
        else:
            targets = recipe[rng.integers(0, recipe.size, size=(b, recipe.size))].mean(axis=1)
        curves = _best_of_k_curves(counts, group_of, uniq.size, test, ks)
        k_boot[start:start + b] = _first_reaching(curves, targets, ks)
    alpha = (100.0 - float(confidence)) / 2.0
    lo, hi = (int(np.quantile(k_boot, q / 100.0, method="inverted_cdf")) for q in (alpha, 100.0 - alpha))
    return RunsToMatch(
        k=None if k_hat > max_runs else k_hat, target=target, max_runs=max_runs, curve=curve, asymptote=asymptote,
        interval=tuple(None if x > max_runs else x for x in (lo, hi)),
        p_within=float(np.mean(k_boot <= max_runs)), confidence=float(confidence), n_bootstrap=n_bootstrap,
        seed=int(seed), n_baseline=int(val.size), n_recipe=None if recipe is None else int(recipe.size),
    )


# --------------------------------------------------------------------------------------------------------
# hypothesis tests


@dataclass(frozen=True)
class TestResult:
    """A test statistic and its two-sided p-value (NaN when undefined, e.g. both groups constant)."""

    __test__ = False  # not a pytest test class

    statistic: float
    pvalue: float
    test: str

    def as_dict(self) -> dict:
        return asdict(self)


def _two_groups(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = _as_scores(a, "a")
    b = _as_scores(b, "b")
    if a.size < 2 or b.size < 2:
        raise ValueError(f"each group needs at least 2 scores, got {a.size} and {b.size}")
    return a, b


def levene_test(a, b, center: str = "median") -> TestResult:
    """Levene's test that two recipes' scores have the same variance (``scipy.stats.levene``).

    The default ``center="median"`` is the Brown–Forsythe variant (scipy's default), robust to the
    skewed, bimodal score distributions that failed runs produce; ``center="mean"`` is Levene's original
    test. Mosbach et al. (2021) and Zhang et al. (2021) argue about the *std over seeds*: this is the test
    for "recipe A is more stable than recipe B". Two-sided; NaN when both groups are constant.
    """
    a, b = _two_groups(a, b)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _sps.levene(a, b, center=center)
    return TestResult(float(res.statistic), float(res.pvalue), f"levene(center={center})")


def t_test(a, b, equal_var: bool = False) -> TestResult:
    """Two-sample t-test of equal means (``scipy.stats.ttest_ind``); Welch's test by default
    (``equal_var=False``), which does not assume the recipes have the same variance — they usually do
    not. Two-sided; NaN when both groups are constant (scipy then gives t = ±inf and p = 0 for different
    means: with no spread in either group there is nothing to test the difference against)."""
    a, b = _two_groups(a, b)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return TestResult(math.nan, math.nan, "welch-t" if not equal_var else "student-t")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _sps.ttest_ind(a, b, equal_var=equal_var)
    return TestResult(float(res.statistic), float(res.pvalue), "welch-t" if not equal_var else "student-t")


def degenerate_rate_test(recipe_degenerate: Sequence[bool], baseline_degenerate: Sequence[bool]) -> TestResult:
    """Fisher's exact test that two recipes have the same share of degenerate runs (``scipy.stats.fisher_exact``
    on the 2×2 table degenerate / not × recipe / baseline). Mosbach et al. (2021) and Zhang et al. (2021) count
    failed runs per recipe; with 10–20 seeds a difference of a few runs is often inside the seed noise, which this
    says. Conditional on the margins, the recipe's count k is hypergeometric; the two-sided p-value sums the
    probabilities of every table no more likely than the observed one. The statistic is the sample odds ratio
    (inf or NaN when a cell is empty). p = 1 when no run of either recipe is degenerate."""
    a = [bool(x) for x in recipe_degenerate]
    b = [bool(x) for x in baseline_degenerate]
    if not a or not b:
        raise ValueError(f"each recipe needs at least 1 run, got {len(a)} and {len(b)}")
    table = [[sum(a), len(a) - sum(a)], [sum(b), len(b) - sum(b)]]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _sps.fisher_exact(table, alternative="two-sided")
    return TestResult(float(res.statistic), float(res.pvalue), "fisher-exact")


def compare_to_baseline(
    results_by_recipe: Mapping[str, Sequence[float]],
    baseline: str,
    *,
    center: str = "median",
    equal_var: bool = False,
    degenerate: Mapping[str, Sequence[bool]] | None = None,
) -> dict[str, dict]:
    """Levene and t-test p-values of every recipe against ``baseline`` (and Fisher's, for the degenerate rate).

    Args:
        results_by_recipe: recipe name -> its scores over seeds (degenerate runs included).
        baseline: the key of the reference recipe (e.g. ``"devlin2019"``).
        degenerate: recipe name -> whether each of its runs was degenerate. When given (with the baseline's),
            each row also has ``degenerate_p`` (:func:`degenerate_rate_test`) and its ``degenerate_p_holm``.

    Returns:
        recipe -> ``{"n", "n_baseline", "mean_diff", "std_ratio", "levene_stat", "levene_p", "t_stat",
        "t_p", "levene_p_holm", "t_p_holm"}`` for every recipe except the baseline. Statistics that are
        undefined (a group with fewer than 2 scores) are None. ``levene_p`` / ``t_p`` are each test's own
        p-value; the ``_holm`` ones are adjusted by :func:`holm_adjust` over this call's comparisons with the
        baseline (one family per test: every recipe whose test is defined).
    """
    degenerate = degenerate if degenerate is not None and baseline in degenerate else None
    if baseline not in results_by_recipe:
        raise ValueError(f"baseline {baseline!r} is not among the recipes {list(results_by_recipe)}")
    base = np.asarray(results_by_recipe[baseline], dtype=float).reshape(-1)
    out: dict[str, dict] = {}
    for name, scores in results_by_recipe.items():
        if name == baseline:
            continue
        arr = np.asarray(scores, dtype=float).reshape(-1)
        row = {"n": int(arr.size), "n_baseline": int(base.size), "mean_diff": None, "std_ratio": None,
               "levene_stat": None, "levene_p": None, "t_stat": None, "t_p": None}
        if arr.size and base.size:
            row["mean_diff"] = float(arr.mean() - base.mean())
        if arr.size >= 2 and base.size >= 2:
            sb = base.std(ddof=1)
            row["std_ratio"] = float(arr.std(ddof=1) / sb) if sb > 0 else None
            lev = levene_test(arr, base, center=center)
            tt = t_test(arr, base, equal_var=equal_var)
            row.update(levene_stat=_none_if_nan(lev.statistic), levene_p=_none_if_nan(lev.pvalue),
                       t_stat=_none_if_nan(tt.statistic), t_p=_none_if_nan(tt.pvalue))
        if degenerate is not None and name in degenerate and len(degenerate[name]):
            row["degenerate_p"] = _none_if_nan(degenerate_rate_test(degenerate[name], degenerate[baseline]).pvalue)
        out[name] = row
    keys = ("levene_p", "t_p") + (("degenerate_p",) if degenerate is not None else ())
    for key in keys:
        for row, adjusted in zip(out.values(), holm_adjust([row.get(key) for row in out.values()])):
            row[key + "_holm"] = adjusted
    return out


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's (1979) step-down adjustment of ``m`` p-values for testing ``m`` hypotheses at once.

    With the defined p-values sorted ascending, p(1) <= ... <= p(m), the adjusted value of the i-th is
    ``max_{j <= i} min(1, (m - j + 1) * p(j))``; rejecting where the adjusted p is below α keeps the chance of
    any false "significant" among the m at most α (the family-wise error rate), for any dependence between the
    tests — comparing several recipes with the same baseline runs makes them dependent. It is uniformly more
    powerful than Bonferroni's ``m * p``. None or NaN (an undefined test) is not one of the m and stays None.
    Returned in the input order.
    """
    values = [None if p is None or not math.isfinite(float(p)) else float(p) for p in p_values]
    for i, p in enumerate(values):
        if p is not None and not 0.0 <= p <= 1.0:
            raise ValueError(f"p_values[{i}] = {p} is not a p-value: it must be between 0 and 1")
    defined = sorted((p, i) for i, p in enumerate(values) if p is not None)
    m = len(defined)
    out: list[float | None] = [None] * len(values)
    running = 0.0
    for rank, (p, i) in enumerate(defined):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------------------------------------
# failed runs


def degenerate_run(score, majority_baseline: float = 0.0, *, tol: float = 0.0) -> bool:
    """Whether a score marks a failed run: it is not above the majority-class baseline.

    This is the threshold of the package's one definition of a degenerate run (see :func:`degenerate_record`,
    which says *which* score is tested): Mosbach et al. (2021) call a run failed when its accuracy is "less or
    equal to that of a majority classifier"; Dodge et al. (2020) call such runs degenerate.

    Args:
        score: the run's score, in the same units as ``majority_baseline``. None or NaN (the run produced
            no usable score) counts as degenerate.
        majority_baseline: the score of always predicting the majority class on the same split — the
            majority-class accuracy / F1 for classification metrics, 0 for MCC and correlations.
        tol: a run must beat the baseline by more than ``tol`` (default 0: strictly above).
    """
    if score is None:
        return True
    score = float(score)
    if not math.isfinite(score):
        return True
    return score <= float(majority_baseline) + float(tol)


def _finite(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def degenerate_score(record: Mapping) -> float | None:
    """The score :func:`degenerate_record` tests: the run's best validation score.

    ``best_validation`` when recorded, else the best finite ``validation`` of ``eval_history``, else
    ``final_validation`` (a run evaluated once); None when the run has no validation score at all.
    """
    best = _finite(record.get("best_validation"))
    if best is not None:
        return best
    history = [_finite(e.get("validation")) for e in (record.get("eval_history") or []) if isinstance(e, Mapping)]
    history = [v for v in history if v is not None]
    if history:
        return max(history)
    return _finite(record.get("final_validation"))


def degenerate_record(record: Mapping) -> bool | None:
    """The one definition of a degenerate run, for a run record (``runs.jsonl`` schema); sweeps store its
    result as the record's ``degenerate`` flag and the report applies it to records without one.

    * ``status == "aborted"`` (stopped by the degenerate-run alarm, Dodge et al. 2020): degenerate.
    * ``status == "failed"`` (an exception, not an outcome of the seed): None — neither; not counted.
    * otherwise: :func:`degenerate_run` of the run's **best validation score** (:func:`degenerate_score`)
      against the validation split's majority-class baseline (``majority_baseline["validation"]``; 0 when
      not recorded, the baseline of MCC and correlations). No validation score at all: degenerate.

    Why the best and not the last evaluation: Mosbach et al. (2021, §4) test the accuracy "at the end of
    training", which for them is the model the run delivers. Under the evaluation protocol of Zhang et al.
    (2021, §3: evaluate 10 times, keep the checkpoint best on validation) — the protocol of our sweeps and
    the score the report counts for the run — the delivered model is the best-on-validation checkpoint, so
    its validation score is the one tested. A run is thus never counted degenerate while the score the
    report shows for it lies above the baseline, nor the other way round.
    """
    status = record.get("status") or "finished"
    if status == "aborted":
        return True
    if status == "failed":
        return None
    baseline = record.get("majority_baseline")
    baseline = _finite(baseline.get("validation")) if isinstance(baseline, Mapping) else None
    return degenerate_run(degenerate_score(record), 0.0 if baseline is None else baseline)


def constant_prediction_loss(labels: Sequence | np.ndarray, num_labels: int) -> float:
    """Training loss of the best input-independent predictor — the level a collapsed run sits at.

    Classification (``num_labels >= 2``): the cross-entropy of always predicting the empirical class
    distribution p, which equals its entropy H(p) = −Σ p_c ln p_c (nats, as ``CrossEntropyLoss``); no
    constant output does better. Regression (``num_labels == 1``, the Trainer's ``MSELoss``): the mean
    squared error of always predicting the mean, i.e. the population variance of ``labels``.
    (A uniform prediction would cost ln(num_labels), which is at least H(p).)
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer; got {num_labels!r}")
    values = np.asarray(labels).reshape(-1)
    if len(values) == 0:
        raise ValueError("labels is empty")
    if num_labels == 1:
        return float(np.var(values.astype(np.float64)))
    ids = values.astype(np.int64)
    if not np.array_equal(ids, values) or ids.min() < 0 or ids.max() >= num_labels:
        raise ValueError(f"classification labels must be integers in 0..{num_labels - 1}")
    p = np.bincount(ids, minlength=num_labels) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())
