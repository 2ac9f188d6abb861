"""A checkpointing StableTrainer run with every feature on, for ``tests/test_faults.py``.

Run as a script it trains (``--slow`` seconds of sleep after each update, so a test can ``kill -9`` it mid-run
once a checkpoint exists); :func:`build_trainer` builds the same trainer in-process for the uninterrupted and the
resumed runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from helpers import RandomClassificationDataset, tiny_args
from transformers import AutoModelForSequenceClassification, TrainerCallback

from hf_stable_ft import StableTrainer

FEATURES = dict(
    reinit_pooler=True, reinit_layers=1, layerwise_lr_decay=0.8, pretrained_weight_decay=0.1, weight_decay=0.01,
    adam_bias_correction=False, mixout_prob=0.2, diagnostics_steps=2, degenerate_check_fraction=0.5,
)
MAX_STEPS = 8
SAVE_STEPS = 2


class SlowDown(TrainerCallback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


def build_trainer(model_dir: str | Path, output_dir: str | Path, slow: float = 0.0) -> StableTrainer:
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)  # dropout stays on (0.1) until Mixout
    args = tiny_args(output_dir, max_steps=MAX_STEPS, save_strategy="steps", save_steps=SAVE_STEPS,
                     full_determinism=True, per_device_eval_batch_size=16, **FEATURES)
    return StableTrainer(model=model, args=args, train_dataset=RandomClassificationDataset(size=64),
                         eval_dataset=RandomClassificationDataset(size=32, seed=1),
                         callbacks=[SlowDown(slow)] if slow else None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--slow", type=float, default=0.0)
    options = parser.parse_args(argv)
    build_trainer(options.model, options.out, options.slow).train()
    (Path(options.out) / "FINISHED").write_text("training finished\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
