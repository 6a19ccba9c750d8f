"""Test operators with prescribed spectra for kpflow.linalg, and an opaque wrapper.

Every spectral operator is ``Dense(Q diag(λ) Qᵀ)`` with ``Q`` a seeded random
orthogonal matrix, so the exact answer of every quantity is known on the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import kpflow
from kpflow.operators.base import LinearOperator


def _flat(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.ones(n)


def _poly(n: int, rng: np.random.Generator) -> np.ndarray:
    return 1.0 / (1.0 + np.arange(n)) ** 2


def _exp(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.exp(-np.arange(n) / 4.0)


def _lowrank_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    signal = 10.0 * 0.7 ** np.arange(5)
    noise = 0.01 * np.abs(rng.standard_normal(n - 5))
    return np.sort(np.concatenate([signal, noise]))[::-1]


def _degenerate(n: int, rng: np.random.Generator) -> np.ndarray:
    """5.0 repeated 20 times, then a decreasing tail from 3 to 0.1."""
    return np.concatenate([np.full(20, 5.0), np.linspace(3.0, 0.1, n - 20)])


SPECTRA = {
    "flat": _flat,
    "poly": _poly,
    "exp": _exp,
    "lowrank_noise": _lowrank_noise,
    "degenerate": _degenerate,
}


def orthogonal(n: int, seed: int = 0) -> np.ndarray:
    Q, R = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return Q * np.sign(np.diag(R))


def spectral_matrix(name: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(M, λ)``: a symmetric host matrix with eigenvalues ``λ`` (descending)."""
    lam = SPECTRA[name](n, np.random.default_rng(seed + 1000))
    Q = orthogonal(n, seed)
    M = (Q * lam) @ Q.T
    return (M + M.T) / 2, lam


class Opaque(LinearOperator):
    """Hides an operator's type, so that only the generic (matvec) routes apply."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(op.shape_in, op.shape_out, xp=op.xp, dtype=op.dtype, device=op.device)
        self.op = op

    def _matmat(self, X: Any) -> Any:
        return self.op._matmat(X)

    def _rmatmat(self, Y: Any) -> Any:
        return self.op._rmatmat(Y)


def spectral_operator(case: Any, name: str, n: int, seed: int = 0, *, opaque: bool = True):
    """``(A, M, λ)``: the operator on ``case``'s backend (opaque by default), its host matrix and spectrum."""
    M, lam = spectral_matrix(name, n, seed)
    A: LinearOperator = kpflow.Dense(case.asarray(M))
    return (Opaque(A) if opaque else A), M, lam


def numpy_operator(M: np.ndarray, shape: tuple[int, ...] | None = None, *, opaque: bool = True):
    """A numpy (array-api-compat) operator for ``M``, optionally on tensor shape ``shape``."""
    import array_api_compat.numpy as cnp

    arr = cnp.asarray(M)
    if shape is not None:
        arr = cnp.reshape(arr, (*shape, *shape))
        A: LinearOperator = kpflow.Dense(arr, shape_in=shape)
    else:
        A = kpflow.Dense(arr)
    return Opaque(A) if opaque else A
