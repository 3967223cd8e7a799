"""A model's output as class probabilities: what Predict returns and the perturbation analyses follow."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def probabilities(out: np.ndarray) -> tuple[np.ndarray, bool]:
    """A model's (N, K) output as class probabilities; True when softmax was applied (the output did not sum to 1)."""
    is_probability = bool(np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
    return (out, False) if is_probability else (softmax(out), True)
