"""General implicit models through weight hooks: :class:`Implicit`, states solving F(z, θ, x) = 0.

The user writes the residual ``residual(params, z, x, site)`` in array-API code with the
same hooks as :class:`~kpflow.models.Recurrent` (``site(name, a)`` = ``a @ W.T``,
``site(name)`` = a bias).  An equilibrium layer z = tanh(W z + U x + b) is the residual
z − tanh(site("W", z) + site("U", x) + site("b")).  The sites are the B batch rows and
the state has shape (B, n_state).

Here ∂F/∂z is not triangular (``traj.triangular`` is False), so:

- **P = (∂F/∂z)⁻¹** is a linear solve: restarted GMRES (:mod:`kpflow.linalg._gmres`) on
  jvps of the residual with respect to z, one Krylov space per probe, all probes sharing
  each batched product; Pᵀ is the adjoint solve on vjps.  ∂F/∂z is block-diagonal over the
  batch rows, but the solve stays matrix-free over the whole (B, n_state) state: it never
  forms an n_state × n_state block, so it scales to wide layers (at the price of a Krylov
  space shared across rows: GMRES needs up to B·n_state steps instead of n_state).
- The constraint in the library's form F = z − f gives ``update_map`` f(z; θ) = z − F(z, θ, x),
  so L = I − ∂F/∂z and ``propagator(traj).inverse()`` is ∂F/∂z.
- **K = (∂f/∂θ)(∂f/∂θ)ᵀ**: each weight site's D_w = ∂f/∂u_w = −∂F/∂u_w at the solution, by
  jvp/vjp of the update map f with respect to its hook outputs (exactly as for
  :class:`Recurrent`, whose step is its f).  So the state Jacobian J_S = P F of
  :func:`kpflow.state_jacobian` is dz/dθ = −(∂F/∂z)⁻¹ ∂F/∂θ with its sign, and
  NTK_S = J_S J_Sᵀ = P K Pᵀ.

The forward solve (:meth:`Implicit.unroll`) starts from z = 0 (or ``h0``, an initial guess)
and stops when ‖F(z)‖ ≤ tol · max(‖z‖, 1) (Frobenius norms over the whole batch):

- ``solver="fixed_point"``: z ← z − F(z), i.e. z ← f(z) for a residual z − f(z); converges
  when f is a contraction;
- ``solver="newton"``: z ← z + δ with (∂F/∂z) δ = −F(z) solved by GMRES on jvps (inexact
  Newton: the inner tolerance is min(0.1, current relative residual), no line search).

Each update is one iteration; ``max_iter`` updates without reaching ``tol`` raise
:class:`~kpflow.linalg._gmres.SolverNotConvergedError` carrying ``.residual`` and
``.iterations``.

The solve records no autograd graph and is never differentiated: ``unroll`` (and so ``run``)
carries the implicit function theorem as its reverse-mode rule
(:meth:`kpflow.backends.Backend.custom_vjp`).  For a cotangent g of z it solves
(∂F/∂z)ᵀ w = g by GMRES on vjps and returns −(∂F/∂θ)ᵀ w and −(∂F/∂x)ᵀ w (h0, a mere
initial guess, gets none).  So ``torch.autograd``, ``torch.func.vjp``, ``jax.grad`` and
``jax.vjp`` differentiate the states (``jax.jit`` and ``jax.vmap`` cannot: the stopping
test reads values); forward mode (jvp) is not available.

Derivatives need torch or jax arrays: on numpy and array_api_strict ``run`` raises
:class:`~kpflow.backends.AutodiffUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from kpflow._array import array_namespace, device_of, namespace_name
from kpflow.linalg._gmres import SolverNotConvergedError, gmres
from kpflow.models._hook_base import HookModel, HookTrajectory
from kpflow.models.base import Model, Trajectory, check_size
from kpflow.models.hooks import GuardedParams, _check_param_shapes, _Hook, _params
from kpflow.models.layout import Layout, check_independent_rows

__all__ = ["Implicit", "ImplicitTrajectory", "SolverNotConvergedError"]

SOLVERS = ("fixed_point", "newton")


class Implicit(HookModel, Model):
    """An implicit model written by the user: states z (B, n_state) solving F(z, θ, x) = 0.

    Parameters
    ----------
    residual : callable
        ``residual(params, z, x, site) -> F`` in array-API code, z of shape (B, n_state),
        x of shape (B, n_in), F of the shape of z.  Parameters are used only through the
        hook: ``site(name, a)`` = ``a @ params[name].T`` (weight (out, in)),
        ``site(name)`` = ``params[name]`` (bias (out,)).
    n_in, n_state : int
    param_shapes : dict of str to tuple
        (out, in) for a weight, (out,) for a bias.
    solver : {"fixed_point", "newton"}
        The forward solve (see :mod:`kpflow.models.implicit`).
    tol : float
        The forward solve stops when ‖F(z)‖ ≤ tol · max(‖z‖, 1) (Frobenius norms).
    max_iter : int
        Cap on the forward updates.
    solve_tol : float, optional
        GMRES tolerance of P and Pᵀ, ‖b − A x‖ ≤ solve_tol·‖b‖ per probe; default
        max(1e-12, 100·eps of the dtype).
    solve_restart, solve_max_iter : int
        GMRES restart length and cap on its iterations (per solve).
    independent_rows : bool, optional
        Declares that the residual never mixes batch rows (row b of F reads rows b of z and
        x only: no batch statistics), see :class:`~kpflow.models.layout.Layout`; the dense
        output NTK then probes all rows at once.  Default False (rows may mix); a wrong True
        gives a wrong dense output NTK.

    Examples
    --------
    An equilibrium layer z = tanh(W z + U x + b):

    >>> import numpy as np
    >>> import torch
    >>> import kpflow
    >>> from kpflow.models import Implicit
    >>> def deq(params, z, x, site):
    ...     return z - torch.tanh(site("W", z) + site("U", x) + site("b"))
    >>> model = Implicit(deq, n_in=2, n_state=3, param_shapes={"W": (3, 3), "U": (3, 2), "b": (3,)})
    >>> params = model.init(0, like=torch.zeros(1, dtype=torch.float64))
    >>> traj = model.run(params, torch.ones(4, 2, dtype=torch.float64))
    >>> traj.states.shape, traj.triangular
    (torch.Size([4, 3]), False)
    >>> F = model.residual(params, traj.states, traj.x)
    >>> bool(torch.linalg.norm(F) <= 1e-10 * max(1.0, float(torch.linalg.norm(traj.states))))
    True
    >>> kpflow.global_ntk(traj).todense().shape
    torch.Size([4, 3, 4, 3])

    On numpy there is no autodiff for D_w and ∂F/∂z:

    >>> model.run(model.init(0), np.ones((4, 2)))
    Traceback (most recent call last):
    ...
    kpflow.backends._base.AutodiffUnavailableError: Implicit.run: the D_w and ∂F/∂z of a user ...
    """

    def __init__(
        self,
        residual: Callable[..., Any],
        *,
        n_in: int,
        n_state: int,
        param_shapes: dict[str, tuple[int, ...]],
        solver: str = "fixed_point",
        tol: float = 1e-10,
        max_iter: int = 200,
        solve_tol: float | None = None,
        solve_restart: int = 50,
        solve_max_iter: int = 1000,
        independent_rows: bool = False,
    ) -> None:
        where = "Implicit"
        if not callable(residual):
            msg = (
                f"{where}: expected residual to be a callable residual(params, z, x, site), got {residual!r}"
            )
            raise TypeError(msg)
        self.n_in = check_size(n_in, "n_in", where)
        self.n_state = self.state_size = check_size(n_state, "n_state", where)
        self._shapes = _check_param_shapes(param_shapes, where)
        if solver not in SOLVERS:
            msg = f"{where}: expected solver to be one of {SOLVERS}, got {solver!r}"
            raise ValueError(msg)
        for name, value in (("tol", tol), ("solve_tol", solve_tol)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            ):
                msg = f"{where}: expected {name} to be a positive float, got {value!r}"
                raise ValueError(msg)
        self.max_iter = check_size(max_iter, "max_iter", where)
        self.solve_restart = check_size(solve_restart, "solve_restart", where)
        self.solve_max_iter = check_size(solve_max_iter, "solve_max_iter", where)
        self.solver, self.tol, self.solve_tol = solver, float(tol), solve_tol
        self.user_residual = residual
        self.independent_rows = check_independent_rows(independent_rows, where)

    def _init_bound(self) -> float:
        return 1.0 / float(np.sqrt(self.n_state))

    def _residual_call(self, params: dict[str, Any], z: Any, x: Any, hook: _Hook) -> Any:
        """F(z, θ, x), the user's residual, with the hook ``hook``."""
        return self.user_residual(GuardedParams(tuple(self._shapes), hook.where), z, x, hook)

    def _call(self, params: dict[str, Any], z: Any, x: Any, hook: _Hook) -> Any:
        """f(z; θ) = z − F(z, θ, x) with the hook: the map whose hook derivatives are the D_w.

        The hook models share one meaning of ``_call``, the update map f of the library's
        constraint z − f = 0 (a :class:`~kpflow.models.Recurrent` step), so the sites of
        :func:`~kpflow.models.hooks.hook_sites` get D_w = ∂f/∂u_w = −∂F/∂u_w.
        """
        return z - self._residual_call(params, z, x, hook)

    def residual(self, params: dict[str, Any], z: Any, x: Any) -> Any:
        """F(z, θ, x), shape (B, n_state) (pure array-API code, differentiable)."""
        return self._residual_call(params, z, x, _Hook(params, self._shapes, "Implicit.residual"))

    def update_map(self, params: dict[str, Any], states: Any, x: Any, h0: Any = None) -> Any:
        """f(z; θ) = z − F(z, θ, x): the library's form F = z − f of the constraint."""
        return self._update_map(params, states, x, "Implicit.update_map")

    def linear_tol(self, like: Any) -> float:
        """The GMRES tolerance for the dtype of array ``like``: ``solve_tol`` or max(1e-12, 100·eps)."""
        if self.solve_tol is not None:
            return float(self.solve_tol)
        return max(1e-12, 100.0 * float(array_namespace(like).finfo(like.dtype).eps))

    def _check_inputs(self, x: Any, h0: Any, meta: tuple, where: str) -> None:
        xp = meta[0]
        x_xp = array_namespace(x, where=where)
        if x_xp is not xp:
            msg = f"{where}: x comes from {namespace_name(x_xp)} but params from {namespace_name(xp)}"
            raise TypeError(msg)
        if x.ndim != 2 or x.shape[1] != self.n_in or x.shape[0] < 1:
            msg = f"{where}: expected x of shape (B, n_in={self.n_in}) with B >= 1, got {tuple(x.shape)}"
            raise ValueError(msg)
        self._check_array(x, "x", tuple(x.shape), meta, where)
        if h0 is not None:
            self._check_array(h0, "h0 (the initial guess)", (x.shape[0], self.n_state), meta, where)

    def unroll(self, params: dict[str, Any], x: Any, h0: Any = None) -> Any:
        """Solve F(z, θ, x) = 0 from z = h0 (zeros by default), differentiable (implicit function theorem).

        The iterations record no autograd graph; the result carries the reverse-mode rule
        z̄ ↦ (−(∂F/∂θ)ᵀ w, −(∂F/∂x)ᵀ w) with (∂F/∂z)ᵀ w = z̄ (see the module docstring), so
        ``torch.autograd``, ``torch.func.vjp``, ``jax.grad`` and ``jax.vjp`` give dz/dθ and
        dz/dx.

        Raises
        ------
        SolverNotConvergedError
            When ``max_iter`` updates do not reach ``tol`` (``.residual``: the relative
            residual ‖F(z)‖ / max(‖z‖, 1) reached), or when the GMRES solve of a gradient
            does not reach its tolerance.
        TypeError
            Inside ``jax.jit`` or ``jax.vmap`` (the solve reads values).
        """
        from kpflow.backends import get_backend

        names = tuple(params)
        solution = get_backend(x).custom_vjp(
            partial(self._solution, names), partial(self._solution_vjp, names), where="Implicit.unroll"
        )
        return solution(*(params[n] for n in names), x, h0)

    def _differentiable_unroll(self, params: dict[str, Any], x: Any, h0: Any) -> Any:
        """``unroll``: it is differentiable by its own rule and keeps no graph of the iterations."""
        return self.unroll(params, x, h0)

    def _solution(self, names: tuple[str, ...], *arrays: Any) -> Any:
        """The forward solve on plain values: ``arrays`` = (*params in ``names`` order, x, h0)."""
        from kpflow.backends import get_backend

        *values, x, h0 = arrays
        params = _params(names, tuple(values))
        xp = array_namespace(x)
        adapter = get_backend(x)
        if h0 is None:
            z = xp.zeros((int(x.shape[0]), self.n_state), dtype=values[0].dtype, device=device_of(x))
        else:
            z = xp.asarray(h0, copy=True)  # never the caller's array itself, even when already solved
        with adapter.no_grad():
            return self._solve(adapter, xp, params, x, z)

    def _solution_vjp(self, names: tuple[str, ...], arrays: tuple, z: Any, g: Any) -> tuple:
        """The implicit function theorem's vjp: w = (∂F/∂z)⁻ᵀ g, then −(∂F/∂θ)ᵀ w and −(∂F/∂x)ᵀ w."""
        from kpflow.backends import get_backend

        adapter = get_backend(z)
        free = adapter.graph_free
        *values, x, _ = arrays
        values_t = tuple(free(v) for v in values)
        x, z, g = free(x), free(z), free(g)
        where = "Implicit (gradient of the states: solve with (∂F/∂z)ᵀ)"

        def of_z(z: Any) -> Any:
            params = _params(names, values_t)
            return self._residual_call(params, z, x, _Hook(params, self._shapes, where))

        def of_params_x(values: tuple, x: Any) -> Any:
            params = _params(names, values)
            return self._residual_call(params, z, x, _Hook(params, self._shapes, where))

        _, pull_z = adapter.vjp(of_z, z)
        w = gmres(
            lambda W: adapter.vmap(lambda c: pull_z(c)[0])(W),
            g[None, ...],
            tol=self.linear_tol(z),
            restart=self.solve_restart,
            max_iter=self.solve_max_iter,
            where=where,
        )[0, ...]
        _, pull = adapter.vjp(of_params_x, values_t, x)
        d_values, d_x = pull(-w)
        return (*d_values, d_x, None)

    def _solve(self, adapter: Any, xp: Any, params: dict[str, Any], x: Any, z: Any) -> Any:
        where = f"Implicit.run (solver={self.solver!r})"
        for it in range(self.max_iter + 1):
            F = self._residual_call(params, z, x, _Hook(params, self._shapes, where))
            if tuple(F.shape) != tuple(z.shape):
                msg = (
                    f"{where}: expected the residual of shape {tuple(z.shape)} (B, n_state), "
                    f"got {tuple(F.shape)}"
                )
                raise ValueError(msg)
            rel = float(xp.linalg.vector_norm(F)) / max(float(xp.linalg.vector_norm(z)), 1.0)
            if rel <= self.tol:
                return z
            if it == self.max_iter or not np.isfinite(rel):
                msg = (
                    f"{where}: the forward solve did not converge: after {it} iterations "
                    f"‖F(z)‖/max(‖z‖, 1) = {rel:.3e} > tol={self.tol:g}; raise max_iter, loosen tol, "
                    "start from a better h0, or try solver='newton'"
                )
                raise SolverNotConvergedError(msg, residual=rel, iterations=it)
            if self.solver == "fixed_point":
                z = z - F
            else:
                z = z + self._newton_step(adapter, params, x, z, F, min(0.1, rel), where)
        raise AssertionError  # pragma: no cover (the loop returns or raises)

    def _newton_step(
        self, adapter: Any, params: dict[str, Any], x: Any, z: Any, F: Any, eta: float, where: str
    ) -> Any:
        def f(z: Any) -> Any:
            return self._residual_call(params, z, x, _Hook(params, self._shapes, where))

        def matmat(V: Any) -> Any:
            return adapter.vmap(lambda v: adapter.jvp(f, (z,), (v,))[1])(V)

        inner = max(eta, self.linear_tol(z))
        return gmres(
            matmat,
            -F[None, ...],
            tol=inner,
            restart=self.solve_restart,
            max_iter=self.solve_max_iter,
            where=where,
        )[0, ...]

    def run(self, params: dict[str, Any], x: Any, h0: Any = None) -> ImplicitTrajectory:
        """Solve once and return the trajectory (params, x, h0 on torch or jax).

        ``h0`` (B, n_state), optional, is the initial guess of the forward solve.

        Raises
        ------
        AutodiffUnavailableError
            (a ``TypeError``) for numpy, array_api_strict or cupy params.
        SolverNotConvergedError
            (a ``RuntimeError``) when the forward solve does not reach ``tol``.
        WeightOutsideHookError, ValueError, TypeError
            As :meth:`kpflow.models.Recurrent.run`.
        """
        from kpflow.backends import AutodiffUnavailableError, get_backend

        where = "Implicit.run"
        xp = self.check_params(params, where)[0]
        adapter = get_backend(xp.zeros(1))
        if not adapter.has_autodiff:
            msg = (
                f"{where}: the D_w and ∂F/∂z of a user residual are computed by automatic "
                f"differentiation, which the {adapter.name} backend lacks; run the model on "
                "torch or jax arrays"
            )
            raise AutodiffUnavailableError(msg)
        return super().run(params, x, h0)  # type: ignore[return-value]

    def layout(self, state_shape: tuple[int, ...]) -> Layout:
        """``(batch, state)``, one block solved at once (∂F/∂z is not triangular: P is a solve)."""
        return Layout(
            state_shape,
            ("batch", "state"),
            "solved",
            site_axes=1,
            parts=self.state_parts,
            features=self.feature_columns,
            independent_rows=self.independent_rows,
        )

    def _make_trajectory(self, params: dict[str, Any], x: Any, h0: Any, states: Any) -> ImplicitTrajectory:
        from kpflow.backends import get_backend

        return ImplicitTrajectory(self, params, x, h0, states, get_backend(states).name)

    def __repr__(self) -> str:
        return (
            f"Implicit(n_in={self.n_in}, n_state={self.n_state}, params={sorted(self._shapes)}, "
            f"solver={self.solver!r})"
        )


class ImplicitTrajectory(HookTrajectory, Trajectory):
    """A solve of an :class:`Implicit` model: P by GMRES on jvps, Pᵀ on vjps, hook sites for K.

    ``state_shape = (B, n_state)``, ``site_shape = (B,)``, one block (``n_steps = 1``),
    ``triangular`` False.  :func:`kpflow.ntk.propagator` applies P by :meth:`solve` and
    Pᵀ by :meth:`solve_adjoint`.

    Examples
    --------
    >>> import torch
    >>> from kpflow.models import Implicit
    >>> def deq(params, z, x, site):
    ...     return z - torch.tanh(site("W", z) + site("U", x))
    >>> model = Implicit(deq, n_in=1, n_state=2, param_shapes={"W": (2, 2), "U": (2, 1)})
    >>> like = torch.zeros(1, dtype=torch.float64)
    >>> traj = model.run(model.init(0, like=like), torch.ones(3, 1, dtype=torch.float64))
    >>> V = torch.randn(5, 3, 2, dtype=torch.float64)
    >>> bool(torch.allclose(traj.residual_jvp(traj.solve(V)), V, atol=1e-12))
    True
    """

    model: Implicit

    def __init__(
        self, model: Implicit, params: dict[str, Any], x: Any, h0: Any, states: Any, backend: str
    ) -> None:
        super().__init__(model, params, x, h0, states)
        self._record(backend, states, "Implicit.run", "(B,)")

    def residual_jvp(self, V: Any) -> Any:
        """(∂F/∂z) V for ``V`` of shape ``(k, B, n_state)``."""
        return _residual_jvp(self.model, self.backend, self.names, self.plan, self._product_operands(), V)

    def residual_vjp(self, W: Any) -> Any:
        """(∂F/∂z)ᵀ W for ``W`` of shape ``(k, B, n_state)``."""
        return _residual_vjp(self.model, self.backend, self.names, self.plan, self._product_operands(), W)

    def state_jvp(self, V: Any) -> Any:
        """L V = V − (∂F/∂z) V (the constraint written F = z − f)."""
        return V - self.residual_jvp(V)

    def state_vjp(self, W: Any) -> Any:
        """Lᵀ W = W − (∂F/∂z)ᵀ W."""
        return W - self.residual_vjp(W)

    def solve(self, V: Any) -> Any:
        """P V = (∂F/∂z)⁻¹ V by GMRES, ``V`` of shape ``(k, B, n_state)``."""
        return self._gmres(self.residual_jvp, V, "P")

    def solve_adjoint(self, W: Any) -> Any:
        """Pᵀ W = (∂F/∂z)⁻ᵀ W by GMRES on vjps."""
        return self._gmres(self.residual_vjp, W, "Pᵀ")

    def _gmres(self, matmat: Callable[[Any], Any], B: Any, what: str) -> Any:
        model = self.model
        return gmres(
            matmat,
            B,
            tol=model.linear_tol(self.states),
            restart=model.solve_restart,
            max_iter=model.solve_max_iter,
            where=f"Implicit ({what} = solve with ∂F/∂z)",
        )

    def _product_operands(self) -> tuple:
        from kpflow.backends import get_backend

        return get_backend(self.backend).for_products(self._operands)


# -- pure derivative actions -----------------------------------------------------------------------
def _residual_of_z(model: Implicit, names: tuple, plan: tuple, operands: tuple, where: str) -> tuple:
    values, z, x = operands
    params = _params(names, values)

    def f(z: Any) -> Any:
        return model._residual_call(params, z, x, _Hook(params, model._shapes, where, plan=plan))

    return f, z


def _residual_jvp(model: Implicit, backend: str, names: tuple, plan: tuple, operands: tuple, V: Any) -> Any:
    """(∂F/∂z) V, vmapped over the probes of ``V`` (k, B, n_state)."""
    from kpflow.backends import get_backend

    adapter = get_backend(backend)
    f, z = _residual_of_z(model, names, plan, operands, "Implicit (∂F/∂z)")
    return adapter.vmap(lambda v: adapter.jvp(f, (z,), (v,))[1])(V)


def _residual_vjp(model: Implicit, backend: str, names: tuple, plan: tuple, operands: tuple, W: Any) -> Any:
    """(∂F/∂z)ᵀ W, vmapped over the probes."""
    from kpflow.backends import get_backend

    adapter = get_backend(backend)
    f, z = _residual_of_z(model, names, plan, operands, "Implicit (∂F/∂zᵀ)")
    _, vjp_fn = adapter.vjp(f, z)
    return adapter.vmap(lambda w: vjp_fn(w)[0])(W)
