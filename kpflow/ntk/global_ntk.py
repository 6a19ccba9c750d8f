"""The global empirical NTK of the states, NTK_S = P K Pᵀ, and the output-space NTK.

NTK_S = (dz/dθ)(dz/dθ)ᵀ, the kernel by which one gradient step moves every state:
Δz ≈ −η NTK_S ∇_z L.  With a readout y = C z + c trained too, the output-space NTK is
NTK_out = (C̃P) K (C̃P)ᵀ + G_ro ⊗ I_out, C̃ = I_m ⊗ C, G_ro[s, s′] = ⟨z(s), z(s′)⟩ + 1.
"""

from __future__ import annotations

from typing import Any

from kpflow.models.base import Site, Trajectory, owned_copy
from kpflow.models.linear import Linear
from kpflow.models.sites_table import site_variables_of
from kpflow.ntk.jacobian import OutputJacobian, ParameterMap, StateJacobian, _jacobian_of
from kpflow.ntk.kernel import KroneckerCoreKernel, check_trajectory, parameter_kernel
from kpflow.ntk.parts import part_columns
from kpflow.ntk.propagator import Propagator, propagator
from kpflow.operators.base import LinearOperator, SymmetricOperator

__all__ = ["GlobalNTK", "OutputNTK", "ReadoutMap", "StateBlockNTK", "global_ntk", "output_ntk"]


class GlobalNTK(SymmetricOperator):
    """NTK_S = P K Pᵀ on ``state_shape``: BPTT, then K, then the forward recursion.

    Attributes
    ----------
    P : Propagator
        The propagator (I − L)⁻¹.
    K : LinearOperator
        The parameter kernel.
    J : StateJacobian
        The state Jacobian J_S = P F with NTK_S = J_S J_Sᵀ (built on first use; needs the
        Kronecker-core K, see :func:`kpflow.ntk.state_jacobian`).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow.ntk as ntk
    >>> from kpflow.models import RNN
    >>> model = RNN(1, 2)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((1, 3, 1)))
    >>> N = ntk.global_ntk(traj)
    >>> N.todense().shape, N.J.shape_in
    ((1, 3, 2, 1, 3, 2), (10,))
    """

    def __init__(self, P: Propagator, K: LinearOperator) -> None:
        super().__init__(P.shape_in, P.shape_out, xp=P.xp, dtype=P.dtype, device=P.device)
        self.P = P
        self.K = K
        self.axis_names = P.axis_names
        self._J: StateJacobian | None = None

    def _matmat(self, X: Any) -> Any:
        # a trajectory whose K applies all its sites at once may also fuse P K Pᵀ (kpflow.backends
        # .torch from_module(states=...): two passes of the module instead of four)
        fused = getattr(self.P.traj, "global_matmat", None)
        if fused is not None and getattr(self.K, "_own_matmat", None) is not None:
            return fused(X)
        return self.P._matmat(self.K._matmat(self.P._rmatmat(X)))

    @property
    def J(self) -> StateJacobian:
        """J_S = P F (:class:`~kpflow.ntk.StateJacobian`), the factor with NTK_S = J_S J_Sᵀ."""
        if self._J is None:
            if not isinstance(self.K, KroneckerCoreKernel):
                msg = (
                    "GlobalNTK.J: the state Jacobian factors the Kronecker-core K = F Fᵀ, but this "
                    f"NTK_S has K = {type(self.K).__name__}, without weight sites; build it with "
                    "global_ntk(traj, method='kronecker') or kpflow.state_jacobian(traj)"
                )
                raise TypeError(msg)
            self._J = _jacobian_of(self.P, self.K.sites)
        return self._J


class StateBlockNTK(SymmetricOperator):
    """One block of NTK_S: E NTK_S Eᵀ, with E keeping the per-site state columns ``[lo, hi)``.

    For the LSTM (state [h; c]) the h block E_h P K Pᵀ E_hᵀ is how one gradient step moves
    h alone.  P runs through the whole state: restricting P and K to h *before*
    multiplying would drop every path through c.

    Attributes
    ----------
    full : GlobalNTK
        NTK_S on the whole state.
    columns : tuple (lo, hi)
        The per-site state columns kept.
    J : StateJacobian
        E J_S, the factor with E NTK_S Eᵀ = (E J_S)(E J_S)ᵀ (built on first use; needs the
        Kronecker-core K).

    Examples
    --------
    >>> import numpy as np
    >>> import kpflow
    >>> from kpflow.models import LSTM
    >>> traj = LSTM(1, 2).run(LSTM(1, 2).init(0), np.ones((1, 3, 1)))
    >>> h = kpflow.global_ntk(traj, part="h")
    >>> h.shape_in, h.columns
    ((1, 3, 2), (0, 2))
    """

    def __init__(self, full: GlobalNTK, traj: Trajectory, columns: tuple[int, int]) -> None:
        lo, hi = columns
        shape = (*traj.site_shape, hi - lo)
        super().__init__(shape, shape, xp=full.xp, dtype=full.dtype, device=full.device)
        self.full = full
        self.columns = (lo, hi)
        self._m, self._size = traj.m, traj.site_state_size
        self.axis_names = full.axis_names
        self._J: StateJacobian | None = None

    @property
    def J(self) -> StateJacobian:
        """E J_S (:class:`~kpflow.ntk.StateJacobian` with ``columns``), the factor of this block."""
        if self._J is None:
            J = self.full.J
            self._J = StateJacobian(J.P, J.F, columns=self.columns)
        return self._J

    def _embed(self, X: Any) -> Any:
        xp, k = self.xp, X.shape[0]
        lo, hi = self.columns
        flat = xp.reshape(X, (k, self._m, hi - lo))
        z = {"dtype": self.dtype, "device": self.device}
        parts = [xp.zeros((k, self._m, lo), **z), flat, xp.zeros((k, self._m, self._size - hi), **z)]
        return xp.reshape(xp.concat(parts, axis=-1), (k, *self.full.shape_in))

    def _matmat(self, X: Any) -> Any:
        xp, k = self.xp, X.shape[0]
        lo, hi = self.columns
        Y = xp.reshape(self.full._matmat(self._embed(X)), (k, self._m, self._size))[:, :, lo:hi]
        return xp.reshape(Y, (k, *self.shape_out))


def global_ntk(traj: Trajectory, *, method: str = "kronecker", part: str = "all") -> LinearOperator:
    """The global empirical NTK of the states, NTK_S = P K Pᵀ, on ``state_shape``.

    Parameters
    ----------
    traj : Trajectory
        From ``model.run``.
    method : {"kronecker", "autodiff"}
        How K is applied (see :func:`parameter_kernel`).
    part : {"all", "h", "c"}
        Which block of the state: ``"all"`` (default) the whole state; for the LSTM (state
        [h; c] of width 2H) ``"h"`` or ``"c"`` give the block E NTK_S Eᵀ on ``(B, T, H)``
        (:class:`StateBlockNTK`, P still running through the whole state).  For the other
        models ``"h"`` is the whole state and ``"c"`` is an error.

    Returns
    -------
    GlobalNTK or StateBlockNTK
        Symmetric PSD operator ``(k, *state_shape) -> (k, *state_shape)`` with ``.P`` and
        ``.K`` (a block: on ``(k, B, T, H)``, with ``.full`` the whole NTK_S).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow.ntk as ntk
    >>> from kpflow.models import RNN
    >>> model = RNN(2, 3)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((2, 4, 2)))
    >>> N = ntk.global_ntk(traj)
    >>> N.matmat(xp.ones((5, 2, 4, 3))).shape
    (5, 2, 4, 3)
    """
    check_trajectory(traj, "global_ntk")
    columns = part_columns(traj, part, "global_ntk")
    full = GlobalNTK(propagator(traj), parameter_kernel(traj, method=method))
    return full if columns is None else StateBlockNTK(full, traj, columns)


class ReadoutMap(LinearOperator):
    """C̃ = I_m ⊗ C: state tangents ``(k, *state_shape)`` to outputs ``(k, *site_shape, n_out)``.

    C reads the trajectory's ``feature_columns`` of each site (h for the LSTM, the last
    layer for the MLP).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow.ntk as ntk
    >>> from kpflow.models import RNN
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0, like=xp.zeros(1)), xp.ones((1, 3, 1)))
    >>> C = xp.ones((4, 2))
    >>> ntk.ReadoutMap(traj, C).shape_out
    (1, 3, 4)
    """

    def __init__(self, traj: Trajectory, weight: Any) -> None:
        shape_out = (*traj.site_shape, int(weight.shape[0]))
        super().__init__(traj.state_shape, shape_out, xp=traj.xp, dtype=traj.dtype, device=traj.device)
        self.traj = traj
        self.weight = weight

    def _matmat(self, X: Any) -> Any:
        xp, traj = self.xp, self.traj
        k = X.shape[0]
        lo, hi = traj.feature_columns
        Z = xp.reshape(X, (k, traj.m, traj.site_state_size))[:, :, lo:hi]
        return xp.reshape(Z @ xp.matrix_transpose(self.weight), (k, *self.shape_out))

    def _rmatmat(self, Y: Any) -> Any:
        xp, traj = self.xp, self.traj
        k = Y.shape[0]
        lo, hi = traj.feature_columns
        Z = xp.reshape(Y, (k, traj.m, self.weight.shape[0])) @ self.weight  # (k, m, F)
        parts = []
        if lo > 0:
            parts.append(xp.zeros((k, traj.m, lo), dtype=self.dtype, device=self.device))
        parts.append(Z)
        if hi < traj.site_state_size:
            parts.append(
                xp.zeros((k, traj.m, traj.site_state_size - hi), dtype=self.dtype, device=self.device)
            )
        full = parts[0] if len(parts) == 1 else xp.concat(parts, axis=-1)
        return xp.reshape(full, (k, *self.shape_in))


class OutputNTK(SymmetricOperator):
    """NTK_out = C̃ NTK_S C̃ᵀ + G_ro ⊗ I_out on ``(*site_shape, n_out)``.

    Attributes
    ----------
    readout_map : ReadoutMap
        C̃ = I_m ⊗ C.
    state_ntk : GlobalNTK
        NTK_S = P K Pᵀ.
    readout_kernel : KroneckerCoreKernel
        G_ro ⊗ I_out, the readout's own parameters' term (one site, D = I).
    J : OutputJacobian
        [C̃ J_S | F_ro], the factor with NTK_out = J Jᵀ (built on first use; needs the
        Kronecker-core K).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow.ntk as ntk
    >>> from kpflow.models import RNN, Linear
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0, like=xp.zeros(1)), xp.ones((1, 3, 1)))
    >>> N = ntk.output_ntk(traj, Linear(2, 1).init(0, like=xp.zeros(1)))
    >>> N.readout_kernel.sites[0].p, N.todense().shape
    (3, (1, 3, 1, 1, 3, 1))
    """

    def __init__(self, readout_map: ReadoutMap, state_ntk: GlobalNTK, readout_kernel: KroneckerCoreKernel):
        shape = readout_map.shape_out
        super().__init__(shape, shape, xp=state_ntk.xp, dtype=state_ntk.dtype, device=state_ntk.device)
        self.readout_map = readout_map
        self.state_ntk = state_ntk
        self.readout_kernel = readout_kernel
        self._J: OutputJacobian | None = None

    def _matmat(self, X: Any) -> Any:
        C = self.readout_map
        inner = C._matmat(self.state_ntk._matmat(C._rmatmat(X)))
        return inner + self.readout_kernel._matmat(X)

    @property
    def J(self) -> OutputJacobian:
        """The factor [C̃ J_S | F_ro] (:class:`~kpflow.ntk.OutputJacobian`), NTK_out = J Jᵀ."""
        if self._J is None:
            ro = ParameterMap(self.readout_kernel.sites, like=self.readout_kernel.sites[0].variables)
            self._J = OutputJacobian(self.readout_map, self.state_ntk.J, ro)
        return self._J


def output_ntk(traj: Trajectory, readout_params: dict[str, Any], *, method: str = "kronecker") -> OutputNTK:
    """The output-space NTK of a trajectory read out by y = C z + c, all parameters trained.

    NTK_out = (C̃P) K (C̃P)ᵀ + G_ro ⊗ I_out (docs/theory.md, "The output NTK"), the kernel
    neural-tangents computes.  The readout reads ``traj.feature_columns`` of each site.

    Parameters
    ----------
    traj : Trajectory
    readout_params : dict
        ``weight`` C of shape (n_out, n_features) and optionally ``bias`` c of shape
        (n_out,) (as :class:`kpflow.models.Linear`), in the trajectory's namespace, dtype
        and device.
    method : {"kronecker", "autodiff"}
        How K is applied.

    Returns
    -------
    OutputNTK
        Symmetric operator on ``(*site_shape, n_out)``: ``(B, T, n_out)`` for recurrent
        models, ``(B, n_out)`` for the MLP.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow.ntk as ntk
    >>> from kpflow.models import RNN, Linear
    >>> model, readout = RNN(2, 3), Linear(3, 1)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((2, 4, 2)))
    >>> ntk.output_ntk(traj, readout.init(1, like=xp.zeros(1))).shape_in
    (2, 4, 1)
    """
    where = "output_ntk"
    check_trajectory(traj, where)
    if not isinstance(readout_params, dict) or "weight" not in readout_params:
        msg = f"{where}: expected readout_params to be a dict with 'weight' (and optionally 'bias')"
        raise ValueError(msg)
    weight = readout_params["weight"]
    lo, hi = traj.feature_columns
    if weight.ndim != 2:
        got = tuple(weight.shape)
        msg = f"{where}: expected readout_params['weight'] of shape (n_out, {hi - lo}), got {got}"
        raise ValueError(msg)
    readout = Linear(hi - lo, int(weight.shape[0]), bias="bias" in readout_params)
    readout.check_params(readout_params, where, like=traj.states)
    # Own the readout weight as the trajectory owns its params: an in-place update of the
    # caller's readout must not change this operator.
    C = ReadoutMap(traj, owned_copy(weight))
    (decl,) = readout.site_table("readout.")
    features = traj.features()
    A = site_variables_of((decl,), {"z": features}, like=features)[decl.name]
    site = Site(decl.name, A, state_shape=C.shape_out, scale=1.0, width=readout.n_out, rows=decl.rows())
    state_ntk = GlobalNTK(propagator(traj), parameter_kernel(traj, method=method))
    return OutputNTK(C, state_ntk, KroneckerCoreKernel([site], like=traj.states))


def _dense_output_ntk(op: OutputNTK) -> Any:
    """``todense`` of NTK_out: the Gram of Jᵀ on the unit outputs (:mod:`kpflow.ntk.output_gram`).

    Never NTK_out on every unit output (BPTT, K, the forward recursion): P and half of K are
    skipped.  Without weight sites (``method="autodiff"``) the generic rule applies.
    """
    from kpflow.ntk.output_gram import output_ntk_gram
    from kpflow.operators import todense

    dense = output_ntk_gram(op)
    return todense.dispatch(LinearOperator)(op) if dense is None else dense


def _register_dense_output_ntk() -> None:
    from kpflow.operators import todense

    todense.register(OutputNTK, _dense_output_ntk)


_register_dense_output_ntk()
