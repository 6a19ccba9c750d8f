"""The autodiff derivative rule of hook models: pure jvp / vjp actions of the user's step.

``_hook_step_jvp`` / ``_hook_step_vjp`` apply the step Jacobian ∂step/∂h (P's steps), and
``_hook_D`` / ``_hook_DT`` a hook site's D_c = ∂step/∂u_c (the step differentiated with
respect to an additive perturbation of the hook call's output).  They are module-level
functions of (static, operands, probes), so that on jax each is one compiled program per
shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kpflow._array import device_of, prod

__all__: list[str] = []


def _params(names: tuple[str, ...], values: tuple) -> dict[str, Any]:
    return dict(zip(names, values, strict=True))


def _hook_step_jvp(
    xp: Any, model: Any, backend: str, names: tuple, plan: tuple, operands: tuple, V: Any, t: Any
) -> Any:
    """J_t V = ∂step/∂h · V at step t (or every step, t = slice(None)), vmapped over probes."""
    from kpflow.backends import get_backend
    from kpflow.models.hooks import _Hook

    adapter = get_backend(backend)
    values, prev, x = operands
    params = _params(names, values)
    h, xt = prev[:, t, ...], x[:, t, ...]
    where = "Recurrent (P)"

    def f(h: Any) -> Any:
        return model._call(params, h, xt, _Hook(params, model._shapes, where, plan=plan))

    return adapter.vmap(lambda v: adapter.jvp(f, (h,), (v,))[1])(V)


def _hook_step_vjp(
    xp: Any, model: Any, backend: str, names: tuple, plan: tuple, operands: tuple, W: Any, t: Any
) -> Any:
    """J_tᵀ W at step t (or every step), vmapped over probes."""
    from kpflow.backends import get_backend
    from kpflow.models.hooks import _Hook

    adapter = get_backend(backend)
    values, prev, x = operands
    params = _params(names, values)
    h, xt = prev[:, t, ...], x[:, t, ...]
    where = "Recurrent (Pᵀ)"

    def f(h: Any) -> Any:
        return model._call(params, h, xt, _Hook(params, model._shapes, where, plan=plan))

    _, vjp_fn = adapter.vjp(f, h)
    return adapter.vmap(lambda w: vjp_fn(w)[0])(W)


def _perturbed_step(
    model: Any, names: tuple, plan: tuple, operands: tuple, calls: tuple, where: str
) -> Callable[[Any], Any]:
    """eps (n_calls, B, T, out) ↦ the step at every site with eps[i] added to call calls[i]."""
    from kpflow.models.hooks import _Hook

    values, prev, x = operands
    params = _params(names, values)

    def f(eps: Any) -> Any:
        perturb = {c: eps[i, ...] for i, c in enumerate(calls)}
        return model._call(params, prev, x, _Hook(params, model._shapes, where, eps=perturb, plan=plan))

    return f


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
    """D_w U: (k, n_calls·m, out) ↦ (k, B, T, H), a jvp of the perturbed step per probe."""
    from kpflow.backends import get_backend

    adapter = get_backend(backend)
    f = _perturbed_step(model, names, plan, operands, calls, "Recurrent (D)")
    prev = operands[1]
    shape = (len(calls), *site_shape, out)
    zero = xp.zeros(shape, dtype=prev.dtype, device=device_of(prev))
    return adapter.vmap(lambda u: adapter.jvp(f, (zero,), (xp.reshape(u, shape),))[1])(U)


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
    """D_wᵀ V: (k, B, T, H) ↦ (k, n_calls·m, out), a vjp of the perturbed step per probe."""
    from kpflow.backends import get_backend

    adapter = get_backend(backend)
    f = _perturbed_step(model, names, plan, operands, calls, "Recurrent (Dᵀ)")
    prev = operands[1]
    shape = (len(calls), *site_shape, out)
    rows = (len(calls) * prod(site_shape), out)
    zero = xp.zeros(shape, dtype=prev.dtype, device=device_of(prev))
    _, vjp_fn = adapter.vjp(f, zero)
    return adapter.vmap(lambda v: xp.reshape(vjp_fn(v)[0], rows))(V)
