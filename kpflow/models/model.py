"""The model classes: :class:`Model` (parameters, checks, ``run``) and :class:`RecurrentModel`.

A model declares its parameters (``param_shapes``), its forward map (``unroll``,
``update_map``), its state's layout (``layout``, a :class:`~kpflow.models.layout.Layout`)
and its trajectory (``_make_trajectory``); ``init``, the checks and ``run`` are shared.
See :mod:`kpflow.models.base` for the whole contract.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from kpflow._array import array_namespace, device_of, namespace_name, to_host
from kpflow.models._compiled import Config, compiled
from kpflow.models.arrays import draw_uniform, owned_copy
from kpflow.models.layout import Layout
from kpflow.models.sites_table import SiteDecl, SiteRows, table_rows
from kpflow.models.trajectory import Trajectory

__all__ = ["Model", "NonFiniteStatesError", "RecurrentModel", "register_states_vjp"]


class NonFiniteStatesError(ValueError):
    """A model's forward pass gave inf or nan states (finite inputs and parameters).

    A ``ValueError``; :func:`kpflow.training.train` catches it to stop a diverging run.
    """


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

    #: Whether the model's batch rows are independent (its layout's ``independent_rows``:
    #: no step, D_w or readout mixes two rows).  False unless the model says so: every
    #: built-in model sets it True, a hook model takes it as an argument.
    independent_rows: bool = False

    def _init_bound(self) -> float:
        """Half-width of the default uniform initialisation (torch's 1/√fan)."""
        return 1.0

    def site_table(self) -> tuple[SiteDecl, ...] | None:
        """The model's weight sites, declared (:class:`~kpflow.models.sites_table.SiteDecl`), or None.

        Every built-in model answers with its one site table, from which its trajectories
        build their sites and :meth:`site_rows` is read.  None (the default) means not
        declared.
        """
        return None

    def site_rows(self) -> dict[str, SiteRows] | None:
        """Which rows of each site's block C_w are which named parameter, or None if not known.

        ``{site name: [(param, (lo, hi)), ...]}``: rows ``lo:hi`` of ``param``'s first axis,
        transposed, in the order of the site's rows (:data:`~kpflow.models.sites_table.SiteRows`);
        rows that reach no site under :data:`~kpflow.models.sites_table.NO_SITE`.  Read off
        :meth:`site_table`.  A model class of one's own without a table overrides this to make
        J_S's ``to_params`` / ``from_params`` and :meth:`with_frozen` work.

        Examples
        --------
        >>> from kpflow.models import GRU
        >>> GRU(2, 3).site_rows()["in"]
        [('weight_ih', (6, 9)), ('bias_ih', (6, 9))]
        """
        table = self.site_table()
        return None if table is None else table_rows(table)

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
            rows are which parameter for this model (:meth:`site_rows` is None).
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
        if frozen and self.site_rows() is None:
            msg = (
                f"{where}: kpflow does not know which site rows are which parameter for "
                f"{type(self).__name__}, so it cannot leave {sorted(frozen)} out of the NTK; give the "
                "model class a site_rows() method (see kpflow.models.Model.site_rows)"
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

    @property
    def state_parts(self) -> dict[str, tuple[int, int]]:
        """Named column ranges ``(start, stop)`` of the per-site state vector.

        One part ``"h"``, every column, by default; the LSTM's [h; c] has ``"h"`` and ``"c"``.

        Examples
        --------
        >>> from kpflow.models import RNN
        >>> RNN(2, 3).state_parts
        {'h': (0, 3)}
        """
        return {"h": (0, int(self.state_size))}  # type: ignore[attr-defined]

    @abc.abstractmethod
    def layout(self, state_shape: tuple[int, ...]) -> Layout:
        """The :class:`~kpflow.models.layout.Layout` of a state of shape ``state_shape``.

        Its axes, the kind and sizes of its blocks and its parts; a trajectory's geometry
        and the path :func:`kpflow.ntk.propagator` takes are read from it.
        """

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
        compiled = _compiled_forward(self, x)
        if compiled is not None:
            # one compiled program (jax): the checks below and the run, read on the host once
            states, finite = compiled(params, x, h0)
            _raise_nonfinite(where, [*params, "x", "h0", "states"], [bool(f) for f in to_host(finite)])
            return self._make_trajectory(params, x, h0, states)
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
        _raise_nonfinite(where, ["states"], [bool(xp.all(xp.isfinite(states)))])
        return self._make_trajectory(params, x, h0, states)

    def _checked_unroll(self, params: dict[str, Any], x: Any, h0: Any) -> tuple[Any, Any]:
        """``(states, finite)``: ``unroll`` and whether each of params, x, h0, states is finite.

        Pure: on a backend that compiles per shape (jax) :meth:`run` compiles it as one
        program (:func:`_compiled_forward`), which a recurrent model runs as one compiled
        loop over time (:meth:`RecurrentModel._scan_unroll`).
        """
        xp = array_namespace(x)
        states = self._scan_unroll(params, x, h0)
        checked = [*params.values(), x, x if h0 is None else h0, states]
        return states, xp.stack([xp.all(xp.isfinite(v)) for v in checked])

    def _scan_unroll(self, params: dict[str, Any], x: Any, h0: Any) -> Any:
        """``unroll`` written for a compiled run (default: ``unroll`` itself)."""
        return self.unroll(params, x, h0)

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
        cannot name per site (:meth:`site_rows` is None), and inputs or
        ``h0`` that require grad, take autograd's own route, as does every model before
        :mod:`kpflow.ntk` has registered J_Sᵀ (:func:`register_states_vjp`).
        """
        from kpflow.backends import get_backend

        adapter = get_backend(x)
        recorded = adapter.records_graph(tuple(params.values()))
        # kpflow's J_Sᵀ has no rows for frozen parameters: one that requires grad anyway
        # takes autograd's route too
        frozen = tuple(params[k] for k in self.frozen)
        if (
            not recorded
            or not _STATES_VJP
            or adapter.records_graph((x, h0, *frozen))
            or self.site_rows() is None
        ):
            return self.unroll(params, x, h0)
        with adapter.no_grad():
            plain = {k: adapter.graph_free(v) for k, v in params.items()}
            states = self.unroll(plain, x, h0)
        trained = {k: v for k, v in params.items() if k not in self.frozen}
        return adapter.attach_vjp(states, trained, partial(_states_vjp, self, plain, x, h0, states))


def _raise_nonfinite(where: str, names: list[str], finite: list[bool]) -> None:
    """Raise for the first of ``names`` (params' keys, ``x``, ``h0``, ``states``) not finite."""
    for name, ok in zip(names, finite, strict=True):
        if ok:
            continue
        if name == "states":
            msg = f"{where}: the states are not finite (inf or nan); check x, h0 and the scale of params"
            raise NonFiniteStatesError(msg)
        label = name if name in ("x", "h0") else f"params[{name!r}]"
        msg = f"{where}: expected finite values in {label}, got inf or nan"
        raise ValueError(msg)


def _forward(config: Config, params: dict[str, Any], x: Any, h0: Any) -> tuple[Any, Any]:
    return config.model._checked_unroll(params, x, h0)


def _compiled_forward(model: Model, x: Any) -> Callable[..., Any] | None:
    """``(params, x, h0) -> (states, finite)`` as one compiled program, or None (run eagerly).

    On a backend that compiles per shape (jax), a model whose settings are plain values
    (every built-in model; :class:`~kpflow.models._compiled.Config`) runs its forward map
    and the finiteness checks of :meth:`Model.run` as one program, compiled once per model
    settings and shapes.
    Elsewhere, and for models holding user code, None.
    """
    from kpflow.backends import get_backend

    adapter = get_backend(x)
    if not getattr(adapter, "compiles_per_shape", False):
        return None
    config = Config(model)
    if config.key is None:
        return None
    return compiled(adapter, _forward, config)


#: J_Sᵀ g of a trajectory in its parameters' names: ``fn(traj, g) -> dict of str to array``.
#: kpflow.ntk registers :func:`kpflow.state_jacobian`'s ``to_params(J.rmatvec(g))`` here at
#: import, so that the model layer never imports the NTK layer.
_STATES_VJP: list[Callable[[Trajectory, Any], dict[str, Any]]] = []


def register_states_vjp(fn: Callable[[Trajectory, Any], dict[str, Any]]) -> None:
    """Register J_Sᵀ: the backward of the node that :meth:`Model.run` attaches to its states.

    ``fn(traj, g)`` returns the θ-gradient of ⟨g, z⟩ for the states z of ``traj``, a dict
    over the trained parameters.  :mod:`kpflow.ntk` registers its state Jacobian at import
    (``import kpflow`` does); without a registered ``fn``, ``run`` differentiates through
    autograd's own graph of ``unroll``.  A later registration replaces an earlier one.

    Examples
    --------
    >>> import kpflow
    >>> from kpflow.models import model
    >>> len(model._STATES_VJP)
    1
    """
    _STATES_VJP[:] = [fn]


def _states_vjp(model: Model, params: dict[str, Any], x: Any, h0: Any, states: Any, g: Any) -> dict[str, Any]:
    """θ-gradient of ⟨g, z⟩ for the states ``z`` of ``model.run``: J_Sᵀ g in the parameters' names."""
    return _STATES_VJP[0](model._make_trajectory(params, x, h0, states), g)


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

    def layout(self, state_shape: tuple[int, ...]) -> Layout:
        """``(batch, time, hidden)``, recurrent in time: one block per step.

        Examples
        --------
        >>> from kpflow.models import LSTM
        >>> lay = LSTM(2, 3).layout((4, 5, 6))
        >>> lay.kind, lay.n_steps, lay.axes, lay.features, lay.independent_rows
        ('recurrent', 5, ('batch', 'time', 'hidden'), (0, 3), True)
        """
        return Layout(
            state_shape,
            ("batch", "time", "hidden"),
            "recurrent",
            site_axes=2,
            parts=self.state_parts,
            features=self.feature_columns,
            independent_rows=self.independent_rows,
        )

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

    def _scan_unroll(self, params: dict[str, Any], x: Any, h0: Any) -> Any:
        """``unroll`` as one loop over time (``Backend.scan``: ``jax.lax.scan``).

        Only where ``unroll`` is this class's own (a subclass that overrides it keeps it).
        """
        if type(self).unroll is not RecurrentModel.unroll:
            return self.unroll(params, x, h0)
        from kpflow.backends import get_backend

        xp = array_namespace(x)
        if h0 is None:
            any_param = next(iter(params.values()))
            h0 = xp.zeros((x.shape[0], self.state_size), dtype=any_param.dtype, device=device_of(x))

        def one_step(h: Any, x_t: tuple) -> tuple[Any, Any]:
            h = self.step(params, h, x_t[0])
            return h, h

        _, out = get_backend(x).scan(one_step, h0, (xp.permute_dims(x, (1, 0, 2)),))
        return xp.permute_dims(out, (1, 0, 2))

    def update_map(self, params: dict[str, Any], states: Any, x: Any, h0: Any = None) -> Any:
        return self.step(params, self._shift(states, h0), x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_in={self.n_in}, n_hidden={self.n_hidden})"
