"""Intermediate-task transfer: start a target-task model from a model fine-tuned on another task.

Zhang et al. (2021, Table 2, "Int. task") fine-tune on MNLI first and then on the small target task (RTE
69.5 → 81.8). :func:`load_intermediate_checkpoint` loads such a checkpoint for the target task: the encoder
and the pooler / head dense layer (BERT ``bert.pooler``, RoBERTa/XLM-R/ELECTRA/MPNet ``classifier.dense``,
DistilBERT ``pre_classifier``, DeBERTa-v2 ``pooler``, ModernBERT ``head``) keep the checkpoint's weights;
only the output layer (the last ``nn.Linear``, one row per label) depends on the target's labels.

Output layer of the target model:

* ``label_map`` given (source label name → target label name): each target row is built from the rows
  of the source labels mapped onto it — a copy for a 1:1 map; for k > 1 merged labels the mean row and
  the mean bias plus ln k (see :func:`map_output_rows`); target labels no source maps to get fresh rows.
* no ``label_map`` and the target's ``id2label`` equals the checkpoint's (same names, same order, not the
  placeholder ``LABEL_i``) — e.g. RTE → QNLI — the output layer is kept as is;
* otherwise a new output layer: weights ~ N(0, ``initializer_range``²), biases 0 (BERT's initialisation).

RoBERTa-family ``classifier.dense`` is **kept**, a deliberate difference from Zhang et al.'s ``run_glue.py``
(asappresearch/revisit-bert-finetuning). When the label count changes, that script replaces the whole
``model.classifier``; for BERT this is only the output layer (``bert.pooler`` keeps its MNLI weights), but for
RoBERTa ``classifier`` is the ``RobertaClassificationHead``, so its dense layer — the module that plays BERT's
pooler role (dense + tanh on the first token) — is re-drawn too, and only when the label count differs (a
3-label checkpoint onto a 3-label target keeps it). We treat every architecture as the paper's BERT runs
(Table 2, "Int. task") are treated: everything below the output layer transfers. To get the reference
script's RoBERTa head, re-initialise the pooler after loading (``reinit_top_layers(model, 0,
reinit_pooler=True)`` or ``reinit_pooler=True``): for RoBERTa that re-draws exactly ``classifier.dense`` from
the same N(0, initializer_range²), zero-bias distribution.

The checkpoint is loaded once as it was saved, and its output layer is then replaced; the result is the
same as ``from_pretrained(..., num_labels=, id2label=, ignore_mismatched_sizes=True)`` plus the row copy,
without loading twice and without a silently reused layer when the label count happens to match.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .architectures import ENCODER_LAYOUTS, get_encoder_layout, unwrap_model

__all__ = ["OUTPUT_LAYERS", "load_intermediate_checkpoint", "map_output_rows", "output_layer_path"]

logger = logging.getLogger(__name__)

# model_type -> dotted path of the output layer, read from the architecture table (kept for older imports).
OUTPUT_LAYERS: dict[str, str] = {model_type: layout.output_layer for model_type, (_, layout) in ENCODER_LAYOUTS.items()}

_RESERVED_KWARGS = ("num_labels", "id2label", "label2id", "ignore_mismatched_sizes", "output_loading_info")


def output_layer_path(model: nn.Module) -> str:
    """Dotted path of the output layer of a sequence-classification ``model``."""
    model = unwrap_model(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in OUTPUT_LAYERS:
        raise ValueError(
            f"hf_stable_ft does not know the output layer of model_type={model_type!r}; supported model types: "
            f"{', '.join(sorted(OUTPUT_LAYERS))}"
        )
    return OUTPUT_LAYERS[model_type]


def _target_id2label(num_labels: int, id2label: Mapping[int, str] | Sequence[str] | None) -> dict[int, str]:
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer; got {num_labels!r}")
    if id2label is None:
        return {i: f"LABEL_{i}" for i in range(num_labels)}
    if isinstance(id2label, Mapping):
        result = {int(i): str(name) for i, name in id2label.items()}
    else:
        result = {i: str(name) for i, name in enumerate(id2label)}
    if sorted(result) != list(range(num_labels)):
        raise ValueError(f"id2label must name the labels 0..{num_labels - 1} (num_labels={num_labels}); got {result}")
    if len(set(result.values())) != num_labels:
        raise ValueError(f"id2label has duplicate label names: {result}")
    return result


def _is_placeholder(id2label: Mapping[int, str]) -> bool:
    return all(name == f"LABEL_{i}" for i, name in id2label.items())


def _validate_label_map(label_map: Mapping[str, str], source: Mapping[int, str], target: Mapping[int, str]) -> None:
    if not isinstance(label_map, Mapping) or not label_map:
        raise ValueError("label_map must be a non-empty dict {source label name: target label name}")
    source_names, target_names = set(source.values()), set(target.values())
    unknown_source = [name for name in label_map if name not in source_names]
    if unknown_source:
        raise ValueError(
            f"label_map names source label(s) {unknown_source} that the checkpoint does not have; "
            f"its labels (config.id2label) are {[source[i] for i in sorted(source)]}"
        )
    unknown_target = sorted({name for name in label_map.values() if name not in target_names})
    if unknown_target:
        raise ValueError(
            f"label_map maps onto target label(s) {unknown_target} that are not in id2label "
            f"{[target[i] for i in sorted(target)]}"
        )


def map_output_rows(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    source_id2label: Mapping[int, str],
    target_id2label: Mapping[int, str],
    label_map: Mapping[str, str],
) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
    """Target output rows built from a source output layer: ``{target id: (weight row, bias)}``.

    A target label T fed by the source labels S_T = {s : label_map[s] = T}, k = |S_T|, gets

        w_T = (1/k) Σ_{s∈S_T} w_s,    b_T = (1/k) Σ_{s∈S_T} b_s + ln k.

    Why: merging classes makes the merged logit log Σ_{s∈S_T} exp z_s (probabilities add: p(T) = Σ p(s)),
    which no linear layer can represent. Its first-order Taylor expansion at tied member logits is exactly
    mean(z_s) + ln k — the gradient of log-sum-exp there is uniform (1/k each) — so the rule is exact whenever
    the merged classes' logits agree, and by Jensen's inequality it never exceeds the true merged logit. The
    ln k matters: without it a merged class (e.g. MNLI neutral + contradiction → RTE not_entailment) starts
    biased ln k nats against the classes mapped 1:1. Copying one member's row instead would drop the
    evidence for the others. For k = 1 the rule is a plain copy. Target labels with no source are absent
    from the result.
    """
    _validate_label_map(label_map, source_id2label, target_id2label)
    source_id = {name: i for i, name in source_id2label.items()}
    rows: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for target_id, target_name in target_id2label.items():
        members = [source_id[s] for s, t in label_map.items() if t == target_name]
        if not members:
            continue
        index = torch.tensor(members, device=weight.device)
        row = weight.index_select(0, index).mean(dim=0)
        row_bias = None
        if bias is not None:
            row_bias = bias.index_select(0, index).mean() + math.log(len(members))
        rows[target_id] = (row, row_bias)
    return rows


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def _new_output_layer(old: nn.Linear, num_labels: int, std: float) -> nn.Linear:
    layer = nn.Linear(
        old.in_features, num_labels, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype
    )
    with torch.no_grad():
        layer.weight.normal_(mean=0.0, std=std)
        if layer.bias is not None:
            layer.bias.zero_()
    return layer


def _warn_missing_encoder_weights(model: nn.Module, missing_keys: Sequence[str], output_path: str) -> None:
    """Warn when weights other than the output layer were absent from the checkpoint (e.g. an MLM checkpoint
    without RoBERTa's ``classifier.dense``): those start random, which is not intermediate-task transfer."""
    missing = sorted(k for k in missing_keys if not (k == output_path or k.startswith(output_path + ".")))
    if not missing:
        return
    pooler = get_encoder_layout(model).pooler
    in_head = [k for k in missing if any(k == p or k.startswith(p + ".") for p in pooler)]
    logger.warning(
        "load_intermediate_checkpoint: %d weight(s) besides the output layer were not in the checkpoint and are "
        "freshly initialised%s: %s",
        len(missing),
        " (including the pooler/head dense layer)" if in_head else "",
        ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
    )


def load_intermediate_checkpoint(
    checkpoint_dir: str | os.PathLike,
    num_labels: int,
    id2label: Mapping[int, str] | Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
    **from_pretrained_kwargs: Any,
):
    """Load a checkpoint fine-tuned on an intermediate task as a model for a target task.

    Args:
        checkpoint_dir: a saved ``*ForSequenceClassification`` (or base encoder) checkpoint of a supported
            model type (:data:`OUTPUT_LAYERS`).
        num_labels: the target task's number of outputs (1 for regression).
        id2label: target label names (dict id → name or a list in id order); default ``LABEL_i``.
            ``label2id`` is derived.
        label_map: source label name → target label name, e.g. MNLI → RTE
            ``{"entailment": "entailment", "neutral": "not_entailment", "contradiction": "not_entailment"}``;
            rows are initialised by :func:`map_output_rows`. Source labels left out are dropped.
        **from_pretrained_kwargs: passed to ``AutoModelForSequenceClassification.from_pretrained`` (``dtype``,
            ``revision``, ``attn_implementation``, ...). The label arguments are set here and not accepted.

    Returns:
        The target ``*ForSequenceClassification`` model; every weight but the output layer comes from the
        checkpoint, ``config.id2label``/``label2id`` describe the target labels.

    Raises:
        ValueError: ``label_map`` names labels the checkpoint (``config.id2label``) or ``id2label`` lacks,
            invalid ``num_labels``/``id2label``, or an unsupported model type.
        TypeError: a label argument passed through ``from_pretrained_kwargs``.
    """
    from transformers import AutoModelForSequenceClassification

    reserved = [key for key in _RESERVED_KWARGS if key in from_pretrained_kwargs]
    if reserved:
        raise TypeError(f"load_intermediate_checkpoint sets {reserved} itself; pass num_labels/id2label/label_map")
    target = _target_id2label(num_labels, id2label)

    model, loading_info = AutoModelForSequenceClassification.from_pretrained(
        checkpoint_dir, output_loading_info=True, **from_pretrained_kwargs
    )
    path = output_layer_path(model)
    source = {int(i): name for i, name in model.config.id2label.items()}
    if label_map is not None:
        _validate_label_map(label_map, source, target)
    _warn_missing_encoder_weights(model, loading_info.get("missing_keys", ()), path)

    if label_map is None and target == source and not _is_placeholder(target):
        logger.info("load_intermediate_checkpoint: target labels equal the checkpoint's; output layer kept")
        return model

    old = model.get_submodule(path)
    layer = _new_output_layer(old, len(target), getattr(model.config, "initializer_range", 0.02))
    if label_map is not None:
        with torch.no_grad():
            for target_id, (row, bias) in map_output_rows(old.weight, old.bias, source, target, label_map).items():
                layer.weight[target_id].copy_(row)
                if bias is not None:
                    layer.bias[target_id].copy_(bias)
    _set_submodule(model, path, layer)
    model.config.id2label = dict(target)
    model.config.label2id = {name: i for i, name in target.items()}
    model.config.problem_type = None  # re-inferred by forward() from num_labels and the label dtype
    model.num_labels = len(target)
    return model
