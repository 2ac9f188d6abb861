"""The labels of a training set, for the baselines a degenerate run is measured against."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

__all__ = ["dataset_labels"]

_LABEL_KEYS = ("labels", "label", "label_ids")


def dataset_labels(dataset) -> np.ndarray:
    """The labels of a training set: the ``labels``/``label``/``label_ids`` column of a 🤗 ``datasets.Dataset``,
    or that key of every item of a map-style dataset. Raises ``ValueError`` when there are none to read."""
    column_names = getattr(dataset, "column_names", None)
    if isinstance(column_names, (list, tuple)):
        for key in _LABEL_KEYS:
            if key in column_names:
                return _as_array(dataset[key])
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(f"cannot read the labels of an iterable dataset ({type(dataset).__name__})")
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    first = dataset[0]
    key = next((k for k in _LABEL_KEYS if isinstance(first, Mapping) and k in first), None)
    if key is None:
        raise ValueError(f"the items of {type(dataset).__name__} have no 'labels'/'label' key")
    return _as_array([dataset[i][key] for i in range(len(dataset))])


def _as_array(values: Iterable) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray([v.item() if hasattr(v, "item") else v for v in values])
