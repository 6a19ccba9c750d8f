"""The Elman RNN, h_t = φ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh), as ``torch.nn.RNN``."""

from __future__ import annotations

from typing import Any

from kpflow._array import array_namespace
from kpflow.models.base import (
    RecurrentModel,
    RecurrentTrajectory,
    Site,
    StepKernel,
    check_size,
    flat_sites,
    step_major,
)
from kpflow.models.ops import (
    TORCH_CELL_ORDER,
    activation,
    activation_derivative,
    check_nonlinearity,
    linear,
    matmul_last,
)
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

__all__ = ["RNN", "RNNTrajectory"]


class RNN(RecurrentModel):
    """The Elman RNN of ``torch.nn.RNN`` (one layer, ``batch_first=True``).

    h_t = φ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh), φ = tanh or relu.

    Parameters
    ----------
    n_in, n_hidden : int
        Input size and hidden size H (the state size S = H).
    nonlinearity : {"tanh", "relu"}
    bias : bool
        Whether ``bias_ih`` and ``bias_hh`` exist (each adds +1 to every entry of G).

    Notes
    -----
    Parameters: ``weight_ih`` (H, n_in), ``weight_hh`` (H, H), ``bias_ih`` (H,),
    ``bias_hh`` (H,).  One weight site, D(s) = diag(φ′) taken at the step's output, so
    K = D (G ⊗ I_H) D (:meth:`site_table`; without bias the ones columns are dropped):

    {site_table}

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import RNN
    >>> model = RNN(2, 3)
    >>> params = model.init(0, like=xp.zeros(1))
    >>> traj = model.run(params, xp.ones((4, 5, 2)))
    >>> traj.states.shape, [s.p for s in traj.sites]
    ((4, 5, 3), [7])
    """

    #: Batch rows never mix (each row's cell runs on its own h and x; ``Layout.independent_rows``).
    independent_rows = True

    def __init__(self, n_in: int, n_hidden: int, *, nonlinearity: str = "tanh", bias: bool = True) -> None:
        self.n_in = check_size(n_in, "n_in", "RNN")
        self.n_hidden = check_size(n_hidden, "n_hidden", "RNN")
        self.state_size = self.n_hidden
        self.nonlinearity = check_nonlinearity(nonlinearity, "RNN")
        self.bias = bool(bias)

    def site_table(self) -> tuple[SiteDecl, ...]:
        """The one weight site ``hidden`` (see the class docstring)."""
        return rnn_site_table(self.n_in, self.n_hidden, self.bias)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return declared_shapes(self.site_table(), TORCH_CELL_ORDER)

    def preactivation(self, params: dict[str, Any], h_prev: Any, x_t: Any) -> Any:
        """u = W_ih x_t + b_ih + W_hh h_{t−1} + b_hh on any leading axes."""
        xp = array_namespace(h_prev, x_t)
        u = linear(xp, x_t, params["weight_ih"]) + linear(xp, h_prev, params["weight_hh"])
        if self.bias:
            u = u + params["bias_ih"] + params["bias_hh"]
        return u

    def step(self, params: dict[str, Any], h_prev: Any, x_t: Any) -> Any:
        xp = array_namespace(h_prev, x_t)
        return activation(xp, self.nonlinearity, self.preactivation(params, h_prev, x_t))

    def _make_trajectory(self, params: dict[str, Any], x: Any, h0: Any, states: Any) -> RNNTrajectory:
        return RNNTrajectory(self, params, x, h0, states)

    def __repr__(self) -> str:
        return (
            f"RNN(n_in={self.n_in}, n_hidden={self.n_hidden}, "
            f"nonlinearity={self.nonlinearity!r}, bias={self.bias})"
        )


class RNNTrajectory(RecurrentTrajectory):
    """A run of :class:`RNN`; caches d = φ′(u_t) of shape (B, T, H), J_t = diag(d_t) W_hh.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import RNN
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0, like=xp.zeros(1)), xp.ones((3, 4, 1)))
    >>> traj.d.shape, traj.sites[0].unit_D.shape
    ((3, 4, 2), (12, 2, 1, 1))
    """

    model: RNN

    def __init__(self, model: RNN, params: dict[str, Any], x: Any, h0: Any, states: Any) -> None:
        super().__init__(model, params, x, h0, states)
        xp = self.xp
        self._W_hh_T = xp.matrix_transpose(params["weight_hh"])  # a view, made once
        if model.nonlinearity == "tanh":
            d = 1.0 - states * states
        else:
            u = model.preactivation(params, self.prev_states, x)
            d = activation_derivative(xp, "relu", u, states)
        self.d = step_major(d)  # read at every step of P and Pᵀ

    def step_kernel(self) -> StepKernel:
        return StepKernel(_rnn_jvp, _rnn_vjp, (), (self.d, self.params["weight_hh"], self._W_hh_T))

    def _make_sites(self) -> list[Site]:
        x = flat_sites(self.x)
        (decl,) = self.model.site_table()
        A = site_variables_of((decl,), {H_PREV: flat_sites(self.prev_states), X_T: x}, like=x)
        D = flat_sites(self.d)[:, :, None, None]
        shape = self.state_shape
        return [
            Site(decl.name, A[decl.name], state_shape=shape, unit_D=D, rows=decl.rows(), batch_major=True)
        ]


def _rnn_jvp(xp: Any, operands: tuple, V: Any, t: Any) -> Any:
    """J_t V = d_t ⊙ (W_hh V)."""
    d, _, W_hh_T = operands
    return d[:, t, ...] * matmul_last(xp, V, W_hh_T)


def _rnn_vjp(xp: Any, operands: tuple, W: Any, t: Any) -> Any:
    """J_tᵀ W = W_hhᵀ (d_t ⊙ W)."""
    d, W_hh, _ = operands
    return matmul_last(xp, W * d[:, t, ...], W_hh)


def rnn_site_table(n_in: Any, H: Any, bias: bool) -> tuple[SiteDecl, ...]:
    """The RNN's site table for sizes ``n_in`` and ``H`` (ints, or :class:`Dim` for the docs).

    Examples
    --------
    >>> from kpflow.models.rnn import rnn_site_table
    >>> rnn_site_table(2, 3, bias=False)[0].rows()
    [('weight_hh', (0, 3)), ('weight_ih', (0, 3))]
    """
    full = (0 * H, H)
    terms = [Term("weight_hh", full, H_PREV, H), Term("weight_ih", full, X_T, n_in)]
    if bias:
        terms += [Term("bias_ih", full, "1"), Term("bias_hh", full, "1")]
    return (SiteDecl("hidden", tuple(terms), "unit", "diag φ′(u_t)"),)


RNN.__doc__ = with_site_table(RNN.__doc__, rnn_site_table(Dim("n_in"), Dim("H"), True))
