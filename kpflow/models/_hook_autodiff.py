"""The autodiff derivative rule of hook models: pure jvp / vjp actions of the user's step.

``_hook_step_jvp`` / ``_hook_step_vjp`` apply the step Jacobian ∂step/∂h (P's steps), and
``_hook_D`` / ``_hook_DT`` a hook site's D_c = ∂step/∂u_c (the step differentiated with
respect to an additive perturbation of the hook call's output).  They are module-level
functions of (static, operands, probes), every probe of a block in one batched action:

- on jax each runs inside one compiled program (P and Pᵀ: one ``lax.scan`` over the steps,
  :func:`kpflow.ntk.kernel.compiled`), compiled once per shape and shared by every
  trajectory of the same model and shapes;
- on torch each action is traced once per (model, plan, shapes, dtype, device) into a
  graph of aten operations (:meth:`kpflow.backends.Backend.trace`, ``make_fx`` with fake
  tensors) on its second call, and that graph runs at every later step: no functorch
  transform, hook object or plan check per step.  A step that cannot be traced (it reads
  array values in Python, or uses operations the tracer refuses) runs eagerly, as the
  first call does.  The jvps are the transpose of the vjp on torch (a vjp of the linear
  map w ↦ wᵀ J): torch's vmapped forward mode falls back to slow decompositions for
  broadcast additions (about 5 ms per bias add, measured), its reverse mode does not.

Both routes agree with the vmapped ``jvp`` / ``vjp`` of the step (:func:`reference_action`)
to rounding (tests/models/test_hook_autodiff.py).  Nothing of size B·T·H·H is formed.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from kpflow._array import array_namespace, device_of, prod
from kpflow.models._hook_call import _Hook

__all__: list[str] = []

#: traced torch graphs by (action, static, array metadata); at most this many are kept
MAX_TRACED = 128
_SEEN = "seen once"  # the first call runs eagerly (one-off actions never pay for a trace)
_EAGER = "eager"  # the trace failed: always run eagerly
_TRACED: OrderedDict[tuple, Any] = OrderedDict()


# backend name -> adapter (a handful of names: the cache is tiny and never stale)
_ADAPTERS: dict[str, Any] = {}


def _adapter(backend: str) -> Any:
    adapter = _ADAPTERS.get(backend)
    if adapter is None:
        from kpflow.backends import get_backend

        adapter = _ADAPTERS[backend] = get_backend(backend)
    return adapter


def _params(names: tuple[str, ...], values: tuple) -> dict[str, Any]:
    return dict(zip(names, values, strict=True))


# -- dispatch: traced once per shape on torch, as it is elsewhere ----------------------------------
def _run(adapter: Any, action: Callable, static: tuple, arrays: tuple) -> Any:
    """``action(adapter, *static, *arrays)``, from a graph traced once per shape where the backend traces."""
    if not adapter.traces:
        return action(adapter, *static, *arrays)
    key = (action, static, tuple((a.shape, a.dtype, a.device) for a in arrays))
    entry: Any = _TRACED.get(key)
    if entry is None:
        _remember(key, _SEEN)
        return action(adapter, *static, *arrays)
    _TRACED.move_to_end(key)
    if entry is _SEEN:
        try:
            entry = adapter.trace(functools.partial(action, adapter, *static), *arrays)
        except Exception:  # anything the tracer refuses runs eagerly, as before
            entry = _EAGER
        _remember(key, entry)
    if entry is _EAGER:
        return action(adapter, *static, *arrays)
    return entry(*arrays)


def _remember(key: tuple, entry: Any) -> None:
    _TRACED[key] = entry
    _TRACED.move_to_end(key)
    while len(_TRACED) > MAX_TRACED:
        _TRACED.popitem(last=False)


def _jvp(adapter: Any, xp: Any, f: Callable, primal: Any, T: Any) -> Any:
    """J_f(primal) T for a block T of shape (k, *primal.shape), batched over the leading axis.

    Where the backend traces (torch) the jvp is the vjp of the linear map w ↦ J_fᵀ w, one
    reverse pass twice; elsewhere (jax) a vmapped forward-mode jvp.
    """
    if not adapter.traces:
        return adapter.vmap(lambda v: adapter.jvp(f, (primal,), (v,))[1])(T)
    out, pull = adapter.vjp(f, primal)
    _, push = adapter.vjp(lambda w: pull(w)[0], xp.zeros_like(out))
    return adapter.vmap(lambda v: push(v)[0])(T)


def _vjp(adapter: Any, f: Callable, primal: Any, W: Any) -> Any:
    """J_f(primal)ᵀ W for a block W of shape (k, *f(primal).shape), batched over the leading axis."""
    _, pull = adapter.vjp(f, primal)
    return adapter.vmap(lambda w: pull(w)[0])(W)


# -- the step Jacobian J_t (P and Pᵀ) ---------------------------------------------------------------
def _step(model: Any, names: tuple, plan: tuple, values: tuple, xt: Any, where: str) -> Callable[[Any], Any]:
    """h ↦ the user's step at input ``xt``, every hook call checked against ``plan``."""
    params = _params(names, values)

    def f(h: Any) -> Any:
        return model._call(params, h, xt, _Hook(params, model._shapes, where, plan=plan))

    return f


def _step_jvp(
    adapter: Any, xp: Any, model: Any, names: tuple, plan: tuple, h: Any, xt: Any, V: Any, *values: Any
) -> Any:
    return _jvp(adapter, xp, _step(model, names, plan, values, xt, "Recurrent (P)"), h, V)


def _step_vjp(
    adapter: Any, xp: Any, model: Any, names: tuple, plan: tuple, h: Any, xt: Any, W: Any, *values: Any
) -> Any:
    return _vjp(adapter, _step(model, names, plan, values, xt, "Recurrent (Pᵀ)"), h, W)


def _hook_step_jvp(
    xp: Any, model: Any, backend: str, names: tuple, plan: tuple, operands: tuple, V: Any, t: Any
) -> Any:
    """J_t V = ∂step/∂h · V at step t (or every step, t = slice(None)), for a block V of probes."""
    return _run_step(_adapter(backend), _step_jvp, (xp, model, names, plan), operands, V, t, last=-1)


def _hook_step_vjp(
    xp: Any, model: Any, backend: str, names: tuple, plan: tuple, operands: tuple, W: Any, t: Any
) -> Any:
    """J_tᵀ W at step t (or every step), for a block W of probes."""
    return _run_step(_adapter(backend), _step_vjp, (xp, model, names, plan), operands, W, t, last=1)


#: per-step residuals kept at most this many elements per step: RESIDUAL_FACTOR × (h + x_t)
#: plus the parameters (a step that forms an (H, H) temporary per sample runs unsplit)
RESIDUAL_FACTOR = 16
_UNSPLIT = "unsplit"
#: (action, id(operands)) -> (operands, probe block's (shape, dtype), apply, residuals by step,
#: last step) of a product under way, recognised by the identity of its operands (held here)
_CURRENT: OrderedDict[tuple, tuple] = OrderedDict()
MAX_CURRENT = 4


def _run_step(
    adapter: Any, action: Callable, static: tuple, operands: tuple, Y: Any, t: Any, *, last: int
) -> Any:
    """One step's action; on torch from a traced graph split into primal and tangent parts.

    The primal part (the step's forward values that the Jacobian action reads) runs once
    for every step of a product, vmapped over the steps; each step then replays only the
    tangent part on its slice.  The residuals are kept while the same ``operands`` object
    comes back (one product: the propagator reads the operands once per product) and
    dropped after step ``last`` (P ends at step T−1, Pᵀ at step 1); they are never kept
    while autograd records (a graph through them would be freed by the first backward).
    """
    values, prev, x = operands
    slot = (action, id(operands))  # (the operands are one trajectory's: they fix ``static``)
    current = _CURRENT.get(slot)
    if (
        current is not None
        and current[0] is operands
        and current[1] == (Y.shape, Y.dtype)
        and isinstance(t, int)
        and not adapter.records_graph((Y, prev, x, *values))
    ):  # the product under way: only the tangent part runs
        out = current[2](Y, *current[3][t])
        if t == current[4]:
            del _CURRENT[slot]
        return out
    last_step = int(prev.shape[1]) + last if last < 0 else last
    arrays = (prev[:, t, ...], x[:, t, ...], Y, *values)
    if not adapter.traces or not isinstance(t, int) or adapter.records_graph(arrays):
        return _run(adapter, action, static, arrays)
    meta = tuple((a.shape, a.dtype, a.device) for a in arrays)
    key = (action, static, meta)
    entry = _TRACED.get(("split", *key))
    if entry is None or entry is _SEEN:
        entry = _split(adapter, action, static, arrays, key, first=entry is None)
    if entry is _UNSPLIT:
        return _run(adapter, action, static, arrays)
    if entry is _SEEN:
        return action(adapter, *static, *arrays)
    prep, apply = entry
    residuals = adapter.vmap(prep, in_axes=(1, 1, *(None for _ in values)))(prev, x, *values)
    # every step's slice of every residual at once (views; one call per residual)
    steps = list(zip(*(xp_unstack(r) for r in residuals), strict=True))
    out = apply(Y, *steps[t])
    if t != last_step:
        _CURRENT[slot] = (operands, (Y.shape, Y.dtype), apply, steps, last_step)
        _CURRENT.move_to_end(slot)
        while len(_CURRENT) > MAX_CURRENT:
            _CURRENT.popitem(last=False)
    return out


def xp_unstack(r: Any) -> tuple:
    """The slices ``r[t]`` along the leading axis, as views."""
    xp = array_namespace(r)
    if hasattr(xp, "unstack"):
        return tuple(xp.unstack(r, axis=0))
    return tuple(r[t, ...] for t in range(int(r.shape[0])))


def _split(adapter: Any, action: Callable, static: tuple, arrays: tuple, key: tuple, *, first: bool) -> Any:
    """The (prep, apply) pair of ``action`` at these shapes (second call), or a marker."""
    name = ("split", *key)
    if first:
        _remember(name, _SEEN)
        return _SEEN
    h, xt, _, *values = arrays
    try:
        prep, apply, shapes = adapter.trace_split(
            functools.partial(action, adapter, *static), *arrays, tangent=2
        )
    except Exception:  # in-place operations, untraceable steps: the unsplit route
        _remember(name, _UNSPLIT)
        return _UNSPLIT
    budget = RESIDUAL_FACTOR * (prod(h.shape) + prod(xt.shape)) + sum(prod(v.shape) for v in values)
    entry = (prep, apply) if sum(prod(s) for s in shapes) <= budget else _UNSPLIT
    _remember(name, entry)
    return entry


# -- a site's D_c (K's terms) -----------------------------------------------------------------------
def _perturbed_step(
    model: Any, names: tuple, plan: tuple, operands: tuple, calls: tuple, where: str
) -> Callable[[Any], Any]:
    """eps (n_calls, B, T, out) ↦ the step at every site with eps[i] added to call calls[i]."""
    values, prev, x = operands
    params = _params(names, values)

    def f(eps: Any) -> Any:
        perturb = {c: eps[i, ...] for i, c in enumerate(calls)}
        return model._call(params, prev, x, _Hook(params, model._shapes, where, eps=perturb, plan=plan))

    return f


def _site_D(
    adapter: Any,
    xp: Any,
    model: Any,
    names: tuple,
    plan: tuple,
    calls: tuple,
    site_shape: tuple,
    out: int,
    prev: Any,
    x: Any,
    U: Any,
    *values: Any,
) -> Any:
    f = _perturbed_step(model, names, plan, (values, prev, x), calls, "Recurrent (D)")
    shape = (len(calls), *site_shape, out)
    zero = xp.zeros(shape, dtype=prev.dtype, device=device_of(prev))
    return _jvp(adapter, xp, f, zero, xp.reshape(U, (int(U.shape[0]), *shape)))


def _site_DT(
    adapter: Any,
    xp: Any,
    model: Any,
    names: tuple,
    plan: tuple,
    calls: tuple,
    site_shape: tuple,
    out: int,
    prev: Any,
    x: Any,
    V: Any,
    *values: Any,
) -> Any:
    f = _perturbed_step(model, names, plan, (values, prev, x), calls, "Recurrent (Dᵀ)")
    shape = (len(calls), *site_shape, out)
    zero = xp.zeros(shape, dtype=prev.dtype, device=device_of(prev))
    rows = (int(V.shape[0]), len(calls) * prod(site_shape), out)
    return xp.reshape(_vjp(adapter, f, zero, V), rows)


def _hook_D(
    xp: Any,
    model: Any,
    backend: str,
    names: tuple,
    plan: tuple,
    calls: tuple,
    site_shape: tuple,
    out: int,
    operands: tuple,
    U: Any,
) -> Any:
    """D_w U: (k, n_calls·m, out) ↦ (k, B, T, H), a jvp of the perturbed step for the block."""
    values, prev, x = operands
    static = (xp, model, names, plan, calls, site_shape, out)
    return _run(_adapter(backend), _site_D, static, (prev, x, U, *values))


def _hook_DT(
    xp: Any,
    model: Any,
    backend: str,
    names: tuple,
    plan: tuple,
    calls: tuple,
    site_shape: tuple,
    out: int,
    operands: tuple,
    V: Any,
) -> Any:
    """D_wᵀ V: (k, B, T, H) ↦ (k, n_calls·m, out), a vjp of the perturbed step for the block."""
    values, prev, x = operands
    static = (xp, model, names, plan, calls, site_shape, out)
    return _run(_adapter(backend), _site_DT, static, (prev, x, V, *values))


# -- the reference the fast route is tested against -------------------------------------------------
def reference_action(kind: str, xp: Any, *args: Any) -> Any:
    """The same action as a vmapped ``jvp`` / ``vjp`` of the step, run eagerly (for the tests).

    ``kind`` is "P", "PT", "D" or "DT"; ``args`` are those of :func:`_hook_step_jvp`,
    :func:`_hook_step_vjp`, :func:`_hook_D` or :func:`_hook_DT` after ``xp``.
    """
    from kpflow.backends import get_backend

    if kind in ("P", "PT"):
        model, backend, names, plan, (values, prev, x), Y, t = args
        adapter = get_backend(backend)
        f = _step(model, names, plan, values, x[:, t, ...], "reference")
        h = prev[:, t, ...]
        if kind == "PT":
            return _vjp(adapter, f, h, Y)
        return adapter.vmap(lambda v: adapter.jvp(f, (h,), (v,))[1])(Y)
    model, backend, names, plan, calls, site_shape, out, operands, Y = args
    adapter = get_backend(backend)
    f = _perturbed_step(model, names, plan, operands, calls, "reference")
    prev = operands[1]
    shape = (len(calls), *site_shape, out)
    zero = xp.zeros(shape, dtype=prev.dtype, device=device_of(prev))
    if kind == "D":
        return adapter.vmap(lambda u: adapter.jvp(f, (zero,), (xp.reshape(u, shape),))[1])(Y)
    rows = (len(calls) * prod(site_shape), out)
    _, pull = adapter.vjp(f, zero)
    return adapter.vmap(lambda v: xp.reshape(pull(v)[0], rows))(Y)
