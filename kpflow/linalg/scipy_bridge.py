"""A bridge to scipy's solvers for operators of any backend."""

from __future__ import annotations

from typing import Any

from kpflow.linalg._common import adapter_of, check_operator, like_array
from kpflow.operators.base import LinearOperator, on_host

__all__ = ["to_scipy"]


def to_scipy(A: LinearOperator) -> Any:
    """``A`` as a ``scipy.sparse.linalg.LinearOperator`` on flattened host vectors.

    scipy works on host numpy arrays; ``A`` may live in any namespace and on any device
    (numpy, array_api_strict, torch, jax, cupy).  Every product copies explicitly, and only
    the vectors scipy hands over:

    =====================  =========================================================
    backend                what a product with ``k`` vectors copies
    =====================  =========================================================
    numpy, torch (CPU)     nothing but a C-order copy of a column-major block of
                           ``k > 1`` vectors (torch shares numpy's buffers both ways)
    jax (CPU)              a copy of the ``k`` vectors into a jax array (jax owns its
                           buffers); the results come back without a copy
    array_api_strict       a copy to the operator's device and back
    GPUs (cupy, torch,     a host-to-device copy of the ``k`` vectors and a
    jax)                   device-to-host copy of the results, per product
    =====================  =========================================================

    The products run without an autograd graph (torch: under ``torch.no_grad()``), so an
    operator built from parameters that require grad costs no graph memory in scipy's
    iterations.  scipy is imported inside this function; it is not a dependency of kpflow
    (``pip install scipy``).

    Parameters
    ----------
    A : LinearOperator
        Any operator; shapes are flattened row-major, so the scipy operator has shape
        ``(size_out, size_in)``.

    Returns
    -------
    scipy.sparse.linalg.LinearOperator
        Of ``A``'s dtype as a numpy dtype (``torch.float32`` is ``numpy.float32``).  Its
        ``matvec``, ``rmatvec``, ``matmat`` and ``rmatmat`` call ``A``'s batched actions
        (``matmat`` on ``(size_in, k)`` blocks, scipy's column convention) and return numpy
        arrays of that dtype.  scipy's vectors of another dtype raise ``TypeError`` (kpflow
        never casts silently).

    Raises
    ------
    TypeError
        If ``A`` is not a kpflow operator.
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

    An array-api-strict operator on another device works the same way, through explicit
    copies:

    >>> import array_api_strict as xp
    >>> D = kpflow.Diagonal(xp.asarray([1.0, 2.0], device=xp.Device("device1")))
    >>> to_scipy(D).matvec(np.ones(2)).tolist()
    [1.0, 2.0]
    """
    where = "kpflow.linalg.to_scipy"
    check_operator(A, where)
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
    adapter = adapter_of(A)
    dtype = on_host(like_array(A)).dtype  # A's dtype as numpy's
    n_in, n_out = A.size_in, A.size_out

    def _block(X: Any, apply: Any, shape: tuple, size_out: int, name: str) -> Any:
        X = np.asarray(X)
        if X.dtype != dtype:
            msg = (
                f"{where}: scipy passed {name} of dtype {X.dtype} to an operator of dtype {dtype}; "
                "kpflow never casts silently (build the operator in the dtype the scipy solver uses)"
            )
            raise TypeError(msg)
        k = X.shape[1]
        rows = np.ascontiguousarray(X.T).reshape((k, *shape))
        with adapter.no_grad():
            out = apply(adapter.from_host(rows, dtype=A.dtype, device=A.device))
        return on_host(xp.reshape(out, (k, size_out))).T

    def matmat(X: Any) -> Any:
        return _block(X, A._matmat, A.shape_in, n_out, "a block")

    def rmatmat(Y: Any) -> Any:
        return _block(Y, A._rmatmat, A.shape_out, n_in, "a block")

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
        dtype=dtype,
    )
