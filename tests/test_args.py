import json

import pytest
import yaml
from transformers import HfArgumentParser

from hf_stable_ft import STABILITY_RECIPES, StableTrainingArguments


def make(**kwargs):
    return StableTrainingArguments(output_dir="unused", report_to="none", **kwargs)


def test_defaults_are_the_stock_trainer():
    args = make()
    assert args.adam_bias_correction and args.reinit_layers == 0 and args.layerwise_lr_decay == 1.0
    assert not args.uses_stable_optimizer and not args.modifies_model


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("reinit_layers", -1, "an integer >= 0"),
        ("layerwise_lr_decay", 0.0, r"a float in \(0, 1\]"),
        ("layerwise_lr_decay", 1.2, r"a float in \(0, 1\]"),
        ("pretrained_weight_decay", -0.1, "a finite float >= 0"),
        ("mixout_prob", 1.0, r"a float in \[0, 1\)"),
        ("mixout_prob", -0.1, r"a float in \[0, 1\)"),
        ("min_train_steps", -5, "an integer >= 0"),
        ("diagnostics_steps", -1, "an integer >= 0"),
    ],
)
def test_bad_values_are_refused_at_construction(field, value, allowed):
    with pytest.raises(ValueError, match=rf"{field}=.*invalid; allowed: {allowed}"):
        make(**{field: value})


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(ValueError, match="known recipes: devlin2019, mosbach2021, zhang2021"):
        make(stability_recipe="bert2018")


@pytest.mark.parametrize("recipe", sorted(STABILITY_RECIPES))
def test_recipes_set_their_fields(recipe):
    args = make(stability_recipe=recipe)
    for name, value in STABILITY_RECIPES[recipe].items():
        if name == "source":
            continue
        if value == "auto":
            assert args.auto_reinit_layers
        else:
            assert getattr(args, name) == value, name


def test_explicit_values_win_over_the_recipe_even_when_equal_to_the_default():
    args = make(stability_recipe="mosbach2021", learning_rate=5e-5, num_train_epochs=5)
    assert args.learning_rate == 5e-5  # 5e-5 is TrainingArguments' default: still explicit
    assert args.num_train_epochs == 5
    assert args.weight_decay == 0.01  # from the recipe
    assert make(stability_recipe="zhang2021", reinit_layers=4).resolve_reinit_layers(24) == 4
    assert make(stability_recipe="zhang2021").resolve_reinit_layers(24) == 3
    assert make(stability_recipe="zhang2021").resolve_reinit_layers(6) == 1


def test_hf_argument_parser_cli_json_and_yaml(tmp_path):
    parser = HfArgumentParser(StableTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", "o", "--reinit_layers", "2", "--adam_bias_correction", "false", "--layerwise_lr_decay", "0.9",
         "--report_to", "none"]
    )
    assert args.reinit_layers == 2 and args.adam_bias_correction is False and args.layerwise_lr_decay == 0.9
    config = {"output_dir": "o", "reinit_pooler": True, "mixout_prob": 0.1, "report_to": "none"}
    (tmp_path / "a.json").write_text(json.dumps(config))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(config))
    for loaded in (parser.parse_json_file(tmp_path / "a.json")[0], parser.parse_yaml_file(tmp_path / "a.yaml")[0]):
        assert loaded.reinit_pooler and loaded.mixout_prob == 0.1
    assert args.to_dict()["reinit_layers"] == 2
