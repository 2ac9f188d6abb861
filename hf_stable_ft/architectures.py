"""Where embeddings, transformer blocks, pooler and head live in each supported encoder.

This is the only module that knows model layouts. Every technique (re-init, LLRD, diagnostics, Mixout
defaults) asks it for a :class:`EncoderLayout` and works on dotted module paths, so supporting a new
encoder means adding one row to :data:`ENCODER_LAYOUTS`.

Paths are relative to the task model (``XForSequenceClassification`` and siblings). PEFT and
DistributedDataParallel wrappers are removed first by :func:`unwrap_model`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

__all__ = [
    "EncoderLayout",
    "ENCODER_LAYOUTS",
    "ParameterDepth",
    "get_encoder_layout",
    "unwrap_model",
    "transformer_blocks",
    "parameter_depths",
    "supported_model_types",
]


@dataclass(frozen=True)
class EncoderLayout:
    """Dotted module paths of one encoder family (relative to the task model).

    Attributes:
        embeddings: modules that form the input side (lowest LLRD group, depth 0).
        layers: the ``nn.ModuleList`` of transformer blocks, bottom to top.
        shared_bottom: encoder-level modules used by every block (relative-position tables and their norms);
            they get the embeddings' depth, the most conservative rate.
        shared_top: encoder-level modules applied after the last block (e.g. ModernBERT's ``final_norm``);
            they get the top block's depth.
        pooler: the module(s) that play BERT's pooler role (a dense layer on the [CLS] state), re-drawn by
            ``reinit_pooler`` and trained at the head's rate.
        supports_layerwise: False where blocks share weights (ALBERT) and "top-L blocks" is undefined.
        note: why the family is special, shown in errors.
        output_layer: the ``nn.Linear`` with one row per label in the task model (what intermediate-task transfer
            re-draws or maps row by row).
        out_projections: Linear modules (suffixes of their dotted names) that the family initialises with the
            smaller std ``initializer_range/√(2·num_hidden_layers)`` (ModernBERT's residual-stream outputs);
            re-init draws them the same way.
        truncated_init: the family draws weights from a normal truncated at ±``initializer_cutoff_factor``·std
            (ModernBERT; the config's factor, 3 where it is unset, as transformers does).
    """

    embeddings: tuple[str, ...]
    layers: str
    pooler: tuple[str, ...] = ()
    shared_bottom: tuple[str, ...] = ()
    shared_top: tuple[str, ...] = ()
    supports_layerwise: bool = True
    note: str = ""
    output_layer: str = "classifier"
    out_projections: tuple[str, ...] = ()
    truncated_init: bool = False


# model_type -> (base attribute, layout). "{base}" is replaced by the base attribute.
ENCODER_LAYOUTS: dict[str, tuple[str, EncoderLayout]] = {
    "bert": ("bert", EncoderLayout(("{base}.embeddings",), "{base}.encoder.layer", pooler=("{base}.pooler",))),
    "roberta": ("roberta", EncoderLayout(("{base}.embeddings",), "{base}.encoder.layer", pooler=("classifier.dense",),
                                         output_layer="classifier.out_proj")),
    "xlm-roberta": (
        "roberta",
        EncoderLayout(("{base}.embeddings",), "{base}.encoder.layer", pooler=("classifier.dense",),
                      output_layer="classifier.out_proj"),
    ),
    "electra": (
        "electra",
        EncoderLayout(
            ("{base}.embeddings", "{base}.embeddings_project"), "{base}.encoder.layer", pooler=("classifier.dense",),
            output_layer="classifier.out_proj",
        ),
    ),
    "distilbert": ("distilbert", EncoderLayout(("{base}.embeddings",), "{base}.transformer.layer", pooler=("pre_classifier",))),
    "deberta-v2": (
        "deberta",
        EncoderLayout(
            ("{base}.embeddings",),
            "{base}.encoder.layer",
            pooler=("pooler",),
            # rel_embeddings (and the LayerNorm applied to them) feed every block's attention.
            shared_bottom=("{base}.encoder.rel_embeddings", "{base}.encoder.LayerNorm", "{base}.encoder.conv"),
        ),
    ),
    "mpnet": (
        "mpnet",
        EncoderLayout(
            ("{base}.embeddings",),
            "{base}.encoder.layer",
            pooler=("classifier.dense", "{base}.pooler"),
            shared_bottom=("{base}.encoder.relative_attention_bias",),
            output_layer="classifier.out_proj",
        ),
    ),
    "modernbert": (
        "model",
        EncoderLayout(("{base}.embeddings",), "{base}.layers", pooler=("head",), shared_top=("{base}.final_norm",),
                      out_projections=("attn.Wo", "mlp.Wo", "head.dense"), truncated_init=True),
    ),
    "albert": (
        "albert",
        EncoderLayout(
            ("{base}.embeddings", "{base}.encoder.embedding_hidden_mapping_in"),
            "{base}.encoder.albert_layer_groups",
            pooler=("{base}.pooler",),
            supports_layerwise=False,
            note="ALBERT shares one set of block weights across every depth, so 'the top L blocks' and "
            "per-block learning rates do not exist",
        ),
    ),
}


def supported_model_types() -> list[str]:
    return sorted(ENCODER_LAYOUTS)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the task model under PEFT (``get_base_model()``), DDP/DataParallel (``.module``) and
    ``torch.compile`` (``_orig_mod``) wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
    return model


def _model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def get_encoder_layout(model: nn.Module, *, need_layerwise: bool = False, purpose: str = "") -> EncoderLayout:
    """Resolve the :class:`EncoderLayout` of ``model`` with its base attribute filled in.

    Raises ``ValueError`` naming the supported model types when the architecture is unknown, and, with
    ``need_layerwise=True``, when the family has no separate blocks (ALBERT).
    """
    model = unwrap_model(model)
    model_type = _model_type(model)
    what = f" for {purpose}" if purpose else ""
    if model_type not in ENCODER_LAYOUTS:
        raise ValueError(
            f"hf_stable_ft does not know the layout of model_type={model_type!r}{what}; supported model types: "
            f"{', '.join(supported_model_types())}. Add a row to hf_stable_ft.architectures.ENCODER_LAYOUTS."
        )
    base, layout = ENCODER_LAYOUTS[model_type]
    if need_layerwise and not layout.supports_layerwise:
        raise ValueError(f"{purpose or 'this technique'} is not defined for model_type={model_type!r}: {layout.note}.")

    def fill(paths):
        return tuple(p.format(base=base) for p in paths)

    return dataclasses.replace(
        layout,
        embeddings=fill(layout.embeddings),
        layers=layout.layers.format(base=base),
        pooler=fill(layout.pooler),
        shared_bottom=fill(layout.shared_bottom),
        shared_top=fill(layout.shared_top),
    )


def _get_submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def transformer_blocks(model: nn.Module, *, purpose: str = "") -> list[nn.Module]:
    """The transformer blocks of ``model``, bottom to top."""
    model = unwrap_model(model)
    layout = get_encoder_layout(model, need_layerwise=True, purpose=purpose)
    blocks = _get_submodule(model, layout.layers)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no module {layout.layers!r}; is it a task model of its family?")
    return list(blocks)


@dataclass(frozen=True)
class ParameterDepth:
    """Where one parameter sits: ``depth`` 0 = embeddings, 1..L = blocks, L+1 = pooler and head."""

    depth: int
    group: str  # "embeddings", "layer.{i}", "pooler", "head"
    num_layers: int = field(compare=False)


def _prefix_match(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes if p)


def parameter_depths(model: nn.Module) -> dict[str, ParameterDepth]:
    """Assign every parameter of ``model`` (names as in ``unwrap_model(model).named_parameters()``) a depth.

    Embeddings and bottom-shared modules → 0; block ``i`` → ``i + 1``; top-shared modules → ``L``;
    pooler and everything outside the encoder (the task head) → ``L + 1``. Nothing is left unassigned:
    parameters of the base model that no row names raise, so a new layout cannot silently fall into the
    head's group.
    """
    model = unwrap_model(model)
    layout = get_encoder_layout(model, need_layerwise=True, purpose="layer-wise grouping")
    base = layout.layers.split(".")[0]
    num_layers = len(transformer_blocks(model))
    depths: dict[str, ParameterDepth] = {}
    for name, _ in model.named_parameters():
        # PEFT adds tuner modules inside the layers they adapt; their names keep the layer's path.
        if _prefix_match(name, layout.embeddings) or _prefix_match(name, layout.shared_bottom):
            depths[name] = ParameterDepth(0, "embeddings", num_layers)
        elif name.startswith(layout.layers + "."):
            index = int(name[len(layout.layers) + 1 :].split(".")[0])
            depths[name] = ParameterDepth(index + 1, f"layer.{index}", num_layers)
        elif _prefix_match(name, layout.shared_top):
            depths[name] = ParameterDepth(num_layers, f"layer.{num_layers - 1}", num_layers)
        elif _prefix_match(name, layout.pooler):
            depths[name] = ParameterDepth(num_layers + 1, "pooler", num_layers)
        elif name.startswith(base + "."):
            raise ValueError(
                f"parameter {name!r} of {type(model).__name__} is in the encoder but outside every module that "
                "hf_stable_ft.architectures lists for it; update ENCODER_LAYOUTS so its layer-wise rate is explicit"
            )
        else:
            depths[name] = ParameterDepth(num_layers + 1, "head", num_layers)
    return depths
