"""Numpy helpers over one row of logits: log-probabilities and the most likely tokens."""

from __future__ import annotations

import numpy as np


def logprobs_of(logits: np.ndarray, n: int) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """Log-softmax of a row of raw logits (a new array) and its ``n`` most likely tokens, best first."""
    m = float(logits.max())
    lp = logits - (m + float(np.log(np.exp(logits - m).sum())))
    best: list[tuple[int, float]] = []
    if n > 0:
        idx = np.argpartition(-lp, n)[:n]
        idx = idx[np.argsort(-lp[idx], kind="stable")]
        best = [(int(i), float(lp[i])) for i in idx]
    return lp, best
