"""``hf-stable-ft``: train, transfer, sweep, report and demo from the command line.

Every ``StableTrainingArguments`` / ``TrainingArguments`` field is accepted as a flag
(``--reinit_layers 2``, ``--learning_rate 1e-4``, ...) and parsed by ``HfArgumentParser``; ``--config FILE``
reads the same fields from YAML (safe loader) or JSON, with flags winning over the file; each value is converted
exactly as its flag would be (``learning_rate: 2e-5``, ``adam_bias_correction: "false"``). Only the fields you
give count as explicit, so a ``--stability_recipe`` fills in everything else. ``train --resume_from_checkpoint
DIR`` (or ``true``: the last checkpoint in ``--output_dir``) continues a checkpointed run.

A bad input (a value, a file, a model, an output directory) is refused before any work with one line on stderr,
``hf-stable-ft COMMAND: error: ...``, and exit code 2; ``HF_STABLE_FT_TRACEBACK=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from .args import STABILITY_RECIPES, StableTrainingArguments
from .field_values import convert_field_value, training_flag_parser

__all__ = ["main", "parse_training_flags"]


def _read_config(path: Path) -> Any:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"--config {path}: not UTF-8 text (byte offset {error.start}); re-save it as UTF-8") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--config {path}: not valid JSON ({error.msg} at line {error.lineno}, column "
                             f"{error.colno})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise _ConfigYAMLError(f"--config {path}: not valid YAML (safe loader): {error}") from None


class _ConfigYAMLError(yaml.YAMLError, ValueError):
    """A ``--config`` file the safe YAML loader refuses (e.g. ``!!python/object`` tags)."""


def _config_values(path: Path) -> dict[str, Any]:
    """The fields of a ``--config`` file, each converted exactly as its flag would be."""
    loaded = _read_config(path)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {path} must hold a mapping of StableTrainingArguments fields (field: value)")
    parser = training_flag_parser()
    actions = {action.dest: action for action in parser._actions if f"--{action.dest}" in action.option_strings}
    unknown = sorted(str(name) for name in loaded if name not in actions)
    if unknown:
        close = sorted({m for name in unknown for m in difflib.get_close_matches(name, list(actions), n=2)})
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"--config {path}: unknown fields {unknown}{hint}; the keys are StableTrainingArguments / "
                         "TrainingArguments field names")
    hints = typing.get_type_hints(StableTrainingArguments)
    return {name: convert_field_value(parser, actions[name], hints.get(name), value, f"--config {path}: {name}")
            for name, value in loaded.items()}


def parse_training_flags(argv: list[str], config_file: str | None = None, *, prog: str = "hf-stable-ft"
                         ) -> dict[str, Any]:
    """The ``StableTrainingArguments`` fields given in ``argv`` (and ``config_file``), converted to their types.

    A config value is converted exactly as the same ``--FIELD value`` flag (``"2e-5"``, ``"false"``, ``"yes"``,
    ``0``/``1`` for booleans, choices); native YAML/JSON values of the field's type work too, ``null`` only for
    ``Optional`` fields. A value of the wrong type raises a ``ValueError`` naming the field and the file.
    Unknown flags and bad flag values raise a ``SystemExit`` (code 2) after one line on stderr, as argparse does.
    """
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path} does not exist" if not path.exists() else
                                    f"--config {path} is not a file")
        values.update(_config_values(path))
    namespace = training_flag_parser(prog).parse_args(argv)
    values.update(vars(namespace))
    return values


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default=None, help="GLUE task (rte, cola, mrpc, stsb, sst2, qnli, qqp, mnli, "
                        "mnli_subset; default rte), or give your own data with --train-file/--dataset")
    parser.add_argument("--model", default=None, help="model path or Hub name (default: the embedded all-MiniLM-L6-v2)")
    parser.add_argument("--data-dir", default=None, help="GLUE directory (default: $GLUE_DIR)")
    data = parser.add_argument_group("your own data (instead of --task)")
    data.add_argument("--train-file", default=None, help="training data: CSV, TSV, JSON, JSON lines or Parquet")
    data.add_argument("--validation-file", default=None, help="validation data (same formats)")
    data.add_argument("--test-file", default=None, help="labelled test data (optional; without it the validation "
                      "split is halved per class under --protocol zhang2021)")
    data.add_argument("--dataset", default=None, help="a save_to_disk directory, a local dataset folder, or (online) "
                      "a Hub dataset name with train and validation splits")
    data.add_argument("--dataset-config", default=None, help="configuration of --dataset")
    data.add_argument("--text-columns", default=None, help="text column, or two for pairs: a or a,b (default: "
                      "sentence1,sentence2, text or sentence when present)")
    data.add_argument("--label-column", default=None, help="label column (default: label)")
    data.add_argument("--task-kind", default=None, choices=["classification", "regression"],
                      help="default: inferred from the label column (integers/strings: classes, floats: regression)")
    data.add_argument("--metric", default=None, help="accuracy, f1, f1_macro, mcc, pearson, spearman, or an evaluate "
                      "module: a local metric folder, or a Hub name when online (default: accuracy / spearman)")
    data.add_argument("--metric-key", default=None, help="primary key of an evaluate module's result")
    data.add_argument("--metric-direction", default=None, choices=["higher", "lower"],
                      help="is a higher or a lower score of an evaluate module better (default higher)")
    parser.add_argument("--protocol", default=None, choices=["glue", "zhang2021"], help="evaluation protocol")
    parser.add_argument("--train-size", type=int, default=None, help="class-stratified training sample size")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--config", default=None, help="YAML/JSON file of StableTrainingArguments fields")


class _FlagValueError(argparse.ArgumentTypeError, ValueError):
    """A bad flag value: argparse prints it as ``argument --flag: message`` (exit code 2); called directly it is
    a ValueError."""


_SEEDS_ALLOWED = ("N (seeds 0..N-1, N >= 1), A-B (seeds A..B, 0 <= A <= B) or distinct integers >= 0 separated by "
                  "commas (e.g. 5, 3-7, 1,5,9)")


def _labels(text: str) -> list[str]:
    """``a,b,c`` -> ``["a", "b", "c"]`` (a recipe label holds no comma)."""
    labels = [part.strip() for part in text.split(",")]
    if not all(labels):
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated recipe labels, none empty "
                                         "(e.g. zhang2021,zhang+swa0.75)")
    return labels


def _seeds(text) -> list[int]:
    """``20`` → 0..19; ``3-7`` → 3..7; ``1,5,9`` → those (distinct). Anything else: an error naming the forms."""
    if isinstance(text, list):  # already parsed (argparse's type= and the caller both pass through here)
        return text

    def number(part: str) -> int:
        if not (part.strip().isascii() and part.strip().isdigit()):
            raise _FlagValueError(f"invalid seeds {text!r}; allowed: {_SEEDS_ALLOWED}")
        return int(part)

    if "," in text:
        seeds = [number(part) for part in text.split(",")]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise _FlagValueError(f"invalid seeds {text!r}: {', '.join(map(str, repeated))} given twice (the pair "
                                  f"would be trained twice); allowed: {_SEEDS_ALLOWED}")
        return seeds
    if "-" in text.strip()[1:]:
        first, _, last = text.strip().partition("-")
        first, last = number(first), number(last)
        if first > last:
            raise _FlagValueError(f"invalid seeds {text!r}: the range is empty ({first} > {last}); allowed: "
                                  f"{_SEEDS_ALLOWED}")
        return list(range(first, last + 1))
    count = number(text)
    if count < 1:
        raise _FlagValueError(f"invalid seeds {text!r}: no seed to run; allowed: {_SEEDS_ALLOWED}")
    return list(range(count))


def _positive_int(text) -> int:
    """An integer >= 1 (``--evaluations``, ``demo --seeds``)."""
    try:
        value = int(str(text).strip())
    except ValueError:
        value = None
    if value is None or value < 1:
        raise _FlagValueError(f"invalid value {text!r}; allowed: an integer >= 1")
    return value


def _gpu_share(text) -> float:
    """``--gpus-per-run``: 0, a fraction of one GPU (0 < F < 1) or a whole number of GPUs."""
    try:
        value = float(str(text).strip())
    except ValueError:
        value = None
    if value is None or not value >= 0 or value == float("inf") or (value > 1 and value != int(value)):
        raise _FlagValueError(f"invalid value {text!r}; allowed: 0, a fraction of one GPU (e.g. 0.25 packs 4 runs on "
                              "a GPU) or a whole number of GPUs")
    return value


def _fail(command: str, error: BaseException) -> None:
    """A refused command: one line on stderr, exit code 2."""
    message = " ".join(str(error).split())
    print(f"hf-stable-ft {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _label_map(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    pairs = [item.split("=", 1) for item in text.split(",")]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"--label-map must look like source=target,source=target; got {text!r}")
    return {source: target for source, target in pairs}


def _build_parser() -> argparse.ArgumentParser:
    # No abbreviations anywhere: `sweep --seed 3` must not silently mean `--seeds 3`, nor `--reinit_layer` mean
    # `--reinit_layers`.
    parser = argparse.ArgumentParser(prog="hf-stable-ft", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", allow_abbrev=False, help="fine-tune one model on a GLUE task")
    _add_data_options(train)

    sweep = commands.add_parser("sweep", allow_abbrev=False, help="run recipes x seeds and record every run in DIR/runs.jsonl")
    _add_data_options(sweep)
    sweep.add_argument("--recipes", default="devlin2019,mosbach2021,zhang2021",
                       help=f"comma-separated: {', '.join(STABILITY_RECIPES)}, stock, or label=base:field=value:...")
    sweep.add_argument("--seeds", type=_seeds, default="5", help="N (0..N-1), A-B, or a comma list of distinct seeds")
    sweep.add_argument("--output", required=True, help="sweep directory")
    sweep.add_argument("--evaluations", type=_positive_int, default=10, help="evaluations per run (>= 1)")
    sweep.add_argument("--label-map", default=None, help="start from an intermediate checkpoint: source=target,...")
    sweep.add_argument("--resume", action="store_true",
                       help="add runs to a directory that holds a different sweep (labels that already have runs "
                            "must keep their settings: give new settings a new label)")
    sweep.add_argument("--overwrite", action="store_true",
                       help="start over: the previous records are moved aside to runs.jsonl.bak-<time>, not deleted")
    sweep.add_argument("--report", action="store_true", help="write the report when the sweep ends")
    sweep.add_argument("--dry-run", action="store_true",
                       help="print the runs this command would start (and retry) or why it would be refused; load, "
                            "run and write nothing")
    sweep.add_argument("--backend", default="local", choices=["local", "processes", "ray"],
                       help="where the runs execute: local (one after another here), processes (--max-concurrent "
                            "worker processes here, e.g. packed on one GPU) or ray (one Ray task per run; "
                            "pip install 'hf_stable_ft[ray]')")
    sweep.add_argument("--address", default=None, help="--backend ray: auto (the Ray running on this machine) or "
                       "HOST:PORT of a cluster's head (default: start Ray on this machine)")
    sweep.add_argument("--cpus-per-run", type=_positive_int, default=None,
                       help="--backend ray|processes: CPUs (and torch threads) per run (default 1)")
    sweep.add_argument("--gpus-per-run", type=_gpu_share, default=None,
                       help="--backend ray: GPUs per run; a fraction packs runs on one GPU, e.g. 0.25 (default 0)")
    sweep.add_argument("--max-concurrent", type=_positive_int, default=None,
                       help="--backend ray: runs in flight at most (default: as the cluster's resources allow); "
                            "--backend processes: worker processes (default 2)")

    transfer = commands.add_parser("transfer", allow_abbrev=False, help="intermediate task (e.g. MNLI) then the target task")
    _add_data_options(transfer)
    transfer.add_argument("--intermediate-task", default="mnli_subset")
    transfer.add_argument("--intermediate-train-size", type=int, default=None)
    transfer.add_argument("--label-map", default="entailment=entailment,neutral=not_entailment,contradiction=not_entailment")
    transfer.add_argument("--recipe", default="mosbach2021", help="recipe of both stages (preset, stock or variant)")
    transfer.add_argument("--seeds", type=_seeds, default="1", help="target-stage seeds")
    transfer.add_argument("--evaluations", type=int, default=10, help="evaluations per run, in each stage")
    transfer.add_argument("--output", required=True)

    report = commands.add_parser("report", allow_abbrev=False, help="write DIR/report.md and figures from DIR/runs.jsonl")
    report.add_argument("directory")
    report.add_argument("--baseline", default=None, help="recipe to test the others against")
    report.add_argument("--recipes", type=_labels, default=None,
                        help="comma-separated recipe labels: report only their runs (e.g. zhang2021,zhang+swa0.75)")
    report.add_argument("--output", default=None,
                        help="write the report here instead of DIRECTORY (keeps the directory's own report)")
    report.add_argument("--no-figures", action="store_true")
    report.add_argument("--skip-corrupt", action="store_true", help="skip corrupt lines of runs.jsonl (named)")

    demo = commands.add_parser("demo", allow_abbrev=False, help="the stability study in one command (see README)",
        description="Defaults: the embedded all-MiniLM-L6-v2 on CoLA, a 1,000-example training sample, 3 seeds x 3 "
                    "recipes (devlin2019 = BERTAdam at lr 1e-4, bias_corrected = the same with bias correction, "
                    "stock = Trainer defaults), 189 updates and 5 evaluations per run; about 10 minutes on an idle "
                    "2-core CPU. The report goes to OUTPUT/report.md.")
    demo.add_argument("--task", default="cola", help="default cola: on the embedded model the effect shows there (see BENCHMARKS.md)")
    demo.add_argument("--seeds", type=_positive_int, default=None, help="seeds per recipe (default 3)")
    demo.add_argument("--train-size", type=int, default=None, help="training examples (default 1000)")
    demo.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    demo.add_argument("--output", default="demo_output")
    demo.add_argument("--data-dir", default=None)
    return parser


_DATA_FLAGS = ("train_file", "validation_file", "test_file", "dataset", "dataset_config", "text_columns",
               "label_column", "task_kind", "metric", "metric_key", "metric_direction")


def _data_spec(options) -> dict[str, Any] | None:
    """The user's data flags as a DataSpec dict (None: a GLUE ``--task``, default rte); sets ``options.task``.
    Bad combinations are a ValueError naming the flags."""
    given = {name: getattr(options, name, None) for name in _DATA_FLAGS if getattr(options, name, None) is not None}
    source = [f"--{name.replace('_', '-')}" for name in ("train_file", "validation_file", "test_file", "dataset")
              if name in given]
    if not source:
        if given:
            flag = f"--{next(iter(given)).replace('_', '-')}"
            raise ValueError(f"{flag} applies to your own data: give --train-file F --validation-file F or --dataset "
                             f"NAME with it (a GLUE --task has its columns, kind and metric built in)")
        options.task = options.task or "rte"
        return None
    if options.task is not None:
        raise ValueError(f"--task {options.task} and {source[0]} exclude each other: --task is a GLUE task, "
                         f"{source[0]} your own data; pass one")
    if getattr(options, "data_dir", None) is not None and options.command != "transfer":  # transfer: stage 1's
        raise ValueError(f"--data-dir is the GLUE directory; with {source[0]} it is not used: drop it")
    from .data import DataSpec

    spec = DataSpec(**{"label_column": "label", **given})
    options.task = spec.task_name
    return spec.to_dict()


def _sweep_config(options, training: dict[str, Any], recipes: list[str], seeds: list[int], model=None,
                  label_map=None):
    from .experiment import DEFAULT_MODEL, SweepConfig

    return SweepConfig(
        data=getattr(options, "data_spec", None),
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


#: What a bad input raises (a value, a missing or unreadable file, a model that cannot be loaded, a missing
#: optional package): the CLI prints it as one line and exits with code 2. Anything else (TypeError, KeyError,
#: RuntimeError, ...) is a bug or a failure during training and keeps its traceback; HF_STABLE_FT_TRACEBACK=1
#: shows the traceback of every error.
_USER_ERRORS = (ValueError, OSError, ImportError, yaml.YAMLError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    options, rest = parser.parse_known_args(argv)
    try:
        return _run(parser, options, rest)
    except _USER_ERRORS as error:
        if isinstance(error, ModuleNotFoundError) or os.environ.get("HF_STABLE_FT_TRACEBACK", "") not in ("", "0"):
            raise
        _fail(options.command, error)


def _run(parser: argparse.ArgumentParser, options: argparse.Namespace, rest: list[str]) -> int:
    if options.command in ("report", "demo") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    training = parse_training_flags(rest, getattr(options, "config", None), prog=f"hf-stable-ft {options.command}"
                                    ) if options.command in ("train", "sweep", "transfer") else {}
    if options.command in ("train", "sweep", "transfer"):
        options.data_spec = _data_spec(options)

    if options.command == "report":
        from .report import write_report

        try:
            path = write_report(options.directory, baseline_recipe=options.baseline, figures=not options.no_figures,
                                recipes=options.recipes, output_dir=options.output, skip_corrupt=options.skip_corrupt)
        except (ValueError, FileNotFoundError) as error:
            _fail("report", error)
        print(f"report written to {path}")
        return 0

    if options.command == "demo":
        from .demo import run_demo

        try:
            run_demo(task=options.task, seeds=options.seeds, train_size=options.train_size, device=options.device,
                     output=options.output, data_dir=options.data_dir)
        except ValueError as error:
            _fail("demo", error)
        return 0

    if options.command == "sweep":
        from .experiment import SweepDirectoryLocked, plan_sweep, run_sweep
        from .sweep_backends import make_backend

        try:
            config = _sweep_config(options, training, options.recipes.split(","), _seeds(options.seeds),
                                   label_map=_label_map(options.label_map))
            if options.dry_run:
                print(plan_sweep(config, options.output, resume=options.resume, overwrite=options.overwrite))
                print("(--dry-run: nothing was run or written)")
                return 0
            backend = make_backend(options.backend, address=options.address, cpus_per_run=options.cpus_per_run,
                                   gpus_per_run=options.gpus_per_run, max_concurrent=options.max_concurrent)
            path = run_sweep(config, options.output, resume=options.resume, overwrite=options.overwrite,
                             backend=backend)
        except (ValueError, FileNotFoundError, SweepDirectoryLocked) as error:
            _fail("sweep", error)
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
            data=options.data_spec,
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
            evaluations_per_run=options.evaluations, data=options.data_spec,
        )
        print(json.dumps(result, indent=2))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
