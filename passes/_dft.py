"""The constant bases a DFT becomes when written as MatMuls (decompose-dft, decompose-stft)."""

from __future__ import annotations

import numpy as np

MAX_LENGTH = 4096  # basis matrices of n x n floats: 64 MiB at most


def dft_basis(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The float64 [n, k] bases C[j, m] = cos(2 pi j m / n) and S[j, m] = sin(2 pi j m / n)."""
    angle = 2.0 * np.pi * np.outer(np.arange(n), np.arange(k)) / n
    return np.cos(angle), np.sin(angle)
