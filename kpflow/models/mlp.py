"""A multi-layer perceptron, seen as a recurrence over depth.

z_0 = φ(W_0 x + b_0), z_l = φ(W_l z_{l−1} + b_l), the last layer linear by default.
Depth plays the role of time: the state is the concatenation of the per-layer
blocks, of different widths, and L is block-subdiagonal (layer l reads layer l−1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kpflow._array import array_namespace, host_rng
from kpflow.models.base import Model, Site, StepKernel, Trajectory, check_size, draw_uniform, flat_sites
from kpflow.models.layout import Layout
from kpflow.models.ops import activation, activation_derivative, check_nonlinearity, linear, matmul_last
from kpflow.models.sites_table import Dim, SiteDecl, Term, declared_shapes, site_variables_of, with_site_table

__all__ = ["MLP", "MLPTrajectory"]


class MLP(Model):
    """A fully connected network ``widths = (n_in, n_1, …, n_L)`` with L layers.

    z_l = φ(W_l z_{l−1} + b_l) for l = 0 … L−1 (z_{−1} = x), the last layer without φ
    unless ``linear_output=False`` (the two-layer example of docs/theory.md, "Feed-forward
    and implicit models": z₁ = tanh(W₁x + b₁), z₂ = W₂z₁ + b₂).

    Parameters
    ----------
    widths : sequence of int
        At least two sizes: the input and each layer's width.
    nonlinearity : {"tanh", "relu"}
    bias : bool
    linear_output : bool
        Whether the last layer is linear (default True).

    Notes
    -----
    Parameters are named as ``torch.nn.ModuleList`` of ``nn.Linear`` called ``layers``:
    ``layers.{l}.weight`` (n_{l+1}, n_l) and ``layers.{l}.bias`` (n_{l+1},) (l 0-based;
    n_0 = n_in).  ``x`` has shape (B, n_in).  The trajectory's state has shape
    (B, n_1 + … + n_L); ``traj.blocks[l] = (start, stop)`` gives layer l's columns.  Each
    layer is one weight site over the B batch sites, writing only its own block
    (:meth:`site_table`; here for widths (n_0, n_1, n_2), the last layer linear):

    {site_table}

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import MLP
    >>> model = MLP((3, 4, 2))
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((5, 3)))
    >>> traj.states.shape, traj.blocks
    ((5, 6), [(0, 4), (4, 6)])
    """

    #: Batch rows never mix (each row's layers read its own input only; ``Layout.independent_rows``).
    independent_rows = True

    def __init__(
        self,
        widths: Any,
        *,
        nonlinearity: str = "tanh",
        bias: bool = True,
        linear_output: bool = True,
    ) -> None:
        try:
            widths = tuple(widths)
        except TypeError as err:
            msg = f"MLP: expected widths to be a sequence of ints, got {widths!r}"
            raise ValueError(msg) from err
        if len(widths) < 2:
            msg = f"MLP: expected widths = (n_in, n_1, ...) with at least one layer, got {widths!r}"
            raise ValueError(msg)
        self.widths = tuple(check_size(w, "every width", "MLP") for w in widths)
        self.n_in = self.widths[0]
        self.n_layers = len(self.widths) - 1
        self.nonlinearity = check_nonlinearity(nonlinearity, "MLP")
        self.bias = bool(bias)
        self.linear_output = bool(linear_output)
        self.state_size = sum(self.widths[1:])
        offs = np.cumsum((0, *self.widths[1:])).tolist()
        self.blocks = [(int(offs[l]), int(offs[l + 1])) for l in range(self.n_layers)]

    def is_linear(self, l: int) -> bool:
        """Whether layer ``l`` has no nonlinearity."""
        return self.linear_output and l == self.n_layers - 1

    @property
    def feature_columns(self) -> tuple[int, int]:
        """A readout reads the last layer's block of the state."""
        return self.blocks[-1]

    def layout(self, state_shape: tuple[int, ...]) -> Layout:
        """``(batch, units)``, one block per layer (depth), of the layers' widths."""
        return Layout(
            state_shape,
            ("batch", "units"),
            "depth",
            site_axes=1,
            widths=self.widths[1:],
            parts=self.state_parts,
            features=self.feature_columns,
            independent_rows=self.independent_rows,
        )

    def site_table(self) -> tuple[SiteDecl, ...]:
        """One weight site per layer, ``layers.{l}`` (see the class docstring)."""
        return mlp_site_table(self.widths, self.bias, self.linear_output)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return declared_shapes(self.site_table())

    def init(
        self, rng: Any = None, *, like: Any = None, dtype: Any = None, device: Any = None
    ) -> dict[str, Any]:
        """torch's ``nn.Linear`` default per layer, U(−1/√n_l, 1/√n_l), drawn on the host."""
        gen = host_rng(rng, "MLP.init")
        shapes = self.param_shapes()
        out: dict[str, Any] = {}
        for l in range(self.n_layers):
            layer = {k: s for k, s in shapes.items() if k.startswith(f"layers.{l}.")}
            bound = 1.0 / float(np.sqrt(self.widths[l]))
            out.update(
                draw_uniform(layer, bound, gen, like=like, dtype=dtype, device=device, where="MLP.init")
            )
        return out

    def _check_inputs(self, x: Any, h0: Any, meta: tuple, where: str) -> None:
        text = f"(B, n_in={self.n_in}) with B >= 1"
        self._check_feedforward_inputs(x, h0, meta, where, ndim=2, feature=self.n_in, shape_text=text)

    def layer(self, params: dict[str, Any], l: int, z_prev: Any) -> Any:
        """Layer ``l`` applied to its input ``z_prev`` (..., n_l) -> (..., n_{l+1})."""
        xp = array_namespace(z_prev)
        u = linear(xp, z_prev, params[f"layers.{l}.weight"])
        if self.bias:
            u = u + params[f"layers.{l}.bias"]
        return u if self.is_linear(l) else activation(xp, self.nonlinearity, u)

    def unroll(self, params: dict[str, Any], x: Any, h0: Any = None) -> Any:
        xp = array_namespace(x)
        z, out = x, []
        for l in range(self.n_layers):
            z = self.layer(params, l, z)
            out.append(z)
        return out[0] if len(out) == 1 else xp.concat(out, axis=-1)

    def update_map(self, params: dict[str, Any], states: Any, x: Any, h0: Any = None) -> Any:
        xp = array_namespace(states)
        out = []
        for l in range(self.n_layers):
            inp = x if l == 0 else states[..., self.blocks[l - 1][0] : self.blocks[l - 1][1]]
            out.append(self.layer(params, l, inp))
        return out[0] if len(out) == 1 else xp.concat(out, axis=-1)

    def _make_trajectory(self, params: dict[str, Any], x: Any, h0: Any, states: Any) -> MLPTrajectory:
        return MLPTrajectory(self, params, x, h0, states)

    def __repr__(self) -> str:
        return f"MLP(widths={self.widths}, nonlinearity={self.nonlinearity!r}, bias={self.bias})"


class MLPTrajectory(Trajectory):
    """A run of :class:`MLP`: ``state_shape = (B, Σ n_l)``, one block per layer.

    Attributes
    ----------
    blocks : list of (start, stop)
        Layer l's columns of the state.
    d : list of array or None
        φ′ at each layer's pre-activation, (B, n_l) (None for a linear layer).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import MLP
    >>> model = MLP((2, 3, 1))
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((4, 2)))
    >>> traj.layer_states(1).shape, [s.columns for s in traj.sites]
    ((4, 1), [(0, 3), (3, 4)])
    """

    model: MLP

    def __init__(self, model: MLP, params: dict[str, Any], x: Any, h0: Any, states: Any) -> None:
        super().__init__(model, params, x, h0, states)
        xp = self.xp
        # Wᵀ of every layer (views, made once)
        self._W_T = [xp.matrix_transpose(params[f"layers.{l}.weight"]) for l in range(model.n_layers)]
        self.d: list[Any] = []
        for l in range(model.n_layers):
            if model.is_linear(l):
                self.d.append(None)
                continue
            inp = x if l == 0 else self.layer_states(l - 1)
            u = linear(xp, inp, params[f"layers.{l}.weight"])
            if model.bias:
                u = u + params[f"layers.{l}.bias"]
            self.d.append(activation_derivative(xp, model.nonlinearity, u, self.layer_states(l)))

    def layer_states(self, l: int) -> Any:
        """z_l, shape (B, n_{l+1})."""
        lo, hi = self.blocks[l]
        return self.states[:, lo:hi]

    def step_kernel(self) -> StepKernel:
        """J_t = diag(φ′_t) W_t (W_t for a linear layer) as pure functions of the layer index t."""
        W = tuple(self.params[f"layers.{l}.weight"] for l in range(self.model.n_layers))
        return StepKernel(_mlp_jvp, _mlp_vjp, (), (tuple(self.d), tuple(self._W_T), W))

    def _make_sites(self) -> list[Site]:
        model = self.model
        table = model.site_table()
        x = flat_sites(self.x)
        inputs = {_layer_input(l): self.layer_states(l - 1) for l in range(1, model.n_layers)}
        A = site_variables_of(table, {_layer_input(0): x, **inputs}, like=x)
        sites = []
        for l, decl in enumerate(table):
            if decl.D == "scaled":  # a linear layer: D = I
                D: dict[str, Any] = {"scale": 1.0, "width": model.widths[l + 1]}
            else:
                D = {"unit_D": self.d[l][:, :, None, None]}
            site = Site(
                decl.name,
                A[decl.name],
                state_shape=self.state_shape,
                columns=self.blocks[l],
                rows=decl.rows(),
                batch_major=True,
                **D,
            )
            sites.append(site)
        return sites


def _layer_input(l: int) -> str:
    """The name of layer l's site variable: x, then z_0, z_1, …"""
    return "x" if l == 0 else f"z_{l - 1}"


def mlp_site_table(widths: tuple[Any, ...], bias: bool, linear_output: bool) -> tuple[SiteDecl, ...]:
    """The MLP's site table for ``widths`` (ints, or :class:`Dim` for the docs).

    Examples
    --------
    >>> from kpflow.models.mlp import mlp_site_table
    >>> [(decl.name, decl.D, decl.p) for decl in mlp_site_table((2, 4, 1), True, True)]
    [('layers.0', 'unit', 3), ('layers.1', 'scaled', 5)]
    """
    n_layers = len(widths) - 1
    table = []
    for l in range(n_layers):
        full = (0 * widths[l + 1], widths[l + 1])
        terms = [Term(f"layers.{l}.weight", full, _layer_input(l), widths[l])]
        if bias:
            terms.append(Term(f"layers.{l}.bias", full, "1"))
        linear_layer = linear_output and l == n_layers - 1
        D = ("scaled", "I") if linear_layer else ("unit", "diag φ′(u_l)")
        table.append(SiteDecl(f"layers.{l}", tuple(terms), *D))
    return tuple(table)


MLP.__doc__ = with_site_table(MLP.__doc__, mlp_site_table((Dim("n_0"), Dim("n_1"), Dim("n_2")), True, True))


def _mlp_jvp(xp: Any, operands: tuple, V: Any, t: int) -> Any:
    """J_t V = d_t ⊙ (W_t V) (layer t ≥ 1 of different width than layer t − 1: ``t`` is an int)."""
    d, W_T, _ = operands
    out = matmul_last(xp, V, W_T[t])
    return out if d[t] is None else d[t] * out


def _mlp_vjp(xp: Any, operands: tuple, W: Any, t: int) -> Any:
    """J_tᵀ W = W_tᵀ (d_t ⊙ W)."""
    d, _, weights = operands
    if d[t] is not None:
        W = d[t] * W
    return matmul_last(xp, W, weights[t])
