"""Is a degenerate seed visible early? A validation-based stopping rule, evaluated offline on a cell's records.

Dodge et al. (2020, "Fine-Tuning Pretrained Language Models: Weight Initializations, Data Orders, and Early
Stopping", §5) stop bad seeds early from their validation scores. ``restart_degenerate_runs`` needs such a signal
to pay off: a restart is only cheaper than training another seed to the end when the failed run can be told apart
early. This script asks the question of committed stability records, without training anything:

    rule at evaluation i: stop the run if its best validation score so far is not above the validation
    split's majority-class baseline (:func:`hf_stable_ft.stats.degenerate_run`, the package's one threshold)

Every run that ends degenerate (:func:`hf_stable_ft.stats.degenerate_record`) is still at or below the baseline
at every evaluation, so the rule stops all of them wherever it is applied; what changes with the evaluation is
how many healthy runs it stops too (a run that would have learned, lost) and how much of a degenerate run's cost
it saves (1 − the fraction of updates done). Only finished runs are used (aborted ones never ran to the end).

The same records answer a second question, about ``restart_degenerate_runs``'s own trigger: the degenerate-run
alarm's loss test (:func:`hf_stable_ft.diagnostics.loss_alarm_step`, the callback's rule replayed on each finished
run's logged training loss, check at ``--check-fraction`` of the updates as the ``restart2`` recipes set it): in
how many healthy and how many degenerate runs would it fire? A recipe whose runs it never fires on trains exactly
the same runs with restarts switched on. ``--restarts LABEL=BASE`` checks the replay against measured restarts:
each attempt of LABEL's runs (seed s + k) is compared with the replay of BASE's run of that seed.

    python benchmarks/early_signal.py benchmarks/results/stability_cpu/cola-1k-lr1e-4 --recipes devlin2019,debiased3ep
    python benchmarks/early_signal.py <cell> ... --output benchmarks/results/early_signal.md
    python benchmarks/early_signal.py <cell> --recipes debiased3ep,zhang2021 --restarts restart2=debiased3ep
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hf_stable_ft.diagnostics import loss_alarm_step
from hf_stable_ft.records import RunRecord, read_records
from hf_stable_ft.stats import degenerate_record, degenerate_run


@dataclass(frozen=True)
class SignalRow:
    """The rule applied at one evaluation of a recipe's runs."""

    evaluation: int  # 1-based
    step: int
    fraction: float  # of the run's updates
    healthy_stopped: int
    healthy: int
    degenerate_stopped: int
    degenerate: int


def still_at_baseline(record: Mapping, evaluation: int) -> bool:
    """Whether the run's best validation score over its first ``evaluation`` evaluations is not above the
    validation majority-class baseline (a run with no finite score yet counts as at the baseline)."""
    majority = float((record.get("majority_baseline") or {}).get("validation", 0.0))
    scores = [e.get("validation") for e in record["eval_history"][:evaluation]]
    finite = [float(s) for s in scores if s is not None and float(s) == float(s)]
    return degenerate_run(max(finite) if finite else None, majority)


def signal_table(records: Sequence[Mapping]) -> list[SignalRow]:
    """The rule at each evaluation of ``records`` (one recipe's finished runs, evaluated at the same steps)."""
    runs = [r for r in records if r.get("status") == "finished" and r.get("eval_history")]
    if not runs:
        return []
    steps = [int(e["step"]) for e in runs[0]["eval_history"]]
    if any([int(e["step"]) for e in r["eval_history"]] != steps for r in runs):
        raise ValueError("the runs were evaluated at different steps; compare runs of one schedule")
    total = max(int(runs[0].get("global_step") or steps[-1]), steps[-1])
    flags = [bool(degenerate_record(r)) for r in runs]
    rows = []
    for i, step in enumerate(steps, start=1):
        stopped = [still_at_baseline(r, i) for r in runs]
        rows.append(SignalRow(
            evaluation=i, step=step, fraction=step / total,
            healthy_stopped=sum(s and not d for s, d in zip(stopped, flags)), healthy=flags.count(False),
            degenerate_stopped=sum(s and d for s, d in zip(stopped, flags)), degenerate=flags.count(True)))
    return rows


def replayed_alarm(record: Mapping, check_fraction: float = 0.3) -> int | None:
    """The update at which the degenerate alarm's loss test would first fire on a finished run's logged training
    loss (None: never), with the constant predictor's loss its record keeps."""
    history = [{"step": int(step), "loss": float(loss)} for step, loss in record.get("train_loss") or []]
    return loss_alarm_step(history, max_steps=int(record["global_step"]),
                           constant_prediction_loss=float(record["constant_prediction_loss"]),
                           check_fraction=check_fraction)


@dataclass(frozen=True)
class AlarmRow:
    """The loss test replayed on one recipe's finished runs."""

    runs: int
    degenerate_fired: int
    degenerate: int
    healthy_fired: int
    healthy: int
    first: float | None  # earliest and latest alarm, as shares of the run's updates
    last: float | None


def alarm_row(records: Sequence[Mapping], check_fraction: float = 0.3) -> AlarmRow | None:
    runs = [r for r in records if r.get("status") == "finished" and r.get("train_loss")]
    if not runs:
        return None
    fired = [replayed_alarm(r, check_fraction) for r in runs]
    flags = [bool(degenerate_record(r)) for r in runs]
    shares = [step / int(r["global_step"]) for step, r in zip(fired, runs) if step is not None]
    return AlarmRow(runs=len(runs), degenerate_fired=sum(f is not None and d for f, d in zip(fired, flags)),
                    degenerate=flags.count(True), healthy_fired=sum(f is not None and not d for f, d in zip(fired, flags)),
                    healthy=flags.count(False), first=min(shares, default=None), last=max(shares, default=None))


def restart_check(restarted: Sequence[Mapping], base: Sequence[Mapping], check_fraction: float = 0.3
                  ) -> list[tuple[int, int | None, int | None]]:
    """``(seed, measured alarm update or None, replayed alarm update or None)`` for every attempt of the
    ``restarted`` runs (``settings.hf_stable_ft_restarts.attempts``) whose seed has a finished ``base`` run."""
    by_seed = {int(r["seed"]): r for r in base if r.get("status") == "finished" and r.get("train_loss")}
    pairs = []
    for record in restarted:
        for attempt in ((record.get("settings") or {}).get("hf_stable_ft_restarts") or {}).get("attempts") or []:
            seed = int(attempt["seed"])
            if seed in by_seed:
                pairs.append((seed, (attempt.get("alarm") or {}).get("step"), replayed_alarm(by_seed[seed],
                                                                                              check_fraction)))
    return pairs


def alarm_markdown(cell: str, rows: Mapping[str, AlarmRow], check_fraction: float) -> str:
    lines = [f"**{cell}: the degenerate alarm's loss test replayed** (check from {check_fraction:.0%} of the updates, "
             "as `restart_degenerate_runs` uses it)", "",
             "| recipe | finished runs | fires on degenerate runs | fires on healthy runs | alarms at (share of the run) |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        at = "never" if r.first is None else f"{r.first:.0%}" + ("" if r.last == r.first else f"–{r.last:.0%}")
        lines.append(f"| {name} | {r.runs} | {r.degenerate_fired}/{r.degenerate} | {r.healthy_fired}/{r.healthy} | {at} |")
    return "\n".join(lines)


def restart_markdown(cell: str, label: str, base: str, pairs: Sequence[tuple[int, int | None, int | None]]) -> str:
    agree = sum((measured is None) == (replayed is None) for _, measured, replayed in pairs)
    gaps = [abs(m - r) for _, m, r in pairs if m is not None and r is not None]
    gap = f"; where both fired, the updates differ by at most {max(gaps)}" if gaps else ""
    return (f"**{cell}: the replay against measured restarts** — {len(pairs)} attempts of `{label}` whose seed has a "
            f"`{base}` run: the replay on that run agrees whether the alarm fires in {agree}/{len(pairs)}{gap} (the "
            "live callback also tests at the check update itself, which the base run's log lacks).")


def cell_records(cell: Path) -> list[RunRecord]:
    """A cell's records: its ``runs.jsonl`` when a sweep left one, else its committed ``runs.jsonl.gz`` (read,
    not restored: this script writes nothing into the cell)."""
    if (cell / "runs.jsonl").exists():
        return read_records(cell)
    with gzip.open(cell / "runs.jsonl.gz", "rt") as lines:
        return [RunRecord.from_dict(json.loads(line)) for line in lines if line.strip()]


def markdown(cell: str, recipe: str, rows: Sequence[SignalRow]) -> str:
    lines = [f"**{cell}, {recipe}** ({rows[0].healthy + rows[0].degenerate} finished runs, "
             f"{rows[0].degenerate} degenerate)", "",
             "| evaluation | update (share of the run) | degenerate runs stopped | healthy runs stopped too | "
             "saved of each degenerate run |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.evaluation} | {r.step} ({r.fraction:.0%}) | {r.degenerate_stopped}/{r.degenerate} | "
                     f"{r.healthy_stopped}/{r.healthy} | {1 - r.fraction:.0%} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="+", help="stability cell directories (runs.jsonl or runs.jsonl.gz)")
    parser.add_argument("--recipes", required=True, help="comma-separated recipe labels")
    parser.add_argument("--output", help="write the tables here (markdown); default: print them")
    parser.add_argument("--check-fraction", type=float, default=0.3,
                        help="the loss test's check point, as a share of the updates (default 0.3, restart2's)")
    parser.add_argument("--restarts", default=None,
                        help="LABEL=BASE[,...]: check the replay against the measured attempts of LABEL's runs")
    options = parser.parse_args(argv)
    if not 0 < options.check_fraction < 1:
        parser.error(f"--check-fraction: a share of the updates in (0, 1); got {options.check_fraction}")
    wanted = options.recipes.split(",")
    restarts = [tuple(pair.split("=", 1)) for pair in options.restarts.split(",")] if options.restarts else []
    if any(len(pair) != 2 or not all(pair) for pair in restarts):
        parser.error(f"--restarts: LABEL=BASE pairs, comma-separated; got {options.restarts!r}")
    records = {cell: [r.to_dict() for r in cell_records(cell)] for cell in map(Path, options.cells)}
    present = {r["recipe"] for cell_runs in records.values() for r in cell_runs}
    missing = [name for name in wanted if name not in present]
    if missing:
        parser.error(f"--recipes: {missing} have no records in {options.cells}; they have {sorted(present)}")
    missing = [name for pair in restarts for name in pair if name not in present]
    if missing:
        parser.error(f"--restarts: {missing} have no records in {options.cells}; they have {sorted(present)}")
    parts = []
    for cell, cell_runs in records.items():
        name_of_cell = f"{cell.parent.name}/{cell.name}"
        alarms = {}
        for name in wanted:  # a recipe some cells lack is shown where it is
            of_recipe = [r for r in cell_runs if r["recipe"] == name]
            rows = signal_table(of_recipe)
            if rows:
                parts.append(markdown(name_of_cell, name, rows))
            row = alarm_row(of_recipe, options.check_fraction)
            if row is not None:
                alarms[name] = row
        if alarms:
            parts.append(alarm_markdown(name_of_cell, alarms, options.check_fraction))
        for label, base in restarts:
            pairs = restart_check([r for r in cell_runs if r["recipe"] == label],
                                  [r for r in cell_runs if r["recipe"] == base], options.check_fraction)
            if pairs:
                parts.append(restart_markdown(name_of_cell, label, base, pairs))
    text = "\n\n".join(parts) + "\n"
    if options.output:
        Path(options.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
