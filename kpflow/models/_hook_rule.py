"""The analytic derivative rule of a hook cell: :class:`StepDerivatives`.

With ``Recurrent(step, ..., derivatives=StepDerivatives(jvp, vjp, D))`` the user gives, in
array-API code, the step Jacobian J = ∂step/∂h (its action and its transpose's) and every
hook call's D_c = ∂step/∂u_c as per-unit diagonal coefficients.  The cell then needs no
autodiff: it runs on numpy and array_api_strict through the same machinery as the built-in
cells, a :class:`~kpflow.models.base.StepKernel` for P and sites with per-unit D
(:class:`~kpflow.models.sites.Site`) for K, so K's exact trace, spectrum and effective-rank
rules apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from kpflow._array import array_namespace, device_of, namespace_name
from kpflow.models.sites import LinearSite, Site

__all__ = ["StepDerivatives"]


class StepDerivatives(NamedTuple):
    """An analytic derivative rule for :class:`~kpflow.models.Recurrent`: J v, Jᵀ w and each call's D.

    With h_next = step(params, h, x, site) and the hook calls u_c = site(...) in the order
    the step makes them:

    - ``jvp(params, h, x, V)`` = J V with J = ∂h_next/∂h, for probes V of shape
      ``(k, ..., H)`` (a leading probe axis, then h's axes), returning that shape;
    - ``vjp(params, h, x, W)`` = Jᵀ W, the same shapes;
    - ``D(params, h, x)`` = a sequence with one array per hook call c, of shape
      ``(..., out_c)`` (h's leading axes, then the call's output width), the per-unit
      coefficients d_c of D_c = ∂h_next/∂u_c = diag(d_c): unit i of the call's output moves
      only state unit i.  So every call's output width must be H (a gated cell's gates:
      use ``rows=`` to call each gate's rows of a stacked weight).

    ``params`` holds the parameter values (the real arrays, not guarded), ``h`` of shape
    ``(..., H)`` and ``x`` of shape ``(..., n_in)``; the leading axes are (B,) for one step or
    (B, T) for every step at once.  Write them in array-API code to run on every backend;
    the results must have the probes' (and h's) namespace and dtype.  kpflow checks the
    shapes; it cannot check the values, so compare a rule against finite differences of the
    step once (as the tests do) before trusting it.

    Examples
    --------
    A tanh RNN, h_next = tanh(W h + U x + b), with J = diag(1 − h_next²) W and every call's
    d = 1 − h_next², on numpy:

    >>> import numpy as np
    >>> import kpflow
    >>> from kpflow.models import Recurrent, StepDerivatives
    >>> def step(params, h, x, site):
    ...     return np.tanh(site("W", h) + site("U", x) + site("b"))
    >>> def gain(params, h, x):             # 1 − h_next², from the parameter values
    ...     return 1.0 - np.tanh(h @ params["W"].T + x @ params["U"].T + params["b"]) ** 2
    >>> rule = StepDerivatives(
    ...     jvp=lambda params, h, x, V: gain(params, h, x) * (V @ params["W"].T),
    ...     vjp=lambda params, h, x, W: (gain(params, h, x) * W) @ params["W"],
    ...     D=lambda params, h, x: [gain(params, h, x)] * 3,
    ... )
    >>> model = Recurrent(step, n_in=2, n_hidden=3, derivatives=rule,
    ...                   param_shapes={"W": (3, 3), "U": (3, 2), "b": (3,)})
    >>> traj = model.run(model.init(0), np.ones((4, 5, 2)))
    >>> kpflow.global_ntk(traj).todense().shape
    (4, 5, 3, 4, 5, 3)
    >>> [type(s).__name__ for s in traj.sites]      # per-unit D: K's exact rules apply
    ['Site', 'Site', 'Site']
    """

    jvp: Callable[..., Any]
    vjp: Callable[..., Any]
    D: Callable[..., Any]


def check_rule(rule: Any, where: str) -> StepDerivatives:
    """``derivatives=`` as a :class:`StepDerivatives` with three callables, or a TypeError."""
    if not isinstance(rule, StepDerivatives) or not all(callable(f) for f in rule):
        msg = (
            f"{where}: expected derivatives to be None or a kpflow.models.StepDerivatives(jvp, vjp, D) "
            f"of three callables, got {rule!r}"
        )
        raise TypeError(msg)
    return rule


def _checked(out: Any, like: Any, what: str, expected: str) -> Any:
    """``out`` must be an array of ``like``'s namespace, dtype and shape."""
    where = "Recurrent (derivatives=)"
    try:
        xp = array_namespace(out)
    except TypeError:
        xp = None
    if xp is None or xp is not array_namespace(like) or getattr(out, "shape", None) is None:
        msg = (
            f"{where}: {what} returned {type(out).__name__}; expected an array of "
            f"{namespace_name(array_namespace(like))}"
        )
        raise TypeError(msg)
    if tuple(out.shape) != tuple(like.shape):
        msg = f"{where}: {what} returned shape {tuple(out.shape)}; expected {expected} = {tuple(like.shape)}"
        raise ValueError(msg)
    if out.dtype != like.dtype:
        msg = f"{where}: {what} returned dtype {out.dtype}; expected {like.dtype}"
        raise TypeError(msg)
    return out


def _rule_operands(names: tuple, operands: tuple, t: Any) -> tuple[dict[str, Any], Any, Any]:
    values, prev, x = operands
    return dict(zip(names, values, strict=True)), prev[:, t, ...], x[:, t, ...]


def rule_step_jvp(xp: Any, rule: StepDerivatives, names: tuple, operands: tuple, V: Any, t: Any) -> Any:
    """J_t V by the rule's ``jvp`` (a :class:`~kpflow.models.base.StepKernel` action, pure)."""
    params, h, x = _rule_operands(names, operands, t)
    return _checked(rule.jvp(params, h, x, V), V, "derivatives.jvp(params, h, x, V)", "V's shape (k, ..., H)")


def rule_step_vjp(xp: Any, rule: StepDerivatives, names: tuple, operands: tuple, W: Any, t: Any) -> Any:
    """J_tᵀ W by the rule's ``vjp`` (pure)."""
    params, h, x = _rule_operands(names, operands, t)
    return _checked(rule.vjp(params, h, x, W), W, "derivatives.vjp(params, h, x, W)", "W's shape (k, ..., H)")


def rule_sites(traj: Any, groups: list, call_text: Callable[..., str]) -> list[Site]:
    """The sites of a :class:`~kpflow.models.Recurrent` trajectory from its rule's per-call D.

    ``groups`` is :func:`~kpflow.models.hooks.hook_site_groups`; a site of one call gets
    ``unit_D`` (exact rules), a site of several calls a :class:`LinearSite` whose D sums the
    calls' diagonal D (cross terms exact).
    """
    xp, m, H = traj.xp, traj.m, traj.site_state_size
    rule, plan = traj.model.derivatives, traj.plan
    params = dict(zip(traj.names, traj._operands[0], strict=True))
    for c, entry in enumerate(plan):
        lo, hi = entry[2]
        if hi - lo != H:
            msg = (
                f"Recurrent.run: derivatives gives D as per-unit diagonal coefficients, so every hook "
                f"call's output must have the state's width H={H}; hook call {c}, "
                f"{call_text(*entry)}, has width {hi - lo} (name rows of width H with rows=)"
            )
            raise ValueError(msg)
    ds = rule.D(params, traj.prev_states, traj.x)
    if not isinstance(ds, list | tuple) or len(ds) != len(plan):
        got = f"{len(ds)} arrays" if isinstance(ds, list | tuple) else type(ds).__name__
        msg = (
            f"Recurrent.run: derivatives.D(params, h, x) returned {got}; expected a list with one "
            f"array per hook call of the step ({len(plan)}: "
            f"{', '.join(call_text(*entry) for entry in plan)})"
        )
        raise ValueError(msg)
    flat = []
    for c, (entry, d) in enumerate(zip(plan, ds, strict=True)):
        like = xp.empty((*traj.site_shape, H), dtype=traj.dtype, device=traj.device)
        what = f"derivatives.D(params, h, x)[{c}] (hook call {call_text(*entry)})"
        flat.append(xp.reshape(_checked(d, like, what, "(B, T, H)"), (m, H)))
    sites: list[Site] = []
    for label, name, (lo, hi), calls in groups:
        blocks = []
        for c in calls:
            a = traj.site_variables_by_call[c]
            blocks.append(
                xp.ones((m, 1), dtype=traj.dtype, device=traj.device)
                if a is None
                else xp.reshape(a, (m, int(a.shape[-1])))
            )
        A = blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=0)
        rows = [(name, (lo, hi))]
        if len(calls) == 1:
            unit_D = flat[calls[0]][:, :, None, None]
            site: Site = Site(
                label, A, state_shape=traj.state_shape, unit_D=unit_D, rows=rows, batch_major=True
            )
        else:
            spans = tuple((plan[c][2][0] - lo, plan[c][2][1] - lo) for c in calls)
            site = LinearSite(
                label,
                A,
                state_shape=traj.state_shape,
                width=hi - lo,
                apply=_diagonal_calls_D,
                adjoint=_diagonal_calls_DT,
                operands=(xp.stack([flat[c] for c in calls], axis=0),),
                static=(spans, hi - lo, traj.state_shape),
                n_sites=m,
                rows=rows,
                batch_major=True,  # per call, one row per trajectory site (b, t), batch-major
            )
        sites.append(site)
    return sites


def _diagonal_calls_D(xp: Any, spans: tuple, width: int, state_shape: tuple, operands: tuple, U: Any) -> Any:
    """Σ_c d_c ⊙ U_c[rows of call c]: ``(k, n_calls·m, width) -> (k, *state_shape)`` (pure)."""
    (d,) = operands  # (n_calls, m, H)
    k, n, m = U.shape[0], int(d.shape[0]), int(d.shape[1])
    U4 = xp.reshape(U, (k, n, m, width))
    out = None
    for i, (lo, hi) in enumerate(spans):
        term = d[i, ...] * U4[:, i, :, lo:hi]
        out = term if out is None else out + term
    return xp.reshape(out, (k, *state_shape))


def _diagonal_calls_DT(xp: Any, spans: tuple, width: int, state_shape: tuple, operands: tuple, V: Any) -> Any:
    """The adjoint of :func:`_diagonal_calls_D`: ``(k, *state_shape) -> (k, n_calls·m, width)``."""
    (d,) = operands
    k, m, H = V.shape[0], int(d.shape[1]), int(d.shape[2])
    R = xp.reshape(V, (k, m, H))
    blocks = []
    for i, (lo, hi) in enumerate(spans):
        parts = [d[i, ...] * R]
        if lo > 0:
            parts.insert(0, xp.zeros((k, m, lo), dtype=V.dtype, device=device_of(V)))
        if hi < width:
            parts.append(xp.zeros((k, m, width - hi), dtype=V.dtype, device=device_of(V)))
        blocks.append(parts[0] if len(parts) == 1 else xp.concat(parts, axis=-1))
    out = blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=1)
    return out
