"""Sweep backends side by side (issue #16, part 3): one fixed grid run serially and on 2 workers.

The grid: CoLA, a 1,000-example class-stratified sample, the embedded MiniLM, ``--recipes`` × ``--seeds``, each
run ``--max-steps`` updates with ``--evaluations`` evaluations, one torch thread per run. It runs once per
backend, from the same prepared data (the loading is not timed), into a fresh directory each:

* ``local``: one run after another in this process (the serial reference);
* ``processes``: ``ProcessBackend(2)``, two worker processes;
* ``ray``: ``RayBackend(cpus_per_run=1)`` on a local Ray with 2 CPUs (started inside the timed call).

Per backend: wall time of the sweep call, runs per hour, the speed-up over serial and its ratio to the ideal
(2× with 2 workers), each run's own wall time (``wall_time_s`` of its record: the training and evaluation), and the
engine's overhead per run: ``(workers × sweep wall − Σ run wall times) / runs``, the time a worker slot spent on
anything but a run (starting the engine and its workers, shipping data and records, idle at the end). It also
checks that every backend gave the same scores, run for run.

    python benchmarks/bench_sweep.py --output benchmarks/results/sweep_cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

SCORES = ("best_validation", "test_at_best_validation", "final_validation", "train_loss")


def _runs(spec: str) -> list[tuple[str, int]]:
    """``local,processes,ray`` or ``processes:4,processes:8`` -> [(backend, workers)]."""
    out = []
    for item in spec.split(","):
        name, _, workers = item.partition(":")
        if name not in ("local", "processes", "ray"):
            raise SystemExit(f"--backends: unknown {name!r}; allowed: local, processes[:N], ray[:N]")
        out.append((name, 1 if name == "local" else int(workers or 0) or None))
    return out


def _backend(name: str, workers: int):
    from hf_stable_ft.sweep_backends import make_backend

    if name == "local":
        return make_backend("local")
    if name == "processes":
        return make_backend("processes", max_concurrent=workers)
    return make_backend("ray", cpus_per_run=1, max_concurrent=workers,
                        init_kwargs={"num_cpus": workers, "log_to_driver": False,
                                     "_temp_dir": tempfile.mkdtemp(prefix="ray", dir="/tmp")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--output", default=None, help="markdown file for the table (default: print only)")
    parser.add_argument("--recipes", default="devlin2019,debiased=devlin2019:adam_bias_correction=true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--evaluations", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backends", default="local,processes,ray",
                        help="comma-separated; processes:N / ray:N set the workers (default --workers), e.g. on a GPU "
                             "local,processes:4,processes:8,processes:14 (runs packed on one GPU)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default=None, help="default: the embedded MiniLM")
    options = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    from hf_stable_ft.experiment import SweepConfig, prepare_task, read_finished_runs, resolve_model, run_sweep

    torch.set_num_threads(1)  # the serial reference with one thread, as each worker has
    transformers.logging.set_verbosity_error()
    config = SweepConfig(task="cola", model=resolve_model(options.model), recipes=options.recipes.split(","),
                         seeds=list(range(options.seeds)), train_size=1000, data_dir=options.data_dir,
                         evaluations_per_run=options.evaluations,
                         training={"max_steps": options.max_steps, "per_device_eval_batch_size": 256})
    prepared = prepare_task(config)
    rows, records = [], {}
    for name, workers in _runs(options.backends):
        workers = workers or options.workers
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            path = run_sweep(config, out, progress=False, backend=_backend(name, workers), prepared=prepared)
            wall = time.perf_counter() - started
            key = name if name == "local" else f"{name}:{workers}"
            records[key] = read_finished_runs(path)
        runs = list(records[key].values())
        assert all(r["status"] == "finished" for r in runs), [r.get("error") for r in runs]
        run_walls = [r["wall_time_s"] for r in runs]
        rows.append({"backend": name if name == "local" else f"{name}:{workers}", "workers": workers, "runs": len(runs), "wall_s": wall,
                     "runs_per_hour": 3600 * len(runs) / wall, "run_wall_mean_s": statistics.mean(run_walls),
                     "overhead_per_run_s": (workers * wall - sum(run_walls)) / len(runs)})
        print(json.dumps(rows[-1]), flush=True)
    serial = next((r for r in rows if r["backend"] == "local"), None)
    same = {name: all(records[name][k].get(s) == records["local"][k].get(s) for k in records["local"] for s in SCORES)
            for name in records if name != "local"} if "local" in records else {}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else (
        f"{platform.machine()}, {os.cpu_count()} cores (the project's CPU VM, other jobs paused)")
    lines = [
        f"**Sweep backends side by side** — `python benchmarks/bench_sweep.py {' '.join(sys.argv[1:])}`; "
        f"{time.strftime('%Y-%m-%d')}; {device}; torch {torch.__version__}, transformers {transformers.__version__}; embedded MiniLM, CoLA 1k, "
        f"{len(config.recipes)} recipes × {options.seeds} seeds, {options.max_steps} updates and {options.evaluations} "
        "evaluations per run, one torch thread per run.",
        "",
        "| backend | workers | runs | sweep wall (s) | runs / hour | speed-up vs serial | of ideal | mean run wall (s) "
        "| engine overhead per run (s) | same scores as serial |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speedup = serial["wall_s"] / r["wall_s"] if serial else float("nan")
        ideal = speedup / r["workers"]
        lines.append(f"| {r['backend']} | {r['workers']} | {r['runs']} | {r['wall_s']:.0f} | {r['runs_per_hour']:.0f} | "
                     f"{speedup:.2f}× | {100 * ideal:.0f}% | {r['run_wall_mean_s']:.1f} | {r['overhead_per_run_s']:.1f} "
                     f"({100 * r['overhead_per_run_s'] / r['run_wall_mean_s']:.1f}%) | "
                     f"{'—' if r['backend'] == 'local' else ('yes' if same.get(r['backend']) else 'NO')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if options.output:
        Path(options.output).write_text(text)


if __name__ == "__main__":
    main()
