"""Top-k eigenpairs and singular triplets from matrix-vector products.

Cost comparison for the top ``k`` eigenpairs of a symmetric ``n × n`` operator:

==============  ====================================================  ===========================
method          cost                                                  accuracy
==============  ====================================================  ===========================
rule            a structured rule (:mod:`kpflow.linalg.rules`),       exact
                e.g. Kronecker from its factors; ``k`` matvecs for
                the residual norms
dense           ``n`` unit-vector matvecs (0 with a dense rule) and   exact
                an ``O(n³)`` ``eigh``
lanczos         randomized block Krylov (block Lanczos, full          to ``tol`` on the residual
                reorthogonalisation, Rayleigh–Ritz): about            norms; correct multiplicities
                ``O(k log n / √ε)`` matvecs (Musco & Musco 2015)      up to the block size
nystrom         one sketch of ``k + p`` matvecs (PSD only), plus      approximate (no ``tol``)
                ``k`` for residuals (Tropp et al. 2017)
==============  ====================================================  ===========================

Host transfers: convergence decisions read a handful of control scalars
(the largest residual norm and the largest Ritz value) with ``float()``; no
vector or matrix ever leaves the operator's device.

References
----------
Musco, Musco, "Randomized block Krylov methods for stronger and faster
approximate singular value decomposition", NeurIPS 2015.
Tropp, Yurtsever, Udell, Cevher, "Fixed-rank approximation of a positive
semidefinite matrix from streaming data", NeurIPS 2017.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import array_api_extra as xpx

from kpflow.linalg import rules
from kpflow.linalg._common import (
    DENSE_LIMIT,
    EighResult,
    MatvecCounter,
    SvdResult,
    adapter_of,
    check_k,
    check_method,
    check_operator,
    check_square,
    dtype_eps,
    host_rng,
    kernel,
    like_array,
    orthonormal_rows,
    padded_size,
    probes,
    without_graph,
)
from kpflow.linalg._spectral_rules import top_eigh_of_matrix
from kpflow.operators.base import LinearOperator
from kpflow.operators.functions import adjoint, gram, todense

__all__ = ["eigsh", "svds"]

_METHODS = ("auto", "dense", "lanczos", "nystrom")


@without_graph
def eigsh(
    A: LinearOperator,
    k: int,
    *,
    method: str = "auto",
    tol: float = 1e-10,
    rng: Any = None,
    block_size: int | None = None,
    max_matvecs: int | None = None,
    progress: Any = None,
) -> EighResult:
    """The ``k`` largest (algebraic) eigenpairs of a symmetric operator.

    Parameters
    ----------
    A : LinearOperator
        Symmetric (``A = Aᵀ``, not checked), ``shape_in == shape_out``; e.g. K or NTK_S.
    k : int
        The number of eigenpairs, ``1 <= k <= n``.
    method : {"auto", "dense", "lanczos", "nystrom"}
        ``"auto"``: a structured rule (:func:`kpflow.linalg.rules.exact_eigsh`)
        if one applies, else ``"dense"`` when ``n <= DENSE_LIMIT`` (256), else
        ``"lanczos"``.  ``"nystrom"`` needs a PSD operator.
    tol : float
        Stop when every returned pair has ``‖A v − λ v‖ <= tol · max|θ|``
        (``θ`` the Ritz values).  Raised to ``100 ε`` of the dtype (float32
        cannot do better).
    rng : int, numpy.random.Generator or None
        Seed or generator for the starting block.
    block_size : int, optional
        Block size ``b >= k`` of the Krylov method (default ``k + max(5, k // 2)``,
        on jax raised to the power of two its blocks are padded to), or sketch size of
        ``"nystrom"`` (default ``2k + 10``).
        Repeated eigenvalues are resolved with their full multiplicity up to ``b``.
    max_matvecs : int, optional
        Cap on the Krylov basis size; default ``min(n, 30 b)``.  If reached
        before convergence, a ``RuntimeWarning`` is issued and the best pairs
        are returned with their residual norms.
    progress : None, bool or callable
        ``True``: tqdm bar (a text line on stderr without tqdm); callable:
        ``progress(done, total)``.

    Returns
    -------
    EighResult
        Unpacks like ``numpy.linalg.eigh`` into ``eigenvalues (k,), eigenvectors
        (k, *shape_in)``, descending, in ``A``'s namespace, dtype and device; the
        attributes ``residual_norms (k,)`` and ``num_matvecs`` hold the diagnostics.

    Raises
    ------
    ValueError
        For a non-square operator, ``k`` out of range, ``block_size < k`` or an
        unknown method.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import eigsh
    >>> A = kpflow.Dense(xp.asarray([[2.0, 1.0], [1.0, 2.0]]))
    >>> w, V = eigsh(A, 1)
    >>> w
    Array([3.], dtype=array_api_strict.float64)
    >>> float(eigsh(A, 1).residual_norms[0]) < 1e-12
    True
    """
    where = "kpflow.linalg.eigsh"
    check_operator(A, where)
    check_square(A, where)
    check_method(method, _METHODS, where)
    gen = host_rng(rng, where)
    n = A.size_in
    k = check_k(k, n, where)
    if method == "auto":
        exact = rules.exact_eigsh(A, k)
        if exact is not None:
            return exact
        method = "dense" if n <= DENSE_LIMIT else "lanczos"
    if method == "dense":
        return _dense(A, k)
    if block_size is not None:
        b = int(block_size)
    else:
        b = 2 * k + 10 if method == "nystrom" else k + max(5, k // 2)
        if method == "lanczos" and getattr(adapter_of(A), "compiles_per_shape", False):
            # Blocks are padded to a power of two there (MatvecCounter): fill them with Krylov
            # vectors instead of zeros.
            b = max(b, padded_size(b))
    if b < k:
        msg = f"{where}: block_size={b} must be at least k={k}"
        raise ValueError(msg)
    b = min(b, n)
    if method == "nystrom":
        return _nystrom(A, k, b, gen, progress)
    cap = min(n, 30 * b) if max_matvecs is None else max(b, min(n, int(max_matvecs)))
    return _block_lanczos(A, k, b, float(tol), cap, gen, progress)


def _dense(A: LinearOperator, k: int) -> EighResult:
    xp, n = A.xp, A.size_in
    used = 0 if rules.has_cheap_dense(A) else n
    M = xp.reshape(todense(A), (n, n))
    vals, vecs = top_eigh_of_matrix(xp, M, k)
    res = xp.linalg.vector_norm(vecs @ xp.matrix_transpose(M) - vals[:, None] * vecs, axis=1)
    return EighResult(vals, xp.reshape(vecs, (k, *A.shape_in)), res, used)


def _orthogonalise(xp: Any, W: Any, V: Any) -> Any:
    """``W`` with the row space of orthonormal ``V`` removed (two passes: "twice is enough")."""
    for _ in range(2):
        W = W - (W @ xp.matrix_transpose(V)) @ V
    return W


def _project(xp: Any, W: Any, V: Any) -> tuple[Any, Any]:
    """``W ⟂ V`` and the rows that lost all but ``√ε`` of their norm to the projection."""
    scale = xp.linalg.vector_norm(W, axis=1)
    W = _orthogonalise(xp, W, V)
    left = xp.linalg.vector_norm(W, axis=1)
    return W, left <= math.sqrt(float(xp.finfo(W.dtype).eps)) * scale


def _finish(xp: Any, W: Any, V: Any) -> Any:
    """Orthonormalise, orthogonalise once more against ``V`` (scaled-up tiny rows), re-orthonormalise."""
    Q = orthonormal_rows(xp, W)
    return orthonormal_rows(xp, _orthogonalise(xp, Q, V))


def _ritz_active(xp: Any, k: int, T: Any, V: Any, AV: Any, m: int) -> tuple[Any, Any, Any, Any]:
    """Rayleigh–Ritz on the active ``m × m`` block (backends without a compiler)."""
    T = T[:m, :m]
    theta, S = xp.linalg.eigh((T + xp.matrix_transpose(T)) / 2)
    Sk = xp.flip(S[:, m - k :], axis=1)  # (m, k), descending
    vals = xp.flip(theta[m - k :], axis=0)
    U = xp.matrix_transpose(Sk) @ V[:m, :]
    AU = xp.matrix_transpose(Sk) @ AV[:m, :]
    res = xp.linalg.vector_norm(AU - vals[:, None] * U, axis=1)
    return vals, U, res, xp.max(xp.abs(theta))


def _ritz_padded(xp: Any, k: int, T: Any, V: Any, AV: Any, m: Any) -> tuple[Any, Any, Any, Any]:
    """Rayleigh–Ritz on the whole padded storage, with ``m`` an array (shapes stay fixed).

    The padding becomes the eigenvalue ``−c`` below the whole spectrum of ``T`` with zero
    coupling, so the top ``k`` Ritz pairs (``k <= m``) are those of the active block.
    """
    size = T.shape[0]
    Ts = (T + xp.matrix_transpose(T)) / 2
    idx = xp.arange(size)
    c = 2 * xp.max(xp.abs(Ts)) * size + 1
    pad = (idx[:, None] == idx[None, :]) & (idx[:, None] >= m)
    theta, S = xp.linalg.eigh(xp.where(pad, -c, Ts))
    Sk = xp.flip(S[:, size - k :], axis=1)
    vals = xp.flip(theta[size - k :], axis=0)
    U = xp.matrix_transpose(Sk) @ V
    AU = xp.matrix_transpose(Sk) @ AV
    res = xp.linalg.vector_norm(AU - vals[:, None] * U, axis=1)
    lowest = xp.take(theta, xp.reshape(size - m, (1,)), axis=0)[0]
    return vals, U, res, xp.maximum(xp.abs(theta[size - 1]), xp.abs(lowest))


def _insert_padded(xp: Any, V: Any, AV: Any, T: Any, Q: Any, AQ: Any, m: Any) -> tuple[Any, Any, Any]:
    """Write block ``Q`` (and ``A Q``) at rows ``m…`` and extend ``T``; ``m`` is an array."""
    size, s = V.shape[0], Q.shape[0]
    E = xp.astype(xp.arange(size)[:, None] == (m + xp.arange(s))[None, :], V.dtype)  # (size, s)
    V = V + E @ Q
    AV = AV + E @ AQ
    cross = V @ xp.matrix_transpose(AQ)  # (size, s): v_iᵀ A q_j, zero on padding
    corner = xp.matrix_transpose(E) @ cross
    ET = xp.matrix_transpose(E)
    T = T + cross @ ET + E @ xp.matrix_transpose(cross) - E @ corner @ ET
    return V, AV, T


@functools.lru_cache(maxsize=64)
def _compiled(backend: str, k: int) -> dict[str, Any] | None:
    """Kernels compiled once per backend and ``k`` where the backend has a compiler (jax)."""
    from kpflow.backends import get_backend
    from kpflow.backends._base import Backend

    adapter = get_backend(backend)
    if type(adapter).jit is Backend.jit:
        return None
    xp = adapter.namespace()
    return {
        "ritz": adapter.jit(functools.partial(_ritz_padded, xp, k)),
        "insert": adapter.jit(functools.partial(_insert_padded, xp)),
        "project": adapter.jit(functools.partial(_project, xp)),
        "finish": adapter.jit(functools.partial(_finish, xp)),
    }


class _Basis:
    """The Krylov basis ``V`` (rows), ``AV`` and ``T = V A Vᵀ`` in zero-padded storage.

    Capacity doubles when full, so array shapes change only ``O(log)`` times.
    Backends with a compiler (jax) run each step as a few compiled kernels with
    fixed shapes (Rayleigh–Ritz on the padded storage); the others slice the
    active ``m × m`` block.  Padded rows of ``V`` are zero.
    """

    def __init__(self, A: LinearOperator, b: int, cap: int, k: int) -> None:
        from kpflow.backends import get_backend

        self.xp, self.A, self.cap, self.k = A.xp, A, cap, k
        self.m = 0
        self.kernels = _compiled(get_backend(like_array(A)).name, k)
        size = min(cap, 4 * b)
        z = {"dtype": A.dtype, "device": A.device}
        self.V = A.xp.zeros((size, A.size_in), **z)
        self.AV = A.xp.zeros((size, A.size_out), **z)
        self.T = A.xp.zeros((size, size), **z)

    def _grow(self, need: int) -> None:
        xp, size = self.xp, self.V.shape[0]
        if need <= size:
            return
        new = min(self.cap, max(need, 2 * size))
        z = {"dtype": self.A.dtype, "device": self.A.device}
        pad = new - size
        self.V = xp.concat([self.V, xp.zeros((pad, self.V.shape[1]), **z)], axis=0)
        self.AV = xp.concat([self.AV, xp.zeros((pad, self.AV.shape[1]), **z)], axis=0)
        T = xp.concat([self.T, xp.zeros((pad, size), **z)], axis=0)
        self.T = xp.concat([T, xp.zeros((new, pad), **z)], axis=1)

    def project(self, W: Any) -> tuple[Any, Any]:
        if self.kernels is not None:
            return self.kernels["project"](W, self.V)
        return _project(self.xp, W, self.V[: self.m, :])  # the active rows only, no padding

    def finish(self, W: Any) -> Any:
        if self.kernels is not None:
            return self.kernels["finish"](W, self.V)
        return _finish(self.xp, W, self.V[: self.m, :])

    def add(self, Q: Any, AQ: Any) -> None:
        xp, m, s = self.xp, self.m, Q.shape[0]
        self._grow(m + s)
        if self.kernels is not None:
            self.V, self.AV, self.T = self.kernels["insert"](self.V, self.AV, self.T, Q, AQ, xp.asarray(m))
        else:
            # The storage is this object's own, so it is updated in place where the backend
            # allows (copy=None); a copy of the whole n-row basis per block would dominate.
            rows = (slice(m, m + s), slice(None))
            self.V = xpx.at(self.V, rows).set(Q, copy=None, xp=xp)
            self.AV = xpx.at(self.AV, rows).set(AQ, copy=None, xp=xp)
            cross = self.V[: m + s, :] @ xp.matrix_transpose(AQ)  # (m + s, s)
            self.T = xpx.at(self.T, (slice(0, m + s), slice(m, m + s))).set(cross, copy=None, xp=xp)
            self.T = xpx.at(self.T, (slice(m, m + s), slice(0, m + s))).set(
                xp.matrix_transpose(cross), copy=None, xp=xp
            )
        self.m = m + s

    def ritz(self) -> tuple[Any, Any, Any, float]:
        """Top-``k`` Ritz values (k,), vectors (k, n), residual norms (k,) and ``max|θ|``."""
        if self.kernels is not None:
            out = self.kernels["ritz"](self.T, self.V, self.AV, self.xp.asarray(self.m))
        else:
            out = _ritz_active(self.xp, self.k, self.T, self.V, self.AV, self.m)
        vals, U, res, scale = out
        return vals, U, res, float(scale)


def _next_block(basis: _Basis, W: Any, A: LinearOperator, gen: Any) -> Any:
    """Orthonormal rows spanning ``W ⟂ V``; directions lost to cancellation are refilled at random.

    A row that loses all but ``√ε`` of its norm to the projection carries mostly rounding
    error; it is replaced by a random direction (any direction is valid for Rayleigh–Ritz).
    After normalisation the block is orthogonalised once more, so that tiny rows that
    were scaled up cannot bring back components along ``V``.
    """
    xp = A.xp
    W, lost = basis.project(W)
    if bool(xp.any(lost)):
        fresh, _ = basis.project(probes(gen, W.shape[0], A.size_in, like_array(A)))
        W = xp.where(lost[:, None], fresh, W)
    return basis.finish(W)


def _block_lanczos(
    A: LinearOperator, k: int, b: int, tol: float, cap: int, gen: Any, progress: Any
) -> EighResult:
    """Block Krylov with full reorthogonalisation and Rayleigh–Ritz on the whole basis.

    The basis ``V`` (rows) spans ``[Ω, AΩ, A²Ω, …]``; ``AV`` is kept so that the
    projected matrix ``T = V A Vᵀ`` grows by one block row per step without
    extra products, and the residual norms of the Ritz pairs are exact.
    """
    xp, n = A.xp, A.size_in
    tol = max(tol, 100 * dtype_eps(A))
    counter = MatvecCounter(A, progress, cap, "kpflow.linalg.eigsh")
    basis = _Basis(A, b, cap, k)
    try:
        Q = kernel(A, orthonormal_rows)(probes(gen, b, n, like_array(A)))
        last = counter.matmat(Q)
        basis.add(Q, last)
        while True:
            vals, U, res, scale = basis.ritz()
            m = basis.m
            worst = float(xp.max(res))
            if worst <= tol * max(scale, 1e-300) or m >= n:
                break
            step = min(b, n - m, cap - m)
            if step <= 0:
                warnings.warn(
                    f"kpflow.linalg.eigsh: not converged after {counter.num_matvecs} matvecs "
                    f"(largest residual {worst:.3e}, target {tol * scale:.3e}); "
                    "raise max_matvecs or block_size",
                    RuntimeWarning,
                    stacklevel=3,
                )
                break
            Q = _next_block(basis, last[:step, :], A, gen)
            last = counter.matmat(Q)
            basis.add(Q, last)
    finally:
        counter.close()
    return EighResult(vals, xp.reshape(U, (k, *A.shape_in)), res, counter.num_matvecs)


def _nystrom(A: LinearOperator, k: int, s: int, gen: Any, progress: Any) -> EighResult:
    from kpflow.linalg.trace import nystrom_sketch

    counter = MatvecCounter(A, progress, s + k, "kpflow.linalg.eigsh")
    try:
        sk = nystrom_sketch(counter, s, gen)
        vals, vecs = kernel(A, _nystrom_pairs, k)(sk["B"], sk["Q"], sk["nu"])
        AU = counter.matmat(vecs)
    finally:
        counter.close()
    res = kernel(A, _residual_norms)(AU, vals, vecs)
    return EighResult(vals, A.xp.reshape(vecs, (k, *A.shape_in)), res, counter.num_matvecs)


def _nystrom_pairs(xp: Any, k: int, B: Any, Q: Any, nu: Any) -> tuple[Any, Any]:
    # A + νI ≈ Q B Bᵀ Qᵀ: eigenpairs from the SVD of the small B.
    Ub, sig, _ = xp.linalg.svd(B, full_matrices=False)
    vals = xp.maximum(sig[:k] * sig[:k] - nu, 0.0)
    return vals, xp.matrix_transpose(Ub[:, :k]) @ Q


def _residual_norms(xp: Any, AU: Any, vals: Any, U: Any) -> Any:
    return xp.linalg.vector_norm(AU - vals[:, None] * U, axis=1)


@without_graph
def svds(
    A: LinearOperator,
    k: int,
    *,
    method: str = "auto",
    tol: float = 1e-10,
    rng: Any = None,
    block_size: int | None = None,
    max_matvecs: int | None = None,
    progress: Any = None,
) -> SvdResult:
    """The ``k`` largest singular triplets of any operator, via the smaller Gram side.

    ``eigsh`` runs on ``Aᵀ A`` (on ``shape_in``) when ``size_in <= size_out``
    and on ``A Aᵀ`` otherwise (they share their nonzero spectrum); the other
    side's vectors are ``A v / σ`` or ``Aᵀ u / σ``.  Structured operators keep
    their structure (``gram`` of a Kronecker product is a Kronecker product).
    Singular values below ``√ε`` of the largest are resolved only to about
    ``ε σ_max² / σ`` (squaring).

    Parameters
    ----------
    A : LinearOperator
        Any shapes, e.g. J (the Jacobian) with NTK = J Jᵀ.
    k : int
        ``1 <= k <= min(size_in, size_out)``.
    method, tol, rng, block_size, max_matvecs, progress
        As in :func:`eigsh` (applied to the Gram operator).

    Returns
    -------
    SvdResult
        Unpacks into ``U (k, *shape_out), s (k,), V (k, *shape_in)``; the attribute
        ``num_matvecs`` counts products with ``A`` or ``Aᵀ`` (a Gram product is 2).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow
    >>> from kpflow.linalg import svds
    >>> A = kpflow.Dense(xp.asarray([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]]))
    >>> U, s, V = svds(A, 2)
    >>> s
    Array([4., 3.], dtype=array_api_strict.float64)
    >>> U.shape, V.shape
    ((2, 3), (2, 2))
    """
    where = "kpflow.linalg.svds"
    check_operator(A, where)
    check_k(k, min(A.size_in, A.size_out), where, "min(size_in, size_out)")
    xp = A.xp
    right = A.size_in <= A.size_out
    G = gram(adjoint(A)) if right else gram(A)
    r = eigsh(
        G,
        k,
        method=method,
        tol=tol,
        rng=rng,
        block_size=block_size,
        max_matvecs=max_matvecs,
        progress=progress,
    )
    s = xp.sqrt(xp.maximum(r.eigenvalues, 0.0))
    tiny = float(xp.max(s)) * dtype_eps(A) if float(xp.max(s)) > 0 else 1.0
    inv = xp.where(s > tiny, 1.0 / xp.maximum(s, tiny), 0.0)
    if right:
        V = r.eigenvectors
        U = A._matmat(V) * xp.reshape(inv, (k,) + (1,) * len(A.shape_out))
    else:
        U = r.eigenvectors
        V = A._rmatmat(U) * xp.reshape(inv, (k,) + (1,) * len(A.shape_in))
    return SvdResult(U, s, V, 2 * r.num_matvecs + k)
