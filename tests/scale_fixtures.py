"""Fixtures for the scale-out and fault tests: a tiny BERT saved *with a tokenizer* (so the CLI, the sweep and
the example script can load it as ``--model``) and a tiny GLUE-format RTE directory."""

from __future__ import annotations

import random
import socket
import string
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "a", "cat", "dog", "is", "not", "on", "mat", "sat", "ran", "big", "small", "red", "blue", "house"]


def tiny_tokenizer(directory: Path):
    """A BertTokenizerFast over a 96-entry vocabulary (specials, a few words, letters, ##letters, digits)."""
    from transformers import BertTokenizerFast

    letters = list(string.ascii_lowercase)
    vocab = SPECIAL + WORDS + letters + ["##" + c for c in letters] + list(string.digits) + [".", ",", "?", "!"]
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=64)


def save_tiny_bert_with_tokenizer(directory: Path, num_layers: int = 3, seed: int = 0) -> Path:
    """A tiny BERT classifier (hidden 32, vocab 99, RTE labels) and its tokenizer, saved to ``directory``."""
    import torch
    from tiny_models import TINY_CONFIGS
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    config = TINY_CONFIGS["bert"](num_layers)
    config.num_labels = 2
    config.id2label = {0: "entailment", 1: "not_entailment"}
    config.label2id = {"entailment": 0, "not_entailment": 1}
    AutoModelForSequenceClassification.from_config(config).save_pretrained(directory)
    tokenizer = tiny_tokenizer(directory)
    assert len(tokenizer) <= config.vocab_size
    tokenizer.save_pretrained(directory)
    return directory


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))) + "."


def write_rte(glue_dir: Path, train: int = 48, dev: int = 16, seed: int = 0) -> Path:
    """``glue_dir/RTE/{train,dev}.tsv`` in the GLUE layout (header ``index sentence1 sentence2 label``)."""
    rng = random.Random(seed)
    folder = glue_dir / "RTE"
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in (("train.tsv", train), ("dev.tsv", dev)):
        rows = ["index\tsentence1\tsentence2\tlabel"]
        for index in range(size):
            first = _sentence(rng)
            label = "entailment" if index % 2 == 0 else "not_entailment"
            second = first if label == "entailment" else _sentence(rng)
            rows.append(f"{index}\t{first}\t{second}\t{label}")
        (folder / name).write_text("\n".join(rows) + "\n")
    return glue_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
