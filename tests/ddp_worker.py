"""A fine-tune that ``tests/test_distributed.py`` launches under ``torchrun`` / ``accelerate launch`` (and runs
in-process for the single-process reference).

Scenarios (run one after the other in the same process group):

``features``
    Every technique on: pooler + top-1 re-init, LLRD, pretrained weight decay, BERTAdam, Mixout (p=0.3, which
    switches dropout off and draws its masks from each rank's global RNG), per-layer diagnostics every 2
    updates and the degenerate-run check. The labels are 15:1 imbalanced and the learning rate small, so the
    smoothed training loss stays far above the constant-prediction loss (the label entropy, 0.23 nats) and the
    alarm fires at the check step on every rank: the point is to see it decided identically everywhere and
    reported once.
``equivalence``
    The same without Mixout and with dropout 0 (both draw per-rank random numbers), on balanced learnable
    labels: a 2-process run with per-device batch B must match a 1-process run with batch 2B. The degenerate
    check runs at the last update, where a correctly scaled loss is below the constant-prediction loss.

Each rank writes ``OUT/<scenario>/rank<r>.json`` (parameter checksums after ``on_init_end`` and after training,
``log_history``, the alarm, what the rank is allowed to write); rank 0 gathers every rank's checksums with
``all_gather_object`` into ``OUT/<scenario>/gathered.json`` and saves the trained weights to
``OUT/<scenario>/final.safetensors``. With ``--redirect`` each rank's stdout/stderr go to
``OUT/rank<r>.stdout`` / ``.stderr`` so the test can check who printed the Trainer's logs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, TrainerCallback

from hf_stable_ft import StableTrainer, StableTrainingArguments, get_fine_tuning_state, shutdown_distributed, unwrap_model

SCENARIOS = {
    "features": dict(
        reinit_pooler=True, reinit_layers=1, layerwise_lr_decay=0.8, pretrained_weight_decay=0.1, weight_decay=0.01,
        adam_bias_correction=False, mixout_prob=0.3, diagnostics_steps=2, degenerate_check_fraction=0.5,
        learning_rate=1e-5,
    ),
    "equivalence": dict(
        reinit_pooler=True, reinit_layers=1, layerwise_lr_decay=0.8, pretrained_weight_decay=0.1, weight_decay=0.01,
        adam_bias_correction=False, diagnostics_steps=2, degenerate_check_fraction=0.9, learning_rate=1e-3,
    ),
}
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
MAX_STEPS = 6
GLOBAL_BATCH = 8


class SyntheticDataset(torch.utils.data.Dataset):
    """Random token sequences; labels = first token mod 2 (learnable) or 1 in 16 positive (imbalanced)."""

    def __init__(self, size: int = 64, length: int = 12, vocab: int = 99, imbalanced: bool = False, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(5, vocab, (size, length), generator=generator)
        if imbalanced:
            self.labels = (torch.arange(size) % 16 == 0).long()
        else:
            self.labels = self.input_ids[:, 0] % 2

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"input_ids": self.input_ids[index], "attention_mask": torch.ones_like(self.input_ids[index]),
                "labels": self.labels[index]}


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def model_tensors(model) -> dict[str, torch.Tensor]:
    """Parameters, Mixout targets (W₀) and pretrained-WD anchors: everything that must agree across ranks."""
    task_model = unwrap_model(model)
    tensors = {f"param:{n}": p for n, p in task_model.named_parameters()}
    tensors.update({f"buffer:{n}": b for n, b in task_model.named_buffers() if n.endswith("mixout_target")})
    state = get_fine_tuning_state(task_model)
    if state is not None and state.pretrained_anchors:
        tensors.update({f"anchor:{n}": a for n, a in state.pretrained_anchors.items()})
    return tensors


class RecordInit(TrainerCallback):
    """Checksums right after StableFineTuningCallback prepared the model (it runs first at on_init_end)."""

    def __init__(self):
        self.checksum = None
        self.mixout_layers = 0
        self.reinitialized = 0

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self.checksum = checksum(model_tensors(model))
        fine_tuning = get_fine_tuning_state(model)
        self.mixout_layers = len(fine_tuning.mixout_layers)
        self.reinitialized = len(fine_tuning.reinitialized)


def _alarm(log_history):
    return next(({k: v for k, v in record.items() if k.startswith("degenerate_alarm") or k == "step"}
                 for record in log_history if record.get("degenerate_alarm")), None)


def run_scenario(scenario: str, model_dir: str, out: str | os.PathLike, per_device_batch_size: int) -> dict:
    """Train once; return (and write) this rank's record. Works with and without a process group."""
    out = Path(out) / scenario
    out.mkdir(parents=True, exist_ok=True)
    features = SCENARIOS[scenario]
    model_kwargs = NO_DROPOUT if scenario == "equivalence" else {}
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, **model_kwargs)
    args = StableTrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=per_device_batch_size, max_steps=MAX_STEPS,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=7, data_seed=7,
        disable_tqdm=True, dataloader_num_workers=0, **features,
    )
    recorder = RecordInit()
    trainer = StableTrainer(model=model, args=args, callbacks=[recorder],
                            train_dataset=SyntheticDataset(imbalanced=scenario == "features"))
    trainer.train()
    trainer.save_state()  # trainer_state.json: written by the main process only
    rank, world = args.process_index, args.world_size
    final = {n: p.detach().clone() for n, p in unwrap_model(trainer.model).named_parameters()}
    record = {
        "rank": rank,
        "world_size": world,
        "init_checksum": recorder.checksum,
        "final_checksum": checksum(model_tensors(trainer.model)),
        "mixout_layers": recorder.mixout_layers,
        "reinitialized": recorder.reinitialized,
        "is_world_process_zero": trainer.is_world_process_zero(),
        "should_save": args.should_save,
        "should_log": args.should_log,
        "log_history": trainer.state.log_history,
        "alarm": _alarm(trainer.state.log_history),
        "group_lrs": {g["name"]: g["initial_lr"] for g in trainer.optimizer.optimizer.param_groups},
        "model_class": type(trainer.model_wrapped).__name__,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, {k: record[k] for k in ("rank", "init_checksum", "final_checksum")})
    else:
        gathered = [{k: record[k] for k in ("rank", "init_checksum", "final_checksum")}]
    if rank == 0:
        (out / "gathered.json").write_text(json.dumps(gathered, indent=1))
        from safetensors.torch import save_file

        save_file({n: t.contiguous() for n, t in final.items()}, str(out / "final.safetensors"))
    return record


def _redirect(out: Path, rank: int) -> None:
    for stream, suffix in ((sys.stdout, "stdout"), (sys.stderr, "stderr")):
        stream.flush()
        handle = open(out / f"rank{rank}.{suffix}", "w")
        os.dup2(handle.fileno(), stream.fileno())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved tiny BERT (save_pretrained directory)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--scenarios", default="features,equivalence")
    parser.add_argument("--per-device-batch-size", type=int, default=None,
                        help=f"default: {GLOBAL_BATCH} / world size (global batch {GLOBAL_BATCH})")
    parser.add_argument("--redirect", action="store_true", help="send each rank's stdout/stderr to OUT/rank<r>.*")
    options = parser.parse_args(argv)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    if options.redirect:
        _redirect(out, rank)
    logging.basicConfig(level=logging.WARNING)
    batch = options.per_device_batch_size or GLOBAL_BATCH // world
    for scenario in options.scenarios.split(","):
        run_scenario(scenario, options.model, out, batch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        destroyed = shutdown_distributed()  # the scenarios' trainers are unreachable by now
    (out / f"shutdown_rank{rank}.json").write_text(json.dumps({
        "destroyed": destroyed, "initialized_after": torch.distributed.is_initialized(),
        "warnings": [str(w.message) for w in caught if "shutdown_distributed" in str(w.message)]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
