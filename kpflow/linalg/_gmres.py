"""Restarted GMRES on a block of right-hand sides, in array-API code (no scipy).

Used by :mod:`kpflow.models.implicit` to apply P = (∂F/∂z)⁻¹ and Pᵀ matrix-free, and for
its Newton steps.  Each of the k right-hand sides runs its own Krylov space (Saad & Schultz
1986, "GMRES: a generalized minimal residual algorithm for solving nonsymmetric linear
systems", SIAM J. Sci. Stat. Comput. 7(3)); the k systems share every matrix product, so a
block of probes costs one batched product per iteration.  Arnoldi orthogonalises twice
(classical Gram–Schmidt, "twice is enough"), the small least-squares problems are reduced
by Givens rotations, so the residual estimate comes free at every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kpflow._array import array_namespace, device_of, prod
from kpflow.linalg._common import check_tol

__all__ = ["SolverNotConvergedError", "gmres"]


class SolverNotConvergedError(RuntimeError):
    """An iterative solve stopped before reaching its tolerance.

    Attributes
    ----------
    residual : float
        The relative residual reached (the worst right-hand side for GMRES).
    iterations : int
        The iterations made (Arnoldi steps for GMRES, updates for a nonlinear solve).
    """

    def __init__(self, msg: str, *, residual: float, iterations: int) -> None:
        super().__init__(msg)
        self.residual = residual
        self.iterations = iterations


def gmres(
    matmat: Callable[[Any], Any],
    B: Any,
    *,
    tol: float = 1e-12,
    restart: int = 50,
    max_iter: int = 1000,
    where: str = "gmres",
) -> Any:
    """Solve A X = B for a block of right-hand sides by restarted GMRES.

    Parameters
    ----------
    matmat : callable
        ``matmat(V)`` = A V for a block ``V`` of shape ``(k, *shape)`` (A acts on ``shape``).
    B : array of shape (k, *shape)
        The k right-hand sides, solved independently.
    tol : float
        Stop when every right-hand side has ‖b − A x‖ ≤ tol·‖b‖ (true residual, checked
        at each restart; the Givens estimate stops a cycle).
    restart : int
        Krylov dimension per cycle (capped at prod(shape)).
    max_iter : int
        Cap on the Arnoldi steps (products with A) over all cycles.
    where : str
        The public call named in errors.

    Returns
    -------
    array of shape (k, *shape)

    Raises
    ------
    SolverNotConvergedError
        When ``max_iter`` steps do not reach ``tol``; ``.residual`` is the worst relative
        residual reached.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.linalg._gmres import gmres
    >>> A = xp.asarray([[2.0, 1.0], [0.0, 3.0]])
    >>> X = gmres(lambda V: V @ xp.matrix_transpose(A), xp.asarray([[3.0, 3.0]]))
    >>> bool(xp.all(xp.abs(X - xp.asarray([[1.0, 1.0]])) < 1e-12))
    True
    """
    tol = check_tol(tol, where)
    xp = array_namespace(B)
    k, shape = int(B.shape[0]), tuple(B.shape[1:])
    n = prod(shape)
    b = xp.reshape(B, (k, n))

    def A(v: Any) -> Any:
        return xp.reshape(matmat(xp.reshape(v, (k, *shape))), (k, n))

    bnorm = xp.linalg.vector_norm(b, axis=1)
    target = tol * bnorm
    safe_bnorm = xp.where(bnorm > 0, bnorm, xp.ones_like(bnorm))
    x = xp.zeros_like(b)
    r = b
    restart = max(1, min(int(restart), n))
    iterations = 0
    while True:
        rnorm = xp.linalg.vector_norm(r, axis=1)
        if bool(xp.all(rnorm <= target)):
            return xp.reshape(x, B.shape)
        if iterations >= max_iter:
            worst = float(xp.max(rnorm / safe_bnorm))
            msg = (
                f"{where}: GMRES did not converge in max_iter={max_iter} iterations: relative "
                f"residual ‖b − A x‖/‖b‖ = {worst:.3e} > tol={tol:g}; raise the iteration cap or "
                "loosen the tolerance (∂F/∂z may be singular or badly conditioned here)"
            )
            raise SolverNotConvergedError(msg, residual=worst, iterations=iterations)
        steps = min(restart, max_iter - iterations)
        iterations += steps
        x = x + _cycle(xp, A, r, rnorm, target, steps)
        r = b - A(x)


def _cycle(xp: Any, A: Callable[[Any], Any], r: Any, beta: Any, target: Any, steps: int) -> Any:
    """One GMRES cycle from residual r (k, n) with norms beta: the correction to x.

    A right-hand side that has converged (or broken down) stops growing its space: its
    later Hessenberg columns become e_j with right-hand side 0, so its later coefficients
    are exactly 0 and the batched triangular solve stays nonsingular.
    """
    one, zero = xp.ones_like(beta), xp.zeros_like(beta)
    V = [r / xp.where(beta > 0, beta, one)[:, None]]
    R: list[list[Any]] = []  # R[j] = column j of the rotated Hessenberg matrix, rows 0..j
    cs: list[Any] = []
    sn: list[Any] = []
    g = [beta]
    active = beta > target
    for j in range(steps):
        w = A(V[j])
        basis = xp.stack(V, axis=1)  # (k, j+1, n)
        h = xp.zeros((int(beta.shape[0]), j + 1), dtype=beta.dtype, device=device_of(beta))
        for _ in range(2):
            c = xp.sum(basis * w[:, None, :], axis=2)
            w = w - xp.sum(c[:, :, None] * basis, axis=1)
            h = h + c
        hn = xp.linalg.vector_norm(w, axis=1)
        V.append(w / xp.where(hn > 0, hn, one)[:, None])
        col = [h[:, i] for i in range(j + 1)]
        for i in range(j):
            col[i], col[i + 1] = cs[i] * col[i] + sn[i] * col[i + 1], -sn[i] * col[i] + cs[i] * col[i + 1]
        rho = xp.sqrt(col[j] ** 2 + hn**2)
        ok = active & (rho > 0)
        safe = xp.where(rho > 0, rho, one)
        c_j, s_j = xp.where(ok, col[j] / safe, one), xp.where(ok, hn / safe, zero)
        col = [xp.where(ok, e, zero) for e in col[:j]] + [xp.where(ok, rho, one)]
        g_j = g[j]
        g[j] = xp.where(ok, c_j * g_j, zero)
        g.append(xp.where(ok, -s_j * g_j, zero))
        R.append(col)
        cs.append(c_j)
        sn.append(s_j)
        active = ok & (xp.abs(g[j + 1]) > target)
        if not bool(xp.any(active)):
            break
    m = len(R)
    y: list[Any] = [zero] * m
    for i in range(m - 1, -1, -1):
        acc = g[i]
        for l in range(i + 1, m):
            acc = acc - R[l][i] * y[l]
        y[i] = acc / R[i][i]
    return sum((y[i][:, None] * V[i] for i in range(m)), xp.zeros_like(r))
