"""Mixed precision on the plugin's full path (issue #8): fp32 vs bf16 (vs fp16 on CUDA), every feature on.

Each precision trains the embedded all-MiniLM-L6-v2 through ``StableTrainer`` with re-init (pooler + top block),
BERTAdam, LLRD 0.9, pretrained WD 0.01, Mixout 0.1 and diagnostics every 10 updates, on fixed synthetic batches
whose label is a function of the first token (learnable, so the loss falls). Precisions run round-robin
(``--rounds``) from the same seed. Recorded per precision: median step time and its ratio to fp32 in the same
round, peak GPU memory, whether every logged loss is finite, the last logged loss and the largest gap to the
fp32 run's logged losses, and the invariants the tests check — StableAdamW's moments in fp32, pretrained-WD
anchors exact fp32 copies of the loaded weights, Mixout W₀ in the weight dtype (fp32), parameters fp32.

    python benchmarks/bench_amp.py                 # CPU: fp32 vs bf16 autocast
    python benchmarks/bench_amp.py --device cuda   # GPU: fp32, bf16 (if supported), fp16 (GradScaler)

Multi-GPU DDP is covered by ``examples/ddp_finetune.py`` under ``torchrun``; this script notes how many GPUs
the machine has so the table says whether that was possible.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile

import torch
from common import StepTimer, SyntheticBatches, add_training_run_options, embedded_model_path, machine_description, write_result
from transformers import AutoModelForSequenceClassification
from transformers import logging as hf_logging

from hf_stable_ft import StableAdamW, StableTrainer, StableTrainingArguments, get_fine_tuning_state
from hf_stable_ft.mixout import MixoutLinear

FEATURES = dict(adam_bias_correction=False, reinit_pooler=True, reinit_layers=1, layerwise_lr_decay=0.9,
                pretrained_weight_decay=0.01, weight_decay=0.01, mixout_prob=0.1, diagnostics_steps=10)


def invariants(trainer, loaded: dict[str, torch.Tensor]) -> dict[str, bool]:
    """The mixed-precision guarantees of the README, checked on the trained model."""
    model = trainer.model
    optimizer = trainer.optimizer
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    assert isinstance(optimizer, StableAdamW)
    names = {id(p): n for g in optimizer.param_groups for n, p in zip(g["param_names"], g["params"])}
    state = get_fine_tuning_state(model)
    anchors_exact = bool(optimizer.pretrained_anchors) and not set(state.reinitialized) & {
        names[id(p)] for p in optimizer.pretrained_anchors} and all(
        anchor.dtype == torch.float32 and torch.equal(anchor.cpu(), loaded[names[id(p)]].cpu())
        for p, anchor in optimizer.pretrained_anchors.items())
    moments = {s[k].dtype for s in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq") if k in s}
    targets = [m.mixout_target.dtype for m in model.modules() if isinstance(m, MixoutLinear)]
    return {
        "parameters fp32": all(p.dtype == torch.float32 for p in model.parameters()),
        "moments fp32": moments == {torch.float32},
        "anchors exact fp32": anchors_exact,
        "Mixout W₀ fp32": bool(targets) and set(targets) == {torch.float32},
    }


def run(precision: str, device: str, batch: int, length: int, steps: int, skip: int, model_path: str):
    with tempfile.TemporaryDirectory() as out:
        args = StableTrainingArguments(
            output_dir=out, per_device_train_batch_size=batch, max_steps=steps, logging_steps=max(1, min(5, steps)), learning_rate=5e-5,
            warmup_steps=0.1, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=device == "cpu",
            seed=0, dataloader_num_workers=0, bf16=precision == "bf16", fp16=precision == "fp16", **FEATURES)
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2, dtype=torch.float32)
        loaded = {n: p.detach().clone() for n, p in model.named_parameters()}
        timer = StepTimer(skip)
        trainer = StableTrainer(model=model, args=args, train_dataset=SyntheticBatches(batch * steps, length, learnable=True),
                                callbacks=[timer])
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        return {"times": timer.times, "peak": peak, "losses": losses, "checks": invariants(trainer, loaded)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_run_options(parser, steps=40, skip=5, rounds=2)
    options = parser.parse_args()
    hf_logging.set_verbosity_error()
    model_path = options.model_path or embedded_model_path()
    precisions = ["fp32", "bf16"]
    if options.device == "cuda":
        precisions = ["fp32"] + (["bf16"] if torch.cuda.is_bf16_supported() else []) + ["fp16"]
    results = {p: [] for p in precisions}
    for _ in range(options.rounds):
        for precision in precisions:
            results[precision].append(run(precision, options.device, options.batch, options.length, options.steps,
                                          options.skip, model_path))
    reference = results["fp32"][0]["losses"]
    check_names = list(results["fp32"][0]["checks"])
    lines = [
        f"StableTrainer with every feature on (BERTAdam, re-init pooler + top block, LLRD 0.9, pretrained WD 0.01, "
        f"Mixout 0.1, diagnostics every 10 updates), all-MiniLM-L6-v2, batch {options.batch} × {options.length}, "
        f"{options.steps} updates per run, {options.rounds} interleaved rounds, learnable synthetic labels — "
        f"{machine_description(options.device)}"
        + (f" · {torch.cuda.device_count()} GPU(s) visible" if options.device == "cuda" else ""),
        "",
        "| precision | step time (median) | ratio vs fp32 (median of per-round ratios) | peak GPU memory | losses finite "
        "| last logged loss | max loss gap to fp32 | " + " | ".join(check_names) + " |",
        "|---" * (7 + len(check_names)) + "|",
    ]
    fp32_rounds = [statistics.median(r["times"]) for r in results["fp32"]]
    for precision, runs in results.items():
        medians = [statistics.median(r["times"]) for r in runs]
        ratio = statistics.median(m / b for m, b in zip(medians, fp32_rounds))
        first = runs[0]
        finite = all(math.isfinite(x) for r in runs for x in r["losses"])
        gap = max((abs(a - b) for a, b in zip(first["losses"], reference)), default=float("nan"))
        peak = "–" if first["peak"] is None else f"{first['peak'] / 2**20:.0f} MiB"
        checks = [all(r["checks"][name] for r in runs) for name in check_names]
        lines.append(
            f"| {precision} | {1000 * statistics.median(medians):.1f} ms | {ratio:.3f}× | {peak} | "
            f"{'yes' if finite else '**no**'} | {first['losses'][-1]:.4f} | {gap:.4f} | "
            + " | ".join("yes" if ok else "**no**" for ok in checks) + " |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    write_result(options.output or f"benchmarks/results/amp_{options.device}.md", text)


if __name__ == "__main__":
    main()
