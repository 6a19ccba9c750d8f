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

    On backends that compile per shape (jax), the fixed-shape cycle (:func:`_fixed_cycle`);
    elsewhere the basis grows a row per step (:func:`_growing_cycle`).  Both compute the same
    numbers (the fixed one adds exact zeros).
    """
    from kpflow.backends import get_backend

    adapter = get_backend(r)
    if getattr(adapter, "compiles_per_shape", False):
        return _fixed_cycle(adapter, A, r, beta, target, steps)
    return _growing_cycle(xp, A, r, beta, target, steps)


def _growing_cycle(xp: Any, A: Callable[[Any], Any], r: Any, beta: Any, target: Any, steps: int) -> Any:
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


# -- the fixed-shape cycle (backends that compile per shape) -------------------------------------
def _fixed_cycle(adapter: Any, A: Callable[[Any], Any], r: Any, beta: Any, target: Any, steps: int) -> Any:
    """:func:`_growing_cycle` with every array at its full size, so that jax compiles each kernel once.

    The basis ``V`` (k, steps+1, n) holds zero rows beyond the ones in use, the rotated
    Hessenberg matrix ``R`` (k, steps, steps) is the identity in the columns not yet
    computed, the rotations not yet made are the identity (``cs = 1``, ``sn = 0``), and
    the step index is an array: one compiled program per step kind and shape instead of
    one per primitive and basis size (about 190 per solve of a 50-step cycle).  Zero rows
    add exact zeros to the projections and identity rotations change nothing, so the
    numbers are those of the growing cycle.
    """
    from kpflow.linalg._backend import _jitted

    xp = adapter.namespace()
    start = _jitted(adapter, _fixed_start, (steps,))
    step = _jitted(adapter, _fixed_step, (steps,))
    finish = _jitted(adapter, _fixed_finish, (steps,))
    state, v = start(r, beta, target)
    used = 0
    for j in range(steps):
        state, v, more = step(state, A(v), xp.asarray(j, device=device_of(r)))
        used = j + 1
        if not bool(more):
            break
    return finish(state, xp.asarray(used, device=device_of(r)))


def _fixed_start(xp: Any, steps: int, r: Any, beta: Any, target: Any) -> tuple[Any, Any]:
    k, n = int(r.shape[0]), int(r.shape[1])
    dev = device_of(r)
    one = xp.ones_like(beta)
    v0 = r / xp.where(beta > 0, beta, one)[:, None]
    first = xp.arange(steps + 1, device=dev) == 0
    V = xp.where(first[None, :, None], v0[:, None, :], xp.zeros((k, steps + 1, n), dtype=r.dtype, device=dev))
    eye = xp.eye(steps, dtype=r.dtype, device=dev)
    R = xp.zeros((k, steps, steps), dtype=r.dtype, device=dev) + eye[None, :, :]
    cs = xp.ones((k, steps), dtype=r.dtype, device=dev)
    sn = xp.zeros((k, steps), dtype=r.dtype, device=dev)
    g = xp.where(first[None, :], beta[:, None], xp.zeros((k, steps + 1), dtype=r.dtype, device=dev))
    return (V, R, cs, sn, g, beta > target, target), v0


def _fixed_step(xp: Any, steps: int, state: tuple, w: Any, j: Any) -> tuple[tuple, Any, Any]:
    """Arnoldi step ``j`` (an array) with the product ``w = A v_j``: the next row and state."""
    V, R, cs, sn, g, active, target = state
    one = xp.ones_like(g[:, 0])
    zero = xp.zeros_like(one)
    idx = xp.arange(steps + 1, device=device_of(w))
    h = xp.zeros((int(w.shape[0]), steps + 1), dtype=w.dtype, device=device_of(w))
    for _ in range(2):
        c = xp.sum(V * w[:, None, :], axis=2)  # rows beyond j are zero: c is zero there
        w = w - xp.sum(c[:, :, None] * V, axis=1)
        h = h + c
    hn = xp.linalg.vector_norm(w, axis=1)
    v = w / xp.where(hn > 0, hn, one)[:, None]
    V = xp.where((idx == j + 1)[None, :, None], v[:, None, :], V)
    col = [h[:, i] for i in range(steps)]
    for i in range(steps - 1):  # rotations j and beyond are still the identity
        col[i], col[i + 1] = (
            cs[:, i] * col[i] + sn[:, i] * col[i + 1],
            -sn[:, i] * col[i] + cs[:, i] * col[i + 1],
        )
    at_j = (idx[:steps] == j)[None, :]
    col_j = xp.sum(xp.where(at_j, xp.stack(col, axis=1), xp.zeros_like(cs)), axis=1)
    rho = xp.sqrt(col_j**2 + hn**2)
    ok = active & (rho > 0)
    safe = xp.where(rho > 0, rho, one)
    c_j, s_j = xp.where(ok, col_j / safe, one), xp.where(ok, hn / safe, zero)
    below = (idx[:steps] < j)[None, :]
    new = xp.where(below & ok[:, None], xp.stack(col, axis=1), xp.zeros_like(cs))
    new = xp.where(at_j, xp.where(ok, rho, one)[:, None], new)
    R = xp.where(at_j[:, None, :], new[:, :, None], R)
    cs = xp.where(at_j, c_j[:, None], cs)
    sn = xp.where(at_j, s_j[:, None], sn)
    g_j = xp.sum(xp.where((idx == j)[None, :], g, xp.zeros_like(g)), axis=1)
    g_next = xp.where(ok, -s_j * g_j, zero)
    g = xp.where((idx == j)[None, :], xp.where(ok, c_j * g_j, zero)[:, None], g)
    g = xp.where((idx == j + 1)[None, :], g_next[:, None], g)
    active = ok & (xp.abs(g_next) > target)
    return (V, R, cs, sn, g, active, target), v, xp.any(active)


def _fixed_finish(xp: Any, steps: int, state: tuple, used: Any) -> Any:
    """The correction ``Σ_i y_i v_i`` from the back substitution over the ``used`` columns."""
    V, R, _, _, g, _, _ = state
    idx = xp.arange(steps, device=device_of(g))
    rhs = xp.where((idx < used)[None, :], g[:, :steps], xp.zeros_like(g[:, :steps]))
    y = xp.zeros_like(rhs)
    for i in range(steps - 1, -1, -1):
        acc = rhs[:, i] - xp.sum(R[:, i, :] * y, axis=1)  # y is zero at columns <= i
        y = xp.where((idx == i)[None, :], (acc / R[:, i, i])[:, None], y)
    return xp.sum(y[:, :, None] * V[:, :steps, :], axis=1)
