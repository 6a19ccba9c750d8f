"""The model interface: models, trajectories and weight sites.

Summary of the contract (every built-in model and every new one follows it)
---------------------------------------------------------------------------
**Model** (:class:`Model`; recurrent cells subclass :class:`RecurrentModel`)

- ``param_shapes() -> dict[str, tuple]``: PyTorch names (``weight_ih``, ``weight_hh``,
  ``bias_ih``, ``bias_hh``; gates stacked in torch's order).
- ``init(rng=None, *, like=None, dtype=None, device=None) -> dict[str, array]``: numpy
  float64 by default; with ``like`` the arrays take its namespace, dtype and device.
- ``run(params, x, h0=None) -> Trajectory``: checks ``x``, ``params``, ``h0`` and that the
  states are finite (errors name the argument), then runs the model once.
- ``update_map(params, states, x, h0=None) -> array of state_shape``: the pure map f with
  F(z, θ) = z − f(z; θ). For a recurrence f_t = step(z_{t−1}, x_t) with z_{−1} = h0. It is
  array-API code, so torch.func / jax differentiate it: ∂f/∂θ at fixed z is J_θ (the
  autodiff K), ∂f/∂z is L.
- ``unroll(params, x, h0=None) -> states``: the pure forward pass θ ↦ z (dense reference).
- recurrent models also have ``step(params, h_prev, x_t) -> h_t`` on any leading axes.

**Trajectory** (:class:`Trajectory`) holds ``model, params, x, h0, states`` and the cached
derivative pieces.  ``run`` gives it its own copies of ``params``, ``x`` and ``h0`` (torch:
``clone()``, which keeps autograd; jax arrays are immutable and not copied), so updating the
caller's arrays in place afterwards (an optimizer step) never changes a trajectory.
Its domain is ``state_shape``: ``(B, T, S)`` for recurrent models (S = H, LSTM: S = 2H
with h first), ``(B, Σ_l n_l)`` for the MLP (blocks ``traj.blocks``).
The sites are laid out on ``site_shape`` (``(B, T)`` or ``(B,)``, m = prod sites) and the
state reads as ``(m, site_state_size)`` row-major.  Time (or depth) runs over
``n_steps`` blocks; ``block(V, t)`` / ``join(blocks)`` cut and glue the probe block
``V`` of shape ``(k, *state_shape)``.  All actions are batched over the leading probe axis k:

- ``step_jvp(t, v)`` = J_t v with J_t = ∂z_t/∂z_{t−1} (``v`` of shape ``(k, *block_shape(t−1))``),
  ``step_vjp(t, w)`` = J_tᵀ w, for t = 1 … n_steps − 1; a recurrent trajectory gives them
  as pure functions of arrays, ``step_kernel()`` (:class:`StepKernel`), so that one
  compiled step (jax) serves every step of P and Pᵀ;
- ``state_jvp(V)`` = L V (all steps at once), ``state_vjp(W)`` = Lᵀ W;
- ``sites``: a list of :class:`Site`, one per pre-activation group u_w(s) = W_w a_w(s) + b_w.
  A site has ``name``, ``variables`` A_w of shape ``(m, p_w)`` (bias columns of ones
  included), ``width`` k_w, ``apply_D(U)``: ``(k, m, k_w) -> (k, *state_shape)`` and
  ``apply_DT(V)``: ``(k, *state_shape) -> (k, m, k_w)``, the unit-structured ``unit_D`` of
  shape ``(m, n_units, a, g)`` and ``scale`` (D = scale·I, e.g. the leaky RNN's dt);
- ``triangular`` is True: L is block-subdiagonal, so P applies by a recursion.  A general
  implicit model would set it False and P becomes a linear solve (not built yet).

So K = Σ_w D_w (A_w A_wᵀ ⊗ I) D_wᵀ, P = (I − L)⁻¹ and NTK_S = P K Pᵀ (see ``kpflow.ntk``).
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import numpy as np

from kpflow._array import array_namespace, device_of, host_rng, namespace_name, prod
from kpflow.models.sites import Site, flat_sites, site_variables

__all__ = [
    "Model",
    "NonFiniteStatesError",
    "RecurrentModel",
    "RecurrentTrajectory",
    "Site",
    "StepKernel",
    "Trajectory",
    "check_size",
    "draw_uniform",
    "flat_sites",
    "owned_copy",
    "site_variables",
    "step_major",
]


class NonFiniteStatesError(ValueError):
    """A model's forward pass gave inf or nan states (finite inputs and parameters).

    A ``ValueError``; :func:`kpflow.training.train` catches it to stop a diverging run.
    """


def check_size(n: Any, name: str, where: str) -> int:
    """Validate a positive integer size; return it.

    Examples
    --------
    >>> from kpflow.models.base import check_size
    >>> check_size(3, "n_hidden", "RNN")
    3
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        msg = f"{where}: expected {name} to be a positive int, got {n!r}"
        raise ValueError(msg)
    return int(n)


def draw_uniform(
    shapes: dict[str, tuple[int, ...]],
    bound: float,
    rng: Any,
    *,
    like: Any,
    dtype: Any,
    device: Any,
    where: str,
) -> dict[str, Any]:
    """Parameters drawn from U(−bound, bound) on the host (SPEC 7), converted like ``like``.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.base import draw_uniform
    >>> p = draw_uniform({"w": (2,)}, 1.0, 0, like=xp.zeros(1), dtype=None, device=None, where="f")
    >>> p["w"].shape
    (2,)
    """
    gen = host_rng(rng, where)
    host = {k: gen.uniform(-bound, bound, size=s) for k, s in shapes.items()}
    return convert_host(host, like=like, dtype=dtype, device=device)


def convert_host(host: dict[str, Any], *, like: Any, dtype: Any, device: Any) -> dict[str, Any]:
    """Host (numpy) arrays converted once to ``like``'s namespace (numpy without it), ``dtype``, ``device``.

    ``dtype`` and ``device`` default to ``like``'s (float64 on the host without ``like``).

    Examples
    --------
    >>> import numpy as np
    >>> import array_api_strict as xp
    >>> from kpflow.models.base import convert_host
    >>> like = xp.zeros(1, dtype=xp.float32)
    >>> convert_host({"w": np.ones(2)}, like=like, dtype=None, device=None)["w"].dtype
    array_api_strict.float32
    """
    if like is None:
        dt = np.float64 if dtype is None else dtype
        return {k: np.asarray(v, dtype=dt) for k, v in host.items()}
    from kpflow.backends import get_backend

    adapter = get_backend(like)
    dt = like.dtype if dtype is None else dtype
    dev = device_of(like) if device is None else device
    return {k: adapter.from_host(v, dtype=dt, device=dev) for k, v in host.items()}


def owned_copy(a: Any) -> Any:
    """A copy of array ``a`` that no one else can mutate (jax arrays are immutable: ``a`` itself).

    On torch the copy is ``a.clone()``, which keeps autograd: gradients of anything computed
    from the copy still flow into ``a`` (e.g. a module's ``nn.Parameter``).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models.base import owned_copy
    >>> a = np.zeros(2)
    >>> b = owned_copy(a)
    >>> a[0] = 1.0
    >>> b
    array([0., 0.])
    """
    import array_api_compat

    if array_api_compat.is_jax_array(a):
        return a
    if array_api_compat.is_torch_array(a):
        return a.clone()
    return array_namespace(a).asarray(a, copy=True)


def step_major(a: Any) -> Any:
    """The per-step cache ``a`` of shape ``(B, T, ...)``, its memory laid out step by step.

    The result equals ``a`` and has its shape, but is a view of a ``(T, B, ...)`` buffer, so
    that ``a[:, t]``, read at every step of P and Pᵀ, is one contiguous block instead of B
    rows strided T apart.  Measured on a GRU at 1,638,400 states (numpy, float32, one
    probe): P 45 → 42 ms and Pᵀ 55 → 44 ms (medians of 15).  One copy of ``a``; jax arrays
    come back as they are (XLA chooses its own layouts).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models.base import step_major
    >>> a = np.arange(24.0).reshape(2, 3, 4)
    >>> b = step_major(a)
    >>> bool(np.array_equal(a, b)), b[:, 1].flags["C_CONTIGUOUS"]
    (True, True)
    """
    import array_api_compat

    if array_api_compat.is_jax_array(a) or a.ndim < 2 or a.shape[0] == 1:
        return a
    xp = array_namespace(a)
    order = (1, 0, *range(2, a.ndim))
    steps_first = xp.permute_dims(a, order)
    # reshaping the permuted view to one axis copies it into a (T, B, ...) buffer (the array
    # API has no "ascontiguousarray"); the reshape back and the permutation are views
    buffer = xp.reshape(xp.reshape(steps_first, (prod(a.shape),)), steps_first.shape)
    return xp.permute_dims(buffer, order)


# -- trajectories --------------------------------------------------------------------------------
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
    state_shape, site_shape : tuple of int
        The operator domain and the site grid (m = prod(site_shape)).
    site_state_size : int
        Length of the per-site state vector: ``state_shape`` reads as (m, site_state_size).
    feature_columns : tuple (start, stop)
        The per-site state columns a readout reads (h for the LSTM, the last layer for the MLP).
    n_steps : int
        Number of blocks along time (depth for the MLP).
    triangular : bool
        True when L is block-subdiagonal (P is a forward recursion).
    xp, dtype, device
        Namespace, dtype and device of everything.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import RNN
    >>> model = RNN(2, 3)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((4, 5, 2)))
    >>> traj.state_shape, traj.site_shape, traj.n_steps
    ((4, 5, 3), (4, 5), 5)
    >>> V = xp.ones((2, 4, 5, 3))
    >>> traj.state_jvp(V).shape, traj.step_vjp(1, traj.block(V, 1)).shape
    ((2, 4, 5, 3), (2, 4, 3))
    """

    triangular: bool = True

    def __init__(self, model: Model, params: dict[str, Any], x: Any, h0: Any, states: Any) -> None:
        self.model = model
        self.params = params
        self.x = x
        self.h0 = h0
        self.states = states
        self.xp = array_namespace(states)
        self.dtype = states.dtype
        self.device = device_of(states)
        self._sites: list[Site] | None = None

    def recomputed(self, fn: Callable[..., Any], params: dict[str, Any], *arrays: Any) -> Any:
        """``fn(self.model, params, *arrays)`` for derivative caches, without holding its temporaries.

        On torch with parameters that require grad, the caches carry autograd history (NTK
        products called directly stay differentiable), but the temporaries of ``fn`` are
        recomputed by a backward pass instead of being held for the trajectory's lifetime
        (:meth:`kpflow.backends.Backend.recomputed`).  Elsewhere a plain call.
        """
        from kpflow.backends import get_backend

        names = tuple(params)

        def call(*leaves: Any) -> Any:
            return fn(self.model, dict(zip(names, leaves[: len(names)], strict=True)), *leaves[len(names) :])

        return get_backend(self.states).recomputed(call, *params.values(), *arrays)

    # geometry --------------------------------------------------------------------------------
    @property
    def state_shape(self) -> tuple[int, ...]:
        """The shape of z, the domain of K, P and NTK_S."""
        return tuple(self.states.shape)

    @property
    @abc.abstractmethod
    def site_shape(self) -> tuple[int, ...]:
        """The site grid: ``(B, T)`` for recurrent models, ``(B,)`` for the MLP."""

    @property
    def axis_names(self) -> tuple[str, ...]:
        """Names of the axes of ``state_shape``: ``("batch", "time", "hidden")`` (recurrent)."""
        return ("batch", "time", "hidden")

    @property
    def m(self) -> int:
        """The number of sites m = prod(site_shape)."""
        return prod(self.site_shape)

    @property
    def site_state_size(self) -> int:
        """Length of the per-site state vector."""
        return prod(self.state_shape) // self.m

    @property
    def feature_columns(self) -> tuple[int, int]:
        """Columns of the per-site state vector that a readout reads."""
        return (0, self.site_state_size)

    @property
    @abc.abstractmethod
    def n_steps(self) -> int:
        """Number of blocks along time (depth)."""

    @abc.abstractmethod
    def block(self, V: Any, t: int) -> Any:
        """Block t of a probe block ``V`` of shape ``(k, *state_shape)``."""

    @abc.abstractmethod
    def join(self, blocks: list[Any]) -> Any:
        """Glue ``n_steps`` blocks back into ``(k, *state_shape)``."""

    # derivative pieces ---------------------------------------------------------------------------
    @abc.abstractmethod
    def step_jvp(self, t: int, v: Any) -> Any:
        """J_t v for t ≥ 1: block t−1 tangents ``(k, ...)`` to block t tangents."""

    @abc.abstractmethod
    def step_vjp(self, t: int, w: Any) -> Any:
        """J_tᵀ w for t ≥ 1: block t cotangents to block t−1 cotangents."""

    def state_jvp(self, V: Any) -> Any:
        """L V for ``V`` of shape ``(k, *state_shape)``: (L V)_t = J_t V_{t−1}, (L V)_0 = 0."""
        xp = self.xp
        first = xp.zeros_like(self.block(V, 0))
        return self.join([first] + [self.step_jvp(t, self.block(V, t - 1)) for t in range(1, self.n_steps)])

    def state_vjp(self, W: Any) -> Any:
        """Lᵀ W for ``W`` of shape ``(k, *state_shape)``: (Lᵀ W)_t = J_{t+1}ᵀ W_{t+1}."""
        xp = self.xp
        last = xp.zeros_like(self.block(W, self.n_steps - 1))
        return self.join(
            [self.step_vjp(t + 1, self.block(W, t + 1)) for t in range(self.n_steps - 1)] + [last]
        )

    @property
    def sites(self) -> list[Site]:
        """The weight sites (built once, on first use), of the trained parameters only.

        A frozen parameter (:meth:`Model.with_frozen`) contributes no site variables: its
        columns of A_w are dropped, and a site left without columns is dropped.
        """
        if self._sites is None:
            sites = self._make_sites()
            self._sites = _trained_sites(self.model, sites) if self.model.frozen else sites
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


class RecurrentTrajectory(Trajectory):
    """A trajectory of a recurrent cell: ``state_shape = (B, T, S)``, blocks are time steps.

    Subclasses give the per-step Jacobian J_t = ∂z_t/∂z_{t−1}, applied at step ``t`` (an
    ``int``, with ``V`` of shape ``(k, B, S)``) or at all steps at once (``t =
    slice(None)``, ``V`` of shape ``(k, B, T, S)``), from caches of shape ``(B, T, ...)``
    indexed ``cache[:, t]``: either as pure functions, :meth:`step_kernel` (the built-in
    cells; backends that compile per shape then run each step of P and Pᵀ compiled), or by
    overriding ``_jvp_prev(V, t)`` and ``_vjp_prev(W, t)``; and ``_make_sites()``.  Step t's
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
    _kernel: StepKernel | None = None

    @property
    def site_shape(self) -> tuple[int, ...]:
        return tuple(self.states.shape[:2])

    @property
    def n_steps(self) -> int:
        return int(self.states.shape[1])

    @property
    def prev_states(self) -> Any:
        """z_{t−1} at every step, shape ``(B, T, S)`` (h0, or zeros, at t = 0)."""
        return self.model._shift(self.states, self.h0)

    def block(self, V: Any, t: int) -> Any:
        return V[:, :, t, ...]

    def join(self, blocks: list[Any]) -> Any:
        return self.xp.stack(blocks, axis=2)

    def step_kernel(self) -> StepKernel | None:
        """J_t as pure functions of arrays (:class:`StepKernel`), or None (the default).

        A subclass returning None overrides ``_jvp_prev`` and ``_vjp_prev`` instead.
        """
        return None

    def _step_kernel(self) -> StepKernel:
        if self._kernel is None:
            kernel = self.step_kernel()
            if kernel is None:
                msg = (
                    f"{type(self).__name__}: a recurrent trajectory defines step_kernel() or "
                    "overrides _jvp_prev and _vjp_prev"
                )
                raise NotImplementedError(msg)
            self._kernel = kernel
        return self._kernel

    def _jvp_prev(self, V: Any, t: int | slice) -> Any:
        """J_t V (see the class docstring)."""
        k = self._step_kernel()
        return k.jvp(self.xp, *k.static, k.operands, V, t)

    def _vjp_prev(self, W: Any, t: int | slice) -> Any:
        """J_tᵀ W (see the class docstring)."""
        k = self._step_kernel()
        return k.vjp(self.xp, *k.static, k.operands, W, t)

    def step_jvp(self, t: int, v: Any) -> Any:
        return self._jvp_prev(v, t)

    def step_vjp(self, t: int, w: Any) -> Any:
        return self._vjp_prev(w, t)

    def state_jvp(self, V: Any) -> Any:
        xp = self.xp
        zero = xp.zeros_like(V[:, :, :1, ...])
        return self._jvp_prev(xp.concat([zero, V[:, :, :-1, ...]], axis=2), slice(None))

    def state_vjp(self, W: Any) -> Any:
        xp = self.xp
        U = self._vjp_prev(W, slice(None))
        return xp.concat([U[:, :, 1:, ...], xp.zeros_like(U[:, :, :1, ...])], axis=2)


# -- models --------------------------------------------------------------------------------------
class Model(abc.ABC):
    """Base class of kpflow models (see the module docstring for the whole contract).

    Subclasses implement :meth:`param_shapes`, :meth:`unroll`, :meth:`update_map`,
    :meth:`_check_inputs` and :meth:`_make_trajectory`; ``init`` and ``run`` are shared.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import MLP
    >>> model = MLP((2, 3, 1))
    >>> params = model.init(0, like=xp.zeros(1))
    >>> x = xp.ones((4, 2))
    >>> z = model.unroll(params, x)
    >>> bool(xp.all(model.update_map(params, z, x) == z))  # z solves F(z, θ) = z − f(z; θ) = 0
    True
    """

    #: The parameters held fixed: K, J_S, NTK_S and training cover the others (see
    #: :meth:`with_frozen`).  Empty for a model as constructed.
    frozen: frozenset[str] = frozenset()

    def _init_bound(self) -> float:
        """Half-width of the default uniform initialisation (torch's 1/√fan)."""
        return 1.0

    def with_frozen(self, names: Any) -> Model:
        """A copy of this model whose parameters ``names`` are held fixed (frozen).

        The NTK is the kernel of gradient descent on the parameters it moves, so the frozen
        ones are left out exactly: their rows of the site blocks C_w (columns of the site
        variables A_w) are dropped from K = F Fᵀ, J_S = P F and NTK_S = P K Pᵀ, J_S's
        ``to_params`` names the trained parameters only, :func:`kpflow.training.train`
        leaves the frozen ones unchanged (zero gradients), and the dense references
        differentiate the others only.  ``run`` still takes every parameter.

        Parameters
        ----------
        names : iterable of str
            Parameter names of :meth:`param_shapes`; empty gives an unfrozen copy.

        Returns
        -------
        Model
            A shallow copy with ``frozen == frozenset(names)``.

        Raises
        ------
        TypeError
            If ``names`` is a str or holds a non-str, or if kpflow does not know which site
            rows are which parameter for this model (:func:`kpflow.ntk.site_parameters`).
        ValueError
            For a name that is not a parameter, or when every parameter would be frozen.

        Examples
        --------
        >>> import numpy as np
        >>> import kpflow
        >>> from kpflow.models import GRU
        >>> model = GRU(2, 3).with_frozen(["weight_ih"])
        >>> traj = model.run(GRU(2, 3).init(0), np.ones((1, 4, 2)))
        >>> J = kpflow.state_jacobian(traj)
        >>> J.shape_in, sorted(J.to_params(J.rmatvec(traj.states)))   # 3·3·(3 + 2) = 45
        ((45,), ['bias_hh', 'bias_ih', 'weight_hh'])
        """
        from kpflow.ntk.jacobian import site_parameters

        where = f"{type(self).__name__}.with_frozen"
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            got = repr(names) if isinstance(names, str) else [type(n).__name__ for n in names]
            msg = f"{where}: expected names to be an iterable of parameter names (str), got {got}"
            raise TypeError(msg)
        frozen, shapes = frozenset(names), self.param_shapes()
        unknown = sorted(frozen - set(shapes))
        if unknown:
            msg = f"{where}: expected names among the parameters {sorted(shapes)}, got unknown {unknown}"
            raise ValueError(msg)
        if frozen == set(shapes):
            msg = f"{where}: every parameter {sorted(shapes)} would be frozen (the NTK would be zero)"
            raise ValueError(msg)
        if frozen and site_parameters(self) is None:
            msg = (
                f"{where}: kpflow does not know which site rows are which parameter for "
                f"{type(self).__name__}, so it cannot leave {sorted(frozen)} out of the NTK; register "
                "a rule with kpflow.ntk.site_parameters.register"
            )
            raise TypeError(msg)
        out = copy.copy(self)
        out.frozen = frozen
        return out

    @property
    def feature_columns(self) -> tuple[int, int]:
        """Columns ``(start, stop)`` of the per-site state vector that a readout reads.

        All ``state_size`` of them by default; h of the LSTM's [h; c], the last layer of
        the MLP.  A trajectory's ``feature_columns`` are its model's.

        Examples
        --------
        >>> from kpflow.models import LSTM, MLP
        >>> LSTM(2, 3).feature_columns, MLP((2, 4, 3)).feature_columns
        ((0, 3), (4, 7))
        """
        return (0, int(self.state_size))  # type: ignore[attr-defined]

    @abc.abstractmethod
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The parameter names (PyTorch's) and their shapes."""

    def init(
        self, rng: Any = None, *, like: Any = None, dtype: Any = None, device: Any = None
    ) -> dict[str, Any]:
        """Random parameters, torch's default U(−1/√H, 1/√H), drawn on the host (SPEC 7).

        Parameters
        ----------
        rng : int, numpy.random.Generator or None
        like : array, optional
            The parameters take its namespace, dtype and device (numpy float64 without it).
        dtype, device : optional
            Override the dtype and device.

        Returns
        -------
        dict of str to array
            Shapes as in :meth:`param_shapes`.
        """
        return draw_uniform(
            self.param_shapes(),
            self._init_bound(),
            rng,
            like=like,
            dtype=dtype,
            device=device,
            where=f"{type(self).__name__}.init",
        )

    def check_params(self, params: Any, where: str) -> tuple[Any, Any, Any]:
        """Check keys and shapes of ``params``; return their (xp, dtype, device)."""
        if not isinstance(params, dict):
            msg = f"{where}: expected params to be a dict of arrays, got {type(params).__name__}"
            raise TypeError(msg)
        shapes = self.param_shapes()
        missing = sorted(set(shapes) - set(params))
        extra = sorted(set(params) - set(shapes))
        if missing:
            msg = f"{where}: params is missing the key(s) {missing}; expected keys {sorted(shapes)}"
            raise ValueError(msg)
        if extra:
            msg = f"{where}: params has unexpected key(s) {extra}; expected keys {sorted(shapes)}"
            raise ValueError(msg)
        xp = array_namespace(*params.values(), where=where)
        first = params[next(iter(shapes))]
        for k, s in shapes.items():
            got = tuple(params[k].shape)
            if got != tuple(s):
                msg = f"{where}: expected params[{k!r}] of shape {tuple(s)}, got {got}"
                raise ValueError(msg)
            if params[k].dtype != first.dtype:
                msg = f"{where}: params mix dtypes {first.dtype} and {params[k].dtype} (at {k!r})"
                raise TypeError(msg)
        if not xp.isdtype(first.dtype, "real floating"):
            msg = f"{where}: expected real floating params, got {first.dtype}"
            raise TypeError(msg)
        return xp, first.dtype, device_of(first)

    def _check_array(self, a: Any, name: str, shape: tuple[int, ...], meta: tuple, where: str) -> None:
        xp, dtype, device = meta
        a_xp = array_namespace(a, where=where)
        if a_xp is not xp:
            msg = f"{where}: {name} comes from {namespace_name(a_xp)} but params from {namespace_name(xp)}"
            raise TypeError(msg)
        if a.dtype != dtype:
            msg = f"{where}: expected {name} of dtype {dtype} (the params' dtype), got {a.dtype}"
            raise TypeError(msg)
        # None: a jax tracer (params under jax.grad), whose device is not known there
        if device_of(a) != device and device_of(a) is not None and device is not None:
            msg = f"{where}: {name} lives on {device_of(a)} but params on {device}"
            raise TypeError(msg)
        if tuple(a.shape) != shape:
            msg = f"{where}: expected {name} of shape {shape}, got {tuple(a.shape)}"
            raise ValueError(msg)

    def _check_feedforward_inputs(
        self, x: Any, h0: Any, meta: tuple, where: str, *, ndim: int, feature: int, shape_text: str
    ) -> None:
        """A feed-forward model's inputs: no h0; x of ``ndim`` axes, none empty, the last ``feature``.

        ``shape_text`` describes the expected shape in the error, e.g. ``"(B, n_in=3) with B >= 1"``.
        """
        if h0 is not None:
            msg = f"{where}: expected h0=None for a feed-forward model, got {type(h0).__name__}"
            raise ValueError(msg)
        x_xp = array_namespace(x, where=where)
        if x_xp is not meta[0]:
            msg = f"{where}: x comes from {namespace_name(x_xp)} but params from {namespace_name(meta[0])}"
            raise TypeError(msg)
        if x.ndim != ndim or x.shape[-1] != feature or any(int(n) < 1 for n in x.shape[:-1]):
            msg = f"{where}: expected x of shape {shape_text}, got {tuple(x.shape)}"
            raise ValueError(msg)
        self._check_array(x, "x", tuple(x.shape), meta, where)

    @abc.abstractmethod
    def _check_inputs(self, x: Any, h0: Any, meta: tuple, where: str) -> None:
        """Validate ``x`` and ``h0`` against the model and the params' (xp, dtype, device)."""

    @abc.abstractmethod
    def unroll(self, params: dict[str, Any], x: Any, h0: Any = None) -> Any:
        """The pure forward map θ ↦ z (array-API code, differentiable by torch.func / jax)."""

    @abc.abstractmethod
    def update_map(self, params: dict[str, Any], states: Any, x: Any, h0: Any = None) -> Any:
        """f(z; θ) of the constraint F = z − f(z; θ): each block recomputed from the given states."""

    @abc.abstractmethod
    def _make_trajectory(self, params: dict[str, Any], x: Any, h0: Any, states: Any) -> Trajectory:
        """Build the model's :class:`Trajectory` (caching the derivative pieces)."""

    def run(self, params: dict[str, Any], x: Any, h0: Any = None) -> Trajectory:
        """Run the model once and return its :class:`Trajectory`.

        Raises
        ------
        ValueError
            For ``x`` of the wrong rank or feature size, ``params`` missing a key or with a
            wrong shape, ``h0`` of the wrong shape, or non-finite states.
        TypeError
            For mixed namespaces, dtypes or devices.
        """
        where = f"{type(self).__name__}.run"
        meta = self.check_params(params, where)
        self._check_inputs(x, h0, meta, where)
        xp = meta[0]
        # Checked before the run: an inf input would otherwise surface as a floating-point
        # warning inside the first matmul, and an inf weight can hide behind a saturating
        # tanh and give finite states with a meaningless NTK.
        named = [(f"params[{k!r}]", v) for k, v in params.items()] + [("x", x), ("h0", h0)]
        for name, value in named:
            if value is not None and not bool(xp.all(xp.isfinite(value))):
                msg = f"{where}: expected finite values in {name}, got inf or nan"
                raise ValueError(msg)
        # The trajectory owns what it was computed from: it caches states and derivatives
        # computed from params, x and h0, so a later in-place update of the caller's arrays
        # (an optimizer step) must not leak into it.
        params = {k: owned_copy(v) for k, v in params.items()}
        x = owned_copy(x)
        h0 = None if h0 is None else owned_copy(h0)
        states = self._differentiable_unroll(params, x, h0)
        if not bool(xp.all(xp.isfinite(states))):
            msg = f"{where}: the states are not finite (inf or nan); check x, h0 and the scale of params"
            raise NonFiniteStatesError(msg)
        return self._make_trajectory(params, x, h0, states)

    def _differentiable_unroll(self, params: dict[str, Any], x: Any, h0: Any) -> Any:
        """``unroll``, differentiable where the caller's arrays are, without autograd's saved tensors.

        When autograd would record the forward pass (torch: grad enabled and a parameter that
        requires grad; ``x`` and ``h0`` not), the states are computed without a graph and
        attached to the parameters by one node whose backward is kpflow's own
        J_Sᵀ = Fᵀ Pᵀ (backpropagation through time, then the per-site gradients; see
        :func:`kpflow.state_jacobian`).  Gradients are those of ``unroll`` (tested against
        ``torch.func``), but the run keeps none of the per-step temporaries that autograd
        would save: for a GRU of 1.6M states, 16 MB instead of 164 MB.  A second derivative
        through the states raises (it would need the graph).  Models whose parameters kpflow
        cannot name per site (:func:`kpflow.ntk.site_parameters` is None), and inputs or
        ``h0`` that require grad, take autograd's own route.
        """
        from kpflow.backends import get_backend
        from kpflow.ntk.jacobian import site_parameters

        adapter = get_backend(x)
        recorded = adapter.records_graph(tuple(params.values()))
        # kpflow's J_Sᵀ has no rows for frozen parameters: one that requires grad anyway
        # takes autograd's route too
        frozen = tuple(params[k] for k in self.frozen)
        if not recorded or adapter.records_graph((x, h0, *frozen)) or site_parameters(self) is None:
            return self.unroll(params, x, h0)
        with adapter.no_grad():
            plain = {k: adapter.graph_free(v) for k, v in params.items()}
            states = self.unroll(plain, x, h0)
        trained = {k: v for k, v in params.items() if k not in self.frozen}
        return adapter.attach_vjp(states, trained, partial(_states_vjp, self, plain, x, h0, states))


def _states_vjp(model: Model, params: dict[str, Any], x: Any, h0: Any, states: Any, g: Any) -> dict[str, Any]:
    """θ-gradient of ⟨g, z⟩ for the states ``z`` of ``model.run``: J_Sᵀ g in the parameters' names."""
    from kpflow.ntk.jacobian import state_jacobian

    J = state_jacobian(model._make_trajectory(params, x, h0, states))
    return J.to_params(J.rmatvec(g))


def _trained_sites(model: Model, sites: list[Site]) -> list[Site]:
    """``sites`` without the site-variable columns of ``model.frozen`` (sites left empty dropped)."""
    from kpflow.ntk.jacobian import _rows_in_site, site_parameters

    rows, shapes = site_parameters(model), model.param_shapes()
    if rows is None:  # with_frozen refuses such a model
        msg = f"{type(model).__name__}: frozen parameters without a site layout; this is a kpflow bug"
        raise RuntimeError(msg)
    out = []
    for site in sites:
        spans: list[tuple[int, int]] = []
        at = 0
        for entry in rows[site.name]:
            name, n = entry[0], _rows_in_site(entry, shapes)
            if name not in model.frozen:
                if spans and spans[-1][1] == at:  # adjacent trained columns: one slice
                    spans[-1] = (spans[-1][0], at + n)
                else:
                    spans.append((at, at + n))
            at += n
        if at != site.p:
            msg = (
                f"{type(model).__name__}: site {site.name!r} has p={site.p} site variables but "
                f"site_parameters fills {at}; this is a kpflow bug"
            )
            raise RuntimeError(msg)
        if not spans:
            continue
        if spans == [(0, at)]:
            out.append(site)
            continue
        A = site.variables
        parts = [A[:, lo:hi] for lo, hi in spans]
        kept = copy.copy(site)
        kept.variables = parts[0] if len(parts) == 1 else array_namespace(A).concat(parts, axis=1)
        out.append(kept)
    return out


class RecurrentModel(Model):
    """A recurrent cell z_t = step(z_{t−1}, x_t; θ) with x of shape (B, T, n_in).

    Subclasses implement :meth:`step`, :meth:`param_shapes` and :meth:`_make_trajectory`
    and set ``n_in``, ``n_hidden`` and ``state_size`` (S).

    Attributes
    ----------
    n_in, n_hidden, state_size : int

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import RNN
    >>> model = RNN(2, 3)
    >>> params = model.init(0, like=xp.zeros(1))
    >>> model.step(params, xp.zeros((4, 3)), xp.ones((4, 2))).shape
    (4, 3)
    """

    n_in: int
    n_hidden: int
    state_size: int

    def _init_bound(self) -> float:
        return 1.0 / float(np.sqrt(self.n_hidden))

    @abc.abstractmethod
    def step(self, params: dict[str, Any], h_prev: Any, x_t: Any) -> Any:
        """One step: h_prev ``(..., S)`` and x_t ``(..., n_in)`` to h_t ``(..., S)`` (pure)."""

    def _check_inputs(self, x: Any, h0: Any, meta: tuple, where: str) -> None:
        xp = meta[0]
        x_xp = array_namespace(x, where=where)
        if x_xp is not xp:
            msg = f"{where}: x comes from {namespace_name(x_xp)} but params from {namespace_name(xp)}"
            raise TypeError(msg)
        if x.ndim != 3 or x.shape[2] != self.n_in:
            msg = f"{where}: expected x of shape (B, T, n_in={self.n_in}), got {tuple(x.shape)}"
            raise ValueError(msg)
        if x.shape[0] < 1 or x.shape[1] < 1:
            msg = f"{where}: expected x with B >= 1 and T >= 1, got {tuple(x.shape)}"
            raise ValueError(msg)
        self._check_array(x, "x", tuple(x.shape), meta, where)
        if h0 is not None:
            self._check_array(h0, "h0", (x.shape[0], self.state_size), meta, where)

    def _shift(self, states: Any, h0: Any) -> Any:
        """z_{t−1} at every step: ``(B, T, S)`` with h0 (or zeros) in front."""
        xp = array_namespace(states)
        if h0 is None:
            first = xp.zeros_like(states[:, :1, :])
        else:
            first = h0[:, None, :]
        return xp.concat([first, states[:, :-1, :]], axis=1)

    def unroll(self, params: dict[str, Any], x: Any, h0: Any = None) -> Any:
        xp = array_namespace(x)
        B, T = x.shape[0], x.shape[1]
        any_param = next(iter(params.values()))
        h = xp.zeros((B, self.state_size), dtype=any_param.dtype, device=device_of(x)) if h0 is None else h0
        out = []
        for t in range(T):
            h = self.step(params, h, x[:, t, :])
            out.append(h)
        return xp.stack(out, axis=1)

    def update_map(self, params: dict[str, Any], states: Any, x: Any, h0: Any = None) -> Any:
        return self.step(params, self._shift(states, h0), x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_in={self.n_in}, n_hidden={self.n_hidden})"
