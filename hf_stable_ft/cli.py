"""``hf-stable-ft``: train, transfer, sweep, report and demo from the command line.

Every ``StableTrainingArguments`` / ``TrainingArguments`` field is accepted as a flag
(``--reinit_layers 2``, ``--learning_rate 1e-4``, ...) and parsed by ``HfArgumentParser``; ``--config FILE``
reads the same fields from YAML (safe loader) or JSON, with flags winning over the file. Only the fields you
give count as explicit, so a ``--stability_recipe`` fills in everything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from .args import STABILITY_RECIPES, StableTrainingArguments

__all__ = ["main", "parse_training_flags"]


def _training_parser() -> HfArgumentParser:
    parser = HfArgumentParser(StableTrainingArguments, add_help=False)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return parser


def parse_training_flags(argv: list[str], config_file: str | None = None) -> dict[str, Any]:
    """The ``StableTrainingArguments`` fields given in ``argv`` (and ``config_file``), converted to their types.

    Unknown flags raise a ``SystemExit`` naming them, as argparse does.
    """
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.exists():
            raise FileNotFoundError(f"--config {path} does not exist")
        text = path.read_text()
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {path} must hold a mapping of StableTrainingArguments fields")
        known = {action.dest for action in _training_parser()._actions}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ValueError(f"--config {path}: unknown fields {unknown}")
        values.update(loaded)
    namespace = _training_parser().parse_args(argv)
    values.update(vars(namespace))
    return values


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="rte", help="GLUE task (rte, cola, mrpc, stsb, sst2, qnli, qqp, mnli, mnli_subset)")
    parser.add_argument("--model", default=None, help="model path or Hub name (default: the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--data-dir", default=None, help="GLUE directory (default: $GLUE_DIR)")
    parser.add_argument("--protocol", default=None, choices=["glue", "zhang2021"], help="evaluation protocol")
    parser.add_argument("--train-size", type=int, default=None, help="class-stratified training sample size")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--config", default=None, help="YAML/JSON file of StableTrainingArguments fields")


def _seeds(text: str) -> list[int]:
    """``20`` → 0..19; ``3-7`` → 3..7; ``1,5,9`` → those."""
    if "," in text:
        return [int(s) for s in text.split(",")]
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return list(range(int(text)))


def _label_map(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    pairs = [item.split("=", 1) for item in text.split(",")]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"--label-map must look like source=target,source=target; got {text!r}")
    return {source: target for source, target in pairs}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-stable-ft", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune one model on a GLUE task")
    _add_data_options(train)

    sweep = commands.add_parser("sweep", help="run recipes x seeds and record every run in DIR/runs.jsonl")
    _add_data_options(sweep)
    sweep.add_argument("--recipes", default="devlin2019,mosbach2021,zhang2021",
                       help=f"comma-separated: {', '.join(STABILITY_RECIPES)}, stock, or label=base:field=value:...")
    sweep.add_argument("--seeds", default="5", help="N (0..N-1), A-B, or a comma list")
    sweep.add_argument("--output", required=True, help="sweep directory")
    sweep.add_argument("--evaluations", type=int, default=10, help="evaluations per run")
    sweep.add_argument("--label-map", default=None, help="start from an intermediate checkpoint: source=target,...")
    sweep.add_argument("--resume", action="store_true", help="add runs to a directory that holds a different sweep")
    sweep.add_argument("--overwrite", action="store_true", help="delete the directory's previous runs first")
    sweep.add_argument("--report", action="store_true", help="write the report when the sweep ends")

    transfer = commands.add_parser("transfer", help="intermediate task (e.g. MNLI) then the target task")
    _add_data_options(transfer)
    transfer.add_argument("--intermediate-task", default="mnli_subset")
    transfer.add_argument("--intermediate-train-size", type=int, default=None)
    transfer.add_argument("--label-map", default="entailment=entailment,neutral=not_entailment,contradiction=not_entailment")
    transfer.add_argument("--recipe", default="mosbach2021", help="recipe of both stages (preset, stock or variant)")
    transfer.add_argument("--seeds", default="1", help="target-stage seeds")
    transfer.add_argument("--evaluations", type=int, default=10, help="evaluations per run, in each stage")
    transfer.add_argument("--output", required=True)

    report = commands.add_parser("report", help="write DIR/report.md and figures from DIR/runs.jsonl")
    report.add_argument("directory")
    report.add_argument("--baseline", default=None, help="recipe to test the others against")
    report.add_argument("--no-figures", action="store_true")
    report.add_argument("--skip-corrupt", action="store_true", help="skip corrupt lines of runs.jsonl (named)")

    demo = commands.add_parser(
        "demo", help="the stability study in one command (see README)",
        description="Defaults: the embedded all-MiniLM-L6-v2 on CoLA, a 1,000-example training sample, 3 seeds x 3 "
                    "recipes (devlin2019 = BERTAdam at lr 1e-4, bias_corrected = the same with bias correction, "
                    "stock = Trainer defaults), 189 updates and 5 evaluations per run; about 10 minutes on an idle "
                    "2-core CPU. The report goes to OUTPUT/report.md.")
    demo.add_argument("--task", default="cola", help="default cola: on the embedded model the effect shows there (see BENCHMARKS.md)")
    demo.add_argument("--seeds", type=int, default=None, help="seeds per recipe (default 3)")
    demo.add_argument("--train-size", type=int, default=None, help="training examples (default 1000)")
    demo.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    demo.add_argument("--output", default="demo_output")
    demo.add_argument("--data-dir", default=None)
    return parser


def _sweep_config(options, training: dict[str, Any], recipes: list[str], seeds: list[int], model=None,
                  label_map=None):
    from .experiment import DEFAULT_MODEL, SweepConfig

    return SweepConfig(
        task=options.task,
        model=model or options.model or DEFAULT_MODEL,
        recipes=recipes,
        seeds=seeds,
        train_size=options.train_size,
        protocol=options.protocol or "zhang2021",
        data_dir=options.data_dir,
        max_length=options.max_length,
        evaluations_per_run=getattr(options, "evaluations", 10),
        label_map=label_map,
        training=training,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    options, rest = parser.parse_known_args(argv)
    if options.command in ("report", "demo") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    training = parse_training_flags(rest, getattr(options, "config", None)) if options.command in (
        "train", "sweep", "transfer") else {}

    if options.command == "report":
        from .report import write_report

        path = write_report(options.directory, baseline_recipe=options.baseline, figures=not options.no_figures,
                            skip_corrupt=options.skip_corrupt)
        print(f"report written to {path}")
        return 0

    if options.command == "demo":
        from .demo import run_demo

        run_demo(task=options.task, seeds=options.seeds, train_size=options.train_size, device=options.device,
                 output=options.output, data_dir=options.data_dir)
        return 0

    if options.command == "sweep":
        from .experiment import run_sweep

        config = _sweep_config(options, training, options.recipes.split(","), _seeds(options.seeds),
                               label_map=_label_map(options.label_map))
        path = run_sweep(config, options.output, resume=options.resume, overwrite=options.overwrite)
        print(f"runs recorded in {path}")
        if options.report:
            from .report import write_report

            print(f"report written to {write_report(options.output)}")
        return 0

    if options.command == "train":
        from .experiment import train_once

        result = train_once(
            task=options.task, model=options.model, training=training, data_dir=options.data_dir,
            protocol=options.protocol or "glue", train_size=options.train_size, max_length=options.max_length,
        )
        print(json.dumps(result, indent=2))
        return 0

    if options.command == "transfer":
        from .experiment import run_transfer

        result = run_transfer(
            intermediate_task=options.intermediate_task, task=options.task, model=options.model,
            recipe=options.recipe, label_map=_label_map(options.label_map), output=options.output,
            training=training, seeds=_seeds(options.seeds), data_dir=options.data_dir,
            protocol=options.protocol or "zhang2021", train_size=options.train_size,
            intermediate_train_size=options.intermediate_train_size, max_length=options.max_length,
            evaluations_per_run=options.evaluations,
        )
        print(json.dumps(result, indent=2))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
