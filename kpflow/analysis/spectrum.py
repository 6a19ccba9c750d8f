"""The spectral summary of K and NTK_S that ``kpflow spectrum`` prints.

For K (the Kronecker core) every number is exact: the exact rules of
:mod:`kpflow.ntk.shortcuts` give the spectrum, trace, Frobenius norm and the
partial traces.  For NTK_S = P K Pᵀ, which couples every state, the top
eigenvalues come from block Lanczos and the trace and effective ranks from
randomized estimators (their standard errors are reported).
"""

from __future__ import annotations

import time
from typing import Any

from kpflow import linalg
from kpflow._array import to_host
from kpflow.linalg.rank import MIN_ESTIMATE_BUDGET
from kpflow.models.base import Trajectory
from kpflow.ntk import global_ntk, parameter_kernel

__all__ = ["axis_names", "spectrum_report"]


def axis_names(traj: Trajectory) -> tuple[str, ...]:
    """Names of the axes of the state domain: ``("batch", "time", "hidden")`` or ``("batch", "units")``.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import MLP
    >>> from kpflow.analysis import axis_names
    >>> model = MLP((2, 3, 1))
    >>> axis_names(model.run(model.init(0, like=xp.zeros(1)), xp.ones((4, 2))))
    ('batch', 'units')
    """
    return tuple(traj.axis_names)


def _floats(xp: Any, a: Any) -> list[float]:
    # one copy to the host (iterating a jax array would compile a program to split it)
    return [float(v) for v in to_host(a).reshape(-1)]


def _scalar(result: Any) -> dict[str, Any]:
    err = None if result.error is None else float(result.error)
    return {"value": float(result), "error": err, "method": result.method, "matvecs": result.num_matvecs}


def spectrum_report(
    traj: Trajectory,
    *,
    k: int = 10,
    num_matvecs: int = 300,
    rng: Any = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Top-k eigenvalues, traces and effective ranks of K and NTK_S for a trajectory.

    Parameters
    ----------
    traj : Trajectory
        From ``model.run``; states of shape ``state_shape``.
    k : int
        How many top eigenvalues of each operator.
    num_matvecs : int
        Budget of NTK_S products: the trace estimate takes ``num_matvecs``; a second,
        independent trace estimate takes ``num_matvecs // 2``, and the pair is the numerator
        ``tr(A)²`` of every effective rank (the global one and one per axis: every partial
        trace has the trace of ``A``), each of which spends ``num_matvecs // 2`` products of
        its own on ``tr(M²)`` (at least 16).
    rng : int, numpy.random.Generator or None
        Seeds the randomized estimators (SPEC 7).
    progress : None, bool or callable
        Passed to the long-running estimators.

    Returns
    -------
    dict
        ``{"state_shape", "axes", "K": {...}, "NTK_S": {...}, "seconds"}``; each operator
        entry holds ``eigenvalues`` (k floats, descending), ``trace`` and
        ``effective_rank`` (``{"value", "error", "method", "matvecs"}``; an effective rank's
        ``matvecs`` are its own, without the shared trace pair), ``effective_rank_along``
        (one such entry per axis name) and ``second_trace_matvecs`` (the second trace
        estimate's products; 0 when the trace is exact).  K's entries are exact.  The
        effective ranks share their numerator, so their errors are correlated with one
        another and with the trace's; each error bar holds on its own.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import LeakyRNN
    >>> from kpflow.analysis import spectrum_report
    >>> model = LeakyRNN(2, 3, dt=0.5)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((2, 4, 2)))
    >>> report = spectrum_report(traj, k=3, rng=0)
    >>> report["K"]["trace"]["method"], len(report["NTK_S"]["eigenvalues"])
    ('exact', 3)
    """
    import numpy as np

    gen = np.random.default_rng(rng)
    start = time.perf_counter()
    K = parameter_kernel(traj)
    N = global_ntk(traj)
    names = axis_names(traj)
    out: dict[str, Any] = {"state_shape": list(traj.state_shape), "axes": list(names)}
    for label, op in (("K", K), ("NTK_S", N)):
        t0 = time.perf_counter()
        eig = linalg.eigsh(op, k, rng=gen, progress=progress)
        tr = linalg.trace(op, num_matvecs=num_matvecs, rng=gen, progress=progress)
        # the effective ranks share tr(A) (every partial trace has it): this estimate and a
        # second, independent one; each ratio spends its own products on tr(M²) alone
        half = max(num_matvecs // 2, min(num_matvecs, MIN_ESTIMATE_BUDGET))
        pair = None
        if tr.method != "exact":
            pair = (tr, linalg.trace(op, num_matvecs=max(1, num_matvecs // 2), rng=gen, progress=progress))
        ranks = {
            keep: _scalar(
                linalg.effective_rank(op, keep, num_matvecs=half, rng=gen, progress=progress, traces=pair)
            )
            for keep in (None, *range(len(names)))
        }

        entry: dict[str, Any] = {
            "eigenvalues": _floats(op.xp, eig.eigenvalues),
            "eigensolver_matvecs": eig.num_matvecs,
            "max_residual": max(_floats(op.xp, eig.residual_norms)),
            "trace": _scalar(tr),
            "second_trace_matvecs": 0 if pair is None else pair[1].num_matvecs,
            "effective_rank": ranks[None],
            "effective_rank_along": {name: ranks[axis] for axis, name in enumerate(names)},
        }
        entry["seconds"] = time.perf_counter() - t0
        out[label] = entry
    out["seconds"] = time.perf_counter() - start
    return out
