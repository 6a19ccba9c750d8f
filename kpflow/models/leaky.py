"""The leaky (continuous-time, Euler-discretised) RNN of computational neuroscience.

h_t = (1 − dt) h_{t−1} + dt (W φ(h_{t−1}) + U x_t [+ b]).
"""

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
from kpflow.models.ops import activation, activation_derivative, check_nonlinearity, linear, matmul_last
from kpflow.models.sites_table import (
    X_T,
    Dim,
    SiteDecl,
    Term,
    declared_shapes,
    site_variables_of,
    with_site_table,
)

#: The leaky RNN's first site variable: the rate φ(h_{t−1}).
RATE = "φ(h_{t−1})"

__all__ = ["LeakyRNN", "LeakyRNNTrajectory"]


class LeakyRNN(RecurrentModel):
    """The leaky RNN h_t = (1 − dt) h_{t−1} + dt (W φ(h_{t−1}) + U x_t [+ b]).

    Parameters
    ----------
    n_in, n_hidden : int
        Input size and hidden size H (the state size S = H).
    dt : float
        The Euler step, 0 < dt ≤ 1 (dt = 1 is a "rate" RNN without leak).
    nonlinearity : {"tanh", "relu"}
        φ, applied to the previous state (the rate).
    bias : bool
        Whether the bias b exists.

    Notes
    -----
    Parameters (PyTorch-style names): ``weight_hh`` is W (H, H), ``weight_ih`` is U
    (H, n_in), ``bias`` is b (H,) (one bias, so +1 in G, not +2).  One weight site
    (:meth:`site_table`), with the constant D = dt·I:

    {site_table}

    so K = dt² (G ⊗ I_H) exactly and the spectrum of K is dt² eig(AᵀA), each eigenvalue H
    times.  The state Jacobian is J_t = (1 − dt) I + dt W diag(φ′(h_{t−1})).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import LeakyRNN
    >>> model = LeakyRNN(2, 3, dt=0.1)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((4, 5, 2)))
    >>> traj.states.shape, traj.sites[0].scale
    ((4, 5, 3), 0.1)
    """

    #: Batch rows never mix (each row's cell runs on its own h and x; ``Layout.independent_rows``).
    independent_rows = True

    def __init__(
        self, n_in: int, n_hidden: int, *, dt: float, nonlinearity: str = "tanh", bias: bool = False
    ) -> None:
        self.n_in = check_size(n_in, "n_in", "LeakyRNN")
        self.n_hidden = check_size(n_hidden, "n_hidden", "LeakyRNN")
        self.state_size = self.n_hidden
        if isinstance(dt, bool) or not isinstance(dt, int | float) or not (0.0 < float(dt) <= 1.0):
            msg = f"LeakyRNN: expected dt to be a float in (0, 1], got {dt!r}"
            raise ValueError(msg)
        self.dt = float(dt)
        self.nonlinearity = check_nonlinearity(nonlinearity, "LeakyRNN")
        self.bias = bool(bias)

    def site_table(self) -> tuple[SiteDecl, ...]:
        """The one weight site ``hidden`` (see the class docstring)."""
        return leaky_site_table(self.n_in, self.n_hidden, self.bias)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return declared_shapes(self.site_table(), ("weight_ih", "weight_hh", "bias"))

    def step(self, params: dict[str, Any], h_prev: Any, x_t: Any) -> Any:
        xp = array_namespace(h_prev, x_t)
        rate = activation(xp, self.nonlinearity, h_prev)
        drive = linear(xp, rate, params["weight_hh"]) + linear(xp, x_t, params["weight_ih"])
        if self.bias:
            drive = drive + params["bias"]
        return (1.0 - self.dt) * h_prev + self.dt * drive

    def _make_trajectory(self, params: dict[str, Any], x: Any, h0: Any, states: Any) -> LeakyRNNTrajectory:
        return LeakyRNNTrajectory(self, params, x, h0, states)

    def __repr__(self) -> str:
        return (
            f"LeakyRNN(n_in={self.n_in}, n_hidden={self.n_hidden}, dt={self.dt}, "
            f"nonlinearity={self.nonlinearity!r}, bias={self.bias})"
        )


class LeakyRNNTrajectory(RecurrentTrajectory):
    """A run of :class:`LeakyRNN`; caches φ(h_{t−1}) and φ′(h_{t−1}), both (B, T, H).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import LeakyRNN
    >>> model = LeakyRNN(1, 2, dt=0.5)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((3, 4, 1)))
    >>> traj.rate.shape, traj.sites[0].p
    ((3, 4, 2), 3)
    """

    model: LeakyRNN

    def __init__(self, model: LeakyRNN, params: dict[str, Any], x: Any, h0: Any, states: Any) -> None:
        super().__init__(model, params, x, h0, states)
        xp = self.xp
        prev = self.prev_states
        self.rate = activation(xp, model.nonlinearity, prev)
        self.d = step_major(activation_derivative(xp, model.nonlinearity, prev, self.rate))
        self._W_hh_T = xp.matrix_transpose(params["weight_hh"])  # a view, made once

    def step_kernel(self) -> StepKernel:
        return StepKernel(
            _leaky_jvp, _leaky_vjp, (self.model.dt,), (self.d, self.params["weight_hh"], self._W_hh_T)
        )

    def _make_sites(self) -> list[Site]:
        model = self.model
        (decl,) = model.site_table()
        x = flat_sites(self.x)
        A = site_variables_of((decl,), {RATE: flat_sites(self.rate), X_T: x}, like=x)
        return [
            Site(
                decl.name,
                A[decl.name],
                state_shape=self.state_shape,
                scale=model.dt,
                width=model.n_hidden,
                rows=decl.rows(),
                batch_major=True,
            )
        ]


def _leaky_jvp(xp: Any, dt: float, operands: tuple, V: Any, t: Any) -> Any:
    """J_t V = (1 − dt) V + dt W_hh (φ′ ⊙ V)."""
    d, _, W_hh_T = operands
    return (1.0 - dt) * V + dt * matmul_last(xp, d[:, t, ...] * V, W_hh_T)


def _leaky_vjp(xp: Any, dt: float, operands: tuple, W: Any, t: Any) -> Any:
    """J_tᵀ W = (1 − dt) W + dt φ′ ⊙ (W_hhᵀ W)."""
    d, W_hh, _ = operands
    return (1.0 - dt) * W + dt * (d[:, t, ...] * matmul_last(xp, W, W_hh))


def leaky_site_table(n_in: Any, H: Any, bias: bool) -> tuple[SiteDecl, ...]:
    """The leaky RNN's site table for sizes ``n_in`` and ``H`` (ints, or :class:`Dim` for the docs).

    Examples
    --------
    >>> from kpflow.models.leaky import leaky_site_table
    >>> leaky_site_table(2, 3, bias=True)[0].p
    6
    """
    full = (0 * H, H)
    terms = [Term("weight_hh", full, RATE, H), Term("weight_ih", full, X_T, n_in)]
    if bias:
        terms.append(Term("bias", full, "1"))
    return (SiteDecl("hidden", tuple(terms), "scaled", "dt·I"),)


LeakyRNN.__doc__ = with_site_table(LeakyRNN.__doc__, leaky_site_table(Dim("n_in"), Dim("H"), True))
