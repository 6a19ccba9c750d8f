"""The result types of :mod:`kpflow.linalg`: ScalarResult, EighResult, SvdResult."""

from __future__ import annotations

from typing import Any

__all__ = ["EighResult", "ScalarResult", "SvdResult"]


class ScalarResult:
    """A scalar estimate that stays in the operator's namespace, dtype and device.

    Attributes
    ----------
    value : array of shape ()
        The estimate, a 0-d array in the operator's namespace, dtype and device.
    error : array of shape () or None
        An estimate of the standard error of ``value`` (same namespace), or
        ``None`` when the method gives none; exact methods report ``0``.
    num_matvecs : int
        Operator-vector products used (a block of ``k`` probes counts ``k``).
    method : str
        The method that produced the value (``"auto"`` resolved).

    Notes
    -----
    ``float(result)`` copies the value to the host: it is the one place a
    transfer happens, and only when the caller asks for it.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import trace
    >>> r = trace(kpflow.Diagonal(xp.asarray([1.0, 2.0, 3.0])))
    >>> float(r), r.method, r.num_matvecs
    (6.0, 'exact', 0)
    """

    __slots__ = ("error", "method", "num_matvecs", "value")

    def __init__(self, value: Any, error: Any, num_matvecs: int, method: str) -> None:
        self.value = value
        self.error = error
        self.num_matvecs = int(num_matvecs)
        self.method = method

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        err = "None" if self.error is None else f"{float(self.error):.3g}"
        return (
            f"ScalarResult(value={float(self.value):.6g}, error={err}, "
            f"num_matvecs={self.num_matvecs}, method={self.method!r})"
        )


def _shape_text(a: Any) -> str:
    return f"<{tuple(a.shape)} {a.dtype}>"


class _UnpacksLike:
    """A result that unpacks like numpy's (its ``_unpacked`` fields) and keeps diagnostics as attributes."""

    __slots__ = ()
    _unpacked: tuple[str, ...] = ()
    _extra: tuple[str, ...] = ()

    def _pair(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._unpacked)

    def __iter__(self) -> Any:
        return iter(self._pair())

    def __len__(self) -> int:
        return len(self._unpacked)

    def __getitem__(self, index: Any) -> Any:
        return self._pair()[index]

    def __repr__(self) -> str:
        parts = [f"{name}={_shape_text(getattr(self, name))}" for name in self._unpacked]
        res = getattr(self, "residual_norms", None)
        if res is not None and int(res.shape[0]) > 0:
            from kpflow._array import array_namespace

            parts.append(f"max_residual={float(array_namespace(res).max(res)):.3g}")
        parts.append(f"num_matvecs={self.num_matvecs}")  # type: ignore[attr-defined]
        return f"{type(self).__name__}({', '.join(parts)})"


class EighResult(_UnpacksLike):
    """Top-``k`` eigenpairs of a symmetric operator, largest first.

    Unpacks into two, like ``numpy.linalg.eigh``: ``w, V = eigsh(A, k)``.  The
    diagnostics are attributes.  The repr shows shapes, not whole arrays.

    Attributes
    ----------
    eigenvalues : array of shape (k,)
        Descending.
    eigenvectors : array of shape (k, *shape_in)
        Row ``j`` is the unit eigenvector of ``eigenvalues[j]``.
    residual_norms : array of shape (k,)
        ``‖A v_j − λ_j v_j‖`` for each returned pair.
    num_matvecs : int
        Operator-vector products used.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.linalg import EighResult
    >>> r = EighResult(np.ones(2), np.eye(2), np.zeros(2), 4)
    >>> w, V = r
    >>> r
    EighResult(eigenvalues=<(2,) float64>, eigenvectors=<(2, 2) float64>, max_residual=0, num_matvecs=4)
    """

    __slots__ = ("eigenvalues", "eigenvectors", "num_matvecs", "residual_norms")
    _unpacked = ("eigenvalues", "eigenvectors")

    def __init__(self, eigenvalues: Any, eigenvectors: Any, residual_norms: Any, num_matvecs: int) -> None:
        self.eigenvalues = eigenvalues
        self.eigenvectors = eigenvectors
        self.residual_norms = residual_norms
        self.num_matvecs = int(num_matvecs)


class SvdResult(_UnpacksLike):
    """Top-``k`` singular triplets, largest first; unpacks into three: ``U, s, V = svds(A, k)``.

    Attributes
    ----------
    U : array of shape (k, *shape_out)
        Left singular vectors (rows).
    s : array of shape (k,)
        Singular values, descending.
    V : array of shape (k, *shape_in)
        Right singular vectors (rows, like numpy's ``Vh``); ``A V[j] = s[j] U[j]``.
    num_matvecs : int
        Products with ``A`` or ``Aᵀ`` used.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.linalg import SvdResult
    >>> U, s, V = SvdResult(np.eye(2), np.ones(2), np.eye(2), 3)
    >>> SvdResult(np.eye(2), np.ones(2), np.eye(2), 3)
    SvdResult(U=<(2, 2) float64>, s=<(2,) float64>, V=<(2, 2) float64>, num_matvecs=3)
    """

    __slots__ = ("U", "V", "num_matvecs", "s")
    _unpacked = ("U", "s", "V")

    def __init__(self, U: Any, s: Any, V: Any, num_matvecs: int) -> None:
        self.U = U
        self.s = s
        self.V = V
        self.num_matvecs = int(num_matvecs)
