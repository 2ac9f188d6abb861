"""StableAdamW vs torch.optim.AdamW(fused=True): optimizer-step time on the embedded MiniLM's parameters.

Target (issue #2): ≤ 1.05× the fused torch step in both modes (bias-corrected and BERTAdam). The pretrained-WD
row shows what decay toward the pretrained weights adds: one more pass over the weights (a foreach lerp).
Run: python benchmarks/bench_optimizer.py [--device cuda] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from common import embedded_model_path, interleaved_times, machine_description, median_ratios, write_result
from transformers import AutoModelForSequenceClassification

from hf_stable_ft import StableAdamW, build_param_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--output", default="benchmarks/results/optimizer_{device}.md")
    options = parser.parse_args()
    device = torch.device(options.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def fresh_model():
        model = AutoModelForSequenceClassification.from_pretrained(embedded_model_path(), num_labels=2).to(device)
        generator = torch.Generator(device="cpu").manual_seed(0)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=generator).to(device) * 1e-3
        return model

    models = {}
    optimizers = {}

    def add(name, make):
        models[name] = fresh_model()
        optimizers[name] = make(models[name])

    groups = lambda m: build_param_groups(m, lr=2e-5, weight_decay=0.01)  # noqa: E731
    add("torch AdamW (fused)", lambda m: torch.optim.AdamW(groups(m), lr=2e-5, fused=True))
    add("StableAdamW, bias-corrected", lambda m: StableAdamW(groups(m), lr=2e-5))
    add("StableAdamW, BERTAdam", lambda m: StableAdamW(groups(m), lr=2e-5, bias_correction=False))
    add("StableAdamW, bias-corrected + pretrained WD 0.01",
        lambda m: StableAdamW(groups(m), lr=2e-5, pretrained_weight_decay=0.01,
                              pretrained_anchors={p: p.detach().clone() for p in m.parameters()}))
    num_params = sum(p.numel() for p in models["torch AdamW (fused)"].parameters())
    times = interleaved_times({name: opt.step for name, opt in optimizers.items()}, options.repeats,
                              warmup=options.warmup, sync=sync)
    ratios = median_ratios(times, "torch AdamW (fused)")
    lines = [
        f"Optimizer step on all-MiniLM-L6-v2's {num_params / 1e6:.1f}M parameters ({options.device}; "
        f"median of {options.repeats} interleaved steps; ratio = median of per-round ratios) — {machine_description(options.device)}",
        "",
        "| optimizer | step time | ratio vs fused torch AdamW |",
        "|---|---|---|",
    ]
    for name, values in times.items():
        lines.append(f"| {name} | {statistics.median(values) * 1e3:.2f} ms | {ratios[name]:.3f}× |")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    write_result(options.output.format(device=device.type), text)


if __name__ == "__main__":
    main()
