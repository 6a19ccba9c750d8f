"""Concrete operators built from arrays: Identity, Dense, Diagonal, Projector."""

from __future__ import annotations

from typing import Any

from kpflow._array import as_shape, prod
from kpflow.operators.base import LinearOperator, SymmetricOperator, meta_of_array

__all__ = ["Dense", "Diagonal", "Identity", "Projector"]


class Identity(LinearOperator):
    """The identity map ``I`` on tensors of shape ``shape``.

    Parameters
    ----------
    shape : tuple of int
        The tensor shape of the domain (and the codomain).
    like : array
        Any array whose namespace, dtype and device the operator adopts.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> I = kpflow.Identity((2, 3), like=xp.zeros(1))
    >>> I.todense().shape
    (2, 3, 2, 3)
    """

    def __init__(self, shape: Any, *, like: Any) -> None:
        shape = as_shape(shape, "shape", "Identity")
        super().__init__(shape, shape, **meta_of_array(like, "Identity"))

    def _matmat(self, X: Any) -> Any:
        return X

    def _rmatmat(self, Y: Any) -> Any:
        return Y


class Dense(LinearOperator):
    """An operator stored as its matrix.

    Parameters
    ----------
    array : array of shape ``(*shape_out, *shape_in)``
        The matrix. With neither shape given it must be 2-D, ``(m, n)``.
    shape_in, shape_out : tuple of int, optional
        The tensor shapes of domain and codomain; one may be inferred from the
        other and ``array.shape``.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> M = xp.reshape(xp.arange(24, dtype=xp.float64), (2, 3, 4))
    >>> A = kpflow.Dense(M, shape_in=(4,))
    >>> A.shape_out, A.shape_in
    ((2, 3), (4,))
    >>> A.rmatvec(xp.ones((2, 3))).shape
    (4,)
    """

    def __init__(self, array: Any, shape_in: Any = None, shape_out: Any = None) -> None:
        meta = meta_of_array(array, "Dense")
        full = tuple(array.shape)
        if shape_in is None and shape_out is None:
            if len(full) != 2:
                msg = (
                    "Dense: expected a 2-D array when neither shape_in nor shape_out is given, "
                    f"got an array of shape {full}"
                )
                raise ValueError(msg)
            shape_out, shape_in = (full[0],), (full[1],)
        elif shape_in is None:
            shape_out = as_shape(shape_out, "shape_out", "Dense")
            shape_in = full[len(shape_out) :]
        elif shape_out is None:
            shape_in = as_shape(shape_in, "shape_in", "Dense")
            shape_out = full[: len(full) - len(shape_in)]
        shape_in = as_shape(shape_in, "shape_in", "Dense")
        shape_out = as_shape(shape_out, "shape_out", "Dense")
        if tuple(shape_out) + tuple(shape_in) != full:
            msg = (
                f"Dense: expected an array of shape (*shape_out, *shape_in) = "
                f"{tuple(shape_out) + tuple(shape_in)}, got {full}"
            )
            raise ValueError(msg)
        super().__init__(shape_in, shape_out, **meta)
        self.array = array
        self.matrix = meta["xp"].reshape(array, (prod(shape_out), prod(shape_in)))

    def _matmat(self, X: Any) -> Any:
        xp = self.xp
        k = X.shape[0]
        Y = xp.reshape(X, (k, self.size_in)) @ xp.matrix_transpose(self.matrix)
        return xp.reshape(Y, (k, *self.shape_out))

    def _rmatmat(self, Y: Any) -> Any:
        xp = self.xp
        k = Y.shape[0]
        X = xp.reshape(Y, (k, self.size_out)) @ self.matrix
        return xp.reshape(X, (k, *self.shape_in))


class Diagonal(SymmetricOperator):
    """Elementwise scaling ``X ↦ d ⊙ X`` on tensors of the shape of ``d``.

    Parameters
    ----------
    array : array
        The diagonal ``d``; its shape is the operator's domain shape.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> D = kpflow.Diagonal(xp.asarray([[1.0, 2.0], [3.0, 4.0]]))
    >>> D.matvec(xp.ones((2, 2)))
    Array([[1., 2.],
           [3., 4.]], dtype=array_api_strict.float64)
    """

    def __init__(self, array: Any) -> None:
        meta = meta_of_array(array, "Diagonal")
        super().__init__(tuple(array.shape), tuple(array.shape), **meta)
        self.array = array

    def _matmat(self, X: Any) -> Any:
        return self.array[None, ...] * X


class Projector(LinearOperator):
    """The rank-one map ``X ↦ ⟨x, X⟩ y``.

    Parameters
    ----------
    x : array
        Its shape is the domain shape.
    y : array, optional
        Its shape is the codomain shape; defaults to ``x`` (an orthogonal
        projector onto ``x`` when ``‖x‖ = 1``).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> Pr = kpflow.Projector(xp.asarray([1.0, 0.0]), xp.asarray([0.0, 2.0, 0.0]))
    >>> Pr.matvec(xp.asarray([3.0, 5.0]))
    Array([0., 6., 0.], dtype=array_api_strict.float64)
    """

    def __init__(self, x: Any, y: Any = None) -> None:
        from kpflow._array import array_namespace

        if y is None:
            y = x
        xp = array_namespace(x, y, where="Projector")
        meta = meta_of_array(x, "Projector")
        if y.dtype != x.dtype:
            msg = f"Projector: x and y have two dtypes, {x.dtype} and {y.dtype}"
            raise TypeError(msg)
        super().__init__(tuple(x.shape), tuple(y.shape), **{**meta, "xp": xp})
        self.x = x
        self.y = y

    @staticmethod
    def _apply(u: Any, v: Any, X: Any, xp: Any) -> Any:
        k = X.shape[0]
        n = prod(tuple(u.shape))  # not -1: a block of k = 0 probes has no size to infer
        coeff = xp.reshape(X, (k, n)) @ xp.reshape(u, (n,))
        return xp.reshape(coeff, (k,) + (1,) * v.ndim) * v[None, ...]

    def _matmat(self, X: Any) -> Any:
        return self._apply(self.x, self.y, X, self.xp)

    def _rmatmat(self, Y: Any) -> Any:
        return self._apply(self.y, self.x, Y, self.xp)
