"""Kernel alignment between operators: NTK_S against P Pᵀ, and the NTK at init against after training.

The (uncentred) alignment of two symmetric operators is the cosine of their Frobenius angle,
a(A, B) = ⟨A, B⟩_F / (‖A‖_F ‖B‖_F) (:func:`kpflow.linalg.alignment`); the centred alignment
(Cortes, Mohri & Rostamizadeh, JMLR 2012) first projects out the constant vector on the
whole (flattened) domain, A ↦ H A H with H = I − 1 1ᵀ / n.
"""

from __future__ import annotations

import math
from typing import Any

from kpflow import linalg
from kpflow.linalg import ScalarResult
from kpflow.models.base import Model, Trajectory
from kpflow.ntk import global_ntk, parameter_kernel, propagator
from kpflow.ntk.kernel import check_trajectory
from kpflow.operators.base import LinearOperator, is_operator
from kpflow.operators.basic import Dense, Identity, Projector

__all__ = ["init_vs_trained_alignment", "kernel_alignment", "misdirection"]


def _as_operator(A: Any, name: str, where: str) -> LinearOperator:
    if is_operator(A):
        return A
    if getattr(A, "ndim", None) == 2:
        return Dense(A)
    msg = f"{where}: expected {name} to be a LinearOperator or a 2-d array, got {type(A).__name__}"
    raise TypeError(msg)


def _centred(A: LinearOperator) -> LinearOperator:
    """H A H with H = I − 1 1ᵀ/n on the flattened domain."""
    xp = A.xp
    ones = xp.ones(A.shape_in, dtype=A.dtype, device=A.device) / math.sqrt(A.size_in)
    H = Identity(A.shape_in, like=ones) - Projector(ones)
    return H @ A @ H


def kernel_alignment(
    A: Any,
    B: Any,
    *,
    centered: bool = False,
    method: str = "auto",
    num_matvecs: int | None = None,
    rng: Any = None,
) -> ScalarResult:
    """The (centred) kernel alignment ⟨A, B⟩_F / (‖A‖_F ‖B‖_F) of two square operators.

    Parameters
    ----------
    A, B : LinearOperator or 2-d array
        Square, of equal shapes, namespace, dtype and device (e.g. two NTKs).
    centered : bool
        Align H A H and H B H, H = I − 1 1ᵀ/n (the centred kernel alignment).
    method, num_matvecs, rng
        As in :func:`kpflow.linalg.alignment` (``"auto"``: exact rules, else exact products
        when they cost at most a few estimates, else one deflated sketch shared by A and B).

    Returns
    -------
    ScalarResult
        ``.value`` a 0-d array in the operators' namespace (``float(result)`` for a host
        float), in ``[-1, 1]``, in ``[0, 1]`` when both operators are known to be PSD, and
        independent of their scales; ``.error`` its standard error (0 when exact).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.analysis import kernel_alignment
    >>> A, B = np.diag([1.0, 0.0]), np.eye(2)
    >>> round(float(kernel_alignment(A, B)), 6)
    0.707107
    >>> round(float(kernel_alignment(np.eye(2), np.ones((2, 2)), centered=True)), 6)
    0.0
    """
    where = "kernel_alignment"
    opA, opB = _as_operator(A, "A", where), _as_operator(B, "B", where)
    for name, op in (("A", opA), ("B", opB)):
        if op.shape_in != op.shape_out:
            msg = f"{where}: expected {name} to be square, got {op.shape_out}<-{op.shape_in}"
            raise ValueError(msg)
    if not isinstance(centered, bool):
        msg = f"{where}: expected centered to be a bool, got {centered!r}"
        raise TypeError(msg)
    if centered:
        opA, opB = _centred(opA), _centred(opB)
    return linalg.alignment(opA, opB, method=method, num_matvecs=num_matvecs, rng=rng)


def misdirection(
    traj: Trajectory,
    *,
    centered: bool = False,
    method: str = "auto",
    num_matvecs: int | None = None,
    rng: Any = None,
) -> ScalarResult:
    """The alignment of NTK_S = P K Pᵀ with P Pᵀ: how much K redirects the propagator's modes.

    With K = c·I (every state direction moved equally by the parameters) NTK_S = c P Pᵀ and
    the alignment is 1; a K that favours some directions turns NTK_S away from P Pᵀ.  Both
    operators are PSD, so the value lies in ``[0, 1]``.  Without ``num_matvecs`` it is exact
    up to 500 states (``2n`` products with NTK_S and with P Pᵀ, each of those two solves).

    Parameters
    ----------
    traj : Trajectory
    centered, method, num_matvecs, rng
        As in :func:`kernel_alignment`.

    Returns
    -------
    ScalarResult
        In ``[0, 1]``; ``.error`` 0 when exact.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN
    >>> from kpflow.analysis import misdirection
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0), np.ones((1, 3, 1)))
    >>> 0.0 < float(misdirection(traj)) <= 1.0
    True
    """
    check_trajectory(traj, "misdirection")
    P = propagator(traj)
    return kernel_alignment(
        global_ntk(traj), P @ P.T, centered=centered, method=method, num_matvecs=num_matvecs, rng=rng
    )


def init_vs_trained_alignment(
    model: Model,
    params0: dict[str, Any],
    params1: dict[str, Any],
    x: Any,
    *,
    h0: Any = None,
    operator: str = "ntk",
    centered: bool = False,
    method: str = "auto",
    num_matvecs: int | None = None,
    rng: Any = None,
) -> ScalarResult:
    """The alignment of NTK_S (or K) at ``params0`` with that at ``params1``, on the same inputs.

    Parameters
    ----------
    model : Model
    params0, params1 : dict of str to array
        E.g. the initial and the trained parameters (``Checkpoint.params``).
    x : array
        Inputs, in the parameters' namespace, dtype and device.
    h0 : array, optional
    operator : {"ntk", "K"}
        NTK_S = P K Pᵀ or the parameter kernel K.
    centered, method, num_matvecs, rng
        As in :func:`kernel_alignment`.

    Returns
    -------
    ScalarResult
        In ``[0, 1]`` (both kernels are PSD).  Without ``num_matvecs`` it is exact when the
        route through the two Jacobians (``(3r + 2s)/2`` products, ``r <= s`` their
        parameter counts) or the ``2n`` state products cost at most 1000.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN
    >>> from kpflow.analysis import init_vs_trained_alignment
    >>> model = RNN(1, 2)
    >>> p = model.init(0)
    >>> round(float(init_vs_trained_alignment(model, p, p, np.ones((1, 3, 1)))), 12)
    1.0
    """
    where = "init_vs_trained_alignment"
    if not isinstance(model, Model):
        msg = f"{where}: expected model to be a kpflow Model, got {type(model).__name__}"
        raise TypeError(msg)
    if operator not in ("ntk", "K"):
        msg = f"{where}: expected operator to be 'ntk' or 'K', got {operator!r}"
        raise ValueError(msg)
    build = global_ntk if operator == "ntk" else parameter_kernel
    A = build(model.run(params0, x, h0))
    B = build(model.run(params1, x, h0))
    return kernel_alignment(A, B, centered=centered, method=method, num_matvecs=num_matvecs, rng=rng)
