"""A feed-forward stack written by the user with weight hooks: the counterpart of ``Recurrent``.

z_l = layers[l](params, z_{l−1}, site) for l = 0 … L−1, z_{−1} = x.  Depth plays the role of
time, as for the built-in :class:`~kpflow.models.MLP`: the state is the concatenation of the
layer outputs, shape (B, Σ_l n_l), and P is the block-subdiagonal forward recursion.  The
hooks are those of :class:`~kpflow.models.Recurrent`: ``site(name, a)`` = ``a @ params[name].T``
and ``site(name)`` = ``params[name]``, with ``rows=(lo, hi)`` for rows lo:hi of a parameter; a
weight may be used in several layers (shared across depth).  The sites are those of
:func:`~kpflow.models.hooks.hook_site_groups` (one per parameter, or per disjoint row range),
each with rows (hook call, batch row), so K is exact, cross terms included.  D_w and the
layer Jacobians come from jvp/vjp of the layers (torch, jax).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from kpflow.models._hook_base import HookModel, HookTrajectory
from kpflow.models.base import Model, Trajectory, check_size
from kpflow.models.hooks import GuardedParams, _check_param_shapes, _Hook
from kpflow.models.layout import Layout, check_independent_rows

__all__ = ["FeedForward", "FeedForwardHookTrajectory"]


class FeedForward(HookModel, Model):
    """A feed-forward stack of user-written layers, z_l = layers[l](params, z_{l−1}, site).

    Parameters
    ----------
    layers : sequence of callables
        ``layer(params, z, site) -> z_next`` in array-API code (z of shape (B, n)), every
        weight use through the hook (see :class:`~kpflow.models.Recurrent`).
    n_in : int
    widths : sequence of int
        Each layer's output width n_l (as many as ``layers``).
    param_shapes : dict of str to tuple
        (out, in) for a weight, (out,) for a bias.
    independent_rows : bool, optional
        Declares that the layers never mix batch rows (row b of a layer's output reads row
        b of its input only: no batch statistics), see :class:`~kpflow.models.layout.Layout`;
        the dense output NTK then probes all rows at once.  Default False (rows may mix); a
        wrong True gives a wrong dense output NTK.

    Examples
    --------
    >>> import torch
    >>> import kpflow
    >>> from kpflow.models import FeedForward
    >>> def hidden(params, z, site):
    ...     return torch.tanh(site("W0", z) + site("b0"))
    >>> def output(params, z, site):
    ...     return site("W1", z)
    >>> model = FeedForward([hidden, output], n_in=2, widths=[4, 1],
    ...                     param_shapes={"W0": (4, 2), "b0": (4,), "W1": (1, 4)})
    >>> traj = model.run(model.init(0, like=torch.zeros(1, dtype=torch.float64)),
    ...                  torch.ones(3, 2, dtype=torch.float64))
    >>> traj.states.shape, traj.blocks
    (torch.Size([3, 5]), [(0, 4), (4, 5)])
    >>> kpflow.global_ntk(traj).todense().shape
    torch.Size([3, 5, 3, 5])
    """

    def __init__(
        self,
        layers: Sequence[Callable[..., Any]],
        *,
        n_in: int,
        widths: Sequence[int],
        param_shapes: dict[str, tuple[int, ...]],
        independent_rows: bool = False,
    ) -> None:
        where = "FeedForward"
        layers = list(layers) if isinstance(layers, list | tuple) else layers
        if not isinstance(layers, list) or not layers or not all(callable(f) for f in layers):
            msg = (
                f"{where}: expected layers to be a non-empty list of callables "
                f"layer(params, z, site), got {layers!r}"
            )
            raise TypeError(msg)
        widths = list(widths) if isinstance(widths, list | tuple) else widths
        if not isinstance(widths, list) or len(widths) != len(layers):
            msg = f"{where}: expected widths to list one width per layer ({len(layers)}), got {widths!r}"
            raise ValueError(msg)
        self.layers = layers
        self.n_in = check_size(n_in, "n_in", where)
        self.widths = tuple(check_size(w, "every width", where) for w in widths)
        self._shapes = _check_param_shapes(param_shapes, where)
        self.independent_rows = check_independent_rows(independent_rows, where)
        self.state_size = sum(self.widths)
        offsets = [0]
        for w in self.widths:
            offsets.append(offsets[-1] + w)
        self.blocks = [(offsets[l], offsets[l + 1]) for l in range(len(layers))]

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
            widths=self.widths,
            parts=self.state_parts,
            features=self.feature_columns,
            independent_rows=self.independent_rows,
        )

    def _layer(self, l: int, params: dict[str, Any], z: Any, hook: _Hook) -> Any:
        return self.layers[l](GuardedParams(tuple(self._shapes), hook.where), z, hook)

    def _call(self, params: dict[str, Any], states: Any, x: Any, hook: _Hook) -> Any:
        """f(z; θ): every layer on its input read from the given states (x for layer 0), concatenated."""
        from kpflow._array import array_namespace

        outs = []
        for l in range(len(self.layers)):
            inp = x if l == 0 else states[..., self.blocks[l - 1][0] : self.blocks[l - 1][1]]
            outs.append(self._layer(l, params, inp, hook))
        return outs[0] if len(outs) == 1 else array_namespace(outs[0]).concat(outs, axis=-1)

    def unroll(self, params: dict[str, Any], x: Any, h0: Any = None) -> Any:
        from kpflow._array import array_namespace

        z, outs = x, []
        for l in range(len(self.layers)):
            z = self._layer(l, params, z, _Hook(params, self._shapes, "FeedForward.unroll"))
            outs.append(z)
        return outs[0] if len(outs) == 1 else array_namespace(outs[0]).concat(outs, axis=-1)

    def update_map(self, params: dict[str, Any], states: Any, x: Any, h0: Any = None) -> Any:
        return self._update_map(params, states, x, "FeedForward.update_map")

    def _check_inputs(self, x: Any, h0: Any, meta: tuple, where: str) -> None:
        text = f"(B, n_in={self.n_in}) with B >= 1"
        self._check_feedforward_inputs(x, h0, meta, where, ndim=2, feature=self.n_in, shape_text=text)

    def run(self, params: dict[str, Any], x: Any, h0: Any = None) -> FeedForwardHookTrajectory:
        """Run the stack once (params and x on torch or jax) and return its trajectory.

        Raises
        ------
        AutodiffUnavailableError
            For numpy, array_api_strict or cupy arrays (D_w comes from autodiff).
        WeightOutsideHookError
            When a layer reads a parameter directly instead of through ``site``.
        """
        from kpflow.backends import AutodiffUnavailableError, get_backend

        where = "FeedForward.run"
        xp = self.check_params(params, where)[0]
        adapter = get_backend(xp.zeros(1))
        if not adapter.has_autodiff:
            msg = (
                f"{where}: a user stack's D_w and layer Jacobians are computed by automatic "
                f"differentiation, which the {adapter.name} backend lacks; run the model on torch or "
                "jax arrays"
            )
            raise AutodiffUnavailableError(msg)
        return super().run(params, x, h0)  # type: ignore[return-value]

    def _make_trajectory(
        self, params: dict[str, Any], x: Any, h0: Any, states: Any
    ) -> FeedForwardHookTrajectory:
        from kpflow.backends import get_backend

        expected = (int(x.shape[0]), self.state_size)
        if tuple(states.shape) != expected:
            msg = (
                f"FeedForward.run: expected the layers to return widths {self.widths} (states of shape "
                f"{expected}), got states of shape {tuple(states.shape)}"
            )
            raise ValueError(msg)
        return FeedForwardHookTrajectory(self, params, x, h0, states, get_backend(states).name)

    def __repr__(self) -> str:
        return f"FeedForward(n_in={self.n_in}, widths={self.widths}, params={sorted(self._shapes)})"


class FeedForwardHookTrajectory(HookTrajectory, Trajectory):
    """A run of a :class:`FeedForward` stack: ``state_shape = (B, Σ n_l)``, one block per layer.

    Attributes
    ----------
    blocks : list of (start, stop)
        Layer l's columns of the state.
    plan, site_variables_by_call
        The recorded hook calls of all layers, in order, and their site variables (B, in).
    """

    model: FeedForward

    def __init__(
        self, model: FeedForward, params: dict[str, Any], x: Any, h0: Any, states: Any, backend: str
    ) -> None:
        super().__init__(model, params, x, h0, states)
        self._record(backend, states, "FeedForward.run", "(B,)")

    def _layer_map(self, t: int, where: str) -> Callable[[Any], Any]:
        """z_{t−1} ↦ layer t's output (the parameters fixed), for jvp/vjp."""
        from kpflow.models.hooks import _params

        model, params = self.model, _params(self.names, self._operands[0])

        def f(z: Any) -> Any:
            return model._layer(t, params, z, _Hook(params, model._shapes, where))

        return f

    def step_jvp(self, t: int, v: Any) -> Any:
        from kpflow.backends import get_backend

        adapter = get_backend(self.backend)
        lo, hi = self.blocks[t - 1]
        f = self._layer_map(t, "FeedForward (P)")
        z = self.states[:, lo:hi]
        return adapter.vmap(lambda u: adapter.jvp(f, (z,), (u,))[1])(v)

    def step_vjp(self, t: int, w: Any) -> Any:
        from kpflow.backends import get_backend

        adapter = get_backend(self.backend)
        lo, hi = self.blocks[t - 1]
        _, pullback = adapter.vjp(self._layer_map(t, "FeedForward (Pᵀ)"), self.states[:, lo:hi])
        return adapter.vmap(lambda u: pullback(u)[0])(w)
