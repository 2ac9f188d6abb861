"""Tiny configs (hidden 32, 2–4 layers) of every supported architecture, saved and reloaded.

Reloading matters: transformers 5 marks loaded tensors ``_is_hf_initialized`` and its ``_init_weights``
then skips them, so a ``from_config`` model hides re-init bugs.
"""

from __future__ import annotations

from transformers import (
    AlbertConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    MPNetConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

COMMON = dict(vocab_size=99, max_position_embeddings=64, initializer_range=0.02)

TINY_CONFIGS = {
    "bert": lambda n: BertConfig(hidden_size=32, num_hidden_layers=n, num_attention_heads=2, intermediate_size=37, **COMMON),
    "roberta": lambda n: RobertaConfig(hidden_size=32, num_hidden_layers=n, num_attention_heads=2, intermediate_size=37, **COMMON),
    "xlm-roberta": lambda n: XLMRobertaConfig(hidden_size=32, num_hidden_layers=n, num_attention_heads=2, intermediate_size=37, **COMMON),
    "electra": lambda n: ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=n, num_attention_heads=2, intermediate_size=37, **COMMON),
    "distilbert": lambda n: DistilBertConfig(dim=32, n_layers=n, n_heads=2, hidden_dim=37, vocab_size=99, max_position_embeddings=64),
    "deberta-v2": lambda n: DebertaV2Config(hidden_size=32, num_hidden_layers=n, num_attention_heads=2, intermediate_size=37,
                                           relative_attention=True, position_buckets=16, max_relative_positions=32,
                                           norm_rel_ebd="layer_norm", conv_kernel_size=3, pos_att_type=["p2c", "c2p"], **COMMON),
    "mpnet": lambda n: MPNetConfig(hidden_size=32, num_hidden_layers=n, num_attention_heads=2, intermediate_size=37, **COMMON),
    "modernbert": lambda n: ModernBertConfig(hidden_size=32, num_hidden_layers=n, num_attention_heads=2, intermediate_size=37,
                                            vocab_size=99, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
                                            global_attn_every_n_layers=2, local_attention=16),
    "albert": lambda n: AlbertConfig(embedding_size=16, hidden_size=32, num_hidden_layers=n, num_attention_heads=2, intermediate_size=37, **COMMON),
}


def tiny_model(model_type: str, tmp_path, num_layers: int = 3, num_labels: int = 2, seed: int = 0):
    """A tiny task model of ``model_type`` saved under ``tmp_path`` and loaded back with ``from_pretrained``."""
    import torch

    torch.manual_seed(seed)
    config = TINY_CONFIGS[model_type](num_layers)
    config.num_labels = num_labels
    model = AutoModelForSequenceClassification.from_config(config)
    path = tmp_path / f"tiny-{model_type}-{num_layers}"
    model.save_pretrained(path)
    return AutoModelForSequenceClassification.from_pretrained(path)
