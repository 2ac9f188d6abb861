"""Every GPU part of issues #17 and #18 in one time-boxed call on the GPU machine (the ``device`` tool).

In order, each step with what is left of ``--budget`` (seconds):

1. the stability cells, packed on the GPU by the sweep backend (``benchmarks/stability.py --backend processes
   --workers W``), resuming the GPU records already in ``benchmarks/results/stability_gpu`` (copied into the output
   first), 20 seeds each, in the order of ``CELLS`` (issue #18's: the lr 1e-4 and 3-epoch cells first);
2. runs per hour with 1, 4 and 8 runs packed on the GPU (``bench_sweep.py``, issue #16 part 3), then the cost and
   scale tables (``bench_cost.py --device cuda [--scale]``), the later stabilisers' rows included;
3. mixed precision on the full plugin path (``bench_amp.py --device cuda``);
4. the CUDA-only tests (``pytest -k cuda``: the bf16/fp16 mixed-precision tests left open since issue #8).

Everything it writes goes under ``--out`` (on the device, ``$OUT``): ``stability_gpu/<cell>/runs.jsonl``, the
tables ``cost_cuda.md``, ``scale_cuda.md``, ``amp_cuda.md``, a log per step (``tests.log``: the CUDA tests) and
``timings.json`` (what each step took: the GPU time used). Back here, copy ``stability_gpu/*`` over
``benchmarks/results/stability_gpu/`` and the tables into ``benchmarks/results/``, then
``python benchmarks/run_all.py`` compresses the records and assembles BENCHMARKS.md.

The device machine has torch and transformers but not ``datasets`` (nor the embedded model): carry them.
Prepare here (once; both paths are git-ignored)::

    python benchmarks/gpu_session.py --prepare        # .whl/ (datasets, dill, multiprocess) and .device_model/ (fp16)
    ln -s ../shared shared                             # the device copies shared/ of the checkout (GLUE files)

then one call (``run`` with ``carry: [".whl", ".device_model"]``, ``timeout_s`` 600)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
      && python3 benchmarks/gpu_session.py --out $OUT --model .device_model --glue shared/data/glue --budget 480

Check it here first, on CPU, in a few minutes (tiny budgets, one run, the same steps)::

    python benchmarks/gpu_session.py --cpu-check --out /tmp/gpu_check --model .device_model --budget 600

(``--model .device_model``: the model name the GPU records were made with, so the resume check passes.)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CELLS = ["cola-1k-lr1e-4", "rte-1k-lr1e-4", "cola-1k-lr2e-5", "sst2-1k-lr2e-5", "rte-1k-intermediate",
         "rte-1k-intermediate-freshhead", "rte-1k-lr2e-5", "cola-full-lr2e-5", "rte-full-lr2e-5"]
#: each step's weight in the budget (the stability cells get the rest); a step gets its weight's share of the time
#: left when it starts, so what one step leaves unused goes to the next
SHARES = {"sweep": 0.14, "cost": 0.08, "scale": 0.06, "amp": 0.06, "tests": 0.08}
WHEELS = ["datasets==5.2.0", "dill", "multiprocess"]
CUDA_TEST_FILES = ["tests/test_mixed_precision_peft.py", "tests/test_mixout.py", "tests/test_diagnostics.py",
                   "tests/test_demo.py"]


def prepare() -> None:
    """``.whl/`` with the wheels the device lacks and ``.device_model/``: the embedded MiniLM in float16."""
    import torch
    from safetensors.torch import load_file, save_file

    from hf_stable_ft.experiment import default_model

    wheels = ROOT / ".whl"
    wheels.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
                    "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(wheels), *WHEELS],
                   check=True)
    source, target = Path(default_model()), ROOT / ".device_model"
    target.mkdir(exist_ok=True)
    for item in source.iterdir():
        if item.is_file() and item.name != "model.safetensors":
            shutil.copy2(item, target / item.name)
    weights = {k: v.to(torch.float16) if v.is_floating_point() else v
               for k, v in load_file(source / "model.safetensors").items()}
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    size = sum(p.stat().st_size for p in list(wheels.iterdir()) + list(target.iterdir()))
    print(f"prepared {wheels} and {target}: {size / 2**20:.1f} MiB to carry")


def _seed_gpu_records(out: Path) -> None:
    """The GPU records so far, uncompressed into ``out/stability_gpu`` so the sweep resumes them."""
    for archive in (RESULTS / "stability_gpu").glob("*/runs.jsonl.gz"):
        cell = out / "stability_gpu" / archive.parent.name
        cell.mkdir(parents=True, exist_ok=True)
        (cell / "runs.jsonl").write_bytes(gzip.decompress(archive.read_bytes()))
        if (archive.parent / "sweep.json").exists():
            shutil.copy2(archive.parent / "sweep.json", cell / "sweep.json")


def _step(name: str, command: list[str], seconds: float, out: Path, timings: dict) -> None:
    started = time.time()
    print(f"== {name} ({seconds:.0f} s at most): {' '.join(command)}", flush=True)
    try:
        with open(out / f"{name}.log", "w") as log:
            code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=max(seconds, 1)).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    timings[name] = {"seconds": round(time.time() - started, 1), "exit": code}
    print(f"   {name}: {timings[name]}", flush=True)
    (out / "timings.json").write_text(json.dumps(timings, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--prepare", action="store_true", help="download the wheels and write the fp16 model, then stop")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu_session")))
    parser.add_argument("--model", default=None, help="the model directory (on the device: .device_model)")
    parser.add_argument("--glue", default=os.environ.get("GLUE_DIR"), help="the GLUE directory")
    parser.add_argument("--budget", type=float, default=480, help="seconds for everything")
    parser.add_argument("--workers", type=int, default=14, help="stability runs packed on the GPU at once")
    parser.add_argument("--cpu-check", action="store_true", help="a few-minute rehearsal on CPU: tiny budgets")
    options = parser.parse_args()
    if options.prepare:
        prepare()
        return
    started = time.time()
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if options.cpu_check else "cuda"
    import torch
    import transformers

    facts = {"torch": torch.__version__, "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d"),
             "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "budget_s": options.budget}
    (out / "env.json").write_text(json.dumps(facts, indent=1))
    print(facts, flush=True)
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; use --cpu-check to rehearse on CPU")
    timings: dict = {}
    python = sys.executable
    model = ["--model-path", options.model] if options.model else []
    budget = options.budget
    weights = {"stability": 1 - sum(SHARES.values()), **SHARES}

    def allowance(name: str) -> float:
        """This step's share of what is left: time a step leaves unused goes to the steps after it."""
        order = list(weights)
        left = budget - (time.time() - started)
        return max(left * weights[name] / sum(weights[n] for n in order[order.index(name):]), 1.0)

    _seed_gpu_records(out)
    stability = [python, "benchmarks/stability.py", "--output", str(out / "stability_gpu"), "--backend", "processes",
                 "--seeds", "20", "--seeds-full", "5"]
    stability += ["--model", options.model] if options.model else []
    stability += ["--data-dir", options.glue] if options.glue else []
    if options.cpu_check:
        # the GPU records of this cell hold seeds 0-4: seed 5 is one real run, resumed into them like the GPU's
        stability += ["--cells", "cola-1k-lr1e-4", "--recipes", "devlin2019", "--seeds", "6", "--workers", "2"]
    else:
        stability += ["--cells", ",".join(CELLS), "--workers", str(options.workers), "--seed-block", "5"]
    # no new run in the last 120 s of the step (the longest GPU run, ~77 s, finishes); the timeout is a backstop
    seconds = allowance("stability")
    _step("stability", stability + ["--budget", str(max(seconds - 120, 1))], seconds, out, timings)
    packing = ["--backends", "local,processes:2", "--seeds", "1", "--max-steps", "4"] if options.cpu_check else [
        "--backends", "local,processes:4,processes:8", "--seeds", "4", "--max-steps", "100"]
    _step("sweep", [python, "benchmarks/bench_sweep.py", *packing, *(["--model", options.model] if options.model else []),
                    *(["--data-dir", options.glue] if options.glue else []), "--output", str(out / f"sweep_{device}.md")],
          allowance("sweep"), out, timings)
    quick = ["--steps", "6", "--skip", "2", "--rounds", "1"] if options.cpu_check else []
    for name, extra in (("cost", []), ("scale", ["--scale"])):
        _step(name, [python, "benchmarks/bench_cost.py", "--device", device, *extra, *model, *quick,
                     "--output", str(out / f"{name}_{device}.md")], allowance(name), out, timings)
    _step("amp", [python, "benchmarks/bench_amp.py", "--device", device, *model, *quick,
                  "--output", str(out / f"amp_{device}.md")], allowance("amp"), out, timings)
    _step("tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors", "-k",
                    "cuda", *CUDA_TEST_FILES], allowance("tests") - 5, out, timings)
    timings["total_s"] = round(time.time() - started, 1)
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    print(json.dumps(timings), flush=True)


if __name__ == "__main__":
    main()
