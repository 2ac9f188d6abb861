"""Small shared test utilities: synthetic classification data and Trainer arguments for tiny runs."""

from __future__ import annotations

import torch

from hf_stable_ft import StableTrainingArguments


class RandomClassificationDataset(torch.utils.data.Dataset):
    """Random token sequences whose label is a learnable function of the first token."""

    def __init__(self, size: int = 48, length: int = 12, vocab: int = 99, num_labels: int = 2, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(5, vocab, (size, length), generator=generator)
        self.labels = self.input_ids[:, 0] % num_labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": torch.ones_like(self.input_ids[index]),
            "labels": self.labels[index],
        }


def tiny_args(output_dir, **overrides) -> StableTrainingArguments:
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        num_train_epochs=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=7,
        data_seed=7,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return StableTrainingArguments(**settings)


def parameters_of(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def nan_logits_from(net, step: int):
    """Make ``net``'s training forward passes return NaN logits from its ``step``-th one on (a forced collapse)."""
    calls = {"train": 0}

    def poison(module, inputs, output):
        if module.training:
            calls["train"] += 1
            if calls["train"] >= step:
                return output * float("nan")
        return output

    net.classifier.register_forward_hook(poison)
    return net


def nan_from_seed(monkeypatch, experiment, step: int, seed: int):
    """Patch ``experiment._fresh_model`` so the run of ``seed`` collapses to NaN logits from training step ``step``."""
    real = experiment._fresh_model

    def fresh_model(prepared, run_seed):
        net = real(prepared, run_seed)
        return nan_logits_from(net, step) if run_seed == seed else net

    monkeypatch.setattr(experiment, "_fresh_model", fresh_model)
