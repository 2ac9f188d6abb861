"""hf_stable_ft: stable few-sample fine-tuning of BERT-family encoders for the stock Hugging Face Trainer.

Techniques are plain functions on ``nn.Module`` (:func:`reinit_top_layers`, :func:`layerwise_lr_groups`,
:func:`build_param_groups`, :class:`StableAdamW`); :class:`StableTrainingArguments`,
:class:`StableFineTuningCallback`, :func:`stable_optimizer` and :class:`StableTrainer` wire them into the
stock ``transformers.Trainer``.
"""

from .architectures import ENCODER_LAYOUTS, EncoderLayout, get_encoder_layout, parameter_depths, unwrap_model
from .args import StableTrainingArguments
from .callback import StableFineTuningCallback
from .distributed import shutdown_distributed
from .optim import StableAdamW
from .optimizer_factory import StableOptimizerFactory, create_stable_optimizer, stable_optimizer
from .param_groups import build_param_groups, layerwise_lr_groups, snapshot_parameters
from .preparation import FineTuningState, get_fine_tuning_state, prepare_model
from .recipes import RECIPES, STABILITY_RECIPES, Recipe, get_recipe, zhang2021_reinit_layers
from .reinit import reinit_top_layers
from .trainer import StableTrainer
from .version import __version__

__all__ = [
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
    "build_param_groups",
    "create_stable_optimizer",
    "get_encoder_layout",
    "get_fine_tuning_state",
    "get_recipe",
    "layerwise_lr_groups",
    "parameter_depths",
    "prepare_model",
    "reinit_top_layers",
    "shutdown_distributed",
    "snapshot_parameters",
    "stable_optimizer",
    "unwrap_model",
    "zhang2021_reinit_layers",
]
