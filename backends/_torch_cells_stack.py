"""A multi-layer ``torch.nn.RNN`` / ``GRU`` / ``LSTM`` as one model: per-unit sites, P the stacked recursion.

The state of an L-layer module at step t is z_t = [h¹_t; …; h^L_t] (width L·H; an LSTM:
[h¹_t; …; h^L_t; c¹_t; …; c^L_t], width 2L·H).  Layer l reads layer l−1's hidden state of
the *same* step, so the constraint is F(z) = z − f(z) with

    f(z)^l_t = cell_l(h^{l−1}_t, z^l_{t−1}),     h⁰_t = x_t,

and each layer's weights are the same per-unit gated sites as the built-in one-layer model's
(:class:`~kpflow.models.RNN`, :class:`~kpflow.models.GRU`, :class:`~kpflow.models.LSTM`),
with site variable h^{l−1}_t where layer 0 has x_t: D_w moves layer l's own units only, so
K's exact trace, spectrum and effective-rank rules apply.  ∂f/∂z has two parts, the step
Jacobian of each layer in time (the built-in model's analytic step kernel) and the input
Jacobian ∂cell_l/∂h^{l−1}_t within a step; P = (∂F/∂z)⁻¹ is applied exactly by
substitution, a layer at a time: layer l's right-hand side gets the input Jacobian applied
to layer l−1's solution at every step at once (one GEMM), then layer l's recursion in time
runs as the one-layer model's.  Pᵀ runs the layers from the top down.  The layout is
``"solved"`` (P is the trajectory's own :meth:`LayerStackTrajectory.solve`): ∂F/∂z is
triangular in (step, layer) order, not block-subdiagonal in the steps alone.

NTK_S = P K Pᵀ = J_S J_Sᵀ is the same whichever way the constraint is written (J_S = dz/dθ);
K and P are those of this F.
"""

from __future__ import annotations

from typing import Any

from kpflow.backends import get_backend

from kpflow._array import array_namespace
from kpflow.models import GRU, LSTM, RNN
from kpflow.models.base import RecurrentModel, Site, Trajectory
from kpflow.models.layout import Layout
from kpflow.models.ops import TORCH_CELL_ORDER, matmul_last
from kpflow.models.sites_table import H_PREV, X_T, SiteDecl, Term, declared_shapes

__all__ = ["LayerStack", "LayerStackTrajectory"]

_CELLS = {"RNN": RNN, "GRU": GRU, "LSTM": LSTM}


def _layer_input(l: int) -> str:
    """The name of layer l's input site variable: x_t for layer 0, else h^{l−1}_t."""
    return X_T if l == 0 else f"h{l - 1}_t"


def _renamed(decl: SiteDecl, l: int) -> SiteDecl:
    """A built-in cell's site declaration for layer l: torch's ``_l{l}`` names, h^{l−1}_t for x_t."""
    inputs = {X_T: _layer_input(l), H_PREV: f"h{l}_{{t−1}}"}
    terms = tuple(Term(f"{t.param}_l{l}", t.rows, inputs.get(t.input, t.input), t.width) for t in decl.terms)
    return SiteDecl(f"{decl.name}_l{l}", terms, decl.D, decl.formula)


class LayerStack(RecurrentModel):
    """An L-layer torch RNN / GRU / LSTM on the stacked state (see :mod:`kpflow.backends._torch_cells_stack`).

    Parameters
    ----------
    kind : {"RNN", "GRU", "LSTM"}
    n_in, H, L : int
        ``input_size``, ``hidden_size`` and ``num_layers``.
    bias : bool
    nonlinearity : {"tanh", "relu"}
        The RNN's φ (ignored for the GRU and LSTM).

    Notes
    -----
    Parameters keep torch's names (``weight_ih_l{l}``, ``weight_hh_l{l}``, ``bias_ih_l{l}``,
    ``bias_hh_l{l}``); layer l's sites are the built-in cell's, named ``{site}_l{l}`` (the
    GRU's ``r_l0``, ``z_l0``, ``in_l0``, ``hn_l0``).  ``feature_columns`` (what a readout
    reads) are the last layer's h, the module's output.  The RNN's and GRU's sites write
    their layer's columns (``unit_D`` of shape (m, H, 1, 1)); an LSTM layer writes its h
    and c, which are L·H columns apart, so its ``unit_D`` covers the whole state (m, H, 2L, 4),
    zero outside the layer.

    Examples
    --------
    >>> import torch
    >>> import kpflow
    >>> from kpflow.backends._torch_cells_stack import LayerStack
    >>> model = LayerStack("GRU", 2, 3, 2, bias=True)
    >>> params = model.init(0, like=torch.zeros(1, dtype=torch.float64))
    >>> traj = model.run(params, torch.ones(4, 5, 2, dtype=torch.float64))   # (B, T, n_in)
    >>> traj.state_shape, [s.name for s in traj.sites][:4], traj.layout.kind
    ((4, 5, 6), ['r_l0', 'z_l0', 'in_l0', 'hn_l0'], 'solved')
    >>> kpflow.linalg.trace(kpflow.parameter_kernel(traj)).method
    'exact'
    """

    #: torch's layers never mix two batch rows (the layout's ``independent_rows``)
    independent_rows = True

    def __init__(
        self, kind: str, n_in: int, H: int, L: int, *, bias: bool, nonlinearity: str = "tanh"
    ) -> None:
        options = {"nonlinearity": nonlinearity} if kind == "RNN" else {}
        cls = _CELLS[kind]
        self.layers = tuple(cls(n_in if l == 0 else H, H, bias=bias, **options) for l in range(L))
        self.kind, self.n_layers, self.layer_size, self.bias = kind, L, H, bool(bias)
        self.nonlinearity = nonlinearity if kind == "RNN" else "tanh"
        self.parts = 2 if kind == "LSTM" else 1
        self.n_in = int(n_in)
        self.n_hidden = self.state_size = self.parts * L * H

    def _init_bound(self) -> float:
        return float(self.layer_size) ** -0.5

    def site_table(self) -> tuple[SiteDecl, ...]:
        """Every layer's built-in site table, renamed for layer l (see the class docstring)."""
        return tuple(_renamed(decl, l) for l, layer in enumerate(self.layers) for decl in layer.site_table())

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        order = tuple(f"{name}_l{l}" for l in range(self.n_layers) for name in TORCH_CELL_ORDER)
        return declared_shapes(self.site_table(), order)

    @property
    def feature_columns(self) -> tuple[int, int]:
        L, H = self.n_layers, self.layer_size
        return ((L - 1) * H, L * H)

    @property
    def state_parts(self) -> dict[str, tuple[int, int]]:
        LH = self.n_layers * self.layer_size
        return {"h": (0, LH), "c": (LH, 2 * LH)} if self.kind == "LSTM" else {"h": (0, LH)}

    def layout(self, state_shape: tuple[int, ...]) -> Layout:
        """``(batch, time, hidden)``, one block: P by substitution (:meth:`LayerStackTrajectory.solve`)."""
        return Layout(
            state_shape,
            ("batch", "time", "hidden"),
            "solved",
            site_axes=2,
            parts=self.state_parts,
            features=self.feature_columns,
            independent_rows=self.independent_rows,
        )

    # -- the stacked state and the layers' own ------------------------------------------------------
    def layer_params(self, params: dict[str, Any], l: int) -> dict[str, Any]:
        """Layer l's parameters under the built-in cell's names (``weight_ih`` …)."""
        return {name: params[f"{name}_l{l}"] for name in self.layers[l].param_shapes()}

    def layer_state(self, z: Any, l: int) -> Any:
        """Layer l's state (..., H) (an LSTM: its [h; c], (..., 2H)) out of the stacked ``z``."""
        H, LH = self.layer_size, self.n_layers * self.layer_size
        h = z[..., l * H : (l + 1) * H]
        if self.kind != "LSTM":
            return h
        return array_namespace(z).concat([h, z[..., LH + l * H : LH + (l + 1) * H]], axis=-1)

    def stacked(self, per_layer: list[Any]) -> Any:
        """The stacked state from every layer's own (the inverse of :meth:`layer_state`)."""
        xp, H = array_namespace(per_layer[0]), self.layer_size
        if self.kind != "LSTM":
            return xp.concat(per_layer, axis=-1)
        return xp.concat([s[..., :H] for s in per_layer] + [s[..., H:] for s in per_layer], axis=-1)

    def step(self, params: dict[str, Any], h_prev: Any, x_t: Any) -> Any:
        """One step of the stack, the layers in order: (..., S) and (..., n_in) to (..., S)."""
        out, inp = [], x_t
        for l, layer in enumerate(self.layers):
            new = layer.step(self.layer_params(params, l), self.layer_state(h_prev, l), inp)
            out.append(new)
            inp = new[..., : self.layer_size]
        return self.stacked(out)

    def unroll(self, params: dict[str, Any], x: Any, h0: Any = None) -> Any:
        """The forward pass a layer at a time (each layer's whole sequence feeds the next)."""
        out, inp = [], x
        for l, layer in enumerate(self.layers):
            init = None if h0 is None else self.layer_state(h0, l)
            states = layer.unroll(self.layer_params(params, l), inp, init)
            out.append(states)
            inp = states[..., : self.layer_size]
        return self.stacked(out)

    def update_map(self, params: dict[str, Any], states: Any, x: Any, h0: Any = None) -> Any:
        """f(z): layer l's step from its own state at t−1 and layer l−1's h of ``states`` at t."""
        out = []
        for l, layer in enumerate(self.layers):
            init = None if h0 is None else self.layer_state(h0, l)
            prev = self._shift(self.layer_state(states, l), init)
            inp = x if l == 0 else self.layer_state(states, l - 1)[..., : self.layer_size]
            out.append(layer.step(self.layer_params(params, l), prev, inp))
        return self.stacked(out)

    def _make_trajectory(self, params: dict[str, Any], x: Any, h0: Any, states: Any) -> LayerStackTrajectory:
        return LayerStackTrajectory(self, params, x, h0, states)

    def __repr__(self) -> str:
        return (
            f"torch {self.kind} as a layer stack (n_in={self.n_in}, hidden_size={self.layer_size}, "
            f"num_layers={self.n_layers})"
        )


class LayerStackTrajectory(Trajectory):
    """A run of :class:`LayerStack`: each layer's built-in trajectory, P by substitution.

    Attributes
    ----------
    layers : list of Trajectory
        Layer l's run as the built-in one-layer model (its input: x, or layer l−1's h),
        whose caches give D_w, the step kernel in time and the input Jacobian.

    Examples
    --------
    >>> import torch
    >>> from kpflow.backends._torch_cells_stack import LayerStack
    >>> model = LayerStack("LSTM", 2, 3, 2, bias=True)
    >>> params = model.init(0, like=torch.zeros(1, dtype=torch.float64))
    >>> traj = model.run(params, torch.randn(4, 5, 2, dtype=torch.float64))
    >>> V = torch.randn(2, 4, 5, 12, dtype=torch.float64)
    >>> bool(torch.allclose(traj.solve(V - traj.state_jvp(V)), V, rtol=0, atol=1e-12))
    True
    """

    model: LayerStack

    def __init__(self, model: LayerStack, params: dict[str, Any], x: Any, h0: Any, states: Any) -> None:
        super().__init__(model, params, x, h0, states)
        self.layers: list[Any] = []
        inp = x
        for l, layer in enumerate(model.layers):
            own = model.layer_state(states, l)
            init = None if h0 is None else model.layer_state(h0, l)
            self.layers.append(layer._make_trajectory(model.layer_params(params, l), inp, init, own))
            inp = own[..., : model.layer_size]
        # the input Jacobians' coefficients, one per layer above the first: ∂h^l_t/∂(W_ih h^{l−1}_t)
        self._input_D = [None] + [_input_coefficients(model.kind, t) for t in self.layers[1:]]

    # -- P = (∂F/∂z)⁻¹ by substitution ---------------------------------------------------------------
    def _operands(self, l: int) -> tuple[Any, Any, Any]:
        """Layer l's step kernel and input-Jacobian operands, graph-free under ``no_grad``."""
        adapter = get_backend(self.states)
        kernel = self.layers[l].step_kernel()
        W_ih = self.params[f"weight_ih_l{l}"]
        ops, ih = adapter.for_products((kernel.operands, (self._input_D[l], W_ih)))
        return kernel, ops, ih

    def _input_jvp(self, l: int, V: Any, ih: tuple) -> Any:
        """∂h^l/∂h^{l−1} V at every step at once: (k, B, T, H) to layer l's (k, B, T, parts·H)."""
        return _ih_jvp(self.xp, self.model.kind, self.model.layer_size, ih, V)

    def solve(self, V: Any) -> Any:
        """P V = (∂F/∂z)⁻¹ V for ``V`` of shape ``(k, *state_shape)``: the layers from the bottom up."""
        xp, model = self.xp, self.model
        out: list[Any] = []
        for l in range(model.n_layers):
            kernel, ops, ih = self._operands(l)
            Q = model.layer_state(V, l)
            if l:
                Q = Q + self._input_jvp(l, out[-1][..., : model.layer_size], ih)
            y, ys = Q[:, :, 0, ...], []
            ys.append(y)
            for t in range(1, self.site_shape[1]):
                y = Q[:, :, t, ...] + kernel.jvp(xp, *kernel.static, ops, y, t)
                ys.append(y)
            out.append(xp.stack(ys, axis=2))
        return model.stacked(out)

    def solve_adjoint(self, W: Any) -> Any:
        """Pᵀ W = (∂F/∂z)⁻ᵀ W: the layers from the top down, each backward in time."""
        xp, model = self.xp, self.model
        L, T = model.n_layers, self.site_shape[1]
        out: list[Any] = [None] * L
        for l in range(L - 1, -1, -1):
            kernel, ops, _ = self._operands(l)
            Q = model.layer_state(W, l)
            if l < L - 1:
                Q = self._add_to_h(Q, self._input_back(l + 1, out[l + 1]))
            w, ws = Q[:, :, T - 1, ...], []
            ws.append(w)
            for t in range(T - 2, -1, -1):
                w = Q[:, :, t, ...] + kernel.vjp(xp, *kernel.static, ops, w, t + 1)
                ws.append(w)
            out[l] = xp.stack(ws[::-1], axis=2)
        return model.stacked(out)

    def _input_back(self, l: int, W: Any) -> Any:
        """(∂h^l/∂h^{l−1})ᵀ W at every step: layer l's (k, B, T, parts·H) to (k, B, T, H)."""
        _, _, ih = self._operands(l)
        return _ih_vjp(self.xp, self.model.kind, self.model.layer_size, ih, W)

    def _add_to_h(self, Q: Any, G: Any) -> Any:
        """Q (layer state) with G added to its h (the LSTM's c unchanged)."""
        if self.model.kind != "LSTM":
            return Q + G
        H = self.model.layer_size
        return self.xp.concat([Q[..., :H] + G, Q[..., H:]], axis=-1)

    # -- L = ∂f/∂z ------------------------------------------------------------------------------------
    def state_jvp(self, V: Any) -> Any:
        """L V = (∂f/∂z) V: each layer's step in time on V shifted, plus its input Jacobian."""
        xp, model, out = self.xp, self.model, []
        for l in range(model.n_layers):
            kernel, ops, ih = self._operands(l)
            own = model.layer_state(V, l)
            shifted = xp.concat([xp.zeros_like(own[:, :, :1, ...]), own[:, :, :-1, ...]], axis=2)
            y = kernel.jvp(xp, *kernel.static, ops, shifted, slice(None))
            if l:
                y = y + self._input_jvp(l, model.layer_state(V, l - 1)[..., : model.layer_size], ih)
            out.append(y)
        return model.stacked(out)

    def state_vjp(self, W: Any) -> Any:
        """Lᵀ W = (∂f/∂z)ᵀ W."""
        xp, model, out = self.xp, self.model, []
        L = model.n_layers
        for l in range(L):
            kernel, ops, _ = self._operands(l)
            U = kernel.vjp(xp, *kernel.static, ops, model.layer_state(W, l), slice(None))
            y = xp.concat([U[:, :, 1:, ...], xp.zeros_like(U[:, :, :1, ...])], axis=2)
            if l < L - 1:
                y = self._add_to_h(y, self._input_back(l + 1, model.layer_state(W, l + 1)))
            out.append(y)
        return model.stacked(out)

    # -- K --------------------------------------------------------------------------------------------
    def _make_sites(self) -> list[Site]:
        """Each layer's built-in sites, renamed and placed on the layer's columns of the stacked state."""
        model, sites = self.model, []
        H, L = model.layer_size, model.n_layers
        for l, traj in enumerate(self.layers):
            for site in traj.sites:
                rows = [(f"{entry[0]}_l{l}", *entry[1:]) for entry in site.rows]
                D: Any = site.unit_D
                columns: tuple[int, int] | None = (l * H, (l + 1) * H)
                if model.kind == "LSTM":  # h and c: L·H columns apart, so D spans the whole state
                    D, columns = _lstm_on_the_stack(self.xp, site.unit_D, l, L), None
                name, A, state = f"{site.name}_l{l}", site.variables, self.state_shape
                # rows per (b, t), batch-major, as the layer's own site
                sites.append(
                    Site(name, A, state_shape=state, unit_D=D, columns=columns, rows=rows, batch_major=True)
                )
        return sites


def _lstm_on_the_stack(xp: Any, unit_D: Any, l: int, L: int) -> Any:
    """A layer's LSTM ``unit_D`` (m, H, 2, 4) on the stacked state's rows h¹…h^L, c¹…c^L: (m, H, 2L, 4)."""
    zero = xp.zeros_like(unit_D[:, :, :1, :])
    rows = [zero] * (2 * L)
    rows[l], rows[L + l] = unit_D[:, :, :1, :], unit_D[:, :, 1:, :]
    return xp.concat(rows, axis=2)


# -- the input Jacobian ∂h^l_t/∂h^{l−1}_t of the built-in cells -------------------------------------
def _input_coefficients(kind: str, traj: Any) -> Any:
    """The per-unit coefficients of ∂h_t/∂(W_ih a) from a built-in cell's trajectory caches.

    RNN: φ′ (B, T, H); GRU: [d_r, d_z, d_in] (B, T, 3, H) (the input enters n without r);
    LSTM: ∂[h; c]/∂u (B, T, 2, 4, H).
    """
    xp = traj.xp
    if kind == "RNN":
        return traj.d
    if kind == "GRU":
        return xp.stack([traj.d_r, traj.d_z, traj.d_in], axis=-2)
    return traj.D


def _ih_jvp(xp: Any, kind: str, H: int, ih: tuple, V: Any) -> Any:
    """∂h_t/∂a V = Σ_gates D ⊙ (W_ih V) for V (k, B, T, n_in) at every step."""
    D, W_ih = ih
    U = matmul_last(xp, V, xp.matrix_transpose(W_ih))  # (k, B, T, G·H), one GEMM for all gates
    if kind == "RNN":
        return D * U
    if kind == "GRU":
        return xp.sum(D * xp.reshape(U, (*U.shape[:-1], 3, H)), axis=-2)
    rows = xp.sum(D * xp.reshape(U, (*U.shape[:-1], 1, 4, H)), axis=-2)  # (k, B, T, 2, H): h, c
    return xp.reshape(rows, (*rows.shape[:-2], 2 * H))


def _ih_vjp(xp: Any, kind: str, H: int, ih: tuple, W: Any) -> Any:
    """(∂h_t/∂a)ᵀ W = W_ihᵀ [D ⊙ W per gate] for W (k, B, T, parts·H) at every step."""
    D, W_ih = ih
    if kind == "RNN":
        U = W * D
    elif kind == "GRU":
        U = W[..., None, :] * D  # (k, B, T, 3, H)
    else:
        W2 = xp.reshape(W, (*W.shape[:-1], 2, 1, H))
        U = xp.sum(W2 * D, axis=-3)  # (k, B, T, 4, H): Σ over the rows h, c
    if kind != "RNN":
        U = xp.reshape(U, (*U.shape[:-2], U.shape[-2] * H))
    return matmul_last(xp, U, W_ih)
