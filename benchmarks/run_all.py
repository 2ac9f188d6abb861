"""One entry point for the benchmarks: runs them (``--run``) and writes BENCHMARKS.md from their results.

    python benchmarks/run_all.py --run            # CPU: optimizer, cost, scale, Mixout, diagnostics (~20 min)
    python benchmarks/run_all.py --run --device cuda --stability   # on a GPU, also the stability study
    python benchmarks/run_all.py                  # only archive the cells' records and re-assemble BENCHMARKS.md

Each benchmark writes a markdown table (with machine, date and versions) under ``benchmarks/results/``;
stability cells are sweep directories (``report.md``, ``summary.json``, ``runs.jsonl.gz``: a cell's ``runs.jsonl``
is compressed into it, never replacing more records with fewer; ``records_archive.py``). BENCHMARKS.md
is assembled from those files only, so every number in it comes from a file a command wrote.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from hf_stable_ft.experiment import SweepDirectoryLocked
from records_archive import archive_records
from stability import ON_ZHANG

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

COMMANDS = {
    "optimizer": "python benchmarks/bench_optimizer.py --device {device}",
    "cost": "python benchmarks/bench_cost.py --device {device}",
    "scale": "python benchmarks/bench_cost.py --device {device} --scale",
    "mixout": "python benchmarks/bench_mixout.py --device {device} --output benchmarks/results/mixout_{device}.md",
    "diagnostics": "python benchmarks/bench_diagnostics.py --device {device}",
    "amp": "python benchmarks/bench_amp.py --device {device}",
    "sweep": "python benchmarks/bench_sweep.py --output benchmarks/results/sweep_{device}.md",
    "stability": "python benchmarks/stability.py --output benchmarks/results/stability_{device} --workers 12",
}

#: how benchmarks/results/early_signal.md is made
EARLY_SIGNAL_COMMAND = (
    "python benchmarks/early_signal.py benchmarks/results/stability_cpu/cola-1k-lr1e-4 "
    "benchmarks/results/stability_cpu/cola-1k-lr2e-5 benchmarks/results/stability_gpu/cola-1k-lr2e-5 "
    "benchmarks/results/stability_cpu/sst2-1k-lr2e-5 --recipes devlin2019,debiased3ep,zhang2021,mosbach2021 "
    "--restarts restart2=debiased3ep,zhang+restart2=zhang2021 --output benchmarks/results/early_signal.md")


def run(names: list[str], device: str) -> None:
    for name in names:
        command = COMMANDS[name].format(device=device).replace("python", sys.executable, 1)
        print(f"$ {command}", flush=True)
        subprocess.run(command, shell=True, cwd=ROOT, check=True)


def archive_cells() -> None:
    """Compress every stability cell's ``runs.jsonl`` into its committed ``runs.jsonl.gz``. A cell a sweep is
    writing is skipped and named (its archive stays as it was: run this again when the sweep ends); stops at the
    first cell whose ``runs.jsonl`` lacks archived records, leaving that cell as it was."""
    for runs in sorted(RESULTS.glob("stability_*/*/runs.jsonl")):
        cell = runs.parent.relative_to(ROOT)
        try:
            count = archive_records(runs.parent)
        except SweepDirectoryLocked:
            print(f"skipped {cell}: a sweep is writing it (its runs.jsonl.gz is unchanged; run this again after)")
            continue
        except ValueError as error:
            raise SystemExit(f"run_all.py: {error}") from None
        print(f"archived {count} records of {cell}")


def _read(name: str) -> str | None:
    path = RESULTS / name
    return path.read_text().strip() if path.exists() else None


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def stability_table(cell_dir: Path, title: str | None = None) -> str:
    """A cell's table from its ``summary.json``; ``title`` (default: the cell and its device) heads it."""
    summary = json.loads((cell_dir / "summary.json").read_text())
    title = title or f"**{cell_dir.name}** ({cell_dir.parent.name.removeprefix('stability_').upper()} runs)"
    lines = [
        f"{title} — {summary['task']}, {summary['metric']} ×100 on the {summary['split']} split "
        f"(majority baseline {_pct(summary['majority_baseline'].get(summary['split']))})",
        "",
        "| recipe | seeds | mean ± std | max | degenerate | E[test] @1 / 5 / 10 trials | Welch p vs "
        f"{summary['baseline_recipe']} (Holm-adjusted over the recipes) | one run ≈ N baseline runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for recipe, entry in summary["recipes"].items():
        s = entry["summary"]
        expected = entry.get("expected_test") or entry.get("expected_max_validation") or {}
        means = expected.get("mean") or []
        versus = entry.get("vs_baseline") or {}
        p = _p(versus.get("t_p"))
        if versus.get("t_p_holm") is not None:
            p += f" ({_p(versus['t_p_holm'])})"
        lines.append(
            f"| {recipe} | {s['n']} | {_pct(s['mean'])} ± {_pct(s['std'])} | {_pct(s['max'])} | "
            f"{s['n_degenerate']}/{s['n']} | {' / '.join(_pct(m) for m in means)} | "
            f"{p} | {_runs_to_match(entry)} |"
        )
    return "\n".join(lines)


def _p(p) -> str:
    return "–" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def _runs_to_match(entry: dict) -> str:
    """The report's headline number per baseline (hf_stable_ft.stats.runs_to_match, stored in summary.json)."""
    found = entry.get("runs_to_match") or {}
    cells = []
    for baseline, match in found.items():
        k = "never ≤ {}".format(match["max_runs"]) if match.get("never") else f"≈ {match['k']}"
        cells.append(f"{k} {baseline}")
    return "; ".join(cells) or "–"


def _section(title: str, files: list[str], note: str, notes_file: str | None = None) -> list[str]:
    level = "##" if title[0].isdigit() else "###"  # the optimizer, Mixout and diagnostics tables belong to 1.
    parts = [f"{level} {title}", "", note, ""]
    notes = _read(notes_file) if notes_file else None
    if notes:
        parts += [notes, ""]
    found = [(name, _read(name)) for name in files]
    found = [(name, text) for name, text in found if text]
    if not found:
        parts += ["*Not measured yet.*", ""]
    for name, text in found:
        parts += [f"`benchmarks/results/{name}`:", "", _nest_headings(text, len(level)), ""]
    return parts


def _nest_headings(text: str, depth: int) -> str:
    """Demote a result file's own markdown headings below the section that includes it."""
    return "\n".join("#" * depth + line if line.startswith("#") else line for line in text.splitlines())


def assemble() -> Path:
    parts = [
        "# Benchmarks",
        "",
        "Every table below was written by a script in `benchmarks/` into `benchmarks/results/` (the notes around "
        "them, by hand from those tables); this file is assembled from those files by `python benchmarks/run_all.py` "
        "(add `--run` to re-measure). Each table names its machine, date and versions. Ratios are measured side by "
        "side in one process. Quote absolute times from a GPU, or from the CPU tables measured on the idle 2-core VM "
        "(the cost, scale, optimizer and diagnostics tables and the demo); the Mixout and mixed-precision CPU tables "
        "were measured while other jobs shared the cores and say so.",
        "",
    ]
    sections = [
        ("1. Cost of each feature vs the stock Trainer", ["cost_cuda.md", "cost_cpu.md"],
         "Command: `python benchmarks/bench_cost.py [--device cuda]`. Targets: ≤1.05× for optimizer-only features, "
         "≤1.25× with Mixout, ≤1.05× for diagnostics at 10-step logging.", "cost_notes.md"),
        ("StableAdamW vs torch's fused AdamW (optimizer step alone)", ["optimizer_cuda.md", "optimizer_cpu.md"],
         "Command: `python benchmarks/bench_optimizer.py [--device cuda]`. Target: ≤1.05× in both modes."),
        ("Mixout step time and memory", ["mixout_cuda.md", "mixout_cpu.md"],
         "Command: `python benchmarks/bench_mixout.py --device cpu|cuda --output FILE`. Target: ≤1.25× step time, "
         "memory overhead ≤ one copy of the mixed Linear weights."),
        ("Diagnostics overhead", ["diagnostics_cuda.md", "diagnostics_cpu.md"],
         "Command: `python benchmarks/bench_diagnostics.py [--device cuda]`. Target: ≤5% of step time at 10-step logging."),
    ]
    scale = ("3. Scale: sequence length × batch size", ["scale_cuda.md", "scale_cpu.md"],
             "Command: `python benchmarks/bench_cost.py --scale [--device cuda]`.")
    for section in sections:
        parts += _section(*section)
    parts += ["## 2. Stability", ""]
    notes = _read("stability_notes.md")
    if notes:
        parts += [notes, ""]
    for device_dir in sorted(p for p in RESULTS.glob("stability_*") if p.is_dir()):
        for cell in sorted(p for p in device_dir.iterdir() if (p / "summary.json").exists()):
            parts += [stability_table(cell), "",
                      f"Report with figures: [`{cell.relative_to(ROOT)}/report.md`]({cell.relative_to(ROOT)}/report.md)", ""]
            on_zhang = cell / ON_ZHANG
            if (on_zhang / "summary.json").exists():
                device = device_dir.name.removeprefix("stability_").upper()
                title = (f"**{cell.name}, the stabilisers on top of `zhang2021`** ({device} runs; the same records, "
                         "tested against `zhang2021`, Holm over these comparisons only)")
                parts += [stability_table(on_zhang, title), "", f"Report with figures: [`{on_zhang.relative_to(ROOT)}"
                          f"/report.md`]({on_zhang.relative_to(ROOT)}/report.md)", ""]
    early = _read("early_signal.md")
    if early:
        parts += ["### Is a degenerate seed visible early? (a validation stopping rule and the loss alarm, offline)", "",
                  f"Command: `{EARLY_SIGNAL_COMMAND}` (the committed records; nothing is "
                  "trained). The rule stops a run at an evaluation when its best validation score so far is not above "
                  "the majority class; it stops every run that ends degenerate, so what matters is how many healthy "
                  "runs it stops too. The second table of each cell replays the degenerate alarm's loss test "
                  "(`restart_degenerate_runs`' trigger) on each finished run's logged training loss; the restart "
                  "check compares that replay with the alarms the `restart2` runs actually raised.", "", early, ""]
    parts += _section(*scale)
    parts += _section("3b. Sweep backends: serial, worker processes, Ray", ["sweep_cuda.md", "sweep_cpu.md"],
                      "Command: `python benchmarks/bench_sweep.py --output benchmarks/results/sweep_cpu.md` (issue #16 "
                      "part 3): one fixed grid run serially and on 2 workers, one thread per run; target ≥1.8× and ≤5% "
                      "engine overhead per run of ≥60 s.", "sweep_notes.md")
    demo = _read("demo_cpu.md")
    if demo:
        parts += ["## 4. The demo (`make demo`)", "", demo, ""]
    parts += _section("5. Mixed precision on the full plugin path", ["amp_cuda.md", "amp_cpu.md"],
                      "Command: `python benchmarks/bench_amp.py [--device cuda]` (issue #8): every feature on, fp32 vs "
                      "bf16 autocast (and fp16 with GradScaler on CUDA); the invariants the tests check, on the real model.")
    gaps = _read("gaps.md")
    if gaps:
        parts += [gaps, ""]
    path = ROOT / "BENCHMARKS.md"
    path.write_text("\n".join(parts).rstrip() + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="run the benchmarks before assembling")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--stability", action="store_true", help="also run the stability study (hours on a CPU)")
    parser.add_argument("--only", nargs="+", choices=sorted(COMMANDS), help="run only these benchmarks")
    options = parser.parse_args()
    if options.run:
        names = options.only or [n for n in COMMANDS if (n != "stability" or options.stability)
                                 and not (n == "sweep" and options.device == "cuda")]  # a CPU-thread measurement
        run(names, options.device)
    archive_cells()
    print(f"wrote {assemble()}")


if __name__ == "__main__":
    main()
