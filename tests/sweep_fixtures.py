"""A tiny RTE sweep for the sweep tests: a 2-layer BERT with a tokenizer, 32/16 RTE examples, a few updates."""

from __future__ import annotations

from pathlib import Path

from scale_fixtures import save_tiny_bert_with_tokenizer, write_rte

from hf_stable_ft.experiment import SweepConfig


def make_tiny(root: Path) -> dict[str, str]:
    return {"model": str(save_tiny_bert_with_tokenizer(root / "model")), "glue": str(write_rte(root / "glue", 32, 16))}


def fast_training(max_steps: int) -> dict:
    return {"max_steps": max_steps, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "use_cpu": True}


def fast_flags(max_steps: int) -> list[str]:
    return ["--max_steps", str(max_steps), "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--use_cpu", "true"]


def sweep_config(tiny, recipes, seeds, *, evaluations: int, steps: int, **training) -> SweepConfig:
    """``steps`` updates per run unless ``training`` sets ``max_steps``."""
    return SweepConfig(task="rte", model=tiny["model"], recipes=list(recipes), seeds=list(seeds), data_dir=tiny["glue"],
                       evaluations_per_run=evaluations, training={**fast_training(steps), **training})


def sweep_argv(tiny, output, *extra, recipes: str, seeds: str, evaluations: int, max_steps: int) -> list[str]:
    return ["sweep", "--task", "rte", "--model", tiny["model"], "--data-dir", tiny["glue"], "--recipes", recipes,
            "--seeds", seeds, "--evaluations", str(evaluations), "--output", str(output), *extra, *fast_flags(max_steps)]


class CliTrainerFactory:
    """``make_trainer(args)`` for :func:`hf_stable_ft.run_trainer_sweep` building the Trainer ``run_single`` builds
    (a class at module level, so Ray workers unpickle it by reference with ``prepared`` as its state)."""

    def __init__(self, prepared):
        self.prepared = prepared

    def __call__(self, args):
        from transformers import DataCollatorWithPadding

        from hf_stable_ft import experiment, trainer_class_for
        from hf_stable_ft.metrics import compute_metrics_for

        prepared = self.prepared
        return trainer_class_for(args)(
            model=experiment._fresh_model(prepared, args.seed), args=args, train_dataset=prepared.datasets["train"],
            eval_dataset={"validation": prepared.datasets["validation"], "test": prepared.datasets["test"]},
            data_collator=DataCollatorWithPadding(prepared.tokenizer), processing_class=prepared.tokenizer,
            compute_metrics=compute_metrics_for(prepared.task))
