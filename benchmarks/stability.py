"""Stability benchmark: recipes × seeds on CoLA and RTE with the embedded MiniLM (issue #6, table 2).

Runs the cells below with a pool of worker processes (on a GPU several small-model runs share the card),
each cell a sweep directory with the usual ``runs.jsonl`` / ``report.md`` (``hf-stable-ft report``). It is
resumable: finished runs are skipped, so a time-boxed call can be continued by the next one.

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
  the same with bias correction.
* ``<task>-full-lr2e-5``: the whole training set, devlin2019 / stock / mosbach2021 / zhang2021.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

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
#: (a window of ~100 of the 189 updates; 0.999 would average in the first updates); RecAdam's t0 = 50 of 189
#: updates (the paper's 250 is for runs of thousands); ChildTuning p as the paper's middle values.
LATER_TECHNIQUES = [
    "noisytune0.15=devlin2019:adam_bias_correction=true:noisytune_intensity=0.15",
    "childF0.3=devlin2019:adam_bias_correction=true:child_tuning_mode=F:child_tuning_p=0.3",
    "childD0.3=devlin2019:adam_bias_correction=true:child_tuning_mode=D:child_tuning_p=0.3",
    "r3f1=devlin2019:adam_bias_correction=true:r3f_lambda=1.0",
    "ema0.99=devlin2019:adam_bias_correction=true:weight_averaging=ema:ema_decay=0.99",
    "swa0.75=devlin2019:adam_bias_correction=true:weight_averaging=swa:swa_start_fraction=0.75",
    "recadam=devlin2019:adam_bias_correction=true:pretrained_weight_decay=0.01:recadam_k=0.1:recadam_t0=50",
]
#: The same on top of zhang2021 (the question Zhang et al. asked of Mixout and LLRD).
LATER_ON_ZHANG = [
    "zhang+noisytune0.15=zhang2021:noisytune_intensity=0.15",
    "zhang+childF0.3=zhang2021:child_tuning_mode=F:child_tuning_p=0.3",
    "zhang+childD0.3=zhang2021:child_tuning_mode=D:child_tuning_p=0.3",
    "zhang+r3f1=zhang2021:r3f_lambda=1.0",
    "zhang+ema0.999=zhang2021:weight_averaging=ema:ema_decay=0.999",
    "zhang+swa0.75=zhang2021:weight_averaging=swa:swa_start_fraction=0.75",
    "zhang+recadam=zhang2021:pretrained_weight_decay=0.01:recadam_k=0.1:recadam_t0=250",
]
PRESETS = ["devlin2019", "stock", "mosbach2021", "zhang2021"]
INTERMEDIATE = "intermediate=devlin2019:adam_bias_correction=true"
LABEL_MAP = {"entailment": "entailment", "neutral": "not_entailment", "contradiction": "not_entailment"}


@dataclasses.dataclass
class Cell:
    name: str
    task: str
    train_size: int | None
    recipes: list[str]
    seeds: int
    training: dict = dataclasses.field(default_factory=dict)
    intermediate: bool = False


def cells(seeds_small: int, seeds_full: int) -> list[Cell]:
    out = []
    for task, n in (("cola", seeds_small), ("rte", seeds_small)):
        out.append(Cell(f"{task}-1k-lr2e-5", task, 1000, PRESETS + SINGLE_TECHNIQUES + LATER_TECHNIQUES
                        + LATER_ON_ZHANG, n))
        out.append(Cell(f"{task}-1k-lr1e-4", task, 1000, ["devlin2019", BASE_3EP] + LATER_TECHNIQUES, n,
                        {"learning_rate": 1e-4}))
    # a task where every recipe learns: does a technique still change anything there?
    out.append(Cell("sst2-1k-lr2e-5", "sst2", 1000, PRESETS + [BASE_3EP] + LATER_TECHNIQUES + LATER_ON_ZHANG,
                    seeds_small))
    out.append(Cell("rte-1k-intermediate", "rte", 1000, [INTERMEDIATE], seeds_small, intermediate=True))
    for task in ("rte", "cola"):
        out.append(Cell(f"{task}-full-lr2e-5", task, None, PRESETS, seeds_full))
    return out


def _config(cell: Cell, model: str, data_dir: str | None, intermediate_dir: Path | None):
    from hf_stable_ft.experiment import SweepConfig

    return SweepConfig(
        task=cell.task, model=str(intermediate_dir) if cell.intermediate else model, recipes=cell.recipes,
        seeds=list(range(cell.seeds)), train_size=cell.train_size, protocol="zhang2021", data_dir=data_dir,
        label_map=LABEL_MAP if cell.intermediate else None,
        training={"per_device_eval_batch_size": 256, **cell.training},
    )


def _append_locked(path: Path, record: dict) -> None:
    line = json.dumps(record, sort_keys=True) + "\n"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
        fcntl.flock(handle, fcntl.LOCK_UN)


def _worker(jobs, results, model, data_dir, output, deadline, intermediate_dir):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import logging as hf_logging

    from hf_stable_ft.experiment import parse_recipe, prepare_task, run_single

    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    prepared = {}
    cell_by_name = {c.name: c for c in cells(1, 1)}
    while time.time() < deadline:
        job = jobs.get()
        if job is None:
            break
        cell_name, recipe, seed = job
        cell = dataclasses.replace(cell_by_name[cell_name])
        if cell.intermediate:
            while not (intermediate_dir / "config.json").exists():
                if time.time() > deadline:
                    return
                time.sleep(2)
        if cell_name not in prepared:
            prepared[cell_name] = prepare_task(_config(cell, model, data_dir, intermediate_dir))
        config = _config(cell, model, data_dir, intermediate_dir)
        with tempfile.TemporaryDirectory() as run_dir:
            record = run_single(prepared[cell_name], parse_recipe(recipe), seed, run_dir, config.training)
        _append_locked(output / cell_name / "runs.jsonl", record)
        results.put((cell_name, record["run_id"], record["status"]))


def _stage1(model, data_dir, intermediate_dir, train_size):
    from hf_stable_ft.experiment import SweepConfig, parse_recipe, prepare_task, run_single

    config = SweepConfig(task="mnli_subset", model=model, recipes=[INTERMEDIATE], seeds=[0], protocol="glue",
                         data_dir=data_dir, train_size=train_size, training={"per_device_eval_batch_size": 256})
    record = run_single(prepare_task(config), parse_recipe(INTERMEDIATE), 0, tempfile.mkdtemp(), config.training,
                        save_best_to=intermediate_dir)
    (intermediate_dir.parent / "intermediate_stage1.json").write_text(json.dumps(record, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/results/stability")
    parser.add_argument("--model", default=None, help="default: the embedded MiniLM")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--budget", type=float, default=1e9, help="seconds after which no new run starts")
    parser.add_argument("--seeds", type=int, default=20, help="seeds of the 1k cells")
    parser.add_argument("--seeds-full", type=int, default=5, help="seeds of the full-training-set cells")
    parser.add_argument("--intermediate-train-size", type=int, default=None, help="MNLI_subset sample (default: all 9k)")
    parser.add_argument("--cells", default=None, help="comma-separated cell names (default: all)")
    parser.add_argument("--recipes", default=None,
                        help="comma-separated recipe labels to run within the chosen cells (default: all of each cell's)")
    options = parser.parse_args()
    from hf_stable_ft.experiment import SWEEP_FILE, read_finished_runs, resolve_model

    deadline = time.time() + options.budget
    model = resolve_model(options.model)
    output = Path(options.output)
    chosen = cells(options.seeds, options.seeds_full)
    if options.cells:
        names = options.cells.split(",")
        unknown = sorted(set(names) - {c.name for c in chosen})
        if unknown:
            parser.error(f"--cells: unknown {unknown}; choose from {[c.name for c in chosen]}")
        chosen = [c for c in chosen if c.name in names]
    if options.recipes:
        wanted = options.recipes.split(",")
        known = {r.split("=", 1)[0] for c in chosen for r in c.recipes}
        if set(wanted) - known:
            parser.error(f"--recipes: unknown {sorted(set(wanted) - known)}; the chosen cells have {sorted(known)}")
        chosen = [dataclasses.replace(c, recipes=[r for r in c.recipes if r.split("=", 1)[0] in wanted])
                  for c in chosen]
        chosen = [c for c in chosen if c.recipes]
    intermediate_dir = output / "mnli_subset_intermediate"
    jobs_list = []
    for cell in chosen:
        (output / cell.name).mkdir(parents=True, exist_ok=True)
        config = _config(cell, model, options.data_dir, intermediate_dir)
        (output / cell.name / SWEEP_FILE).write_text(json.dumps({"config": dataclasses.asdict(config)}, indent=1, default=str))
        done = read_finished_runs(output / cell.name / "runs.jsonl")
        for seed in range(cell.seeds):
            for recipe in cell.recipes:
                label = recipe.split("=", 1)[0]
                if f"{label}/seed={seed}" not in done:
                    # seed-major order: a time-boxed call leaves every recipe with about the same seed count
                    jobs_list.append((seed, cell.intermediate, cell.name, recipe))
    jobs_list.sort(key=lambda j: (j[1], j[0]))
    print(f"{len(jobs_list)} runs to do with {options.workers} workers", flush=True)
    context = mp.get_context("spawn")
    stage1 = None
    if any(c.intermediate for c in chosen) and not (intermediate_dir / "config.json").exists():
        stage1 = context.Process(target=_stage1, args=(model, options.data_dir, intermediate_dir,
                                                       options.intermediate_train_size), daemon=True)
        stage1.start()
    jobs, results = context.Queue(), context.Queue()
    for seed, _, cell_name, recipe in jobs_list:
        jobs.put((cell_name, recipe, seed))
    for _ in range(options.workers):
        jobs.put(None)
    workers = [context.Process(target=_worker, args=(jobs, results, model, options.data_dir, output, deadline,
                                                     intermediate_dir)) for _ in range(options.workers)]
    for w in workers:
        w.start()
    finished = 0
    while any(w.is_alive() for w in workers):
        while not results.empty():
            cell_name, run_id, status = results.get()
            finished += 1
            print(f"[{finished}/{len(jobs_list)}] {cell_name} {run_id} {status}", flush=True)
        time.sleep(1)
    if stage1 is not None:
        stage1.join(timeout=1)
    from hf_stable_ft.report import write_report

    for cell in chosen:
        if (output / cell.name / "runs.jsonl").exists():
            write_report(output / cell.name, baseline_recipe="devlin2019" if "devlin2019" in [
                r.split("=", 1)[0] for r in cell.recipes] else None)
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
