"""The parameter side of NTK_S = P K Pᵀ: the state Jacobian J_S = dz/dθ = P F.

The Kronecker core K = Σ_w D_w (A_w A_wᵀ ⊗ I) D_wᵀ is a Gram matrix, K = F Fᵀ, with

    F C = Σ_w D_w (A_w C_w),        Fᵀ V = (A_wᵀ (D_wᵀ V))_w,

where C_w (p_w × k_w) is a block of parameters per weight site (row j of C_w multiplies
the site variable a_w(s)_j, column g is pre-activation g).  Then J_S = P F and

    NTK_S = J_S J_Sᵀ,        J_Sᵀ J_S = the Gauss–Newton matrix of a squared loss on z.

Both Gram products have the same nonzero spectrum; with fewer parameters than states the
parameter side J_Sᵀ J_S is the smaller one (docs/jacobian.md).

- :class:`~kpflow.ntk.parameter_map.ParameterMap` is F (the factor of K);
  :class:`StateJacobian` is J_S = P F, or E J_S for a part of the state (the LSTM's h);
  :class:`OutputJacobian` is the factor [C̃ P F | F_ro] of the output NTK, the readout's own
  parameters last.
- Their domain is a flat parameter vector (:mod:`kpflow.ntk.parameters`): the sites in
  order, each block C_w flattened row-major.  ``split`` / ``join`` convert to per-site
  blocks, ``to_params`` / ``from_params`` to the model's named parameters
  (:func:`site_parameters` says which rows of a site are which weight).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kpflow.models.base import Site, Trajectory
from kpflow.ntk.kernel import check_trajectory
from kpflow.ntk.parameter_map import ParameterMap, _check_sites
from kpflow.ntk.parameters import (
    NO_SITE,
    SiteRows,
    _Blocks,
    _checked_rows,
    _FlatParameters,
    site_parameters,
    trained_parameters,
)
from kpflow.ntk.parts import part_columns
from kpflow.ntk.propagator import Propagator, propagator
from kpflow.operators.base import LinearOperator

if TYPE_CHECKING:
    from kpflow.ntk.global_ntk import ReadoutMap

__all__ = [
    "NO_SITE",
    "OutputJacobian",
    "ParameterMap",
    "SiteRows",
    "StateJacobian",
    "site_parameters",
    "state_jacobian",
    "trained_parameters",
]


# -- J_S = P F ---------------------------------------------------------------------------------------
def _traj_layout(
    traj: Trajectory, sites: list[Site]
) -> tuple[dict[str, SiteRows] | None, dict[str, tuple[int, ...]]]:
    """The named layout of J_S: each site's own ``rows`` when every site has them, else the model's.

    The rows that reach no site (:data:`NO_SITE`) are the model's to say.
    """
    rows = trained_parameters(traj.model)
    frozen = traj.model.frozen
    shapes = {name: tuple(int(n) for n in a.shape) for name, a in traj.params.items() if name not in frozen}
    names = [site.name for site in sites]
    if rows is not None and len(set(names)) == len(names) and all(site.rows is not None for site in sites):
        own = {site.name: list(site.rows or ()) for site in sites}
        if NO_SITE in rows:
            own[NO_SITE] = rows[NO_SITE]
        rows = own
    return rows, shapes


class StateJacobian(_FlatParameters):
    """J_S = dz/dθ = P F: a flat parameter vector to state tangents; NTK_S = J_S J_Sᵀ.

    ``J @ v`` is the first-order change of every state along the parameter direction v
    (a Jacobian-vector product through the whole trajectory); ``J.T @ V`` is
    backpropagation through time then the per-site gradients, so ``J.rmatvec(g)`` is the
    gradient of ⟨g, z⟩ with respect to all parameters.  J_Sᵀ J_S (:meth:`gauss_newton`) is
    the Gauss–Newton matrix of a squared loss on the states.

    With ``columns`` (a block of the per-site state, e.g. the LSTM's h) the codomain is
    that block, ``(*site_shape, hi − lo)``: J = E J_S, and J Jᵀ = E NTK_S Eᵀ.

    Parameters
    ----------
    P : Propagator
        P = (I − L)⁻¹ of the trajectory.
    F : ParameterMap
        The factor of K (same sites, same namespace, dtype and device).
    columns : tuple (lo, hi), optional
        Keep only these per-site state columns.

    Attributes
    ----------
    P, F, columns, traj

    Examples
    --------
    >>> import numpy as np
    >>> import kpflow
    >>> from kpflow.models import GRU
    >>> traj = GRU(2, 3).run(GRU(2, 3).init(0), np.random.default_rng(0).standard_normal((2, 4, 2)))
    >>> J = kpflow.state_jacobian(traj)
    >>> J.shape_in, J.shape_out                         # p = 3·3·(2 + 3 + 2) parameters
    ((63,), (2, 4, 3))
    >>> Jd = J.todense().reshape(24, 63)
    >>> bool(np.allclose(Jd @ Jd.T, kpflow.global_ntk(traj).todense().reshape(24, 24)))
    True
    >>> sorted(J.to_params(J.rmatvec(traj.states)))    # dθ of ⟨z, z⟩/2, in torch's names
    ['bias_hh', 'bias_ih', 'weight_hh', 'weight_ih']
    """

    def __init__(self, P: Propagator, F: ParameterMap, *, columns: tuple[int, int] | None = None) -> None:
        where = "StateJacobian"
        if not isinstance(P, Propagator):
            msg = f"{where}: expected P to be a kpflow.ntk.Propagator, got {type(P).__name__}"
            raise TypeError(msg)
        if not isinstance(F, ParameterMap):
            msg = f"{where}: expected F to be a kpflow.ntk.ParameterMap, got {type(F).__name__}"
            raise TypeError(msg)
        if F.shape_out != P.shape_in or F.xp is not P.xp or F.dtype != P.dtype or F.device != P.device:
            msg = (
                f"{where}: F maps to {F.shape_out} ({F.dtype} on {F.device}) but P acts on "
                f"{P.shape_in} ({P.dtype} on {P.device})"
            )
            raise ValueError(msg)
        traj = P.traj
        self._m, self._size = traj.m, traj.site_state_size
        shape_out = P.shape_out
        if columns is not None:
            lo, hi = (int(c) for c in columns)
            if not 0 <= lo < hi <= self._size:
                msg = f"{where}: expected columns (lo, hi) with 0 <= lo < hi <= {self._size}, got {columns!r}"
                raise ValueError(msg)
            columns = (lo, hi)
            shape_out = (*traj.site_shape, hi - lo)
        super().__init__(F.shape_in, shape_out, xp=P.xp, dtype=P.dtype, device=P.device)
        self.P, self.F, self.columns, self.traj = P, F, columns, traj
        self._blocks = F._blocks
        self._rows, self._param_shapes = F._rows, F._param_shapes

    def _matmat(self, X: Any) -> Any:
        Z = self.P._matmat(self.F._matmat(X))
        if self.columns is None:
            return Z
        xp, k = self.xp, X.shape[0]
        lo, hi = self.columns
        Z = xp.reshape(Z, (k, self._m, self._size))[:, :, lo:hi]
        return xp.reshape(Z, (k, *self.shape_out))

    def _rmatmat(self, Y: Any) -> Any:
        if self.columns is not None:
            Y = self._embed(Y)
        return self.F._rmatmat(self.P._rmatmat(Y))

    def _embed(self, Y: Any) -> Any:
        xp, k = self.xp, Y.shape[0]
        lo, hi = self.columns  # type: ignore[misc]
        z = {"dtype": self.dtype, "device": self.device}
        parts = []
        if lo > 0:
            parts.append(xp.zeros((k, self._m, lo), **z))
        parts.append(xp.reshape(Y, (k, self._m, hi - lo)))
        if hi < self._size:
            parts.append(xp.zeros((k, self._m, self._size - hi), **z))
        return xp.reshape(xp.concat(parts, axis=-1), (k, *self.P.shape_in))

    def gauss_newton(self) -> LinearOperator:
        """J_Sᵀ J_S on the flat parameters: the Gauss–Newton matrix of ½‖z − target‖².

        It shares its nonzero eigenvalues with NTK_S = J_S J_Sᵀ.

        Examples
        --------
        >>> import numpy as np
        >>> import kpflow
        >>> from kpflow.models import RNN
        >>> traj = RNN(1, 2).run(RNN(1, 2).init(0), np.ones((1, 3, 1)))
        >>> G = kpflow.state_jacobian(traj).gauss_newton()
        >>> G.shape_in, float(kpflow.linalg.trace(G)) == float(kpflow.linalg.trace(kpflow.global_ntk(traj)))
        ((10,), True)
        """
        return self.T.gram()


# -- the output NTK's factor ---------------------------------------------------------------------------
class OutputJacobian(_FlatParameters):
    """The factor of the output NTK: [C̃ J_S | F_ro], with NTK_out = J_out J_outᵀ.

    The domain is the flat model parameters (as :class:`StateJacobian`) followed by the
    readout's own block, site ``"readout"``: C_ro = [Cᵀ; c] of shape
    (n_features [+ 1], n_out), whose site variables are the features read out (and ones).
    ``to_params`` names the readout's entries ``readout.weight`` and ``readout.bias``.

    Parameters
    ----------
    readout_map : ReadoutMap
        C̃ = I_m ⊗ C.
    J : StateJacobian
        J_S of the trajectory.
    readout : ParameterMap
        F_ro, the readout's one site (D = I); F_ro F_roᵀ = G_ro ⊗ I_out.

    Attributes
    ----------
    readout_map, J, readout

    Examples
    --------
    >>> import numpy as np
    >>> import kpflow
    >>> from kpflow.models import RNN, Linear
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0), np.ones((2, 3, 1)))
    >>> out = kpflow.output_ntk(traj, Linear(2, 1).init(0))
    >>> J = out.J
    >>> J.shape_in, J.site_shapes["readout"]           # 10 model + 3 readout parameters
    ((13,), (3, 1))
    >>> Jd = J.todense().reshape(6, 13)
    >>> bool(np.allclose(Jd @ Jd.T, out.todense().reshape(6, 6)))
    True
    """

    def __init__(self, readout_map: ReadoutMap, J: StateJacobian, readout: ParameterMap) -> None:
        where = "OutputJacobian"
        if not isinstance(J, StateJacobian):
            msg = f"{where}: expected J to be a StateJacobian, got {type(J).__name__}"
            raise TypeError(msg)
        if not isinstance(readout, ParameterMap) or len(readout.sites) != 1:
            msg = f"{where}: expected readout to be a one-site ParameterMap, got {type(readout).__name__}"
            raise TypeError(msg)
        if readout_map.shape_in != J.shape_out or readout.shape_out != readout_map.shape_out:
            msg = (
                f"{where}: readout_map maps {readout_map.shape_in} -> {readout_map.shape_out}, J maps to "
                f"{J.shape_out} and the readout site to {readout.shape_out}"
            )
            raise ValueError(msg)
        self.readout_map, self.J, self.readout = readout_map, J, readout
        self._p = J.size_in
        site = readout.sites[0]
        self._blocks = _Blocks(
            [*J._blocks.names, "readout"], [*J._blocks.shapes.values(), (site.p, site.width)]
        )
        super().__init__((self._blocks.size,), readout_map.shape_out, xp=J.xp, dtype=J.dtype, device=J.device)
        ro_name = self._blocks.names[-1]
        n_feat = int(readout_map.weight.shape[1])
        full = (0, site.width)
        # the readout site's own rows (output_ntk declares them: readout.weight, readout.bias)
        has_bias = site.p > n_feat
        ro_bias: SiteRows = [("readout.bias", full)] if has_bias else []
        ro_rows: SiteRows = site.rows or [("readout.weight", full), *ro_bias]
        self._param_shapes = {**J._param_shapes, "readout.weight": (site.width, n_feat)}
        if has_bias:
            self._param_shapes["readout.bias"] = (site.width,)
        self._rows = None if J._rows is None else {**J._rows, ro_name: ro_rows}
        self._rows = _checked_rows(self._rows, self._blocks, self._param_shapes, where)

    def _matmat(self, X: Any) -> Any:
        p = self._p
        inner = self.readout_map._matmat(self.J._matmat(X[:, :p]))
        return inner + self.readout._matmat(X[:, p:])

    def _rmatmat(self, Y: Any) -> Any:
        left = self.J._rmatmat(self.readout_map._rmatmat(Y))
        return self.xp.concat([left, self.readout._rmatmat(Y)], axis=1)


# -- public constructor --------------------------------------------------------------------------------
def _jacobian_of(P: Propagator, sites: list[Site], columns: tuple[int, int] | None = None) -> StateJacobian:
    """J_S = P F for the trajectory of ``P`` and its weight ``sites``, with the named layout when known."""
    traj = P.traj
    rows, shapes = _traj_layout(traj, sites)
    F = ParameterMap(sites, like=traj.states, rows=rows, param_shapes=shapes)
    return StateJacobian(P, F, columns=columns)


def state_jacobian(traj: Trajectory, *, part: str = "all") -> StateJacobian:
    """The state Jacobian J_S = dz/dθ = P F of a trajectory, on the flat parameters.

    NTK_S = J_S J_Sᵀ exactly, and J_Sᵀ J_S is the Gauss–Newton matrix of a squared loss
    on the states; the two share their nonzero spectrum, and the parameter side is the
    smaller one when there are fewer parameters than states (docs/jacobian.md).  It is
    also ``global_ntk(traj).J``.

    Parameters
    ----------
    traj : Trajectory
        From ``model.run``; its model must have weight sites (every built-in model does).
    part : {"all", "h", "c"}
        As in :func:`global_ntk`: for the LSTM, ``"h"`` / ``"c"`` give E J_S on that block.

    Returns
    -------
    StateJacobian
        ``(k, p) -> (k, *state_shape)``; ``split`` / ``join`` give the per-site blocks and
        ``to_params`` / ``from_params`` the model's named parameters.

    Raises
    ------
    TypeError
        If ``traj`` is not a Trajectory, or its sites are not a list of Site.
    ValueError
        For an unknown ``part``.

    Examples
    --------
    >>> import numpy as np
    >>> import kpflow
    >>> from kpflow.models import RNN
    >>> traj = RNN(2, 3).run(RNN(2, 3).init(0), np.ones((4, 5, 2)))
    >>> J = kpflow.state_jacobian(traj)
    >>> J.shape_in, J.shape_out, {k: v.shape for k, v in J.split(np.ones(J.shape_in)).items()}
    ((21,), (4, 5, 3), {'hidden': (7, 3)})
    """
    where = "state_jacobian"
    check_trajectory(traj, where)
    columns = part_columns(traj, part, where)
    sites = _check_sites(traj.sites, f"{where}: traj.sites")
    return _jacobian_of(propagator(traj), sites, columns)
