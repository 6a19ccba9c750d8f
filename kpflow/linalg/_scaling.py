"""Scale-safe products and norms for the eigensolvers and estimators, and the check for non-finite products.

An operator whose entries are far from 1 (NTK_S of a model driven by inputs of size 1e-12 has
eigenvalues near 1e-24) breaks float32 algebra that squares its vectors: a Gram matrix
``W Wᵀ`` or a norm ``√Σ w²`` of entries below about 1e-19 underflows to 0, so residual
estimates read 0 and orthogonalisations lose their blocks.  The solvers therefore run on
``A / s`` with ``s`` a power of 4 taken from the first product (so that the entries they
work with are of order 1, and ``√s`` is a power of 2 as well: multiplying by either is
exact, so a solve of ``A / s`` takes the same steps as one of ``A`` would in exact range),
and report values and residual norms times ``s``.  Norms of vectors whose size is not
controlled (residuals of the exact routes) are taken row by row after dividing each row by
its largest entry.

Every product the solvers make is checked for NaN and inf (one reduction per product, read
on the host with the convergence scalars): an operator whose arrays hold NaN would
otherwise give finite but meaningless eigenvalues, or end in a LAPACK error far from the
cause.
"""

from __future__ import annotations

import math
from typing import Any

from kpflow._array import device_of
from kpflow.linalg._backend import array_kernel
from kpflow.operators.base import LinearOperator

__all__ = ["ScaledProducts", "check_finite", "nonfinite_error", "power_of_four", "row_norms"]


def power_of_four(xp: Any, dtype: Any, size: float) -> float:
    """The power of 4 nearest ``size`` (1 for 0), kept inside the dtype's normal range.

    Dividing by it maps an array of largest entry ``size`` to entries in ``[1/2, 2]``.
    """
    if not (size > 0.0) or not math.isfinite(size):
        return 1.0
    finfo = xp.finfo(dtype)
    low = math.ceil(math.log2(float(finfo.smallest_normal))) + 4
    high = math.floor(math.log2(float(finfo.max))) - 4
    exponent = 2 * round(math.log2(size) / 2)
    exponent = min(max(exponent, low + (low % 2)), high - (high % 2))
    return math.ldexp(1.0, exponent)


def row_norms(xp: Any, X: Any) -> Any:
    """``‖X_i‖`` per row of ``X`` (k, n), with each row divided by its largest entry first.

    ``xp.linalg.vector_norm`` squares the entries: in float32, rows of entries below about
    1e-19 have norm 0 and rows above about 1e19 have norm inf.  Pure (compiled on jax).
    """
    if X.shape[1] == 0:
        return xp.zeros((X.shape[0],), dtype=X.dtype, device=device_of(X))
    top = xp.max(xp.abs(X), axis=1)
    safe = xp.where(top > 0, top, xp.ones_like(top))
    return xp.linalg.vector_norm(X / safe[:, None], axis=1) * top


def _largest(xp: Any, Y: Any) -> Any:
    return xp.max(xp.abs(Y))


def _largest_and_scaled(xp: Any, Y: Any, inv: Any) -> tuple[Any, Any]:
    """``(max|Y|, Y · inv)``: a checked and scaled product in one pass (one program on jax)."""
    return xp.max(xp.abs(Y)), Y * inv


def nonfinite_error(where: str, name: str, what: str = "products") -> FloatingPointError:
    """The error for an operator whose ``what`` hold NaN or inf (``name``: the operator's repr)."""
    msg = (
        f"{where}: the {what} of the operator {name} returned non-finite values (NaN or inf), so "
        "no eigenvalue or singular value of it can be computed; check its arrays (parameters, "
        "inputs, states) for NaN and inf, and for overflow"
    )
    return FloatingPointError(msg)


def check_finite(xp: Any, Y: Any, where: str, name: str, what: str = "products") -> float:
    """``max|Y|`` (host float); raises :func:`nonfinite_error` when ``Y`` holds NaN or inf."""
    if math.prod(tuple(Y.shape)) == 0:
        return 0.0
    largest = float(array_kernel(xp, Y, _largest)(Y))
    if not math.isfinite(largest):
        raise nonfinite_error(where, name, what)
    return largest


class ScaledProducts:
    """Products ``A X / s`` through a :class:`~kpflow.linalg._common.MatvecCounter`, checked for NaN and inf.

    ``s`` is a power of 4 fixed by the first product that is not zero (:func:`power_of_four`
    of its largest entry): every product divided by the same ``s`` keeps a solver's
    identities, and the products before it were exactly zero.  The trace and effective-rank
    estimators square their products, so they work in units of ``A / s`` too and map their
    estimates back with :meth:`unscale`.  A duck-typed counter: it has the counter's ``op``,
    ``num_matvecs``, ``matmat``, ``rmatmat`` and ``close``.
    """

    def __init__(self, counter: Any, where: str, name: str | None = None) -> None:
        self.counter = counter
        self.op: LinearOperator = counter.op
        self.where = where
        self.name = repr(self.op) if name is None else name
        self.scale = 1.0
        self._fixed = False

    @property
    def num_matvecs(self) -> int:
        return int(self.counter.num_matvecs)

    def matmat(self, X: Any) -> Any:
        """``A X / s`` for ``X`` (k, size_in)."""
        return self._scaled(self.counter.matmat(X))

    def rmatmat(self, X: Any) -> Any:
        """``Aᵀ X / s`` for ``X`` (k, size_out), with the same ``s``."""
        return self._scaled(self.counter.rmatmat(X))

    def _scaled(self, Y: Any) -> Any:
        """``Y / s``; the first nonzero product fixes ``s``; NaN or inf raise."""
        xp = self.op.xp
        if self._fixed and self.scale != 1.0 and math.prod(tuple(Y.shape)) > 0:
            # s known: the check and the division in one pass
            top, scaled = array_kernel(xp, Y, _largest_and_scaled)(Y, 1.0 / self.scale)
            if not math.isfinite(float(top)):
                raise nonfinite_error(self.where, self.name)
            return scaled
        largest = check_finite(xp, Y, self.where, self.name)
        if not self._fixed and largest > 0.0:
            self.scale = power_of_four(xp, self.op.dtype, largest)
            self._fixed = True
        if self.scale == 1.0:
            return Y
        # the program every later product of this shape runs (jax: no second one for the division)
        return array_kernel(xp, Y, _largest_and_scaled)(Y, 1.0 / self.scale)[1]

    def unscale(self, value: Any, degree: int = 1) -> Any:
        """``value · s**degree``: an estimate of degree ``degree`` in ``A`` (``tr A``: 1,
        ``‖A‖²_F``: 2) back from units of ``A / s`` (``None`` stays ``None``)."""
        if value is None or self.scale == 1.0:
            return value
        return value * self.scale**degree

    def close(self) -> None:
        self.counter.close()
