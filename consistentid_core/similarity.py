"""The cosine similarity both identity metrics are made of, and their mean over what could be measured."""
from collections.abc import Iterable

import numpy as np
import torch


def cosine(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Cosine similarity of two vectors, computed in float64."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    # Clipped: rounding can put a vector against itself a hair above 1, which a score table would show.
    return float(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0))


def mean_of(values: Iterable[float | None]) -> float | None:
    """The mean of the measured values (``None`` is "not measured"), or ``None`` when there is none."""
    measured = [v for v in values if v is not None]
    return float(np.mean(measured)) if measured else None
