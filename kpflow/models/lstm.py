"""The long short-term memory cell (LSTM) of ``torch.nn.LSTM``, with analytic derivatives."""

from __future__ import annotations

from typing import Any

from kpflow._array import array_namespace
from kpflow.models.base import (
    RecurrentModel,
    RecurrentTrajectory,
    Site,
    StepKernel,
    Trajectory,
    check_size,
    flat_sites,
)
from kpflow.models.ops import TORCH_CELL_ORDER, linear, matmul_last, sigmoid
from kpflow.models.sites_table import (
    H_PREV,
    X_T,
    Dim,
    SiteDecl,
    Term,
    declared_shapes,
    site_variables_of,
    with_site_table,
)

__all__ = ["LSTM", "LSTMTrajectory"]


class LSTM(RecurrentModel):
    """The LSTM of ``torch.nn.LSTM`` (one layer, ``batch_first=True``); state [h; c].

    Gate order i, f, g, o, as in PyTorch::

        u   = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh          (4H pre-activations)
        i, f, g, o = σ(u_i), σ(u_f), tanh(u_g), σ(u_o)
        c_t = f ⊙ c_{t−1} + i ⊙ g
        h_t = o ⊙ tanh(c_t)

    The state z_t = [h_t; c_t] has width S = 2H, h first, so ``traj.states`` is
    (B, T, 2H) and P runs through the whole (h, c) state.  The NTK of h alone is the
    h-block of the (h, c) NTK; a readout reads h (``traj.feature_columns == (0, H)``).

    Parameters
    ----------
    n_in, n_hidden : int
        Input size and hidden size H.
    bias : bool
        Whether ``bias_ih`` and ``bias_hh`` exist.

    Notes
    -----
    Parameters (PyTorch's names, the gates stacked i, f, g, o): ``weight_ih`` (4H, n_in),
    ``weight_hh`` (4H, H), ``bias_ih`` (4H,), ``bias_hh`` (4H,).

    The initial state ``h0`` of :meth:`run` is either an array (B, 2H) = [h0; c0] or a
    pair ``(h0, c0)`` of (B, H) arrays (PyTorch passes them as (1, B, H); drop the layer
    axis).  ``None`` means zeros.

    One weight site (all four gates share it, :meth:`site_table`), of width 4H:

    {site_table}

    D(s) = ∂[h_t; c_t]/∂u is 2H×4H and couples each unit's four gate pre-activations to
    its h and c only, so it is stored unit-structured (``unit_D`` of shape (m, H, 2, 4)).
    With τ = tanh c_t, c = c_{t−1}:

    - ∂c_t/∂u_{i,f,g,o} = [g i(1−i), c f(1−f), i(1−g²), 0]
    - ∂h_t/∂u_{i,f,g} = o(1−τ²) ∂c_t/∂u,   ∂h_t/∂u_o = τ o(1−o)

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.lstm import LSTM
    >>> model = LSTM(2, 3)
    >>> params = model.init(0, like=xp.zeros(1))
    >>> traj = model.run(params, xp.ones((4, 5, 2)))
    >>> traj.states.shape, [(s.p, s.width, s.unit_D.shape) for s in traj.sites]
    ((4, 5, 6), [(7, 12, (20, 3, 2, 4))])
    """

    #: Batch rows never mix (each row's cell runs on its own [h; c] and x; ``Layout.independent_rows``).
    independent_rows = True

    def __init__(self, n_in: int, n_hidden: int, *, bias: bool = True) -> None:
        self.n_in = check_size(n_in, "n_in", "LSTM")
        self.n_hidden = check_size(n_hidden, "n_hidden", "LSTM")
        self.state_size = 2 * self.n_hidden
        self.bias = bool(bias)

    @property
    def feature_columns(self) -> tuple[int, int]:
        """A readout reads h: columns (0, H) of the per-site state [h; c]."""
        return (0, self.n_hidden)

    @property
    def state_parts(self) -> dict[str, tuple[int, int]]:
        """The state [h; c]: ``{"h": (0, H), "c": (H, 2H)}`` (``global_ntk(traj, part="c")``)."""
        H = self.n_hidden
        return {"h": (0, H), "c": (H, 2 * H)}

    def site_table(self) -> tuple[SiteDecl, ...]:
        """The one weight site ``ih+hh`` (see the class docstring)."""
        return lstm_site_table(self.n_in, self.n_hidden, self.bias)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return declared_shapes(self.site_table(), TORCH_CELL_ORDER)

    def gates(self, params: dict[str, Any], h_prev: Any, x_t: Any) -> tuple[Any, Any, Any, Any]:
        """The gates (i, f, g, o), each ``(..., H)``.

        ``h_prev`` is h_{t−1} ``(..., H)`` (not the full state) and ``x_t`` is ``(..., n_in)``.
        """
        xp = array_namespace(h_prev, x_t)
        H = self.n_hidden
        u = linear(xp, x_t, params["weight_ih"]) + linear(xp, h_prev, params["weight_hh"])
        if self.bias:
            u = u + params["bias_ih"] + params["bias_hh"]
        i = sigmoid(xp, u[..., :H])
        f = sigmoid(xp, u[..., H : 2 * H])
        g = xp.tanh(u[..., 2 * H : 3 * H])
        o = sigmoid(xp, u[..., 3 * H :])
        return i, f, g, o

    def step(self, params: dict[str, Any], h_prev: Any, x_t: Any) -> Any:
        """One step on the state [h; c]: ``h_prev`` (..., 2H) and x_t (..., n_in) to (..., 2H)."""
        xp = array_namespace(h_prev, x_t)
        H = self.n_hidden
        i, f, g, o = self.gates(params, h_prev[..., :H], x_t)
        c = f * h_prev[..., H:] + i * g
        return xp.concat([o * xp.tanh(c), c], axis=-1)

    def run(self, params: dict[str, Any], x: Any, h0: Any = None) -> Trajectory:
        """Run once; ``h0`` is None, a (B, 2H) array [h0; c0] or a pair (h0, c0) of (B, H).

        Returns
        -------
        LSTMTrajectory
            ``states`` of shape (B, T, 2H), h first; ``traj.h0`` is the (B, 2H) array.

        Raises
        ------
        ValueError
            As :meth:`RecurrentModel.run`, and for a pair ``h0`` of the wrong length or shapes.
        TypeError
            For mixed namespaces, dtypes or devices.
        """
        if isinstance(h0, tuple | list):
            h0 = self._join_pair(params, x, h0)
        return super().run(params, x, h0)

    def _check_inputs(self, x: Any, h0: Any, meta: tuple, where: str) -> None:
        if h0 is not None and getattr(h0, "ndim", None) is not None:
            expected = (int(x.shape[0]), self.state_size)
            if tuple(h0.shape) != expected:
                B, H = expected[0], self.n_hidden
                msg = (
                    f"{where}: expected h0 to be the LSTM's initial state [h0; c0] of shape "
                    f"(B, 2H) = ({B}, {2 * H}), or a pair (h0, c0) of two ({B}, {H}) arrays; "
                    f"got an array of shape {tuple(h0.shape)}"
                )
                raise ValueError(msg)
        super()._check_inputs(x, h0, meta, where)

    def _join_pair(self, params: dict[str, Any], x: Any, pair: Any) -> Any:
        where = "LSTM.run"
        if len(pair) != 2:
            msg = (
                f"{where}: expected h0 to be an array (B, 2H) or a pair (h0, c0), "
                f"got a sequence of length {len(pair)}"
            )
            raise ValueError(msg)
        meta = self.check_params(params, where)
        self._check_inputs(x, None, meta, where)
        shape = (x.shape[0], self.n_hidden)
        for name, a in zip(("h0[0] (h0)", "h0[1] (c0)"), pair, strict=True):
            self._check_array(a, name, shape, meta, where)
        return meta[0].concat([pair[0], pair[1]], axis=-1)

    def _make_trajectory(self, params: dict[str, Any], x: Any, h0: Any, states: Any) -> LSTMTrajectory:
        return LSTMTrajectory(self, params, x, h0, states)

    def __repr__(self) -> str:
        return f"LSTM(n_in={self.n_in}, n_hidden={self.n_hidden}, bias={self.bias})"


class LSTMTrajectory(RecurrentTrajectory):
    """A run of :class:`LSTM`; the state is [h; c] of width 2H.

    Caches the rows of D, ``D`` = [∂h_t/∂u; ∂c_t/∂u] of shape (B, T, 2, 4, H) (state row
    h or c, gate i, f, g, o, unit; each gate block diagonal in the unit), and the paths
    through c_{t−1}, ``E`` = [hc ⊙ f; f] of shape (B, T, 2, H), with hc = o(1 − tanh² c_t)
    (cached as ``hc``).  ``Dh`` and ``Dc`` (B, T, 4H) and ``f`` (B, T, H) are views of
    them.  The state Jacobian is

        J_t [v_h; v_c] = [Σ_gates Dh ⊙ (W_hh v_h) + hc ⊙ f ⊙ v_c;
                          Σ_gates Dc ⊙ (W_hh v_h) + f ⊙ v_c],

    one (k·B, H) × (H, 4H) GEMM per step and a sum over the gate axis of D (Jᵀ_t: a sum
    over the state-row axis of D, then one (k·B, 4H) × (4H, H) GEMM).
    """

    model: LSTM

    def __init__(self, model: LSTM, params: dict[str, Any], x: Any, h0: Any, states: Any) -> None:
        super().__init__(model, params, x, h0, states)
        # one program on jax (torch, parameters requiring grad: recomputed when differentiated)
        self.D, self.E, self.hc = self.recomputed(_lstm_caches, params, self.prev_states, x, states)
        self.f, self._W_hh_T = self.derived(_lstm_views, self.E, params["weight_hh"])  # views, once

    @property
    def Dh(self) -> Any:
        """∂h_t/∂u, (B, T, 4H) gate-major (a view of ``D``)."""
        return self._gate_rows(0)

    @property
    def Dc(self) -> Any:
        """∂c_t/∂u, (B, T, 4H) gate-major (a view of ``D``)."""
        return self._gate_rows(1)

    def _gate_rows(self, row: int) -> Any:
        B, T = self.site_shape
        return self.xp.reshape(self.D[:, :, row, ...], (B, T, 4 * self.model.n_hidden))

    def step_kernel(self) -> StepKernel:
        return StepKernel(
            _lstm_jvp,
            _lstm_vjp,
            (self.model.n_hidden,),
            (self.D, self.E, self.params["weight_hh"], self._W_hh_T),
        )

    def _make_sites(self) -> list[Site]:
        (decl,) = self.model.site_table()
        A, unit_D = self.derived(_lstm_site_arrays, self.x, self.prev_states, self.D)
        site = Site(
            decl.name,
            A,
            state_shape=self.state_shape,
            unit_D=unit_D,
            rows=decl.rows(),
            batch_major=True,
        )
        return [site]


def _lstm_caches(model: LSTM, params: dict[str, Any], prev: Any, x: Any, states: Any) -> tuple[Any, Any, Any]:
    """``D`` (B, T, 2, 4, H), ``E`` (B, T, 2, H), ``hc`` (B, T, H) at every step (:class:`LSTMTrajectory`)."""
    xp = array_namespace(prev, x, states)
    H = model.n_hidden
    i, f, g, o = model.gates(params, prev[..., :H], x)
    tau = xp.tanh(states[..., H:])
    hc = o * (1.0 - tau * tau)
    dc = [g * i * (1.0 - i), prev[..., H:] * f * (1.0 - f), i * (1.0 - g * g)]
    Dh = xp.stack([hc * d for d in dc] + [tau * o * (1.0 - o)], axis=-2)  # (B, T, 4, H)
    Dc = xp.stack([*dc, xp.zeros_like(o)], axis=-2)
    return xp.stack([Dh, Dc], axis=-3), xp.stack([hc * f, f], axis=-2), hc


def _lstm_views(model: LSTM, xp: Any, E: Any, weight_hh: Any) -> tuple[Any, Any]:
    """``f`` (the row c of ``E``) and W_hhᵀ."""
    return E[..., 1, :], xp.matrix_transpose(weight_hh)


def _lstm_site_arrays(model: LSTM, xp: Any, x: Any, prev: Any, D: Any) -> tuple[Any, Any]:
    """The site's variables A (m, n_in + H (+ 1)) and unit D (m, H, 2, 4) from x, z_{t−1} and D."""
    H = model.n_hidden
    (decl,) = model.site_table()
    xs = flat_sites(x)
    A = site_variables_of((decl,), {X_T: xs, H_PREV: flat_sites(prev[..., :H])}, like=xs)
    m = xs.shape[0]
    # D (B, T, 2, 4, H) is (m, a, g, n) row-major: unit_D (m, n, a, g) is a permuted view
    # of it, so neither unit_D nor the site's gate-major D_operand() copies anything
    return A[decl.name], xp.permute_dims(xp.reshape(D, (m, 2, 4, H)), (0, 3, 1, 2))


def _lstm_jvp(xp: Any, H: int, operands: tuple, V: Any, t: Any) -> Any:
    """J_t [v_h; v_c] = Σ_gates D ⊙ (W_hh v_h) + E ⊙ v_c on the rows h and c at once."""
    D, E, _, W_hh_T = operands
    G = matmul_last(xp, V[..., :H], W_hh_T)  # (..., 4H), one GEMM for the four gates
    G = xp.reshape(G, (*G.shape[:-1], 1, 4, H))
    rows = xp.sum(G * D[:, t, ...], axis=-2) + V[..., None, H:] * E[:, t, ...]  # (..., 2, H)
    return xp.reshape(rows, (*rows.shape[:-2], 2 * H))


def _lstm_vjp(xp: Any, H: int, operands: tuple, W: Any, t: Any) -> Any:
    """J_tᵀ [w_h; w_c] = [W_hhᵀ Σ_rows D ⊙ w; Σ_rows E ⊙ w]."""
    D, E, W_hh, _ = operands
    W2 = xp.reshape(W, (*W.shape[:-1], 2, H))
    U = xp.sum(W2[..., None, :] * D[:, t, ...], axis=-3)  # (..., 4, H): Σ over the rows h, c
    back_h = matmul_last(xp, xp.reshape(U, (*U.shape[:-2], 4 * H)), W_hh)  # one GEMM
    back_c = xp.sum(W2 * E[:, t, ...], axis=-2)
    return xp.concat([back_h, back_c], axis=-1)


def lstm_site_table(n_in: Any, H: Any, bias: bool) -> tuple[SiteDecl, ...]:
    """The LSTM's site table for sizes ``n_in`` and ``H`` (ints, or :class:`Dim` for the docs).

    Examples
    --------
    >>> from kpflow.models.lstm import lstm_site_table
    >>> lstm_site_table(2, 3, bias=True)[0].rows()[0]
    ('weight_ih', (0, 12))
    """
    full = (0 * H, 4 * H)
    terms = [Term("weight_ih", full, X_T, n_in), Term("weight_hh", full, H_PREV, H)]
    if bias:
        terms += [Term("bias_ih", full, "1"), Term("bias_hh", full, "1")]
    return (SiteDecl("ih+hh", tuple(terms), "unit", "∂[h_t; c_t]/∂u per unit (2 × 4)"),)


LSTM.__doc__ = with_site_table(LSTM.__doc__, lstm_site_table(Dim("n_in"), Dim("H"), True))
