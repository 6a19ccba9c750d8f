"""What every hook model shares: its recorded hook calls, its weight sites, its base methods.

A hook model (:class:`~kpflow.models.Recurrent`, :class:`~kpflow.models.FeedForward`,
:class:`~kpflow.models.Implicit`, and the jax adapter's modules) has an update map
``model._call(params, z, x, hook)`` = f(z; θ) whose every parameter use goes through the
hook.  :class:`HookModel` gives such a model its parameter shapes and site rows;
:class:`HookTrajectory` records the calls once per run (:func:`record_hook_calls`) and builds
the sites from them (:func:`hook_sites`); the derivative actions of the sites are in
:mod:`kpflow.models._hook_autodiff`.
"""

from __future__ import annotations

from typing import Any

from kpflow.models._hook_autodiff import _hook_D, _hook_DT
from kpflow.models._hook_call import _Hook
from kpflow.models.sites import LinearSite, Site

__all__ = [
    "HookModel",
    "HookTrajectory",
    "hook_site_groups",
    "hook_site_rows",
    "hook_sites",
    "record_hook_calls",
]


class HookModel:
    """Base of the models whose parameters reach f only through hook calls.

    A subclass sets ``_shapes`` (parameter name -> shape) and defines
    ``_call(params, z, x, hook)``, the update map f(z; θ) with every parameter use
    through ``hook``.
    """

    _shapes: dict[str, tuple[int, ...]]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def site_rows(self) -> dict[str, list]:
        """Which parameter rows each site covers, known for every hook model (:func:`hook_site_rows`)."""
        return hook_site_rows(self)

    def _call(self, params: dict[str, Any], z: Any, x: Any, hook: _Hook) -> Any:
        raise NotImplementedError  # pragma: no cover - every hook model defines its update map

    def _update_map(self, params: dict[str, Any], z: Any, x: Any, where: str) -> Any:
        """f(z; θ) with a fresh hook (the update map of a model whose f is ``_call`` at z)."""
        return self._call(params, z, x, _Hook(params, self._shapes, where))


class HookTrajectory:
    """Base of a hook model's trajectories: the recorded calls, the operands, the sites.

    :meth:`_record` runs the update map once at the trajectory's states; the sites' D_w
    and the derivative actions differentiate ``model._call`` with the recorded ``plan``
    (:func:`kpflow.models._hook_autodiff._hook_D`), on ``_operands`` = (parameter values
    in ``names`` order, z, x).
    """

    model: Any
    params: dict[str, Any]
    x: Any
    site_shape: tuple[int, ...]

    def _record(self, backend: str, z: Any, where: str, axes: str) -> None:
        """Record the hook calls of ``model._call(params, z, x)``; ``axes`` names the site axes."""
        self.backend = backend
        self.names = tuple(sorted(self.params))
        self.plan, self.site_variables_by_call = record_hook_calls(
            self.model, self.params, z, self.x, where, self.site_shape, axes
        )
        self._operands = (tuple(self.params[n] for n in self.names), z, self.x)

    def _static(self) -> tuple:
        return (self.model, self.backend, self.names, self.plan)

    def _make_sites(self) -> list[Site]:
        return hook_sites(self)


def record_hook_calls(
    model: Any, params: dict[str, Any], z: Any, x: Any, where: str, site_shape: tuple, axes: str
) -> tuple[tuple, list]:
    """Run ``model._call`` once at every site; return (plan, site variables by call), checked.

    ``plan`` holds (name, is a bias call, rows (lo, hi)) per hook call; every parameter must
    be used, every row of it by some call, and every site variable must have the leading
    axes ``site_shape`` (named ``axes``).
    """
    hook = _Hook(params, model._shapes, where)
    model._call(params, z, x, hook)
    plan = tuple((name, a is None, rows) for name, a, rows in hook.calls)
    variables = [a for _, a, _ in hook.calls]
    unused = sorted(set(model._shapes) - {name for name, _, _ in plan})
    if unused:
        msg = (
            f"{where}: no hook call used the parameter(s) {unused}; route every use through "
            "site(name, a) / site(name), and drop parameters the model does not use"
        )
        raise ValueError(msg)
    for name, shape in model._shapes.items():
        spans = sorted({rows for n, _, rows in plan if n == name})
        gaps, at = [], 0
        for lo, hi in spans:
            if lo > at:
                gaps.append((at, lo))
            at = max(at, hi)
        if at < shape[0]:
            gaps.append((at, shape[0]))
        if gaps:
            msg = (
                f"{where}: the hook calls of {name!r} (shape {shape}) use rows {spans}; rows "
                f"{gaps} of it reach no call. Every row of a parameter must be used (drop unused rows)"
            )
            raise ValueError(msg)
    for (name, _, _), a in zip(plan, variables, strict=True):
        if a is not None and tuple(a.shape[:-1]) != site_shape:
            msg = (
                f"{where}: the site variable of site({name!r}, a) has shape {tuple(a.shape)}; "
                f"expected the leading axes of the state, {axes} = {site_shape}"
            )
            raise ValueError(msg)
    return plan, variables


def hook_site_rows(model: Any) -> dict[str, list]:
    """A hook model's :meth:`~kpflow.models.Model.site_rows`: one entry per parameter, all its rows.

    The sites a trajectory builds (:func:`hook_sites`) carry their own ``rows`` (a parameter
    called a row range at a time has one site per range), which J_S reads first; this answer
    says that every parameter's rows are known (:meth:`~kpflow.models.Model.with_frozen`).

    Examples
    --------
    >>> from kpflow.models.hooks import hook_site_rows
    >>> class Model:
    ...     _shapes = {"W": (3, 2), "b": (3,)}
    >>> hook_site_rows(Model())
    {'W': [('W', (0, 3))], 'b': [('b', (0, 3))]}
    """
    return {name: [(name, (0, shape[0]))] for name, shape in model._shapes.items()}


def hook_site_groups(plan: tuple, shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, str, tuple, tuple]]:
    """The sites of a hook model's calls: ``[(site name, parameter, rows (lo, hi), calls)]``.

    A parameter whose calls name pairwise disjoint row ranges (``site(name, a, rows=...)``)
    gets one site per range, named ``"name[lo:hi]"`` (``"name"`` when the range is every
    row), holding the calls of that range.  A parameter whose calls' rows overlap (a call
    without ``rows`` and another use of the weight, or two ranges that share rows) gets one
    site over all its rows, named ``"name"``, holding all its calls (with their cross terms).

    Examples
    --------
    >>> from kpflow.models.hooks import hook_site_groups
    >>> plan = (("W", False, (0, 2)), ("W", False, (2, 4)), ("b", True, (0, 4)), ("W", False, (0, 2)))
    >>> hook_site_groups(plan, {"W": (4, 3), "b": (4,)})
    [('W[0:2]', 'W', (0, 2), (0, 3)), ('W[2:4]', 'W', (2, 4), (1,)), ('b', 'b', (0, 4), (2,))]
    """
    groups = []
    for name in sorted(shapes):
        out = shapes[name][0]
        spans = sorted({rows for n, _, rows in plan if n == name})
        disjoint = all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
        if not disjoint:
            spans = [(0, out)]
        for lo, hi in spans:
            calls = tuple(
                c for c, (n, _, rows) in enumerate(plan) if n == name and (not disjoint or rows == (lo, hi))
            )
            label = name if (lo, hi) == (0, out) else f"{name}[{lo}:{hi}]"
            groups.append((label, name, (lo, hi), calls))
    return groups


def hook_sites(traj: Any) -> list[Site]:
    """The weight sites of a hook-based trajectory, one per :func:`hook_site_groups` entry.

    Each site's rows are (call, site); its ``rows`` attribute says which parameter rows it
    covers (``[(name, (lo, hi))]``, the format of :func:`kpflow.ntk.site_parameters`).
    ``traj`` has ``names``, ``plan``, ``site_variables_by_call``, ``_static()`` and
    ``_operands`` (params values, z, x), and its ``model`` has ``_call`` and ``_shapes``; D
    differentiates ``model._call`` with respect to the hook outputs (:func:`_hook_D`).
    ``_call`` is the update map f of the constraint z − f(z; θ) = 0 (a recurrent step, a
    feed-forward stack, z − F for an implicit model's residual F), so D_w = ∂f/∂u_w and
    J_S = P F is dz/dθ with its sign.  A site used by one call whose D_w is diagonal is
    stored with its per-unit D (:func:`_as_diagonal`).
    """
    xp, m = traj.xp, traj.m
    sites: list[Site] = []
    for label, name, (lo, hi), calls in hook_site_groups(traj.plan, traj.model._shapes):
        blocks = []
        for c in calls:
            a = traj.site_variables_by_call[c]
            if a is None:
                blocks.append(xp.ones((m, 1), dtype=traj.dtype, device=traj.device))
            else:
                blocks.append(xp.reshape(a, (m, int(a.shape[-1]))))
        A = blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=0)
        static = (*traj._static(), calls, traj.site_shape, hi - lo)
        site = LinearSite(
            label,
            A,
            state_shape=traj.state_shape,
            width=hi - lo,
            apply=_hook_D,
            adjoint=_hook_DT,
            operands=traj._operands,
            static=static,
            n_sites=m,
            rows=[(name, (lo, hi))],
            batch_major=True,  # per call, one row per trajectory site (b, …), batch-major
        )
        sites.append(_as_diagonal(site, traj) if len(calls) == 1 else site)
    return _share_equal_D(sites, xp)


def _share_equal_D(sites: list[Site], xp: Any) -> list[Site]:
    """Per-unit sites whose D are equal (a tanh RNN's weights and biases) share one ``unit_D`` array.

    The Kronecker core then applies their D once, with their A_w side by side (the same sum,
    :func:`kpflow.ntk.kernel._terms`); the sites stay one per parameter.
    """
    seen: list[Any] = []
    out: list[Site] = []
    for s in sites:
        D = s.unit_D if type(s) is Site else None
        if D is not None:
            same = next((o for o in seen if o.shape == D.shape and bool(xp.all(o == D))), None)
            if same is None:
                seen.append(D)
            else:
                shape = s.state_shape
                s = Site(
                    s.name,
                    s.variables,
                    state_shape=shape,
                    unit_D=same,
                    rows=s.rows,
                    batch_major=s.batch_major,
                )
        out.append(s)
    return out


def _as_diagonal(site: LinearSite, traj: Any) -> Site:
    """The site with a diagonal D_w as a unit-structured :class:`Site` (exact shortcuts), else itself.

    D_w is diagonal when pre-activation unit i at site s moves only state coordinate i at
    site s: then D_w U = d ⊙ U with d = D_w 1.  That is checked on a random U (seeded; a
    non-diagonal D fails it with probability one), to 100·ε of ‖D_w U‖.  Elementwise gated
    cells (an RNN's tanh, a GRU-like cell's gates) pass; a weight whose output is mixed by
    another matrix afterwards does not.
    """
    from kpflow.backends import get_backend

    xp, m, S = traj.xp, traj.m, traj.site_state_size
    if site.width != S:
        return site
    adapter = get_backend(traj.states)
    ones = xp.ones((1, m, S), dtype=traj.dtype, device=traj.device)
    U = adapter.random_normal(0, (1, m, S), dtype=traj.dtype, device=traj.device)
    both = xp.reshape(site.apply_D(xp.concat([ones, U], axis=0)), (2, m, S))  # one product, two probes
    d = both[0, ...]  # keeps its autograd history: D_w stays differentiable in the parameters
    # the test itself reads numbers only (float() of a tensor with a graph warns on torch)
    plain, DU = adapter.graph_free(both), adapter.graph_free(both[1:, ...])
    gap = float(xp.linalg.vector_norm(DU - plain[0, ...] * U))
    if gap > 100 * float(xp.finfo(traj.dtype).eps) * float(xp.linalg.vector_norm(DU)):
        return site
    return Site(
        site.name,
        site.variables,
        state_shape=traj.state_shape,
        unit_D=d[:, :, None, None],
        rows=site.rows,
        batch_major=site.batch_major,
    )
