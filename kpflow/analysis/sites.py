"""Analyses from the weight sites: the self-referential bias of K, and a differentiable pr(K).

K = Σ_w D_w (G_w ⊗ I) D_wᵀ with G_w = A_w A_wᵀ, the rows of A_w the site variables a_w(s)
(for an RNN [h_{t−1}; x_t; 1]).  Gradient descent can only move the states inside the span
that K's dominant modes allow, and those are built from the model's own activity A_w: the
*self-referential bias* (docs/theory.md).  Both functions here are exact, computed from the
site arrays alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kpflow.analysis.modes import check_k
from kpflow.models.base import Trajectory
from kpflow.ntk import parameter_kernel
from kpflow.ntk.kernel import KroneckerCoreKernel, check_trajectory
from kpflow.operators.functions import todense

__all__ = ["SelfReferentialBias", "differentiable_effective_rank", "self_referential_bias"]


@dataclass(frozen=True)
class SelfReferentialBias:
    """K's dominant site modes against the principal components of each site's variables.

    Attributes
    ----------
    overlaps : dict of str to array of shape ()
        Per weight site w: ‖U_Kᵀ U_w‖_F² / k_w in [0, 1] (see :func:`self_referential_bias`).
    site_eigenvalues : array of shape (k,)
        The top-k eigenvalues of Tr_state K (descending).
    site_modes : array of shape (k, *site_shape)
        U_K: the top-k eigenvectors of Tr_state K.
    components : dict of str to array of shape (k_w, *site_shape)
        U_w: the top-k_w left singular vectors of A_w (the uncentred principal components of
        the site variables, as functions of the site), k_w = min(k, p_w).
    """

    overlaps: dict[str, Any]
    site_eigenvalues: Any
    site_modes: Any
    components: dict[str, Any]


def self_referential_bias(traj: Trajectory, k: int) -> SelfReferentialBias:
    """How far K's dominant modes are those of the model's own site variables.

    Definition: let M = Tr_state K, the m × m partial trace of K over the per-site state
    axis (exact, from the site Grams and D: M[s, s′] = Σ_w G_w[s, s′] ⟨D_w(s), D_w(s′)⟩),
    and U_K its top-k eigenvectors: K's dominant directions over the sites (batch, time).
    For each weight site w let U_w hold the top-k_w left singular vectors of A_w (m × p_w),
    k_w = min(k, p_w): the principal components of the site variables [φ(h_{t−1}); x_t; 1],
    i.e. the top eigenvectors of G_w.  The overlap is ‖U_Kᵀ U_w‖_F² / k_w ∈ [0, 1], the mean
    squared cosine of the principal angles (1: U_w's span lies in U_K's).

    When K has a single site and D = c·I (the leaky RNN, c = dt), M = c² S G (S the state
    size), so U_K = U_w and the overlap is exactly 1 (up to ties at the k-th eigenvalue);
    a site-dependent D (tanh RNN, GRU, LSTM) reweights G and lowers it.

    Parameters
    ----------
    traj : Trajectory
    k : int
        ``1 <= k <= m`` (m = prod(site_shape)).

    Returns
    -------
    SelfReferentialBias
        Arrays in the trajectory's namespace, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import LeakyRNN
    >>> from kpflow.analysis import self_referential_bias
    >>> model = LeakyRNN(1, 3, dt=0.5)
    >>> traj = model.run(model.init(0), np.random.default_rng(0).standard_normal((2, 4, 1)))
    >>> {name: round(float(v), 12) for name, v in self_referential_bias(traj, 2).overlaps.items()}
    {'hidden': 1.0}
    """
    where = "self_referential_bias"
    check_trajectory(traj, where)
    m = traj.m
    check_k(k, where, m)
    for site in traj.sites:
        if int(site.variables.shape[0]) != m:
            msg = (
                f"{where}: site {site.name!r} has {int(site.variables.shape[0])} rows of site variables "
                f"for {m} sites (a weight used at several places of one step); its principal "
                "components do not live on the sites, so this measure is not defined for it"
            )
            raise ValueError(msg)
    xp = traj.xp
    K = parameter_kernel(traj)
    nsite = len(traj.site_shape)
    M = xp.reshape(todense(K.partial_trace((nsite,)), max_size=None), (m, m))
    w, U = xp.linalg.eigh(M)  # ascending
    order = xp.flip(xp.arange(m, device=traj.device))[:k]
    UK = xp.take(U, order, axis=1)  # (m, k)
    overlaps, components = {}, {}
    for site in traj.sites:
        A = site.variables
        kw = min(k, int(A.shape[1]))
        Uw = xp.linalg.svd(A, full_matrices=False)[0][:, :kw]  # descending singular values
        C = xp.matrix_transpose(UK) @ Uw
        overlaps[site.name] = xp.sum(C * C) / kw
        components[site.name] = xp.reshape(xp.matrix_transpose(Uw), (kw, *traj.site_shape))
    modes = xp.reshape(xp.matrix_transpose(UK), (k, *traj.site_shape))
    return SelfReferentialBias(overlaps, xp.take(w, order), modes, components)


def differentiable_effective_rank(K: Any) -> Any:
    """The exact participation ratio pr(K) = tr(K)² / ‖K‖_F², differentiable by autodiff.

    :func:`kpflow.linalg.effective_rank` gives the same value but runs without an autograd
    graph; this function evaluates tr K = Σ_w Σ_s ‖a_w(s)‖² ‖D_w(s)‖_F² and
    ‖K‖_F² = Σ_i ‖Φ_iᵀ Φ_i‖_F² (docs/theory.md, "Exact shortcuts") as plain array code on
    the site arrays, so on torch the result carries the graph back to the parameters the
    trajectory was run with (``pr.backward()``), and on jax it can sit inside ``jax.grad``
    of a function that runs the model.

    Parameters
    ----------
    K : Trajectory or KroneckerCoreKernel
        A trajectory (its Kronecker-core K is used) or K itself, with unit-structured sites
        (every built-in model but self-attention).

    Returns
    -------
    array of shape ()
        In K's namespace, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> import kpflow
    >>> from kpflow.models import RNN
    >>> from kpflow.analysis import differentiable_effective_rank
    >>> traj = RNN(1, 3).run(RNN(1, 3).init(0), np.ones((2, 4, 1)))
    >>> pr = differentiable_effective_rank(traj)
    >>> exact = kpflow.linalg.effective_rank(kpflow.parameter_kernel(traj))
    >>> bool(abs(float(pr) - float(exact)) < 1e-12)
    True
    """
    from kpflow.ntk import shortcuts

    where = "differentiable_effective_rank"
    if isinstance(K, Trajectory):
        K = parameter_kernel(K)
    if not isinstance(K, KroneckerCoreKernel):
        msg = f"{where}: expected K to be a Trajectory or a KroneckerCoreKernel, got {type(K).__name__}"
        raise TypeError(msg)
    groups = shortcuts._groups(K) if shortcuts._unit_structured(K) else None
    if groups is None:
        msg = (
            f"{where}: K has a site whose D is not unit-structured (self-attention, a user-defined "
            "Recurrent cell); there is no exact ratio from the site Grams"
        )
        raise ValueError(msg)
    xp = K.xp
    # The algebra of the exact rules in kpflow.ntk.shortcuts, run here outside no_grad (and
    # without their final asarray, which torch warns about on tensors that require grad).
    trace: Any = None
    for site in K.sites:
        row_sq = xp.sum(site.variables * site.variables, axis=1)  # G_ss
        if site.unit_D is None:
            c = float(site.scale)  # type: ignore[arg-type]  # D = c·I: a scale whenever unit_D is None
            term = (c * c * site.g * site.n_units) * xp.sum(row_sq)
        else:
            D = site.unit_D
            term = xp.sum(row_sq * xp.sum(xp.reshape(D * D, (site.m, -1)), axis=1))
        trace = term if trace is None else trace + term
    fro_sq: Any = None
    for group, (infos, chunks) in zip(groups, shortcuts._specs(groups), strict=True):
        M = shortcuts._grams(xp, infos, chunks, shortcuts._arrays(group))  # per-unit Φ_iᵀΦ_i
        sq = xp.sum(M * M)
        if shortcuts._is_scaled(group):
            sq = sq * infos[0].n_units  # one Gram shared by every unit
        fro_sq = sq if fro_sq is None else fro_sq + sq
    return trace * trace / fro_sq
