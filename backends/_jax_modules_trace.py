"""The weight sites of a jax module, found from its computation (used by ``from_module``).

A module's forward pass for one example is traced with :func:`jax.make_jaxpr` as a
function of its parameter leaves.  Walking the jaxpr (into ``jit`` sub-programs):

- a ``dot_general`` with one operand a parameter leaf and no batch dimensions on it is a
  *weight use*: u = a Wᵀ, with W the leaf's free axes (rows, "out") by its contracted
  axes (columns, "in") and a the other operand's contracted axes, one row per position of
  its free axes (the tokens of a sequence); the leaf may reach the ``dot_general``
  through ``transpose`` (a user's ``x @ W.T``), whose axes are followed back to the
  leaf's; an ``eqx.nn.Embedding``'s row lookup (a ``dynamic_slice`` of one row of a 2-D
  leaf) is a weight use with a one-hot a;
- a leaf all of whose uses are weight uses of one orientation becomes a weight site of
  kpflow's hook engine (Kronecker core A_wᵀA_w ⊗ I, cross terms between its uses exact);
- every other leaf (biases, norm scales, a leaf read by any other operation, or used in
  two orientations, or inside a ``scan``) is taken whole by the autodiff rule: one
  perturbation of the leaf per example, D_θ by jvp / vjp, also exact.

States are marked by the ``kpflow_state`` primitive that :func:`mark` binds on the output
of each selected submodule; :func:`interpret` evaluates the jaxpr with the perturbations
added and, given states z, returns z_l at marker l (the cut that makes the update map f
of the constraint z = f(z; θ)).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax.extend.core import ClosedJaxpr, Literal, Primitive
from jax.interpreters import batching

__all__: list[str] = []

_STATE = Primitive("kpflow_state")
_STATE.def_impl(lambda x, *, index: x)
_STATE.def_abstract_eval(lambda x, *, index: x)
batching.primitive_batchers[_STATE] = lambda args, dims, *, index: (
    _STATE.bind(args[0], index=index),
    dims[0],
)
_CALLS = ("jit", "pjit", "closed_call", "core_call")


def mark(x: Any, index: int) -> Any:
    """x itself, marked in a trace as the output of state ``index``."""
    return _STATE.bind(x, index=index)


class WeightUse(NamedTuple):
    """One use of a weight leaf: its place in the jaxpr and the shapes of a and u."""

    key: tuple  # (path of enclosing call eqns, eqn id)
    leaf: int
    orient: tuple  # (free axes, contracted axes) of the leaf; ("embed",) for a row lookup
    n_calls: int  # positions of the other operand's free axes (tokens)
    side: int  # which operand of the eqn is the leaf (0: lhs)


class Plan(NamedTuple):
    """What the walk found: weight uses in trace order, and the leaves taken whole."""

    uses: tuple[WeightUse, ...]
    weights: dict[int, tuple]  # leaf -> orientation
    generic: tuple[int, ...]
    states: tuple[tuple[tuple, int, tuple[int, ...], Any], ...]  # (key, index, shape, dtype), in order


def _is_call(eqn: Any) -> bool:
    return eqn.primitive.name in _CALLS and isinstance(eqn.params.get("jaxpr"), ClosedJaxpr)


def _embed_rows(eqn: Any, leaf_shape: tuple) -> bool:
    """A dynamic_slice of one whole row of a 2-D leaf (a full-width slice: its column start clamps to 0)."""
    return (
        eqn.primitive.name == "dynamic_slice"
        and len(leaf_shape) == 2
        and tuple(eqn.params["slice_sizes"]) == (1, leaf_shape[1])
    )


def _embed_gather(eqn: Any, leaf_shape: tuple) -> int | None:
    """The number of rows looked up when ``eqn`` gathers whole rows of a 2-D leaf (operand), else None."""
    if eqn.primitive.name != "gather" or len(leaf_shape) != 2:
        return None
    dn, params = eqn.params["dimension_numbers"], eqn.params
    whole_rows = tuple(params["slice_sizes"]) == (1, leaf_shape[1])
    plain = (
        not dn.operand_batching_dims
        and 0 in dn.start_index_map
        and str(params["mode"]).endswith(("CLIP", "PROMISE_IN_BOUNDS", "FILL_OR_DROP"))
    )
    if not (whole_rows and plain):
        return None
    return math.prod(eqn.invars[1].aval.shape[:-1])


def analyse(closed: Any, n_leaves: int) -> Plan:
    """Walk a traced forward pass whose first ``n_leaves`` inputs are the parameter leaves."""
    uses: list[WeightUse] = []
    orients: dict[int, set] = {}
    opaque: set[int] = set()
    states: list[tuple[tuple, int, tuple[int, ...], Any]] = []
    shapes = [tuple(v.aval.shape) for v in closed.jaxpr.invars[:n_leaves]]

    def walk(jaxpr: Any, origin: dict, path: tuple) -> None:
        # origin: variable -> (leaf, axes): the variable is the leaf with its axes permuted,
        # axis d of the variable being axis axes[d] of the leaf (a transpose of it)
        for eqn in jaxpr.eqns:
            found_in = [origin.get(v) if not isinstance(v, Literal) else None for v in eqn.invars]
            leaves = [None if o is None else o[0] for o in found_in]
            if eqn.primitive is _STATE:
                aval = eqn.invars[0].aval
                states.append(((path, id(eqn)), eqn.params["index"], tuple(aval.shape), aval.dtype))
            if all(l is None for l in leaves):
                if _is_call(eqn):
                    walk(eqn.params["jaxpr"].jaxpr, {}, (*path, id(eqn)))
                continue
            if _is_call(eqn):
                inner = eqn.params["jaxpr"].jaxpr
                walk(
                    inner,
                    {v: o for v, o in zip(inner.invars, found_in, strict=True) if o is not None},
                    (*path, id(eqn)),
                )
                continue
            if eqn.primitive.name == "transpose" and found_in[0] is not None:
                leaf, axes = found_in[0]
                origin[eqn.outvars[0]] = (leaf, tuple(axes[p] for p in eqn.params["permutation"]))
                continue  # a view of the leaf: its uses decide
            key = (path, id(eqn))
            found = None
            identity = all(o is None or o[1] == tuple(range(len(o[1]))) for o in found_in)
            if eqn.primitive.name == "dot_general" and sum(l is not None for l in leaves) == 1:
                side = 0 if leaves[0] is not None else 1
                (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
                c_leaf, c_other = (lc, rc) if side == 0 else (rc, lc)
                if not lb and not rb:
                    ndim, other = len(eqn.invars[side].aval.shape), eqn.invars[1 - side].aval.shape
                    axes = found_in[side][1]  # type: ignore[index]
                    free = tuple(axes[d] for d in range(ndim) if d not in c_leaf)
                    contracted = tuple(axes[d] for d in c_leaf)
                    calls = math.prod(other[d] for d in range(len(other)) if d not in c_other)
                    found = WeightUse(key, int(leaves[side] or 0), (free, contracted), calls, side)
            elif not identity:
                found = None  # any other use of a transposed leaf: taken whole
            elif (
                leaves[0] is not None
                and all(l is None for l in leaves[1:])
                and _embed_rows(eqn, shapes[leaves[0]])
            ):
                found = WeightUse(key, leaves[0], ("embed",), 1, 0)
            elif len(leaves) == 2 and leaves[0] is not None and leaves[1] is None:
                rows = _embed_gather(eqn, shapes[leaves[0]])
                found = None if rows is None else WeightUse(key, leaves[0], ("embed",), rows, 0)
            if found is None:
                opaque.update(l for l in leaves if l is not None)
            else:
                uses.append(found)
                orients.setdefault(found.leaf, set()).add(found.orient)
        for v in jaxpr.outvars:
            if not isinstance(v, Literal) and v in origin:
                opaque.add(origin[v][0])

    walk(
        closed.jaxpr,
        {v: (i, tuple(range(len(shapes[i])))) for i, v in enumerate(closed.jaxpr.invars[:n_leaves])},
        (),
    )
    weights = {l: next(iter(o)) for l, o in orients.items() if len(o) == 1 and l not in opaque}
    generic = tuple(l for l in range(n_leaves) if l not in weights)
    return Plan(tuple(u for u in uses if u.leaf in weights), weights, generic, tuple(states))


def weight_matrix(leaf: Any, orient: tuple) -> Any:
    """The leaf as kpflow's (out, in) weight W of a use of this orientation (u = a Wᵀ)."""
    if orient == ("embed",):
        return leaf.T
    free, contracted = orient
    out = math.prod(leaf.shape[d] for d in free)
    return jnp.reshape(jnp.transpose(leaf, free + contracted), (out, -1))


def weight_shape(shape: tuple, orient: tuple) -> tuple[int, int]:
    """The (out, in) shape of :func:`weight_matrix` of a leaf of shape ``shape``."""
    if orient == ("embed",):
        return (int(shape[1]), int(shape[0]))
    free, contracted = orient
    return (math.prod(int(shape[d]) for d in free), math.prod(int(shape[d]) for d in contracted))


def leaf_from_weight(W: Any, orient: tuple, shape: tuple) -> Any:
    """The inverse of :func:`weight_matrix`: the leaf of shape ``shape`` holding W."""
    if orient == ("embed",):
        return W.T
    free, contracted = orient
    order = free + contracted
    moved = jnp.reshape(W, tuple(shape[d] for d in order))
    return jnp.transpose(moved, tuple(order.index(d) for d in range(len(shape))))


class Context:
    """One evaluation of a traced forward pass for one example (run under ``jax.vmap``).

    ``weights`` maps a weight leaf to its W (out, in); ``eps`` maps a weight use's index to
    the perturbation of its output, (n_calls, out); ``z`` maps a state's slot (its place in
    ``plan.states``) to the value the cut returns there (None: no cut).  After
    :func:`interpret`, ``site_variables`` holds each
    use's a (n_calls, in) and ``states`` each marker's computed value.
    """

    def __init__(self, plan: Plan, weights: dict, eps: dict, z: dict | None) -> None:
        self.plan, self.weights, self.eps, self.z = plan, weights, eps, z
        self.by_key = {u.key: (i, u) for i, u in enumerate(plan.uses)}
        self.slots = {st[0]: j for j, st in enumerate(plan.states)}
        self.site_variables: dict[int, Any] = {}
        self.states: dict[int, Any] = {}


def interpret(closed: Any, ctx: Context, args: list) -> list:
    """Evaluate ``closed`` on ``args`` with the weight uses, perturbations and cut of ``ctx``."""

    def run(jaxpr: Any, consts: list, args: list, path: tuple) -> list:
        env: dict = {}

        def read(v: Any) -> Any:
            return v.val if isinstance(v, Literal) else env[v]

        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = c
        for v, a in zip(jaxpr.invars, args, strict=True):
            env[v] = a
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            key = (path, id(eqn))
            if eqn.primitive is _STATE:
                slot = ctx.slots[key]
                ctx.states[slot] = invals[0]
                outs = [invals[0] if ctx.z is None else ctx.z[slot]]
            elif key in ctx.by_key:
                i, use = ctx.by_key[key]
                outs = [_apply_use(ctx, i, use, eqn, invals)]
            elif _is_call(eqn):
                sub = eqn.params["jaxpr"]
                outs = run(sub.jaxpr, list(sub.consts), invals, (*path, id(eqn)))
            else:
                params = eqn.primitive.get_bind_params(eqn.params)
                with eqn.ctx.manager:
                    ans = eqn.primitive.bind(*invals, **params)
                outs = list(ans) if eqn.primitive.multiple_results else [ans]
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    return run(closed.jaxpr, list(closed.consts), args, ())


def _apply_use(ctx: Context, i: int, use: WeightUse, eqn: Any, invals: list) -> Any:
    side = use.side
    W = ctx.weights[use.leaf]
    out_aval = eqn.outvars[0].aval
    if use.orient == ("embed",):  # a row lookup: one-hot site variables
        vocab = int(W.shape[1])
        fill = eqn.primitive.name == "gather" and str(eqn.params["mode"]).endswith("FILL_OR_DROP")
        if eqn.primitive.name == "gather":
            dn = eqn.params["dimension_numbers"]
            row = invals[1][..., list(dn.start_index_map).index(0)]
        else:
            row = invals[1]
        row = jnp.reshape(row if fill else jnp.clip(row, 0, vocab - 1), (-1, 1))
        # FILL_OR_DROP (jnp.take's default): an out-of-range row has no one (a zero row of A)
        a = (jnp.arange(vocab, dtype=row.dtype)[None, :] == row).astype(W.dtype)
        shape_x: tuple = ()
    else:
        (lc, rc), _ = eqn.params["dimension_numbers"]
        c_other = tuple(rc if side == 0 else lc)
        X = invals[1 - side]
        free_x = tuple(d for d in range(X.ndim) if d not in c_other)
        shape_x = tuple(X.shape[d] for d in free_x)
        a = jnp.reshape(jnp.transpose(X, free_x + c_other), (use.n_calls, -1))
    ctx.site_variables[i] = a
    u = a @ W.T
    if i in ctx.eps:
        u = u + ctx.eps[i]
    if use.orient == ("embed",):
        if eqn.primitive.name != "gather":
            return jnp.reshape(u, out_aval.shape)
        if fill:  # the gather's fill value (NaN by default) where the row is out of range
            value = eqn.params["fill_value"]
            value = jnp.nan if value is None else value
            u = jnp.where((row >= 0) & (row < vocab), u, jnp.asarray(value, dtype=u.dtype))
        return _gather_layout(eqn, u)
    # the leaf's operand (the leaf or a transpose of it) has its free axes in dot_general's order
    (lc, rc), _ = eqn.params["dimension_numbers"]
    leaf_aval = eqn.invars[side].aval
    c_leaf = tuple(lc if side == 0 else rc)
    shape_w = tuple(leaf_aval.shape[d] for d in range(len(leaf_aval.shape)) if d not in c_leaf)
    u = jnp.reshape(u, shape_x + shape_w)
    if side == 0:  # dot_general puts the lhs's free axes first
        nx = len(shape_x)
        u = jnp.transpose(u, tuple(range(nx, u.ndim)) + tuple(range(nx)))
    return u


def _gather_layout(eqn: Any, u: Any) -> Any:
    """The looked-up rows u (n, d) laid out as the gather's output (batch axes, then its offset axes)."""
    dn = eqn.params["dimension_numbers"]
    batch = tuple(eqn.invars[1].aval.shape[:-1])
    kept = [
        size for axis, size in enumerate(eqn.params["slice_sizes"]) if axis not in dn.collapsed_slice_dims
    ]
    arr = jnp.reshape(u, batch + tuple(kept))
    rank = len(batch) + len(dn.offset_dims)
    batch_axes = [t for t in range(rank) if t not in dn.offset_dims]
    source = {t: k for k, t in enumerate(batch_axes)} | {
        t: len(batch) + j for j, t in enumerate(dn.offset_dims)
    }
    return jnp.transpose(arr, tuple(source[t] for t in range(rank)))
