"""Every GPU part of issues #17 and #18 in one time-boxed call on the GPU machine (the ``device`` tool).

First, before the device does anything, every pass below is planned against the GPU records it will resume
(``stability.resume_refusals``): a pass that would be refused (another ``--model`` name, a label whose settings
changed) stops the session at once with the reasons. Then, in order, each step with its share of what is left of
``--budget`` (seconds):

1. the CUDA-only tests (``pytest -k cuda``: the bf16/fp16 mixed-precision tests left open since issue #8); a
   failure there, or a first stability pass that dies within a minute, ends the session at once (fail fast: the
   device time left can rerun it);
2. the stability passes of ``PASSES``, most needed first, each packed on the GPU by the sweep backend
   (``benchmarks/stability.py --backend processes --workers W``) and resuming the GPU records already in
   ``benchmarks/results/stability_gpu`` (copied into the output first); no run starts in the last ``GUARD_S``
   seconds of the step, so the runs in flight finish;
3. the cost and scale tables (``bench_cost.py --device cuda [--scale]``), the later stabilisers' rows included;
4. mixed precision on the full plugin path (``bench_amp.py --device cuda``);
5. runs per hour with 1, 4 and 8 runs packed on the GPU (``bench_sweep.py``), with what time is left.

Everything it writes goes under ``--out``: ``stability_gpu/<cell>/runs.jsonl.gz`` (the committed records and
the new ones), the tables ``cost_cuda.md``,
``scale_cuda.md``, ``amp_cuda.md``, ``sweep_cuda.md``, a log per step (``tests.log``: the CUDA tests;
``stability<N>.log``: pass N) and ``timings.json`` (what each step took: the GPU time used); ``--bundle`` packs it
into one ``.tgz`` after every step (the device returns at most 8 files from ``$OUT``). Back here, unpack it, copy
``stability_gpu/*`` over ``benchmarks/results/stability_gpu/`` and the tables into ``benchmarks/results/``, then
``python benchmarks/run_all.py`` compresses the records and assembles BENCHMARKS.md.

The device machine has torch and transformers but not ``datasets`` (nor the embedded model or the GLUE files):
carry them. Prepare here (once; the three paths are git-ignored)::

    python benchmarks/gpu_session.py --prepare        # .whl/ (datasets, dill, multiprocess) and .device_model/ (fp16)
    cp -r ../shared/data/glue .device_glue            # only for the trip: never committed

then one call (``run`` with ``carry: [".whl", ".device_model", ".device_glue"]``, ``timeout_s`` 560)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
      && timeout 540 python3 benchmarks/gpu_session.py --out /tmp/gs --bundle $OUT/gpu_session.tgz \
         --model .device_model --glue .device_glue --budget 500

Check it here first, on CPU, in a few minutes (tiny budgets, one real run, the same steps)::

    python benchmarks/gpu_session.py --cpu-check --out /tmp/gpu_check --bundle /tmp/gpu_check.tgz \
        --model .device_model --glue .device_glue --budget 420

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
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from stability import LATER_ON_ZHANG, LATER_TECHNIQUES, label_of, resume_refusals  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
#: The stability passes, most needed first: (cells, recipe labels or None for every recipe of the cells, seeds).
#: Each pass is one ``stability.py`` call whose runs are all queued at once (seed-major), so the GPU stays full and
#: a time box leaves the recipes of a pass with the same seeds, give or take one.
HEADLINE_RECIPES = "devlin2019,stock,mosbach2021,zhang2021,debiased3ep"
PASSES = [
    ("cola-1k-lr2e-5", HEADLINE_RECIPES, 20),  # issue #18's headline cell
    ("cola-1k-lr2e-5", ",".join(map(label_of, LATER_TECHNIQUES)), 10),  # issue #17 on the 3-epoch base
    ("cola-1k-lr1e-4,rte-1k-lr1e-4", "devlin2019,debiased3ep", 20),
    ("sst2-1k-lr2e-5", HEADLINE_RECIPES, 20),
    ("cola-1k-lr2e-5", ",".join(map(label_of, LATER_ON_ZHANG)), 10),  # issue #17 on zhang2021
    ("cola-1k-lr1e-4,sst2-1k-lr2e-5", ",".join(map(label_of, ["zhang2021", *LATER_ON_ZHANG])), 10),
    ("rte-1k-intermediate,rte-1k-intermediate-freshhead,rte-full-lr2e-5,cola-full-lr2e-5", None, 20),
]
CPU_CHECK_PASSES = [  # the GPU records of this cell hold seeds 0-4: seed 5 is one real run, resumed into them
    ("cola-1k-lr1e-4", "devlin2019", 6),
    ("rte-1k-lr1e-4", "devlin2019", 6),  # reached only with a large --budget: shows the deadline between passes
]
#: no stability run starts in the last GUARD_S seconds of the stability step: the longest GPU run (~77 s) finishes
GUARD_S = 90
#: each step's weight in the budget; a step gets its weight's share of the time left when it starts, so what one
#: step leaves unused goes to the steps after it
SHARES = {"tests": 0.09, "stability": 0.62, "cost": 0.14, "amp": 0.07, "scale": 0.10, "sweep": 0.02}
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


def _bundle(out: Path, bundle: Path | None) -> None:
    """Everything under ``out`` as one ``.tgz`` (the device returns at most 8 files), rewritten after each step so
    a call cut off at its limit still brings back what finished."""
    if bundle is None:
        return
    partial = bundle.with_name(bundle.name + ".partial")
    with tarfile.open(partial, "w:gz") as archive:
        archive.add(out, arcname=".")
    partial.replace(bundle)


def _step(name: str, command: list[str], seconds: float, out: Path, timings: dict, bundle: Path | None = None) -> None:
    started = time.time()
    print(f"== {name} ({seconds:.0f} s at most): {' '.join(command)}", flush=True)
    try:
        with open(out / f"{name}.log", "w") as log:
            code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=max(seconds, 1)).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    timings[name] = {"seconds": round(time.time() - started, 1), "exit": code}
    print(f"   {name}: {timings[name]}", flush=True)
    if code not in (0, "timeout"):
        print("".join((out / f"{name}.log").read_text().splitlines(keepends=True)[-25:]), flush=True)
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    _bundle(out, bundle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--prepare", action="store_true", help="download the wheels and write the fp16 model, then stop")
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu_session"), help="where every result is written")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="also pack --out into this .tgz after every step (on the device: $OUT/gpu_session.tgz)")
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
    passes = CPU_CHECK_PASSES if options.cpu_check else PASSES
    _seed_gpu_records(out)
    from hf_stable_ft.experiment import resolve_model

    refusals = resume_refusals(out / "stability_gpu", resolve_model(options.model), options.glue, passes)
    if refusals:  # before the device spends a second: a pass refused at its turn would waste the session
        raise SystemExit("the GPU records would refuse these passes; nothing was run:\n  " + "\n  ".join(refusals)
                         + "\n(the GPU records were made with --model .device_model: pass that name)")
    timings: dict = {}
    python = sys.executable
    model = ["--model-path", options.model] if options.model else []  # the bench_*.py spelling
    sweep_inputs = [*(["--model", options.model] if options.model else []),  # stability.py's and bench_sweep.py's
                    *(["--data-dir", options.glue] if options.glue else [])]
    budget = options.budget

    def allowance(name: str) -> float:
        """This step's share of what is left: time a step leaves unused goes to the steps after it."""
        order = list(SHARES)
        left = budget - (time.time() - started)
        return max(left * SHARES[name] / sum(SHARES[n] for n in order[order.index(name):]), 1.0)

    def step(name, command, seconds):
        _step(name, command, seconds, out, timings, options.bundle)
        return timings[name]

    tests = step("tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", *CUDA_TEST_FILES],
                 allowance("tests"))
    if tests["exit"] not in (0, 5, "timeout"):  # 5: no test selected; a timeout is not a failure
        raise SystemExit(f"the CUDA tests failed ({tests}): stopping here, see tests.log")

    stability = [python, "benchmarks/stability.py", "--output", str(out / "stability_gpu"), "--backend", "processes",
                 "--seeds-full", "5", "--workers", str(2 if options.cpu_check else options.workers), *sweep_inputs]
    stability_end = time.time() + allowance("stability")
    for number, (cells, recipes, seeds) in enumerate(passes, 1):
        launch = stability_end - GUARD_S - time.time()
        if launch < 10:
            print(f"stability pass {number}: no time left ({cells}, {recipes})", flush=True)
            continue
        name = f"stability{number}"
        result = step(name, stability + ["--cells", cells, "--seeds", str(seeds), "--seed-block", str(seeds),
                                         "--budget", str(round(launch)), *(["--recipes", recipes] if recipes else [])],
                      stability_end - time.time())
        if number == 1 and result["exit"] != 0 and result["seconds"] < 60:
            raise SystemExit(f"the first stability pass failed at once ({result}): stopping here, see {name}.log")
    # two interleaved rounds on the GPU (three by default): a MiniLM step there is ~15 ms, the Trainer's set-up ~1 s
    quick = ["--steps", "6", "--skip", "2", "--rounds", "1"] if options.cpu_check else ["--rounds", "2"]
    for name, script, extra in (("cost", "bench_cost.py", []), ("amp", "bench_amp.py", []),
                                ("scale", "bench_cost.py", ["--scale"])):
        step(name, [python, f"benchmarks/{script}", "--device", device, *extra, *model, *quick,
                    "--output", str(out / f"{name}_{device}.md")], allowance(name))
    packing = ["--backends", "local,processes:2", "--seeds", "1", "--max-steps", "4"] if options.cpu_check else [
        "--backends", "local,processes:4,processes:8", "--seeds", "2", "--max-steps", "100"]
    if allowance("sweep") >= 30:
        step("sweep", [python, "benchmarks/bench_sweep.py", *packing, *sweep_inputs,
                       "--output", str(out / f"sweep_{device}.md")], allowance("sweep") - 5)
    timings["total_s"] = round(time.time() - started, 1)
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    _bundle(out, options.bundle)
    print(json.dumps(timings), flush=True)


if __name__ == "__main__":
    main()
