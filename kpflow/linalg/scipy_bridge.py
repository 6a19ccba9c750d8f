"""A bridge to scipy's solvers for numpy-backed operators."""

from __future__ import annotations

from typing import Any

from kpflow.linalg._common import check_operator
from kpflow.operators.base import LinearOperator

__all__ = ["to_scipy"]


def to_scipy(A: LinearOperator) -> Any:
    """``A`` as a ``scipy.sparse.linalg.LinearOperator`` on flattened vectors.

    Only numpy-backed operators are accepted (scipy works on host numpy
    arrays; kpflow never moves data between devices behind your back).
    scipy is imported inside this function; it is not a dependency of
    kpflow (``pip install scipy``).

    Parameters
    ----------
    A : LinearOperator
        With ``A.xp`` the numpy namespace; shapes are flattened row-major, so
        the scipy operator has shape ``(size_out, size_in)``.

    Returns
    -------
    scipy.sparse.linalg.LinearOperator
        Its ``matvec``, ``rmatvec``, ``matmat`` and ``rmatmat`` call ``A``'s
        batched actions (``matmat`` on ``(size_in, k)`` blocks, scipy's column
        convention).

    Raises
    ------
    TypeError
        If ``A`` is not numpy-backed.
    ImportError
        If scipy is not installed (kpflow does not depend on it): ``pip install scipy``.

    Examples
    --------
    >>> import numpy as np
    >>> import kpflow
    >>> from kpflow.linalg import to_scipy
    >>> S = to_scipy(kpflow.Diagonal(np.asarray([1.0, 2.0, 3.0])))
    >>> S.shape, S.matvec(np.ones(3)).tolist()
    ((3, 3), [1.0, 2.0, 3.0])
    """
    where = "kpflow.linalg.to_scipy"
    check_operator(A, where)
    import array_api_compat

    if not array_api_compat.is_numpy_namespace(A.xp):
        from kpflow._array import namespace_name

        msg = (
            f"{where}: scipy works on numpy arrays only, but this operator lives in "
            f"{namespace_name(A.xp)}; build it from numpy arrays, or use kpflow.linalg's "
            "own solvers, which run on any backend"
        )
        raise TypeError(msg)
    import numpy as np

    try:
        import scipy.sparse.linalg as spla
    except ImportError as err:
        msg = (
            f"{where} needs scipy, which could not be imported ({err}); kpflow does not "
            "install it: run `pip install scipy`, or use kpflow.linalg's own eigsh, svds and "
            "trace, which need no scipy"
        )
        raise ImportError(msg, name="scipy") from err

    xp = A.xp
    n_in, n_out = A.size_in, A.size_out

    def _block(X: Any, apply: Any, shape: tuple, size_out: int) -> Any:
        X = np.asarray(X, dtype=A.dtype)
        k = X.shape[1]
        rows = xp.reshape(xp.asarray(np.ascontiguousarray(X.T)), (k, *shape))
        return np.asarray(xp.reshape(apply(rows), (k, size_out))).T

    def matmat(X: Any) -> Any:
        return _block(X, A._matmat, A.shape_in, n_out)

    def rmatmat(Y: Any) -> Any:
        return _block(Y, A._rmatmat, A.shape_out, n_in)

    def matvec(x: Any) -> Any:
        return matmat(np.reshape(x, (n_in, 1)))[:, 0]

    def rmatvec(y: Any) -> Any:
        return rmatmat(np.reshape(y, (n_out, 1)))[:, 0]

    return spla.LinearOperator(
        (n_out, n_in),
        matvec=matvec,
        rmatvec=rmatvec,
        matmat=matmat,
        rmatmat=rmatmat,
        dtype=np.dtype(A.dtype),
    )
