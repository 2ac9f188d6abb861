"""hf_stable_ft: stable few-sample fine-tuning of BERT-family encoders for the stock Hugging Face Trainer."""

from .version import __version__
