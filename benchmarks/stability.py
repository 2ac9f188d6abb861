"""Stability benchmark: recipes × seeds on CoLA, RTE and SST-2 with the embedded MiniLM (issues #6, #17, #18).

Each cell is one sweep directory (``runs.jsonl`` / ``report.md``, as ``hf-stable-ft sweep``), run by
:func:`hf_stable_ft.experiment.run_sweep` on a sweep backend: worker processes by default (``--workers N``: on a
GPU, N small-model runs share the card; on CPU one thread each), or Ray (``--backend ray``). The cells are visited
in blocks of ``--seed-block`` seeds, seed-major within a cell, so a time box (``--budget``) leaves every cell and
recipe with about the same seeds; it is resumable: finished runs are skipped and the next call continues. Each
block's records are compressed into the cell's committed ``runs.jsonl.gz`` as soon as the block ends, and the report
is written from the same records, so a commit never carries a report whose runs it lacks.

    python benchmarks/stability.py --output benchmarks/results/stability --workers 12 --budget 540
    python benchmarks/stability.py --output ... --cells cola-1k-lr2e-5 --seeds 4   # a smaller CPU run
    python benchmarks/stability.py --output ... --cells cola-full-lr2e-5 --recipes devlin2019,stock --seeds-full 3

Cells (all: batch 16, max length 128, 10 evaluations per run, zhang2021 protocol — GLUE dev split 50/50
per class into validation and test, test score at the best validation checkpoint):

* ``<task>-1k-lr2e-5``: the papers' learning rate, 1k-example class-stratified training sample;
  recipes devlin2019, stock Trainer defaults, mosbach2021, zhang2021 and single techniques on a 3-epoch
  bias-corrected base (Zhang et al. Table 2's columns): re-init L ∈ {1,2,3}, LLRD 0.9, Mixout 0.1,
  pretrained WD 0.01 (and, for RTE, intermediate-task MNLI_subset → RTE).
* ``<task>-1k-lr1e-4``: the regime where BERTAdam's failure shows on this 6-layer model: devlin2019 vs
  the same with bias correction, the later stabilisers on that base, and zhang2021 with them on top.
* ``<task>-full-lr2e-5``: the whole training set, devlin2019 / stock / mosbach2021 / zhang2021.
* ``sst2-1k-lr2e-5``: a task where every recipe learns; the presets, the bias-corrected base and the later
  stabilisers (NoisyTune, ChildTuning F/D, R3F, EMA, SWA, RecAdam, restarts of a degenerate seed) on it and on
  ``zhang2021``; the 1k cells carry the later stabilisers too (issue #17).
* ``rte-1k-intermediate`` / ``-freshhead``: RTE from the MNLI_subset checkpoint (trained first, once), with the
  label-mapped MNLI head and with a fresh head.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from records_archive import archive_records, restore_records

BASE_3EP = "debiased3ep=devlin2019:adam_bias_correction=true"
SINGLE_TECHNIQUES = [
    BASE_3EP,
    "reinit1=devlin2019:adam_bias_correction=true:reinit_pooler=true:reinit_layers=1",
    "reinit2=devlin2019:adam_bias_correction=true:reinit_pooler=true:reinit_layers=2",
    "reinit3=devlin2019:adam_bias_correction=true:reinit_pooler=true:reinit_layers=3",
    "llrd0.9=devlin2019:adam_bias_correction=true:layerwise_lr_decay=0.9",
    "mixout0.1=devlin2019:adam_bias_correction=true:mixout_prob=0.1",
    "pwd0.01=devlin2019:adam_bias_correction=true:pretrained_weight_decay=0.01",
]
#: The stabilisers that came after the papers (issue #17), each on the 3-epoch bias-corrected base. EMA decay 0.99
#: (a window of ~100 of the 189 updates; 0.999 would average in the first updates); RecAdam with the paper's
#: gamma = 5000 (lr*gamma = 0.1-0.5 per update) and t0 = 50 of 189 updates (the paper's 250 is for runs of
#: thousands); ChildTuning p as the paper's middle values. The cells' older "recadam" records (gamma 0.01, the
#: encoder's matrices only: the library before 2026-12-05) stay in their files and reports under that label; it is
#: not run again, since today's code anchors every pretrained tensor. restart2: the degenerate-run alarm's loss test
#: at 30% of the updates (its default) stops a seed whose training loss is not yet below the constant predictor's,
#: and up to two re-draws follow (seeds s+1, s+2); a run whose every attempt was stopped stays aborted (degenerate).
LATER_TECHNIQUES = [
    "noisytune0.15=devlin2019:adam_bias_correction=true:noisytune_intensity=0.15",
    "childF0.3=devlin2019:adam_bias_correction=true:child_tuning_mode=F:child_tuning_p=0.3",
    "childD0.3=devlin2019:adam_bias_correction=true:child_tuning_mode=D:child_tuning_p=0.3",
    "r3f1=devlin2019:adam_bias_correction=true:r3f_lambda=1.0",
    "ema0.99=devlin2019:adam_bias_correction=true:weight_averaging=ema:ema_decay=0.99",
    "swa0.75=devlin2019:adam_bias_correction=true:weight_averaging=swa:swa_start_fraction=0.75",
    "recadam5000=devlin2019:adam_bias_correction=true:pretrained_weight_decay=5000:recadam_k=0.1:recadam_t0=50",
    "restart2=devlin2019:adam_bias_correction=true:abort_degenerate_runs=true:degenerate_check_fraction=0.3"
    ":restart_degenerate_runs=2",
]
#: The same on top of zhang2021 (the question Zhang et al. asked of Mixout and LLRD).
LATER_ON_ZHANG = [
    "zhang+noisytune0.15=zhang2021:noisytune_intensity=0.15",
    "zhang+childF0.3=zhang2021:child_tuning_mode=F:child_tuning_p=0.3",
    "zhang+childD0.3=zhang2021:child_tuning_mode=D:child_tuning_p=0.3",
    "zhang+r3f1=zhang2021:r3f_lambda=1.0",
    "zhang+ema0.999=zhang2021:weight_averaging=ema:ema_decay=0.999",
    "zhang+swa0.75=zhang2021:weight_averaging=swa:swa_start_fraction=0.75",
    "zhang+recadam5000=zhang2021:pretrained_weight_decay=5000:recadam_k=0.1:recadam_t0=250",
    "zhang+restart2=zhang2021:abort_degenerate_runs=true:degenerate_check_fraction=0.3:restart_degenerate_runs=2",
]
#: where a cell's report of the ``zhang+…`` recipes against ``zhang2021`` goes (inside the cell's directory)
ON_ZHANG = "on_zhang2021"
PRESETS = ["devlin2019", "stock", "mosbach2021", "zhang2021"]
INTERMEDIATE = "intermediate=devlin2019:adam_bias_correction=true"
LABEL_MAP = {"entailment": "entailment", "neutral": "not_entailment", "contradiction": "not_entailment"}


def label_of(recipe: str) -> str:
    """A recipe spec's label: ``"r3f1=devlin2019:r3f_lambda=1.0"`` -> ``"r3f1"``; a preset name is its own label."""
    return recipe.split("=", 1)[0]


@dataclasses.dataclass
class Cell:
    name: str
    task: str
    train_size: int | None
    recipes: list[str]
    seeds: int
    training: dict = dataclasses.field(default_factory=dict)
    intermediate: bool = False
    label_map: bool = True  # intermediate cells: MNLI's head mapped onto RTE's labels (False: a fresh head)


def cells(seeds_small: int, seeds_full: int) -> list[Cell]:
    out = []
    for task, n in (("cola", seeds_small), ("rte", seeds_small)):
        out.append(Cell(f"{task}-1k-lr2e-5", task, 1000, PRESETS + SINGLE_TECHNIQUES + LATER_TECHNIQUES
                        + LATER_ON_ZHANG, n))
        out.append(Cell(f"{task}-1k-lr1e-4", task, 1000, ["devlin2019", BASE_3EP] + LATER_TECHNIQUES + ["zhang2021"]
                        + LATER_ON_ZHANG, n,
                        {"learning_rate": 1e-4}))
    # a task where every recipe learns: does a technique still change anything there?
    out.append(Cell("sst2-1k-lr2e-5", "sst2", 1000, PRESETS + [BASE_3EP] + LATER_TECHNIQUES + LATER_ON_ZHANG,
                    seeds_small))
    out.append(Cell("rte-1k-intermediate", "rte", 1000, [INTERMEDIATE], seeds_small, intermediate=True))
    out.append(Cell("rte-1k-intermediate-freshhead", "rte", 1000, [INTERMEDIATE], seeds_small, intermediate=True,
                    label_map=False))
    for task in ("rte", "cola"):
        out.append(Cell(f"{task}-full-lr2e-5", task, None, PRESETS, seeds_full))
    return out


def choose_cells(seeds_small: int, seeds_full: int, names: str | None = None, recipes: str | None = None) -> list[Cell]:
    """The cells named in ``names`` (comma-separated; all when None), each keeping only the recipe labels in
    ``recipes`` (comma-separated; all when None) and dropped when none is left. ValueError names an unknown cell or
    recipe and the allowed ones."""
    chosen = cells(seeds_small, seeds_full)
    if names:
        wanted = names.split(",")
        unknown = sorted(set(wanted) - {c.name for c in chosen})
        if unknown:
            raise ValueError(f"--cells: unknown {unknown}; choose from {[c.name for c in chosen]}")
        chosen = [c for c in chosen if c.name in wanted]
    if recipes:
        wanted = recipes.split(",")
        known = {label_of(r) for c in chosen for r in c.recipes}
        if set(wanted) - known:
            raise ValueError(f"--recipes: unknown {sorted(set(wanted) - known)}; the chosen cells have {sorted(known)}")
        chosen = [dataclasses.replace(c, recipes=[r for r in c.recipes if label_of(r) in wanted])
                  for c in chosen]
        chosen = [c for c in chosen if c.recipes]
    return chosen


def resume_refusals(output: Path, model: str, data_dir: str | None,
                    passes: list[tuple[str, str | None, int]], seeds_full: int = 5) -> list[str]:
    """Why resuming each pass ``(cells, recipes or None, seeds)`` in ``output`` would be refused, one line per cell
    (empty: every pass resumes its records). Plans each cell against its ``runs.jsonl`` as ``run_sweep`` would,
    before anything is loaded or run: a time-boxed session (the GPU's) learns it at once, not at its pass."""
    from hf_stable_ft.experiment import plan_sweep

    refusals = []
    for cell_names, recipes, seeds in passes:
        for cell in choose_cells(seeds, seeds_full, cell_names, recipes):
            directory = output / cell.name
            if not (directory / "runs.jsonl").exists():
                continue
            config = _config(cell, model, data_dir, output / "mnli_subset_intermediate")
            try:
                plan_sweep(config, directory, resume=True)
            except ValueError as error:
                refusals.append(f"{cell.name} ({recipes or 'every recipe'}): {error}")
    return refusals


def restore_cells(output: Path, chosen: list[Cell]) -> dict[str, int]:
    """Put each chosen cell's committed ``runs.jsonl.gz`` back as ``runs.jsonl`` before anything runs, so a fresh
    clone resumes the committed records instead of re-running them; refuses (ValueError) a cell whose
    ``runs.jsonl`` lacks archived records. Returns the number of records restored per cell (where any were)."""
    restored = {cell.name: restore_records(output / cell.name) for cell in chosen if (output / cell.name).is_dir()}
    return {name: count for name, count in restored.items() if count}


def finish_cells(output: Path, chosen: list[Cell], write_report) -> dict[str, int]:
    """Write each chosen cell's report and compress its records into the committed ``runs.jsonl.gz``, so the
    report and the archive a commit carries always hold the same runs (the git-ignored ``runs.jsonl`` is lost with
    the checkout). ``write_report(directory, baseline_recipe=..., [recipes=..., output_dir=...])`` is
    :func:`hf_stable_ft.report.write_report`. A cell with ``zhang2021`` and ``zhang+…`` runs also gets
    ``<cell>/on_zhang2021/report.md``: those recipes alone, tested against ``zhang2021``.
    Returns the number of records archived per cell that has any."""
    archived = {}
    for cell in chosen:
        directory = output / cell.name
        if not directory.is_dir():
            continue
        restore_records(directory)  # the archive alone, when the last block's records were archived already
        if not (directory / "runs.jsonl").exists():
            continue
        # the baseline is what the records hold, not what the cell lists: a cell's devlin2019 runs may live in
        # another output (the GPU's), and --recipes may leave it out of this call
        from hf_stable_ft.records import read_records

        held = list(dict.fromkeys(record.recipe for record in read_records(directory)))
        write_report(directory, baseline_recipe="devlin2019" if "devlin2019" in held else None)
        on_zhang = [label for label in held if label.startswith("zhang+")]
        if "zhang2021" in held and on_zhang:  # does a stabiliser add anything once the papers' fixes are in?
            write_report(directory, baseline_recipe="zhang2021", recipes=["zhang2021", *on_zhang],
                         output_dir=directory / ON_ZHANG)
        archived[cell.name] = archive_records(directory)
    return archived


def _config(cell: Cell, model: str, data_dir: str | None, intermediate_dir: Path | None):
    from hf_stable_ft.experiment import SweepConfig

    return SweepConfig(
        task=cell.task, model=str(intermediate_dir) if cell.intermediate else model, recipes=cell.recipes,
        seeds=list(range(cell.seeds)), train_size=cell.train_size, protocol="zhang2021", data_dir=data_dir,
        label_map=LABEL_MAP if cell.intermediate and cell.label_map else None,
        training={"per_device_eval_batch_size": 256, **cell.training},
    )


def _stage1(model, data_dir, intermediate_dir: Path, train_size) -> None:
    """The intermediate-task stage: MNLI_subset fine-tuned once (seed 0), its best checkpoint saved for the cells
    that start from it."""
    from hf_stable_ft.experiment import SweepConfig, parse_recipe, prepare_task, run_single

    config = SweepConfig(task="mnli_subset", model=model, recipes=[INTERMEDIATE], seeds=[0], protocol="glue",
                         data_dir=data_dir, train_size=train_size, training={"per_device_eval_batch_size": 256})
    record = run_single(prepare_task(config), parse_recipe(INTERMEDIATE), 0, tempfile.mkdtemp(), config.training,
                        save_best_to=intermediate_dir)
    (intermediate_dir.parent / "intermediate_stage1.json").write_text(json.dumps(record, indent=1))


def _backend(options):
    from hf_stable_ft.sweep_backends import make_backend

    if options.backend == "ray":
        return make_backend("ray", address=options.address, gpus_per_run=options.gpus_per_run,
                            max_concurrent=options.workers)
    if options.backend == "processes" and options.workers > 1:
        return make_backend("processes", max_concurrent=options.workers)
    return make_backend("local")  # one worker: in this process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--output", default="benchmarks/results/stability")
    parser.add_argument("--model", default=None, help="default: the embedded MiniLM")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--backend", default="processes", choices=["local", "processes", "ray"],
                        help="the sweep backend that runs the cells (hf_stable_ft.sweep_backends; default processes)")
    parser.add_argument("--workers", type=int, default=1, help="runs at once (worker processes, or Ray's max in flight)")
    parser.add_argument("--address", default=None, help="--backend ray: the cluster to join (default: start one here)")
    parser.add_argument("--gpus-per-run", type=float, default=0.0, help="--backend ray: GPU share per run")
    parser.add_argument("--budget", type=float, default=1e9, help="seconds after which no new run starts")
    parser.add_argument("--seeds", type=int, default=20, help="seeds of the 1k cells")
    parser.add_argument("--seeds-full", type=int, default=5, help="seeds of the full-training-set cells")
    parser.add_argument("--seed-block", type=int, default=5,
                        help="seeds per pass over the cells: a time box leaves every cell with about the same seeds. "
                             "Each block ends when its last run does (a worker may wait meanwhile); for one cell, "
                             "one block of all seeds balances a time box as well, since a sweep starts its runs "
                             "seed-major")
    parser.add_argument("--intermediate-train-size", type=int, default=None, help="MNLI_subset sample (default: all 9k)")
    parser.add_argument("--cells", default=None, help="comma-separated cell names (default: all)")
    parser.add_argument("--recipes", default=None,
                        help="comma-separated recipe labels to run within the chosen cells (default: all of each cell's)")
    options = parser.parse_args()
    if options.workers < 1 or options.seed_block < 1:
        parser.error("--workers and --seed-block: integers >= 1")
    from hf_stable_ft.experiment import prepare_task, resolve_model, run_sweep
    from hf_stable_ft.report import write_report

    deadline = time.time() + options.budget
    model = resolve_model(options.model)
    output = Path(options.output)
    try:
        chosen = choose_cells(options.seeds, options.seeds_full, options.cells, options.recipes)
    except ValueError as error:
        parser.error(str(error))
    for name, count in restore_cells(output, chosen).items():
        print(f"{name}: {count} committed record(s) restored from runs.jsonl.gz", flush=True)
    intermediate_dir = output / "mnli_subset_intermediate"
    if any(c.intermediate for c in chosen) and not (intermediate_dir / "config.json").exists():
        print("intermediate stage: MNLI_subset", flush=True)
        _stage1(model, options.data_dir, intermediate_dir, options.intermediate_train_size)
    prepared = {}
    backend = _backend(options)
    print(f"{len(chosen)} cell(s) on {backend.describe()}", flush=True)
    most = max(c.seeds for c in chosen)
    for end in range(options.seed_block, most + options.seed_block, options.seed_block):
        for cell in chosen:  # seed block by seed block, then cell by cell; seed-major within a cell
            if time.time() >= deadline or end - options.seed_block >= cell.seeds:
                continue
            config = _config(dataclasses.replace(cell, seeds=min(end, cell.seeds)), model, options.data_dir,
                             intermediate_dir)
            if cell.name not in prepared:
                prepared[cell.name] = prepare_task(config)
            print(f"{cell.name}: seeds 0-{config.seeds[-1]}", flush=True)
            restore_records(output / cell.name)  # again: run_all.py may have archived the cell since the last block
            run_sweep(config, output / cell.name, resume=True, progress=True, backend=backend, stop_at=deadline,
                      prepared=prepared[cell.name])
            archive_records(output / cell.name)  # a block's runs reach the committed archive as soon as it ends
    for name, count in finish_cells(output, chosen, write_report).items():
        print(f"{name}: {count} record(s) in runs.jsonl.gz", flush=True)
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
