"""The report's PNG figures (the only importer of matplotlib, loaded when a figure is drawn).

* ``boxplot.png`` — scores per recipe, seeds as dots, the majority-class baseline as a line
  (Mosbach et al. 2021 Fig. 1, Zhang et al. 2021 Fig. 2);
* ``train_loss.png`` — training loss over steps, mean and min–max band over seeds (Zhang et al. Fig. 3);
* ``expected_performance.png`` — expected performance vs number of random trials, ± std (Zhang et al. Fig. 4,
  Dodge et al. 2019);
* ``grad_norms.png`` — per-layer gradient norms of the worst and the best run (Mosbach et al. Fig. 4);
* ``l2_from_init.png`` — L2 distance from the initial weights per layer group at the end of training
  (Zhang et al. Fig. 7).

The last two need the diagnostics callback's output and are skipped without it. Layer groups are drawn bottom to
top in the order :func:`hf_stable_ft.diagnostics.group_order` gives.
"""

from __future__ import annotations

import math
import textwrap
import warnings
from pathlib import Path

import numpy as np

from ..diagnostics.groups import group_order
from ..records import RunRecord
from .summary import SweepSummary, _digits, _fmt, _num, provenance_line

__all__ = ["FIGURE_FILES", "make_figures"]

#: The figures of a report, by key.
FIGURE_FILES = {
    "boxplot": "boxplot.png",
    "train_loss": "train_loss.png",
    "expected_performance": "expected_performance.png",
    "grad_norms": "grad_norms.png",
    "l2_from_init": "l2_from_init.png",
}
DPI = 120


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


def _save(fig, path: Path, footer: str) -> None:
    """Save ``fig``; ``footer`` (where and with what the runs were trained) goes under it in small grey type, so a
    figure copied out of the report still names its regime."""
    if footer:
        fig.text(0.0, 0.0, "\n".join(textwrap.wrap(footer, 160)), ha="left", va="top", fontsize=6.5, color="0.35")
        fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    else:
        fig.savefig(path, dpi=DPI)


def _colors(n: int):
    from matplotlib import colormaps

    # tab10 without its red (index 3): red marks degenerate seeds in the box plot.
    palette = [colormaps["tab10"](i) for i in range(10) if i != 3]
    return [palette[i % len(palette)] for i in range(n)]


def _ylabel(summary: SweepSummary, split: str | None = None) -> str:
    split = split or summary.split
    scale = summary.display_scale
    return f"{summary.metric} ({split}" + (f", ×{scale:g})" if scale != 1 else ")")


def _plot_boxplot(summary: SweepSummary, path: Path, footer: str = ""):
    from matplotlib.lines import Line2D

    scale, split = summary.display_scale, summary.split
    names = [n for n, e in summary.recipes.items() if e.runs]
    fig, (ax,) = _new_figure(max(5.0, 1.3 * len(names) + 2.5), 4.6)
    colors = _colors(len(names))
    data = [[r[split] * scale for r in summary.recipes[n].runs] for n in names]
    pos = np.arange(1, len(names) + 1)
    ax.boxplot(data, positions=pos, widths=0.55, showfliers=False, medianprops={"color": "black"},
               patch_artist=True, boxprops={"facecolor": "none"})
    rng = np.random.default_rng(0)
    for i, n in enumerate(names):
        for r in summary.recipes[n].runs:
            x = pos[i] + rng.uniform(-0.16, 0.16)
            col = "tab:red" if r["degenerate"] else colors[i]
            marker = "x" if r["status"] == "aborted" else "o"
            ax.scatter([x], [r[split] * scale], s=30, marker=marker, color=col, alpha=0.85, zorder=3,
                       linewidths=1.5 if marker == "x" else 0.5, edgecolors=None if marker == "x" else "black")
    base = summary.majority_baseline.get(split)
    handles = [Line2D([], [], marker="o", ls="", color="grey", markeredgecolor="black", label="seed"),
               Line2D([], [], marker="o", ls="", color="tab:red", markeredgecolor="black", label="degenerate seed"),
               Line2D([], [], marker="x", ls="", color="tab:red", label="aborted seed")]
    if base is not None:
        ax.axhline(base * scale, color="grey", ls="--", lw=1.2, zorder=1)
        handles.append(Line2D([], [], color="grey", ls="--", label=f"majority baseline ({base * scale:g})"))
    ax.set_xticks(pos, [f"{n}\n(n={len(d)})" for n, d in zip(names, data)])
    ax.set_ylabel(_ylabel(summary))
    ax.set_title(f"{summary.task or 'sweep'}: {summary.metric} over seeds, per recipe")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.8)
    _save(fig, path, footer)


def _plot_train_loss(records: list[RunRecord], recipes: list[str], path: Path, footer: str = "") -> bool:
    fig, (ax,) = _new_figure(7.0, 4.4)
    drawn = False
    for color, name in zip(_colors(len(recipes)), recipes):
        runs = [_series(r.train_loss) for r in records if r.recipe == name]
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
    _save(fig, path, footer)
    return True


def _plot_expected(summary: SweepSummary, path: Path, footer: str = ""):
    scale = summary.display_scale
    test = summary.split == "test"
    fig, (ax,) = _new_figure(7.0, 4.4)
    names = [n for n, e in summary.recipes.items() if e.runs]
    for color, name in zip(_colors(len(names)), names):
        e = summary.recipes[name]
        curve = e.expected_test_curve if test else e.expected_max_validation_curve
        k = np.asarray(curve["n_trials"])
        m = np.asarray(curve["mean"], dtype=float) * scale
        sd = np.asarray(curve["std"], dtype=float) * scale
        n = e.n_runs
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
    _save(fig, path, footer)


def _diag(rec: RunRecord, key: str) -> dict:
    d = rec.diagnostics
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


def _plot_grad_norms(summary: SweepSummary, records: list[RunRecord], path: Path, footer: str = ""):
    """Worst and best counted run that has gradient-norm diagnostics; None if there is none."""
    split, scale = summary.split, summary.display_scale
    by_id = {r.run_id: r for r in records}
    cands = [(r, by_id[r["run_id"]]) for e in summary.recipes.values() for r in e.runs
             if _diag(by_id[r["run_id"]], "grad_norm")]
    if not cands:
        return None
    # worst: a degenerate run that trained to the end (an aborted one has only a few steps), lowest score;
    # best: a non-degenerate finished run with the highest score
    worst = min(cands, key=lambda c: (not c[0]["degenerate"], c[0]["status"] == "aborted", c[0][split]))
    best = max(cands, key=lambda c: (not c[0]["degenerate"], c[0]["status"] != "aborted", c[0][split]))
    picks = [("worst", worst)] + ([("best", best)] if best[0]["run_id"] != worst[0]["run_id"] else [])
    diags = [_diag(rec, "grad_norm") for _, (_, rec) in picks]
    groups = group_order(g for d in diags for g in d)
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
        ax.set_title(f"{label}: {row['run_id']}\n{summary.metric} = {value} ({state})", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("gradient L2 norm (log)")
    fig.suptitle("Per-layer gradient norms, worst vs best run (cf. Mosbach et al. 2021, Fig. 4)", fontsize=10)
    _save(fig, path, footer)
    return [row["run_id"] for _, (row, _) in picks]


def _plot_l2(summary: SweepSummary, records: list[RunRecord], path: Path, footer: str = "") -> bool:
    by_id = {r.run_id: r for r in records}
    per_recipe = {}
    for name, e in summary.recipes.items():
        finished = [r for r in e.runs if r["status"] == "finished"] or e.runs
        diags = [d for d in (_diag(by_id[r["run_id"]], "l2_from_init") for r in finished) if d]
        if diags:
            per_recipe[name] = diags
    if not per_recipe:
        return False
    groups = group_order(g for diags in per_recipe.values() for d in diags for g in d)
    x = np.arange(len(groups))
    fig, (ax,) = _new_figure(max(6.5, 0.32 * len(groups) + 3), 4.6)
    names = list(summary.recipes)
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
    _save(fig, path, footer)
    return True


def make_figures(summary: SweepSummary, records: list[RunRecord], out: Path) -> tuple[dict, dict]:
    """Draw the figures of ``summary`` into ``out``; return ``({key: file} drawn, {key: why} skipped)`` and record
    the runs of the gradient-norm figure in ``summary.grad_norm_runs``."""
    made, skipped = {}, {}
    footer = provenance_line(summary.provenance)
    _plot_boxplot(summary, out / FIGURE_FILES["boxplot"], footer)
    made["boxplot"] = FIGURE_FILES["boxplot"]
    counted_ids = {r["run_id"] for e in summary.recipes.values() for r in e.runs}
    counted = [r for r in records if r.run_id in counted_ids]
    if _plot_train_loss(counted, list(summary.recipes), out / FIGURE_FILES["train_loss"], footer):
        made["train_loss"] = FIGURE_FILES["train_loss"]
    else:
        skipped["train_loss"] = "no run recorded a training loss"
    _plot_expected(summary, out / FIGURE_FILES["expected_performance"], footer)
    made["expected_performance"] = FIGURE_FILES["expected_performance"]
    picked = _plot_grad_norms(summary, counted, out / FIGURE_FILES["grad_norms"], footer)
    if picked:
        made["grad_norms"] = FIGURE_FILES["grad_norms"]
        summary.grad_norm_runs = picked
    else:
        skipped["grad_norms"] = "no run has gradient-norm diagnostics (diagnostics were off)"
    if _plot_l2(summary, counted, out / FIGURE_FILES["l2_from_init"], footer):
        made["l2_from_init"] = FIGURE_FILES["l2_from_init"]
    else:
        skipped["l2_from_init"] = "no run has L2-from-init diagnostics (diagnostics were off)"
    return made, skipped
