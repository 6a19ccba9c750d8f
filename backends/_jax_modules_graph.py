"""kpflow models of any Equinox or Flax NNX module, sites found from its computation.

:func:`module_model` traces the module (:mod:`kpflow.backends._jax_modules_trace`) and
builds a model of kpflow's hook engine (:mod:`kpflow.models.hooks`):

- feed-forward (``states=``): :class:`ModuleStack`, states z = the outputs of the chosen
  submodules, the update map f(z; θ) the module's forward pass cut at every state (state l
  computed from the earlier states in z), so ∂f/∂z is strictly block lower triangular
  (residual streams and skips included) and P = (I − ∂f/∂z)⁻¹ = Σ_{i<L} (∂f/∂z)^i is
  exact after L − 1 products, each one jvp (Pᵀ: one vjp) of the whole forward pass;
- recurrent (``recurrent=True``): :class:`ModuleCell`, a :class:`~kpflow.models.Recurrent`
  whose step is the cell module, P by the engine's recursion over the steps.

K comes from the engine's hook sites: the found weight sites and one site per leaf taken by
the autodiff rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from kpflow.backends._jax_modules_select import _frozen, _library, _pure, _select_states, _wrap
from kpflow.backends._jax_modules_trace import (
    Context,
    analyse,
    interpret,
    leaf_from_weight,
    mark,
    weight_matrix,
    weight_shape,
)

from kpflow.models._hook_base import HookModel, HookTrajectory
from kpflow.models.base import Model, Trajectory
from kpflow.models.hooks import Recurrent, _Hook
from kpflow.models.layout import Layout

__all__ = ["ModuleCell", "ModuleStack", "module_model"]

_WHERE = "kpflow.backends.jax.from_module"


# -- the traced module --------------------------------------------------------------------------------
class _Traced:
    """A module's forward pass for one example, traced once: jaxpr, plan, names and shapes."""

    def __init__(
        self, fn: Callable, leaves: list, names: list[str], examples: tuple, state_names: list
    ) -> None:
        self.closed = jax.make_jaxpr(fn)(leaves, *examples)
        self.n_leaves = len(leaves)
        self.plan = analyse(self.closed, self.n_leaves)
        self.names = names
        self.leaf_shapes = [tuple(a.shape) for a in leaves]
        self.examples = tuple((tuple(e.shape), e.dtype) for e in examples)
        counts: dict[int, int] = {}
        for _, index, _, _ in self.plan.states:
            counts[index] = counts.get(index, 0) + 1
        seen: dict[int, int] = {}
        self.state_names, self.state_slices = [], []
        lo = 0
        for _, index, shape, _ in self.plan.states:
            k = seen[index] = seen.get(index, -1) + 1
            name = state_names[index] if counts[index] == 1 else f"{state_names[index]}#{k}"
            self.state_names.append(name)
            self.state_slices.append((lo, lo + math.prod(shape), shape))
            lo += math.prod(shape)
        self.n_state = lo
        self.shapes: dict[str, tuple[int, ...]] = {}
        for l, name in enumerate(names):
            if l in self.plan.weights:
                self.shapes[name] = weight_shape(self.leaf_shapes[l], self.plan.weights[l])
            else:
                self.shapes[name] = (max(1, math.prod(self.leaf_shapes[l])),)

    def params(self, leaves: list) -> dict[str, Any]:
        """kpflow's params of the leaves: a weight leaf as (out, in), any other flattened."""
        out = {}
        for l, (name, a) in enumerate(zip(self.names, leaves, strict=True)):
            orient = self.plan.weights.get(l)
            out[name] = weight_matrix(a, orient) if orient is not None else jnp.reshape(a, (-1,))
        return out

    def leaves(self, params: dict[str, Any]) -> list:
        """The module's leaves of kpflow's params (the inverse of :meth:`params`)."""
        out = []
        for l, name in enumerate(self.names):
            orient = self.plan.weights.get(l)
            a = params[name]
            shape = self.leaf_shapes[l]
            out.append(leaf_from_weight(a, orient, shape) if orient is not None else jnp.reshape(a, shape))
        return out

    def evaluate(self, params: dict[str, Any], args: tuple, lead: tuple, z: Any, hook: Any) -> tuple:
        """The forward pass at every site (leading axes ``lead``), perturbed by the hook's eps.

        Returns (outputs, states): the jaxpr's outputs and the markers' values (the cut
        at z if given), each ``(*lead, ...)``; registers every hook call with ``hook``.
        The pass runs as one compiled program per shape.
        """
        eps = {} if hook is None or hook.eps is None else dict(hook.eps)
        outs, states, sites = _evaluate(self, tuple(lead), params, tuple(args), z, eps)
        if hook is not None:
            for l in self.plan.generic:
                _register(hook, self.names[l], None, self.shapes[self.names[l]][0])
            for i, use in enumerate(self.plan.uses):
                name = self.names[use.leaf]
                for a in sites[i]:
                    _register(hook, name, a, self.shapes[name][0])
        return outs, states

    def _calls(self) -> tuple[dict, dict]:
        """The hook call indices of each generic leaf and of each weight use (generic first)."""
        gen, uses, c = {}, {}, 0
        for l in self.plan.generic:
            gen[l], c = c, c + 1
        for i, use in enumerate(self.plan.uses):
            uses[i] = list(range(c, c + use.n_calls))
            c += use.n_calls
        return gen, uses

    def _evaluate(self, lead: tuple, params: dict, args: tuple, z: Any, eps: dict) -> tuple:
        plan, M = self.plan, math.prod(lead)
        dtype = self._dtype(params)
        gen_calls, use_calls = self._calls()
        gen_eps = {l: jnp.reshape(eps[c], (M, -1)) for l, c in gen_calls.items() if c in eps}
        use_eps = {}
        for i, cs in use_calls.items():
            if any(k in eps for k in cs):
                out = self.shapes[self.names[plan.uses[i].leaf]][0]
                zero = jnp.zeros((M, out), dtype=dtype)
                use_eps[i] = jnp.stack(
                    [jnp.reshape(eps[k], (M, out)) if k in eps else zero for k in cs], axis=1
                )
        weights = {l: params[self.names[l]] for l in plan.weights}
        flat = [jnp.reshape(a, (M, *a.shape[len(lead) :])) for a in args]
        zf = None if z is None else jnp.reshape(z, (M, -1))

        def one(gen_eps: dict, use_eps: dict, z_b: Any, *xs: Any) -> tuple:
            leaves = []
            for l, name in enumerate(self.names):
                if l in plan.weights:
                    leaves.append(leaf_from_weight(weights[l], plan.weights[l], self.leaf_shapes[l]))
                else:
                    a = params[name] + gen_eps[l] if l in gen_eps else params[name]
                    leaves.append(jnp.reshape(a, self.leaf_shapes[l]))
            cut = None
            if z_b is not None:
                cut = {
                    j: jnp.reshape(z_b[lo:hi], shape) for j, (lo, hi, shape) in enumerate(self.state_slices)
                }
            ctx = Context(plan, weights, use_eps, cut)
            outs = interpret(self.closed, ctx, [*leaves, *xs])
            states = [jnp.reshape(ctx.states[j], (-1,)) for j in range(len(self.state_slices))]
            sites = [ctx.site_variables[i] for i in range(len(plan.uses))]
            return outs, states, sites

        z_axis = None if zf is None else 0
        outs, states, sites = jax.vmap(one, in_axes=(0, 0, z_axis, *(0 for _ in flat)))(
            gen_eps, use_eps, zf, *flat
        )
        outs = [jnp.reshape(o, (*lead, *o.shape[1:])) for o in outs]
        states = [jnp.reshape(s, (*lead, -1)) for s in states]
        sites = [
            [jnp.reshape(a[:, s, :], (*lead, int(a.shape[-1]))) for s in range(int(a.shape[1]))]
            for a in sites
        ]
        return outs, states, sites

    @staticmethod
    def _dtype(params: dict[str, Any]) -> Any:
        return next(iter(params.values())).dtype


def _register(hook: _Hook, name: str, a: Any, rows: int) -> None:
    """Record a hook call (a weight call with site variable ``a``, a bias call with None).

    The value of the call is computed (and perturbed) inside the compiled forward pass, so
    the hook only records the call, and checks it against the recorded order.
    """
    c = len(hook.calls)
    if hook.plan is not None and (c >= len(hook.plan) or hook.plan[c] != (name, a is None, (0, rows))):
        msg = (
            f"{hook.where}: hook call {c} ({name!r}) differs from the recorded forward pass; this is a "
            "kpflow bug, please report it"
        )
        raise RuntimeError(msg)
    hook.calls.append((name, a, (0, rows)))


def _evaluate_impl(traced: _Traced, lead: tuple, params: dict, args: tuple, z: Any, eps: dict) -> tuple:
    return traced._evaluate(lead, params, args, z, eps)


_evaluate = jax.jit(_evaluate_impl, static_argnums=(0, 1))


def _check_example(traced: _Traced, x: Any, lead: int, name: str, where: str) -> None:
    (shape, dtype), got = traced.examples[0 if name == "x" else 1], tuple(x.shape[lead:])
    if got != shape or x.dtype != dtype or x.ndim < lead + len(shape):
        axes = ("B",) if lead == 1 else ("B", "T")
        msg = (
            f"{where}: expected {name} of shape ({', '.join(axes)}, *{shape}) and dtype "
            f"{jnp.dtype(dtype).name} "
            f"(the module's traced input), got shape {tuple(x.shape)} and dtype {x.dtype}"
        )
        raise ValueError(msg)


# -- feed-forward: the states of chosen submodules ------------------------------------------------
class ModuleStack(HookModel, Model):
    """A feed-forward module as a kpflow model: z (B, n_state), the chosen submodules' outputs.

    Built by :func:`kpflow.backends.jax.from_module`; ``run(params, x)`` takes x of shape
    (B, *example), the module's own input for one example stacked over the batch.
    ``state_parts`` names each state's columns after its submodule.
    """

    def __init__(self, traced: _Traced) -> None:
        self.traced = traced
        self._shapes = dict(traced.shapes)
        self.n_state = self.state_size = traced.n_state

    @property
    def state_parts(self) -> dict[str, tuple[int, int]]:
        return {
            n: (lo, hi)
            for n, (lo, hi, _) in zip(self.traced.state_names, self.traced.state_slices, strict=True)
        }

    @property
    def feature_columns(self) -> tuple[int, int]:
        """A readout reads the last state."""
        lo, hi, _ = self.traced.state_slices[-1]
        return (lo, hi)

    def layout(self, state_shape: tuple[int, ...]) -> Layout:
        """``(batch, state)``, one block applied by :meth:`ModuleStackTrajectory.solve`."""
        return Layout(
            state_shape,
            ("batch", "state"),
            "solved",
            site_axes=1,
            parts=self.state_parts,
            features=self.feature_columns,
        )

    def _call(self, params: dict[str, Any], z: Any, x: Any, hook: Any) -> Any:
        """f(z; θ): every state recomputed from the earlier states of z, (B, n_state)."""
        _, states = self.traced.evaluate(params, (x,), (int(x.shape[0]),), z, hook)
        return jnp.concatenate(states, axis=-1)

    def unroll(self, params: dict[str, Any], x: Any, h0: Any = None) -> Any:
        _, states = self.traced.evaluate(params, (x,), (int(x.shape[0]),), None, None)
        return jnp.concatenate(states, axis=-1)

    def update_map(self, params: dict[str, Any], states: Any, x: Any, h0: Any = None) -> Any:
        return self._update_map(params, states, x, "ModuleStack.update_map")

    def _check_inputs(self, x: Any, h0: Any, meta: tuple, where: str) -> None:
        if h0 is not None:
            msg = f"{where}: expected h0=None for a feed-forward module, got {type(h0).__name__}"
            raise ValueError(msg)
        if not isinstance(x, jax.Array):
            msg = f"{where}: expected x to be a jax array, got {type(x).__name__}"
            raise TypeError(msg)
        _check_example(self.traced, x, 1, "x", where)

    def _make_trajectory(self, params: dict[str, Any], x: Any, h0: Any, states: Any) -> ModuleStackTrajectory:
        return ModuleStackTrajectory(self, params, x, h0, states)

    def to_leaves(self, params: dict[str, Any]) -> list:
        """The module's parameter leaves (its own shapes and layout) of kpflow's ``params``."""
        return self.traced.leaves(params)

    def __repr__(self) -> str:
        return f"ModuleStack(states={self.traced.state_names}, params={sorted(self._shapes)})"


class ModuleStackTrajectory(HookTrajectory, Trajectory):
    """A run of a :class:`ModuleStack`: hook sites for K, P by the nilpotent series."""

    model: ModuleStack

    def __init__(self, model: ModuleStack, params: dict[str, Any], x: Any, h0: Any, states: Any) -> None:
        super().__init__(model, params, x, h0, states)
        self._record("jax", states, "ModuleStack.run", "(B,)")

    def state_jvp(self, V: Any) -> Any:
        """L V = (∂f/∂z) V for V of shape (k, B, n_state)."""
        return _stack_jvp(self.model, self.names, self.plan, self._operands, V)

    def state_vjp(self, W: Any) -> Any:
        """Lᵀ W = (∂f/∂z)ᵀ W."""
        return _stack_vjp(self.model, self.names, self.plan, self._operands, W)

    def solve(self, V: Any) -> Any:
        """P V = Σ_{i<L} Lⁱ V (L is nilpotent: every state reads earlier states only)."""
        return _series(_stack_jvp, self.model, self.names, self.plan, self._operands, V)

    def solve_adjoint(self, W: Any) -> Any:
        """Pᵀ W = Σ_{i<L} (Lᵀ)ⁱ W."""
        return _series(_stack_vjp, self.model, self.names, self.plan, self._operands, W)


def _stack_f(model: ModuleStack, names: tuple, plan: tuple, operands: tuple) -> Callable:
    values, _, x = operands
    params = dict(zip(names, values, strict=True))
    return lambda z: model._call(params, z, x, _Hook(params, model._shapes, "ModuleStack (P)", plan=plan))


def _stack_jvp_impl(model: ModuleStack, names: tuple, plan: tuple, operands: tuple, V: Any) -> Any:
    f = _stack_f(model, names, plan, operands)
    z = operands[1]
    return jax.vmap(lambda v: jax.jvp(f, (z,), (v,))[1])(V)


def _stack_vjp_impl(model: ModuleStack, names: tuple, plan: tuple, operands: tuple, W: Any) -> Any:
    _, pull = jax.vjp(_stack_f(model, names, plan, operands), operands[1])
    return jax.vmap(lambda w: pull(w)[0])(W)


def _series_impl(
    action: Callable, model: ModuleStack, names: tuple, plan: tuple, operands: tuple, V: Any
) -> Any:
    """Σ_{i<L} Aⁱ V for the nilpotent A = ``action`` (L states): Y ← V + A Y, L − 1 times."""
    steps = len(model.traced.state_slices) - 1
    return jax.lax.fori_loop(0, steps, lambda _, Y: V + action(model, names, plan, operands, Y), V)


_stack_jvp = jax.jit(_stack_jvp_impl, static_argnums=(0, 1, 2))
_stack_vjp = jax.jit(_stack_vjp_impl, static_argnums=(0, 1, 2))
_series = jax.jit(_series_impl, static_argnums=(0, 1, 2, 3))


# -- recurrent: a cell module as the step ---------------------------------------------------------
class _TracedStep:
    """A traced cell as a :class:`~kpflow.models.Recurrent` step ``step(params, h, x, site)``.

    The compiled forward pass computes every weight use itself and registers it with the
    hook ``site`` (:meth:`_Traced.evaluate`), so it reads the parameter values the hook
    holds; the guarded ``params`` that keep a user's step on the hooks are not needed.
    """

    def __init__(self, traced: _Traced) -> None:
        self.traced = traced

    def __call__(self, params: Any, h: Any, x: Any, site: _Hook) -> Any:
        lead = tuple(int(n) for n in h.shape[:-1])
        outs, _ = self.traced.evaluate(site.params, (x, h), lead, None, site)
        return outs[0]


class ModuleCell(Recurrent):
    """A cell module h_t = cell(x_t, h_{t−1}) (Flax: (carry, y) = cell(carry, x_t)) as a hook cell.

    The state is the module's hidden structure concatenated in its own order (an Equinox
    LSTMCell's (h, c) as [h; c], a Flax LSTM's carry (c, h) as [c; h]).
    """

    def __init__(self, traced: _Traced, n_in: int, hidden: tuple[int, ...]) -> None:
        super().__init__(_TracedStep(traced), n_in=n_in, n_hidden=sum(hidden), param_shapes=traced.shapes)
        self.traced, self.hidden = traced, hidden

    def _check_inputs(self, x: Any, h0: Any, meta: tuple, where: str) -> None:
        if not isinstance(x, jax.Array) or x.ndim < 2:
            msg = f"{where}: expected x to be a jax array of shape (B, T, *input), got {type(x).__name__}"
            raise TypeError(msg)
        _check_example(self.traced, x, 2, "x", where)
        if h0 is not None:
            self._check_array(h0, "h0", (int(x.shape[0]), self.state_size), meta, where)

    def to_leaves(self, params: dict[str, Any]) -> list:
        """The module's parameter leaves of kpflow's ``params``."""
        return self.traced.leaves(params)

    def __repr__(self) -> str:
        return f"ModuleCell(n_in={self.n_in}, hidden={self.hidden}, params={sorted(self._shapes)})"


def module_model(
    module: Any,
    example: Any,
    *,
    states: Any = None,
    recurrent: bool = False,
    hidden: Any = None,
    frozen: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """The kpflow model and params of any Equinox / Flax NNX module (see ``from_module``)."""
    lib, api = _library(module)
    if recurrent:
        return _cell_model(module, lib, api, example, hidden, frozen)
    chosen = _select_states(module, lib, api, states)
    wrapped = _wrap(module, lib, api, chosen) if chosen else module
    fn, leaves, names = _pure(wrapped, lib, api)
    if not chosen:  # no submodule: the module's output is the one state
        inner = fn

        def fn(leaves: list, *args: Any) -> Any:
            out = inner(leaves, *args)
            return mark(out[0] if isinstance(out, tuple) else out, 0)

        chosen = ["output"]
    traced = _Traced(fn, leaves, names, (_example_of(example, "example"),), chosen)
    missing = [p for i, p in enumerate(chosen) if all(st[1] != i for st in traced.plan.states)]
    if missing and states is not None:
        msg = f"{_WHERE}: the state submodule(s) {missing} are never called by the module's forward pass"
        raise ValueError(msg)
    if not traced.plan.states:
        msg = f"{_WHERE}: no chosen state submodule is called by the forward pass; states chose {chosen}"
        raise ValueError(msg)
    for _, _, _, dtype in traced.plan.states:
        if leaves and dtype != leaves[0].dtype:
            msg = (
                f"{_WHERE}: a state is {jnp.dtype(dtype).name} but the parameters are {leaves[0].dtype}; "
                "make both alike"
            )
            raise TypeError(msg)
    model = ModuleStack(traced)
    return _frozen(model, names, frozen), traced.params(leaves)


def _example_of(example: Any, name: str) -> Any:
    if not hasattr(example, "shape") or not hasattr(example, "dtype"):
        msg = (
            f"{_WHERE}: expected {name} to be an array (or jax.ShapeDtypeStruct) of one input, "
            f"got {type(example).__name__}"
        )
        raise TypeError(msg)
    return jax.ShapeDtypeStruct(tuple(example.shape), example.dtype)


def _cell_model(module: Any, lib: str, api: Any, example: Any, hidden: Any, frozen: Any) -> tuple[Any, dict]:
    x = _example_of(example, "example")
    if hidden is None:
        size = getattr(module, "hidden_size", getattr(module, "hidden_features", None))
        lstm = type(module).__name__ in ("LSTMCell", "OptimizedLSTMCell")
        if size is None:
            msg = (
                f"{_WHERE}: give hidden= (an int, or a tuple of ints for a tuple state) for "
                f"{type(module).__name__}"
            )
            raise ValueError(msg)
        hidden = (int(size), int(size)) if lstm else int(size)
    sizes = (hidden,) if isinstance(hidden, int) else tuple(int(n) for n in hidden)
    fn, leaves, names = _pure(module, lib, api)
    flax_cell = lib == "nnx" and isinstance(module, api.RNNCellBase)

    def step(leaves: list, x_t: Any, h: Any) -> Any:
        parts, lo = [], 0
        for n in sizes:
            parts.append(h[lo : lo + n])
            lo += n
        state = parts[0] if isinstance(hidden, int) else tuple(parts)
        if flax_cell:
            new = fn(leaves, state, x_t)[0]
        else:
            new = fn(leaves, x_t, state)
        new = new if isinstance(new, tuple) else (new,)
        return jnp.concatenate([jnp.reshape(p, (-1,)) for p in new])

    dtype = leaves[0].dtype if leaves else jnp.float32
    traced = _Traced(step, leaves, names, (x, jax.ShapeDtypeStruct((sum(sizes),), dtype)), [])
    n_in = int(x.shape[-1]) if len(x.shape) else 1
    model = ModuleCell(traced, n_in, sizes)
    return _frozen(model, names, frozen), traced.params(leaves)
