"""User-defined recurrent cells through weight hooks: :class:`Recurrent`.

The user writes one step in array-API code, ``step(params, h, x, site) -> h_next``, and
routes every use of a weight through the hook ``site``:

- ``site(name, a)`` returns ``a @ params[name].T`` (a weight of shape (out, in), as torch);
- ``site(name)`` returns the bias ``params[name]`` (shape (out,));
- ``rows=(lo, hi)`` restricts either to rows lo:hi of the parameter (one gate of a stacked
  gated weight such as a GRU's ``weight_ih``).

Each hook call c is a pre-activation u_c = W a_c (a bias call: u_c = b, a_c = [1]).  kpflow
records the site variables a_c at every site s = (b, t).  The calls of a parameter make its
sites (:func:`hook_site_groups`): one site per row range when the calls' ranges are
disjoint (named ``"name[lo:hi]"``), else one site over all its rows whose rows are
(call, batch, time):

    J_W = Σ_c D_c (A_c ⊗ I),   K_W = Σ_{c,c'} D_c (A_c A_c'ᵀ ⊗ I) D_c'ᵀ

so the cross terms between the uses of one weight are exact.  D_c = ∂h_t/∂u_c comes from
one of two derivative rules:

- autodiff (torch, jax): the step differentiated with respect to an additive perturbation
  of call c's output (a jvp for D, a vjp for Dᵀ, vmapped over the probes); P from jvps (P)
  and vjps (Pᵀ) of the step with respect to h;
- analytic, ``derivatives=`` (:class:`StepDerivatives`, every backend): the user's J v,
  Jᵀ w and per-unit diagonal D_c.

Costs of the autodiff rule (per block of k probes): each site's term of K takes one
vmapped vjp and one vmapped jvp of the step at all B·T sites; each P step one jvp (or vjp)
of the step.  Nothing of size B·T·H·H is stored.  A site of one call whose D_w is
diagonal (elementwise and gated cells) is detected and stored with its per-unit D, so K's
exact trace and spectrum rules apply; other sites fall back to the matrix-free algorithms
(exact up to their tolerance; both agree with the dense NTK).

Without ``derivatives=``, on numpy and array_api_strict ``run`` raises
:class:`~kpflow.backends.AutodiffUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kpflow.models._hook_autodiff import _hook_step_jvp, _hook_step_vjp, _params  # noqa: F401
from kpflow.models._hook_base import (  # noqa: F401  (their home before the split; imported from here)
    HookModel,
    HookTrajectory,
    _as_diagonal,
    hook_site_groups,
    hook_site_rows,
    hook_sites,
    record_hook_calls,
)
from kpflow.models._hook_call import _call_text, _check_param_shapes, _Hook
from kpflow.models._hook_rule import StepDerivatives, check_rule, rule_sites, rule_step_jvp, rule_step_vjp
from kpflow.models.base import RecurrentModel, RecurrentTrajectory, StepKernel, check_size
from kpflow.models.layout import check_independent_rows
from kpflow.models.sites import Site

__all__ = [
    "GuardedParams",
    "Recurrent",
    "RecurrentHookTrajectory",
    "StepDerivatives",
    "WeightOutsideHookError",
    "hook_site_groups",
]


class WeightOutsideHookError(TypeError):
    """A user step read a parameter directly instead of through its ``site`` hook."""


class GuardedParams:
    """The parameters as a user step sees them: names only, every value read raises.

    A weight read directly (``params["W"]``) would escape the hooks, so its K term would be
    silently missing; instead the read raises :class:`WeightOutsideHookError` naming the
    parameter and the hook to use.

    Examples
    --------
    >>> from kpflow.models.hooks import GuardedParams
    >>> p = GuardedParams(("W",), "Recurrent.step")
    >>> "W" in p, list(p.keys())
    (True, ['W'])
    >>> p["W"]
    Traceback (most recent call last):
    ...
    kpflow.models.hooks.WeightOutsideHookError: Recurrent.step: the step read params['W'] directly; ...
    """

    __slots__ = ("_names", "_where")

    def __init__(self, names: tuple[str, ...], where: str) -> None:
        self._names = tuple(names)
        self._where = where

    def _refuse(self, name: Any) -> WeightOutsideHookError:
        msg = (
            f"{self._where}: the step read params[{name!r}] directly; route every use of a "
            f"parameter through the hook: site({name!r}, a) for a weight (returns a @ W.T), "
            f"site({name!r}) for a bias, so that kpflow sees it in K"
        )
        return WeightOutsideHookError(msg)

    def __getitem__(self, name: Any) -> Any:
        raise self._refuse(name)

    def get(self, name: Any, default: Any = None) -> Any:
        raise self._refuse(name)

    def values(self) -> Any:
        raise self._refuse("...")

    def items(self) -> Any:
        raise self._refuse("...")

    def keys(self) -> tuple[str, ...]:
        return self._names

    def __contains__(self, name: Any) -> bool:
        return name in self._names

    def __iter__(self) -> Any:
        raise self._refuse("...")

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"GuardedParams({list(self._names)})"


class Recurrent(HookModel, RecurrentModel):
    """A recurrent cell written by the user, h_t = step(params, h_{t−1}, x_t, site).

    Parameters
    ----------
    step : callable
        ``step(params, h, x, site) -> h_next`` in array-API code, on any leading axes: h of
        shape (..., n_hidden), x of shape (..., n_in).  ``params`` only names the
        parameters (reading a value raises :class:`WeightOutsideHookError`); every use goes
        through the hook: ``site(name, a)`` = ``a @ params[name].T`` (weight (out, in)),
        ``site(name)`` = ``params[name]`` (bias (out,)).  ``rows=(lo, hi)`` restricts a
        call to rows lo:hi of the parameter (``a @ params[name][lo:hi].T``, the bias
        ``params[name][lo:hi]``): one gate of a stacked gated weight.  A weight may be used
        at several calls; the order of calls (names and rows) must not depend on the values
        of the arrays.
    n_in, n_hidden : int
        Input size and state size H.
    param_shapes : dict of str to tuple
        Every parameter's shape: (out, in) for a weight, (out,) for a bias.
    derivatives : StepDerivatives, optional
        An analytic rule: the step Jacobian's actions J v, Jᵀ w and each hook call's D as
        per-unit diagonal coefficients (:class:`~kpflow.models.StepDerivatives`).  With it
        the cell needs no autodiff and runs on every backend (numpy, array_api_strict);
        without it D_w and the step Jacobian come from autodiff (torch or jax arrays).
    independent_rows : bool, optional
        Declares that the step never mixes batch rows (row b of h_t reads row b of h_{t−1}
        and x_t only: no batch statistics), see :class:`~kpflow.models.layout.Layout`; the
        dense output NTK then probes all rows at once.  Default False (rows may mix); a
        wrong True gives a wrong dense output NTK.

    Notes
    -----
    The sites (:func:`hook_site_groups`): a parameter whose calls name disjoint row ranges
    gets one site per range, named ``"name[lo:hi]"``; otherwise one site named after it.
    Each site has k_w = its rows' count and one row of A_w per (hook call, batch, time);
    the parameter kernel is exact, cross terms between the uses of one weight included.  A
    site of one call whose D is diagonal (an elementwise or gated cell) carries per-unit D,
    so K's exact trace, spectrum and effective-rank rules apply; see
    :mod:`kpflow.models.hooks` for the costs.  Each site's ``rows`` attribute lists the
    parameter rows it covers (``[(name, (lo, hi))]``), which ``J.to_params`` reads.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> import kpflow
    >>> from kpflow.models import Recurrent
    >>> def step(params, h, x, site):
    ...     return torch.tanh(site("W", h) + site("U", x) + site("b"))
    >>> model = Recurrent(step, n_in=2, n_hidden=3, param_shapes={"W": (3, 3), "U": (3, 2), "b": (3,)})
    >>> params = model.init(0, like=torch.zeros(1, dtype=torch.float64))
    >>> traj = model.run(params, torch.ones(4, 5, 2, dtype=torch.float64))
    >>> traj.states.shape, [(s.name, s.p, s.width) for s in traj.sites]
    (torch.Size([4, 5, 3]), [('U', 2, 3), ('W', 3, 3), ('b', 1, 3)])
    >>> kpflow.global_ntk(traj).todense().shape
    torch.Size([4, 5, 3, 4, 5, 3])

    A GRU's stacked weights (gates r, z, n) called a gate at a time with ``rows=``: one
    site per gate and weight, each with per-unit D:

    >>> def gru(params, h, x, site):
    ...     H = h.shape[-1]
    ...     gate = lambda g: dict(rows=(g * H, (g + 1) * H))
    ...     pre = [site("weight_ih", x, **gate(g)) + site("bias_ih", **gate(g)) for g in range(3)]
    ...     hid = [site("weight_hh", h, **gate(g)) + site("bias_hh", **gate(g)) for g in range(3)]
    ...     r, z = torch.sigmoid(pre[0] + hid[0]), torch.sigmoid(pre[1] + hid[1])
    ...     n = torch.tanh(pre[2] + r * hid[2])
    ...     return (1 - z) * n + z * h
    >>> shapes = kpflow.models.GRU(2, 3).param_shapes()
    >>> cell = Recurrent(gru, n_in=2, n_hidden=3, param_shapes=shapes)
    >>> traj = cell.run(cell.init(0, like=params["W"]), torch.ones(4, 5, 2, dtype=torch.float64))
    >>> [s.name for s in traj.sites][:3], {type(s).__name__ for s in traj.sites}
    (['bias_hh[0:3]', 'bias_hh[3:6]', 'bias_hh[6:9]'], {'Site'})

    On numpy there is no autodiff for D_w and the step Jacobian (give ``derivatives=``):

    >>> model.run(model.init(0), np.ones((4, 5, 2)))
    Traceback (most recent call last):
    ...
    kpflow.backends._base.AutodiffUnavailableError: Recurrent.run: a user cell's D_w and step Jacobian ...
    """

    def __init__(
        self,
        step: Callable[..., Any],
        *,
        n_in: int,
        n_hidden: int,
        param_shapes: dict[str, tuple[int, ...]],
        derivatives: Any = None,
        independent_rows: bool = False,
    ) -> None:
        where = "Recurrent"
        if not callable(step):
            msg = f"{where}: expected step to be a callable step(params, h, x, site), got {step!r}"
            raise TypeError(msg)
        self.n_in = check_size(n_in, "n_in", where)
        self.n_hidden = check_size(n_hidden, "n_hidden", where)
        self.state_size = self.n_hidden
        self._shapes = _check_param_shapes(param_shapes, where)
        self.derivatives = None if derivatives is None else check_rule(derivatives, where)
        self.user_step = step
        self.independent_rows = check_independent_rows(independent_rows, where)

    def _call(self, params: dict[str, Any], h: Any, x: Any, hook: _Hook) -> Any:
        guarded = GuardedParams(tuple(self._shapes), hook.where)
        return self.user_step(guarded, h, x, hook)

    def step(self, params: dict[str, Any], h_prev: Any, x_t: Any) -> Any:
        return self._call(params, h_prev, x_t, _Hook(params, self._shapes, "Recurrent.step"))

    def run(self, params: dict[str, Any], x: Any, h0: Any = None) -> RecurrentHookTrajectory:
        """Run the cell once and return its trajectory.

        Raises
        ------
        AutodiffUnavailableError
            (a ``TypeError``) for numpy, array_api_strict or cupy params without
            ``derivatives=``: D_w and the step Jacobian are then computed by autodiff
            (torch, jax).  ``unroll`` still runs there.
        WeightOutsideHookError
            When the step reads a parameter directly instead of through ``site``.
        ValueError, TypeError
            As :meth:`kpflow.models.Model.run`, and for bad hook calls.
        """
        from kpflow.backends import AutodiffUnavailableError, get_backend

        where = "Recurrent.run"
        xp = self.check_params(params, where)[0]
        adapter = get_backend(xp.zeros(1))
        if self.derivatives is None and not adapter.has_autodiff:
            msg = (
                f"{where}: a user cell's D_w and step Jacobian are computed by automatic "
                f"differentiation, which the {adapter.name} backend lacks; run the model on "
                "torch or jax arrays, or give Recurrent(..., derivatives=StepDerivatives(...))"
            )
            raise AutodiffUnavailableError(msg)
        return super().run(params, x, h0)  # type: ignore[return-value]

    def _make_trajectory(
        self, params: dict[str, Any], x: Any, h0: Any, states: Any
    ) -> RecurrentHookTrajectory:
        from kpflow.backends import get_backend

        where = "Recurrent.run"
        adapter = get_backend(states)
        expected = (int(x.shape[0]), int(x.shape[1]), self.n_hidden)
        if tuple(states.shape) != expected:
            msg = (
                f"{where}: expected the step to return h of shape (B, n_hidden={self.n_hidden}), "
                f"got states of shape {tuple(states.shape)}"
            )
            raise ValueError(msg)
        return RecurrentHookTrajectory(self, params, x, h0, states, adapter.name)

    def __repr__(self) -> str:
        return f"Recurrent(n_in={self.n_in}, n_hidden={self.n_hidden}, params={sorted(self._shapes)})"


class RecurrentHookTrajectory(HookTrajectory, RecurrentTrajectory):
    """A run of a :class:`Recurrent` cell: the recorded hook calls, P by jvp/vjp of the step.

    Attributes
    ----------
    plan : tuple of (str, bool, (int, int))
        The hook calls of one step, in order: (parameter name, whether a bias call, rows).
    site_variables_by_call : list of array
        Call c's site variables at every site, ``(B, T, in)`` (None for a bias call).
    """

    model: Recurrent

    def __init__(
        self, model: Recurrent, params: dict[str, Any], x: Any, h0: Any, states: Any, backend: str
    ) -> None:
        super().__init__(model, params, x, h0, states)
        self._record(backend, self.prev_states, "Recurrent.run", "(B, T)")

    def step_kernel(self) -> StepKernel:
        rule = self.model.derivatives
        if rule is not None:
            return StepKernel(rule_step_jvp, rule_step_vjp, (rule, self.names), self._operands)
        return StepKernel(_hook_step_jvp, _hook_step_vjp, self._static(), self._operands)

    def _make_sites(self) -> list[Site]:
        if self.model.derivatives is not None:
            return rule_sites(self, hook_site_groups(self.plan, self.model._shapes), _call_text)
        return super()._make_sites()
