"""Cost of each hf_stable_ft feature against the stock Trainer, and how it scales (issue #6, tables 1 and 3).

Every variant trains the embedded all-MiniLM-L6-v2 (sequence classification, 2 labels) through a real
``Trainer.train()`` on fixed synthetic batches (random token ids, full-length sequences), so the timing
includes the callback, the optimizer factory's groups and the diagnostics hooks. Variants run round-robin
(``--rounds``), and each variant's step time is the median over all timed steps (the first steps of every
round are warm-up and not timed); ratios are against the stock ``Trainer`` (``TrainingArguments`` defaults,
torch's fused AdamW) measured in the same rounds.

Memory: on CUDA the peak allocated bytes of a run (``torch.cuda.max_memory_allocated``); everywhere the
bytes the plugin keeps besides what the stock Trainer keeps (optimizer state is the same size):
pretrained-WD anchors / diagnostics start snapshot, Mixout W₀ buffers — counted exactly from the tensors.

    python benchmarks/bench_cost.py                      # table 1 (features), CPU
    python benchmarks/bench_cost.py --scale              # table 3 (sequence length x batch size)
    python benchmarks/bench_cost.py --device cuda --scale
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from common import StepTimer, SyntheticBatches, add_training_run_options, embedded_model_path, machine_description, write_result
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments
from transformers import logging as hf_logging

from hf_stable_ft import StableTrainer, StableTrainingArguments, get_fine_tuning_state

FEATURES = {
    "stock Trainer (fused AdamW)": None,
    "StableAdamW, bias-corrected": {},
    "BERTAdam (adam_bias_correction=False)": {"adam_bias_correction": False},
    "LLRD (layerwise_lr_decay=0.9)": {"layerwise_lr_decay": 0.9},
    "pretrained WD (0.01)": {"pretrained_weight_decay": 0.01},
    "re-init (pooler + 2 blocks)": {"reinit_pooler": True, "reinit_layers": 2},
    "Mixout (p=0.1)": {"mixout_prob": 0.1},
    "diagnostics every 10 steps": {"diagnostics_steps": 10},
    # Issue 17's stabilisers. NoisyTune perturbs once at preparation (no per-step cost expected); ChildTuning_D's
    # Fisher pass (one forward+backward over the training set) runs at on_train_begin, outside the timed steps, and
    # it keeps a snapshot of the starting weights (counted in the memory column) plus a bool mask per block weight;
    # R3F adds a second forward and its backward (about 2x).
    "NoisyTune (noisytune_intensity=0.15)": {"noisytune_intensity": 0.15},
    "ChildTuning_F (p=0.3)": {"child_tuning_mode": "F", "child_tuning_p": 0.3},
    "ChildTuning_D (p=0.3, per step; Fisher pass not timed)": {"child_tuning_mode": "D", "child_tuning_p": 0.3},
    "R3F (r3f_lambda=1, eps=1e-5, uniform)": {"r3f_lambda": 1.0},
    # Weight averaging: one float32 copy of the trainable weights (not in the memory column, which counts the
    # preparation snapshot and Mixout buffers) and one lerp per update; RecAdam: a per-step sigmoid and the same lerp
    # as pretrained WD; restarts cost nothing per step (a restarted attempt costs its own steps again).
    "EMA of the weights (weight_averaging='ema', decay 0.999)": {"weight_averaging": "ema", "ema_decay": 0.999},
    "SWA over the last 25% (weight_averaging='swa')": {"weight_averaging": "swa", "swa_start_fraction": 0.75},
    "RecAdam (pretrained WD 0.01, k=0.1, t0=5)": {"pretrained_weight_decay": 0.01, "recadam_k": 0.1, "recadam_t0": 5},
    "restart_degenerate_runs=2 (non-finite alarm on, no restart fires)": {
        "restart_degenerate_runs": 2, "abort_degenerate_runs": True},
    "all of the above": {"adam_bias_correction": False, "layerwise_lr_decay": 0.9, "pretrained_weight_decay": 0.01,
                         "reinit_pooler": True, "reinit_layers": 2, "mixout_prob": 0.1, "diagnostics_steps": 10},
}


def extra_bytes(model) -> int:
    state = get_fine_tuning_state(model)
    total = 0
    if state is not None and state.initial_parameters:
        total += sum(t.numel() * t.element_size() for t in state.initial_parameters.values())
    total += sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n.endswith("mixout_target"))
    return total


def run_variant(features, device: str, batch: int, length: int, steps: int, skip: int, model_path: str):
    use_cpu = device == "cpu"
    with tempfile.TemporaryDirectory() as out:
        common = dict(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, logging_steps=10,
                      report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=use_cpu, seed=0,
                      dataloader_num_workers=0)
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2, dtype=torch.float32)
        timer = StepTimer(skip)
        data = SyntheticBatches(batch * steps, length)
        if features is None:
            trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=data, callbacks=[timer])
        elif features.get("restart_degenerate_runs"):  # restarts rebuild the model: they need model_init
            trainer = StableTrainer(model_init=lambda: AutoModelForSequenceClassification.from_pretrained(
                model_path, num_labels=2, dtype=torch.float32), args=StableTrainingArguments(**common, **features),
                train_dataset=data, callbacks=[timer])
        else:
            trainer = StableTrainer(model=model, args=StableTrainingArguments(**common, **features), train_dataset=data,
                                    callbacks=[timer])
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
        averaged = getattr(getattr(trainer, "weight_averaging_callback", None), "average", {})  # EMA / SWA copy
        return timer.times, peak, extra_bytes(trainer.model) + sum(t.numel() * t.element_size() for t in averaged.values())


def measure(variants: dict, device: str, batch: int, length: int, steps: int, skip: int, rounds: int, model_path: str):
    """Per variant: median step time over all rounds, the median over rounds of its per-round ratio to the first
    variant (robust to load that changes between rounds), peak GPU memory and the plugin's extra bytes."""
    per_round = {name: [] for name in variants}
    peaks, extras = {}, {}
    for _ in range(rounds):
        for name, features in variants.items():
            step_times, peak, extra = run_variant(features, device, batch, length, steps, skip, model_path)
            per_round[name].append(statistics.median(step_times))
            peaks[name], extras[name] = peak, extra
    baseline = next(iter(variants))
    medians = {name: statistics.median(values) for name, values in per_round.items()}
    ratios = {name: statistics.median(v / b for v, b in zip(values, per_round[baseline]))
              for name, values in per_round.items()}
    return medians, ratios, peaks, extras


def features_table(options, model_path) -> str:
    medians, ratios, peaks, extras = measure(FEATURES, options.device, options.batch, options.length, options.steps,
                                             options.skip, options.rounds, model_path)
    lines = [
        f"Training step of all-MiniLM-L6-v2 through `Trainer.train()`, batch {options.batch} × {options.length} tokens, "
        f"{options.rounds} interleaved rounds × {options.steps - options.skip} timed steps — "
        f"{machine_description(options.device)}",
        "",
        "| variant | step time | ratio vs stock (median of per-round ratios) | extra memory kept by the plugin |"
        + (" peak GPU memory |" if options.device == "cuda" else ""),
        "|---|---|---|---|" + ("---|" if options.device == "cuda" else ""),
    ]
    for name, seconds in medians.items():
        row = f"| {name} | {seconds * 1e3:.1f} ms | {ratios[name]:.3f}× | {extras[name] / 2**20:.1f} MiB |"
        if options.device == "cuda":
            row += f" {peaks[name] / 2**20:.0f} MiB |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def scale_table(options, model_path) -> str:
    variants = {"stock": FEATURES["stock Trainer (fused AdamW)"], "plugin, all features": FEATURES["all of the above"]}
    lines = [
        f"Step time (and peak GPU memory) vs sequence length and batch size, stock Trainer vs the plugin with every "
        f"feature on; {options.rounds} interleaved rounds — {machine_description(options.device)}",
        "",
        "| batch × length | stock | plugin | ratio |",
        "|---|---|---|---|",
    ]
    for batch in options.scale_batches:
        for length in options.scale_lengths:
            medians, ratios, peaks, _ = measure(variants, options.device, batch, length, options.steps, options.skip,
                                                options.rounds, model_path)
            cell = lambda name: f"{medians[name] * 1e3:.0f} ms" + (  # noqa: E731
                f" / {peaks[name] / 2**20:.0f} MiB" if peaks[name] is not None else "")
            lines.append(f"| {batch} × {length} | {cell('stock')} | {cell('plugin, all features')} | "
                         f"{ratios['plugin, all features']:.3f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_run_options(parser, steps=14, skip=4, rounds=3)
    parser.add_argument("--scale", action="store_true", help="table 3 instead of table 1")
    parser.add_argument("--scale-batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--scale-lengths", type=int, nargs="+", default=[64, 256])
    options = parser.parse_args()
    hf_logging.set_verbosity_error()
    model_path = options.model_path or embedded_model_path()
    text = scale_table(options, model_path) if options.scale else features_table(options, model_path)
    print(text)
    default = f"benchmarks/results/{'scale' if options.scale else 'cost'}_{options.device}.md"
    write_result(options.output or default, text)


if __name__ == "__main__":
    main()
