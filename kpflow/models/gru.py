"""The gated recurrent unit (GRU) of ``torch.nn.GRU``, with analytic derivatives."""

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

__all__ = ["GRU", "GRUTrajectory"]


class GRU(RecurrentModel):
    """The gated recurrent unit of ``torch.nn.GRU`` (one layer, ``batch_first=True``).

    Gate order r, z, n, as in PyTorch::

        r   = σ(W_ir x_t + b_ir + W_hr h + b_hr)
        z   = σ(W_iz x_t + b_iz + W_hz h + b_hz)
        h_n = W_hn h + b_hn
        n   = tanh(W_in x_t + b_in + r ⊙ h_n)
        h_t = (1 − z) ⊙ n + z ⊙ h,          h = h_{t−1}

    Parameters
    ----------
    n_in, n_hidden : int
        Input size and hidden size H (the state size S = H).
    bias : bool
        Whether ``bias_ih`` and ``bias_hh`` exist.

    Notes
    -----
    Parameters (PyTorch's names, the gates stacked r, z, n): ``weight_ih`` (3H, n_in),
    ``weight_hh`` (3H, H), ``bias_ih`` (3H,), ``bias_hh`` (3H,).

    Four weight sites (:meth:`site_table`), each with a diagonal D (``unit_D`` of shape
    (m, H, 1, 1)); with h_n as above (bias included) and σ′ = σ(1 − σ):

    {site_table}

    so K = D_r(Ĝ⊗I)D_r + D_z(Ĝ⊗I)D_z + D_in((G_x+1)⊗I)D_in + D_hn((G_h+1)⊗I)D_hn with
    Ĝ = G_x + G_h + 2 (without bias, the ones columns are dropped).  The state Jacobian
    is J_t v = z ⊙ v + d_r ⊙ W_hr v + d_z ⊙ W_hz v + d_hn ⊙ W_hn v.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.gru import GRU
    >>> model = GRU(2, 3)
    >>> params = model.init(0, like=xp.zeros(1))
    >>> traj = model.run(params, xp.ones((4, 5, 2)))
    >>> traj.states.shape, [(s.name, s.p, s.width) for s in traj.sites]
    ((4, 5, 3), [('r', 7, 3), ('z', 7, 3), ('in', 3, 3), ('hn', 4, 3)])
    """

    #: Batch rows never mix (each row's cell runs on its own h and x; ``Layout.independent_rows``).
    independent_rows = True

    def __init__(self, n_in: int, n_hidden: int, *, bias: bool = True) -> None:
        self.n_in = check_size(n_in, "n_in", "GRU")
        self.n_hidden = check_size(n_hidden, "n_hidden", "GRU")
        self.state_size = self.n_hidden
        self.bias = bool(bias)

    def site_table(self) -> tuple[SiteDecl, ...]:
        """The four weight sites r, z, in, hn (see the class docstring)."""
        return gru_site_table(self.n_in, self.n_hidden, self.bias)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return declared_shapes(self.site_table(), TORCH_CELL_ORDER)

    def gates(self, params: dict[str, Any], h_prev: Any, x_t: Any) -> tuple[Any, Any, Any, Any]:
        """The gates (r, z, n) and h_n = W_hn h_{t−1} + b_hn, each of shape ``(..., H)``.

        ``h_prev`` is ``(..., H)`` and ``x_t`` is ``(..., n_in)`` on the same leading axes.
        """
        xp = array_namespace(h_prev, x_t)
        H = self.n_hidden
        gi = linear(xp, x_t, params["weight_ih"])
        gh = linear(xp, h_prev, params["weight_hh"])
        if self.bias:
            gi = gi + params["bias_ih"]
            gh = gh + params["bias_hh"]
        r = sigmoid(xp, gi[..., :H] + gh[..., :H])
        z = sigmoid(xp, gi[..., H : 2 * H] + gh[..., H : 2 * H])
        h_n = gh[..., 2 * H :]
        n = xp.tanh(gi[..., 2 * H :] + r * h_n)
        return r, z, n, h_n

    def step(self, params: dict[str, Any], h_prev: Any, x_t: Any) -> Any:
        _, z, n, _ = self.gates(params, h_prev, x_t)
        return (1.0 - z) * n + z * h_prev

    def _make_trajectory(self, params: dict[str, Any], x: Any, h0: Any, states: Any) -> GRUTrajectory:
        return GRUTrajectory(self, params, x, h0, states)

    def __repr__(self) -> str:
        return f"GRU(n_in={self.n_in}, n_hidden={self.n_hidden}, bias={self.bias})"


class GRUTrajectory(RecurrentTrajectory):
    """A run of :class:`GRU`.

    Caches, each of shape (B, T, H): the update gate ``z`` and the D coefficients
    ``d_r, d_z, d_in, d_hn`` (see :class:`GRU`), recomputed for all steps at once from
    the states; those read per step (``z``, ``d_r, d_z, d_hn``) are
    :func:`~kpflow.models.base.step_major`.  J_t never forms an H×H matrix: it is three
    diagonal scalings of W_hh v, one (k·B, H) × (H, 3H) GEMM per step for all three gates
    (Jᵀ_t: one (k·B, 3H) × (3H, H)).
    """

    model: GRU

    def __init__(self, model: GRU, params: dict[str, Any], x: Any, h0: Any, states: Any) -> None:
        super().__init__(model, params, x, h0, states)
        # (torch, parameters requiring grad: the gates' temporaries are recomputed when
        # something differentiates the caches, instead of being held by the graph)
        z, self.d_in, d_rzn = self.recomputed(_gru_caches, params, self.prev_states, x)
        # the caches P and Pᵀ read at every step, laid out step by step (step_major); the
        # sites' copies of d_r, d_z, d_hn (flat_sites) are then site-major and contiguous
        self.z, d_rzn = step_major(z), step_major(d_rzn)
        self._d_rzn = d_rzn
        # views made once (W_hhᵀ, the gates' (…, 3, H) layout, d_r, d_z, d_hn)
        self._W_hh_T, self._d_gates, self.d_r, self.d_z, self.d_hn = self.derived(
            _gru_views, params["weight_hh"], d_rzn
        )

    def step_kernel(self) -> StepKernel:
        return StepKernel(
            _gru_jvp,
            _gru_vjp,
            (self.model.n_hidden,),
            (self.z, self._d_rzn, self._d_gates, self.params["weight_hh"], self._W_hh_T),
        )

    def _make_sites(self) -> list[Site]:
        table = self.model.site_table()
        D = (self.d_r, self.d_z, self.d_in, self.d_hn)
        A, unit_D = self.derived(_gru_site_arrays, self.x, self.prev_states, *D)
        return [
            Site(
                decl.name,
                A[decl.name],
                state_shape=self.state_shape,
                unit_D=unit_D[decl.name],
                rows=decl.rows(),
                batch_major=True,
            )
            for decl in table
        ]


def _gru_views(model: GRU, xp: Any, weight_hh: Any, d_rzn: Any) -> tuple[Any, ...]:
    """W_hhᵀ, ``d_rzn`` as (…, 3, H), and its slices d_r, d_z, d_hn."""
    H = model.n_hidden
    return (
        xp.matrix_transpose(weight_hh),
        xp.reshape(d_rzn, (*d_rzn.shape[:-1], 3, H)),
        d_rzn[..., :H],
        d_rzn[..., H : 2 * H],
        d_rzn[..., 2 * H :],
    )


def _gru_site_arrays(model: GRU, xp: Any, x: Any, h_prev: Any, *d: Any) -> tuple[dict, dict]:
    """The sites' variables A_w and unit D's ``(m, H, 1, 1)`` from x, z_{t−1} and d_r, d_z, d_in, d_hn."""
    xs = flat_sites(x)
    A = site_variables_of(model.site_table(), {X_T: xs, H_PREV: flat_sites(h_prev)}, like=xs)
    names = ("r", "z", "in", "hn")
    return A, {name: flat_sites(a)[:, :, None, None] for name, a in zip(names, d, strict=True)}


def _gru_caches(model: GRU, params: dict[str, Any], h_prev: Any, x: Any) -> tuple[Any, Any, Any]:
    """``z``, ``d_in`` and ``d_rzn = [d_r, d_z, d_hn]`` (gate-major, (B, T, 3H)) at every step.

    One (B, T, 3H) cache for the three gates: d_r, d_z, d_hn are slices of it, and as
    (B, T, 3, H) it scales the three gate blocks of W_hh v at once.
    """
    xp = array_namespace(h_prev, x)
    r, z, n, h_n = model.gates(params, h_prev, x)
    d_in = (1.0 - z) * (1.0 - n * n)
    d_rzn = xp.concat([d_in * h_n * r * (1.0 - r), (h_prev - n) * z * (1.0 - z), r * d_in], axis=-1)
    return z, d_in, d_rzn


def _gru_jvp(xp: Any, H: int, operands: tuple, V: Any, t: Any) -> Any:
    """J_t V = z ⊙ V + Σ_gates d_gate ⊙ (W_hh V): one GEMM for the three gates."""
    z, d_rzn, _, _, W_hh_T = operands
    U = d_rzn[:, t, ...] * matmul_last(xp, V, W_hh_T)  # (..., 3H)
    return z[:, t, ...] * V + U[..., :H] + U[..., H : 2 * H] + U[..., 2 * H :]


def _gru_vjp(xp: Any, H: int, operands: tuple, W: Any, t: Any) -> Any:
    """J_tᵀ W = z ⊙ W + W_hhᵀ [d_r ⊙ W; d_z ⊙ W; d_hn ⊙ W]: one GEMM for the three gates."""
    z, _, d_gates, W_hh, _ = operands
    U = W[..., None, :] * d_gates[:, t, ...]  # (..., 3, H): W broadcast over the gates
    U = xp.reshape(U, (*U.shape[:-2], 3 * H))
    return z[:, t, ...] * W + matmul_last(xp, U, W_hh)


def gru_site_table(n_in: Any, H: Any, bias: bool) -> tuple[SiteDecl, ...]:
    """The GRU's site table for sizes ``n_in`` and ``H`` (ints, or :class:`Dim` for the docs).

    Gate g (r = 0, z = 1, n = 2) owns rows g·H:(g + 1)·H of every parameter.

    Examples
    --------
    >>> from kpflow.models.gru import gru_site_table
    >>> [(decl.name, decl.p) for decl in gru_site_table(2, 3, bias=True)]
    [('r', 7), ('z', 7), ('in', 3), ('hn', 4)]
    """

    def rows(g: int) -> tuple[Any, Any]:
        return (g * H, (g + 1) * H)

    def site(name: str, g: int, inputs: tuple[tuple[str, str, Any], ...], formula: str) -> SiteDecl:
        terms = [Term(weight, rows(g), var, width) for weight, var, width in inputs]
        biases = ["bias" + weight[len("weight") :] for weight, _, _ in inputs]
        if bias:
            terms += [Term(b, rows(g), "1") for b in biases]
        return SiteDecl(name, tuple(terms), "unit", formula)

    ih, hh = ("weight_ih", X_T, n_in), ("weight_hh", H_PREV, H)
    return (
        site("r", 0, (ih, hh), "d_r = (1 − z)(1 − n²) h_n r(1 − r)"),
        site("z", 1, (ih, hh), "d_z = (h_{t−1} − n) z(1 − z)"),
        site("in", 2, (ih,), "d_in = (1 − z)(1 − n²)"),
        site("hn", 2, (hh,), "d_hn = r d_in"),
    )


GRU.__doc__ = with_site_table(GRU.__doc__, gru_site_table(Dim("n_in"), Dim("H"), True))
