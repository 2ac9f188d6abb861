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

    python benchmarks/early_signal.py benchmarks/results/stability_cpu/cola-1k-lr1e-4 --recipes devlin2019,debiased3ep
    python benchmarks/early_signal.py <cell> ... --output benchmarks/results/early_signal.md
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    options = parser.parse_args(argv)
    wanted = options.recipes.split(",")
    records = {cell: [r.to_dict() for r in cell_records(cell)] for cell in map(Path, options.cells)}
    present = {r["recipe"] for cell_runs in records.values() for r in cell_runs}
    missing = [name for name in wanted if name not in present]
    if missing:
        parser.error(f"--recipes: {missing} have no records in {options.cells}; they have {sorted(present)}")
    parts = []
    for cell, cell_runs in records.items():
        for name in wanted:  # a recipe some cells lack is shown where it is
            rows = signal_table([r for r in cell_runs if r["recipe"] == name])
            if rows:
                parts.append(markdown(f"{cell.parent.name}/{cell.name}", name, rows))
    text = "\n\n".join(parts) + "\n"
    if options.output:
        Path(options.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
