"""hf_stable_ft: stable few-sample fine-tuning of BERT-family encoders for the stock Hugging Face Trainer.

Techniques are plain functions on ``nn.Module`` (:func:`reinit_top_layers`, :func:`layerwise_lr_groups`,
:func:`build_param_groups`, :func:`apply_mixout`, :class:`StableAdamW`, :func:`load_intermediate_checkpoint`);
:class:`StableTrainingArguments`, :class:`StableFineTuningCallback`, :func:`stable_optimizer` and
:class:`StableTrainer` wire them into the stock ``transformers.Trainer``. The experiment layer — GLUE data and
metrics, sweeps, statistics, the report — is importable from here too, loaded on first use so that
``import hf_stable_ft`` stays the plugin alone.
"""

from .architectures import ENCODER_LAYOUTS, EncoderLayout, get_encoder_layout, parameter_depths, unwrap_model
from .args import StableTrainingArguments
from .callback import StableFineTuningCallback
from .child_tuning import ChildTuningCallback, child_tuning_d_mask, fisher_information
from .distributed import shutdown_distributed
from .mixout import apply_mixout, has_mixout, remove_mixout
from .noisytune import noisytune
from .optim import StableAdamW, recadam_lambda
from .optimizer_factory import StableOptimizerFactory, create_stable_optimizer, stable_optimizer
from .param_groups import build_param_groups, layerwise_lr_groups, snapshot_parameters
from .preparation import FineTuningState, get_fine_tuning_state, prepare_model
from .r3f import r3f_term, symmetric_kl
from .recipes import RECIPES, STABILITY_RECIPES, Recipe, get_recipe, zhang2021_reinit_layers
from .reinit import reinit_top_layers
from .trainer import StableTrainer
from .transfer import load_intermediate_checkpoint
from .version import __version__
from .weight_averaging import WeightAveragingCallback, load_weight_average

__all__ = [
    "ChildTuningCallback",
    "WeightAveragingCallback",
    "load_weight_average",
    "recadam_lambda",
    "child_tuning_d_mask",
    "fisher_information",
    "noisytune",
    "r3f_term",
    "symmetric_kl",
    "ENCODER_LAYOUTS",
    "EncoderLayout",
    "FineTuningState",
    "RECIPES",
    "Recipe",
    "STABILITY_RECIPES",
    "StableAdamW",
    "StableFineTuningCallback",
    "StableOptimizerFactory",
    "StableTrainer",
    "StableTrainingArguments",
    "__version__",
    "apply_mixout",
    "build_param_groups",
    "create_stable_optimizer",
    "get_encoder_layout",
    "get_fine_tuning_state",
    "get_recipe",
    "has_mixout",
    "layerwise_lr_groups",
    "parameter_depths",
    "prepare_model",
    "load_intermediate_checkpoint",
    "reinit_top_layers",
    "remove_mixout",
    "shutdown_distributed",
    "snapshot_parameters",
    "stable_optimizer",
    "unwrap_model",
    "zhang2021_reinit_layers",
]

#: Experiment-layer and statistics names, imported on first access (PEP 562).
_LAZY = {
    "load_glue_task": "data", "tokenize_glue": "data", "get_task_info": "data",
    "glue_compute_metrics": "metrics", "compute_glue_metrics": "metrics", "majority_baseline": "metrics",
    "summarize": "stats", "expected_max_performance": "stats", "expected_max_curve": "stats",
    "bootstrap_expected_test": "stats", "compare_to_baseline": "stats", "degenerate_record": "stats",
    "constant_prediction_loss": "stats", "holm_adjust": "stats", "degenerate_rate_test": "stats",
    "SweepConfig": "experiment", "run_sweep": "experiment", "run_single": "experiment", "train_once": "experiment",
    "run_transfer": "experiment", "plan_sweep": "experiment", "SweepPlan": "experiment",
    "write_report": "report", "summarize_runs": "report", "load_runs": "report", "verdict": "report",
    "SweepSummary": "report", "runs_to_match": "stats",
    "Task": "tasks", "DataSpec": "data", "load_task": "data", "compute_metrics_for": "metrics",
    "run_trainer_sweep": "trainer_sweep", "plan_trainer_sweep": "trainer_sweep",
    "trainer_class_for": "trainer_sweep",
    "RunRecord": "records", "read_records": "records", "RecipeSpec": "recipe_variants", "parse_recipe": "recipe_variants",
}
__all__ += sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_stable_ft' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
