"""One trajectory engine: a model run once, read through its layout, its sites and its derivative rule.

A :class:`Trajectory` is built from three things:

- a :class:`~kpflow.models.layout.Layout` (from ``model.layout(state_shape)``): the state's
  axes, its sites and its blocks, from which every piece of geometry below is read;
- its weight sites (``_make_sites``), each with the site variables A_w and D_w;
- a derivative rule for the step Jacobians J_t = ∂z_t/∂z_{t−1}: analytic, a
  :class:`StepKernel` of pure functions (the built-in cells), or autodiff (the hook models:
  a step kernel whose functions differentiate the user's step, or ``step_jvp`` /
  ``step_vjp`` overridden).  A ``single`` layout has no steps (L = 0), a ``solved`` one
  applies P by ``solve`` / ``solve_adjoint`` instead.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from kpflow._array import array_namespace, device_of
from kpflow.models._compiled import Config, compiled
from kpflow.models.layout import Layout
from kpflow.models.sites import Site
from kpflow.models.sites_table import trained_sites

if TYPE_CHECKING:
    from kpflow.models.model import Model, RecurrentModel

__all__ = ["RecurrentTrajectory", "StepKernel", "Trajectory"]


def _cached(config: Config, fn: Callable[..., Any], names: tuple[str, ...], *leaves: Any) -> Any:
    """``fn(model, params, *arrays)`` of :meth:`Trajectory.recomputed`, pure in its arrays."""
    params = dict(zip(names, leaves[: len(names)], strict=True))
    return fn(config.model, params, *leaves[len(names) :])


def _derived(config: Config, fn: Callable[..., Any], *arrays: Any) -> Any:
    """``fn(model, xp, *arrays)`` of :meth:`Trajectory.derived`, pure in its arrays."""
    return fn(config.model, array_namespace(*arrays), *arrays)


def _shifted(config: Config, states: Any, h0: Any) -> Any:
    """The model's ``_shift(states, h0)`` (z_{t−1} at every step), pure in its arrays."""
    return config.model._shift(states, h0)


class StepKernel(NamedTuple):
    """J_t = ∂z_t/∂z_{t−1} of a recurrent trajectory as pure functions of arrays.

    ``jvp(xp, *static, operands, V, t)`` = J_t V and ``vjp(xp, *static, operands, W, t)`` =
    J_tᵀ W, where ``t`` is an int (one step; V of shape (k, B, S)), ``slice(None)`` (every
    step at once; V of shape (k, B, T, S)) or, inside a compiled step, a traced integer.
    ``static`` holds hashable values (sizes, dt) and ``operands`` the arrays the step reads
    (caches of shape (B, T, ...) indexed ``[:, t]``, weights).  Being pure, one compiled
    step (jax) serves every step of P and Pᵀ and every trajectory of the same shapes.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import RNN
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0, like=xp.zeros(1)), xp.ones((3, 4, 1)))
    >>> k = traj.step_kernel()
    >>> k.jvp(xp, *k.static, k.operands, xp.ones((5, 3, 2)), 1).shape
    (5, 3, 2)
    """

    jvp: Callable[..., Any]
    vjp: Callable[..., Any]
    static: tuple
    operands: tuple


class Trajectory(abc.ABC):
    """A model run once: inputs, states and the cached pieces of the derivatives.

    Attributes
    ----------
    model : Model
    params : dict of str to array
    x : array
        The input, ``(B, T, n_in)`` (MLP: ``(B, n_in)``).
    h0 : array or None
        The initial state ``(B, S)`` (None means zeros; always None for the MLP).
    states : array of shape ``state_shape``
        z, row-major over sites then state coordinates.
    layout : Layout
        The state's axes, sites, blocks and parts (``model.layout(state_shape)``); the
        geometry below is read from it.
    state_shape, site_shape : tuple of int
        The operator domain and the site grid (m = prod(site_shape)).
    site_state_size : int
        Length of the per-site state vector: ``state_shape`` reads as (m, site_state_size).
    feature_columns : tuple (start, stop)
        The per-site state columns a readout reads (h for the LSTM, the last layer for the MLP).
    n_steps : int
        Number of blocks along time (depth for the MLP).
    triangular : bool
        True when L is block-subdiagonal (P is a forward recursion): every layout kind but
        ``"solved"``.
    xp, dtype, device
        Namespace, dtype and device of everything.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import RNN
    >>> model = RNN(2, 3)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((4, 5, 2)))
    >>> traj.state_shape, traj.site_shape, traj.n_steps, traj.layout.kind
    ((4, 5, 3), (4, 5), 5, 'recurrent')
    >>> V = xp.ones((2, 4, 5, 3))
    >>> traj.state_jvp(V).shape, traj.step_vjp(1, traj.block(V, 1)).shape
    ((2, 4, 5, 3), (2, 4, 3))
    """

    def __init__(self, model: Model, params: dict[str, Any], x: Any, h0: Any, states: Any) -> None:
        self.model = model
        self.params = params
        self.x = x
        self.h0 = h0
        self.states = states
        self.xp = array_namespace(states)
        self.dtype = states.dtype
        self.device = device_of(states)
        self.layout: Layout = model.layout(tuple(int(n) for n in states.shape))
        self._sites: list[Site] | None = None
        self._kernel: StepKernel | None = None

    def derived(self, fn: Callable[..., Any], *arrays: Any) -> Any:
        """``fn(model, xp, *arrays)``: arrays derived from the trajectory's (views, reshapes, site data).

        On jax one program, compiled once per model settings and shapes, instead of one per
        eager operation; elsewhere a plain call (views stay views).  ``fn`` must be a
        module-level function of its arguments only.

        Examples
        --------
        >>> import numpy as np
        >>> from kpflow.models import RNN
        >>> def last_step(model, xp, states):
        ...     return states[:, -1, :]
        >>> model = RNN(2, 3)
        >>> traj = model.run(model.init(0), np.ones((4, 5, 2)))
        >>> traj.derived(last_step, traj.states).shape
        (4, 3)
        """
        from kpflow.backends import get_backend

        adapter = get_backend(self.states)
        if getattr(adapter, "compiles_per_shape", False):
            config = Config(self.model)
            if config.key is not None:
                return compiled(adapter, _derived, config, fn)(*arrays)
        return fn(self.model, self.xp, *arrays)

    def recomputed(self, fn: Callable[..., Any], params: dict[str, Any], *arrays: Any) -> Any:
        """``fn(self.model, params, *arrays)`` for derivative caches, without holding its temporaries.

        On torch with parameters that require grad, the caches carry autograd history (NTK
        products called directly stay differentiable), but the temporaries of ``fn`` are
        recomputed by a backward pass instead of being held for the trajectory's lifetime
        (:meth:`kpflow.backends.Backend.recomputed`).  Elsewhere a plain call.
        """
        from kpflow.backends import get_backend

        names = tuple(params)
        adapter = get_backend(self.states)
        if getattr(adapter, "compiles_per_shape", False):
            # jax: the caches as one program, compiled once per model settings and shapes
            config = Config(self.model)
            if config.key is not None:
                return compiled(adapter, _cached, config, fn, names)(*params.values(), *arrays)

        def call(*leaves: Any) -> Any:
            return fn(self.model, dict(zip(names, leaves[: len(names)], strict=True)), *leaves[len(names) :])

        return adapter.recomputed(call, *params.values(), *arrays)

    # geometry: read from the layout -----------------------------------------------------------
    @property
    def state_shape(self) -> tuple[int, ...]:
        """The shape of z, the domain of K, P and NTK_S."""
        return tuple(self.states.shape)

    @property
    def axis_names(self) -> tuple[str, ...]:
        """Names of the axes of ``state_shape``, e.g. ``("batch", "time", "hidden")``."""
        return self.layout.axes

    @property
    def site_shape(self) -> tuple[int, ...]:
        """The site grid: ``(B, T)`` for recurrent models, ``(B,)`` for the MLP."""
        return self.layout.site_shape

    @property
    def m(self) -> int:
        """The number of sites m = prod(site_shape)."""
        return self.layout.m

    @property
    def site_state_size(self) -> int:
        """Length of the per-site state vector."""
        return self.layout.site_state_size

    @property
    def feature_columns(self) -> tuple[int, int]:
        """Columns of the per-site state vector that a readout reads."""
        return self.layout.features  # type: ignore[return-value]

    @property
    def n_steps(self) -> int:
        """Number of blocks along time (depth)."""
        return self.layout.n_steps

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """Each block's (start, stop) along the layout's block axis (an MLP's layer columns)."""
        return list(self.layout.blocks)

    @property
    def triangular(self) -> bool:
        """Whether L is block-subdiagonal, so P is a recursion (every layout kind but ``"solved"``)."""
        return self.layout.kind != "solved"

    def block(self, V: Any, t: int) -> Any:
        """Block t of a probe block ``V`` of shape ``(k, *state_shape)``."""
        return self.layout.block(self.xp, V, t)

    def join(self, blocks: list[Any]) -> Any:
        """Glue ``n_steps`` blocks back into ``(k, *state_shape)``."""
        return self.layout.join(self.xp, blocks)

    # derivative rule ----------------------------------------------------------------------------
    def step_kernel(self) -> StepKernel | None:
        """J_t as pure functions of arrays (:class:`StepKernel`), or None (the default).

        A trajectory without one on a ``recurrent`` or ``depth`` layout overrides
        :meth:`step_jvp` and :meth:`step_vjp` instead.
        """
        return None

    def _cached_kernel(self) -> StepKernel | None:
        if self._kernel is None:
            self._kernel = self.step_kernel()
        return self._kernel

    def _no_steps(self, t: int) -> Exception:
        kind = self.layout.kind
        if kind in ("single", "solved"):
            return IndexError(
                f"{type(self).__name__}: one block (a {kind!r} layout), so no step t={t} >= 1; "
                "use state_jvp / state_vjp"
            )
        return NotImplementedError(
            f"{type(self).__name__}: a {kind!r} trajectory defines step_kernel() or overrides "
            "step_jvp and step_vjp; this is a kpflow bug, please report it"
        )

    def _solved_without(self, method: str) -> NotImplementedError:
        # L of a solved layout is a whole-state map the trajectory gives itself (with solve)
        return NotImplementedError(
            f"{type(self).__name__}: a 'solved' trajectory overrides {method} (L is not a chain of "
            "steps); this is a kpflow bug, please report it"
        )

    def step_jvp(self, t: int, v: Any) -> Any:
        """J_t v for t ≥ 1: block t−1 tangents ``(k, ...)`` to block t tangents."""
        k = self._cached_kernel()
        if k is None:
            raise self._no_steps(t)
        return k.jvp(self.xp, *k.static, k.operands, v, t)

    def step_vjp(self, t: int, w: Any) -> Any:
        """J_tᵀ w for t ≥ 1: block t cotangents to block t−1 cotangents."""
        k = self._cached_kernel()
        if k is None:
            raise self._no_steps(t)
        return k.vjp(self.xp, *k.static, k.operands, w, t)

    def state_jvp(self, V: Any) -> Any:
        """L V for ``V`` of shape ``(k, *state_shape)``: (L V)_t = J_t V_{t−1}, (L V)_0 = 0."""
        xp, kind = self.xp, self.layout.kind
        if kind == "single":
            return xp.zeros_like(V)
        if kind == "solved":
            raise self._solved_without("state_jvp")
        k = self._cached_kernel() if kind == "recurrent" else None
        if k is not None:  # every step at once: J_{t} applied to the shifted block
            zero = xp.zeros_like(V[:, :, :1, ...])
            return k.jvp(xp, *k.static, k.operands, xp.concat([zero, V[:, :, :-1, ...]], axis=2), slice(None))
        first = xp.zeros_like(self.block(V, 0))
        return self.join([first] + [self.step_jvp(t, self.block(V, t - 1)) for t in range(1, self.n_steps)])

    def state_vjp(self, W: Any) -> Any:
        """Lᵀ W for ``W`` of shape ``(k, *state_shape)``: (Lᵀ W)_t = J_{t+1}ᵀ W_{t+1}."""
        xp, kind = self.xp, self.layout.kind
        if kind == "single":
            return xp.zeros_like(W)
        if kind == "solved":
            raise self._solved_without("state_vjp")
        k = self._cached_kernel() if kind == "recurrent" else None
        if k is not None:
            U = k.vjp(xp, *k.static, k.operands, W, slice(None))
            return xp.concat([U[:, :, 1:, ...], xp.zeros_like(U[:, :, :1, ...])], axis=2)
        last = xp.zeros_like(self.block(W, self.n_steps - 1))
        return self.join(
            [self.step_vjp(t + 1, self.block(W, t + 1)) for t in range(self.n_steps - 1)] + [last]
        )

    # sites ------------------------------------------------------------------------------------
    @property
    def sites(self) -> list[Site]:
        """The weight sites (built once, on first use), of the trained parameters only.

        A frozen parameter (:meth:`Model.with_frozen`) contributes no site variables: its
        columns of A_w are dropped, and a site left without columns is dropped.
        """
        if self._sites is None:
            sites = self._make_sites()
            self._sites = trained_sites(self.model, sites) if self.model.frozen else sites
        return self._sites

    @abc.abstractmethod
    def _make_sites(self) -> list[Site]:
        """Build the list of :class:`Site` of this trajectory."""

    def features(self) -> Any:
        """The readout's input at every site, shape ``(m, n_features)``."""
        flat = self.xp.reshape(self.states, (self.m, self.site_state_size))
        lo, hi = self.feature_columns
        return flat[:, lo:hi]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, state_shape={self.state_shape})"


class RecurrentTrajectory(Trajectory):
    """A trajectory of a recurrent cell: ``state_shape = (B, T, S)``, blocks are time steps.

    Subclasses give the per-step Jacobian J_t = ∂z_t/∂z_{t−1}, applied at step ``t`` (an
    ``int``, with ``V`` of shape ``(k, B, S)``) or at all steps at once (``t =
    slice(None)``, ``V`` of shape ``(k, B, T, S)``), from caches of shape ``(B, T, ...)``
    indexed ``cache[:, t]``, as pure functions, :meth:`step_kernel` (backends that compile
    per shape then run each step of P and Pᵀ compiled); and ``_make_sites()``.  Step t's
    previous state is ``prev_states[:, t]`` (h0 at t = 0).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import RNN
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0, like=xp.zeros(1)), xp.ones((1, 3, 1)))
    >>> traj.prev_states.shape
    (1, 3, 2)
    """

    model: RecurrentModel

    @property
    def prev_states(self) -> Any:
        """z_{t−1} at every step, shape ``(B, T, S)`` (h0, or zeros, at t = 0)."""
        from kpflow.backends import get_backend

        adapter = get_backend(self.states)
        if getattr(adapter, "compiles_per_shape", False):
            # jax: one program instead of an eager slice, zeros and concatenation (each compiled)
            config = Config(self.model)
            if config.key is not None:
                return compiled(adapter, _shifted, config)(self.states, self.h0)
        return self.model._shift(self.states, self.h0)
