"""The propagator P = (∂F/∂z)⁻¹ = (I − L)⁻¹ and its inverse I − L.

P q is the forward recursion y_0 = q_0, y_t = q_t + J_t y_{t−1}; Pᵀ q is
backpropagation through time, w_{T−1} = q_{T−1}, w_t = q_t + J_{t+1}ᵀ w_{t+1}.
Both push a whole block of probes through each step with one batched Jacobian
action; the B·T·H·H Jacobians are never stored.  A trajectory whose ∂F/∂z is not
triangular (``traj.triangular`` False, e.g. :class:`kpflow.models.Implicit`) supplies
the linear solves itself, ``solve(V)`` = P V and ``solve_adjoint(W)`` = Pᵀ W
(:class:`SolvedTrajectory`), and P applies them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from kpflow.models.base import RecurrentTrajectory, Trajectory
from kpflow.ntk.kernel import check_trajectory, compiled, product_operands
from kpflow.operators.base import LinearOperator

__all__ = ["ConstraintJacobian", "Propagator", "SolvedTrajectory", "propagator"]


@runtime_checkable
class SolvedTrajectory(Protocol):
    """A trajectory with a non-triangular ∂F/∂z that applies P by linear solves.

    ``solve(V)`` = (∂F/∂z)⁻¹ V and ``solve_adjoint(W)`` = (∂F/∂z)⁻ᵀ W, both on blocks of
    shape ``(k, *state_shape)``.
    """

    def solve(self, V: Any) -> Any: ...

    def solve_adjoint(self, W: Any) -> Any: ...


class Propagator(LinearOperator):
    """P = (I − L)⁻¹ on ``state_shape``: a forward recursion over the blocks of z.

    Parameters
    ----------
    traj : Trajectory
        A trajectory whose L is block-subdiagonal (``traj.triangular``).

    Attributes
    ----------
    traj : Trajectory

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow.ntk as ntk
    >>> from kpflow.models import RNN
    >>> model = RNN(1, 2)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((1, 3, 1)))
    >>> P = ntk.propagator(traj)
    >>> q = xp.ones((1, 3, 2))
    >>> bool(xp.all(xp.abs(P.inverse().matvec(P.matvec(q)) - q) < 1e-12))
    True
    """

    def __init__(self, traj: Trajectory) -> None:
        shape = traj.state_shape
        super().__init__(shape, shape, xp=traj.xp, dtype=traj.dtype, device=traj.device)
        self.traj = traj
        self.axis_names = traj.axis_names

    def _step(self, adjoint: bool) -> Callable[[Any, Any, int], Any]:
        """(q, y, t) ↦ q + J_t y (or q + J_tᵀ y): one step of the recursion.

        On a backend that compiles per shape (jax), a trajectory with a pure
        :meth:`~kpflow.models.RecurrentTrajectory.step_kernel` runs each step as one compiled
        program, t being an argument (one compilation for all T steps, shared by every
        trajectory of the same shapes); elsewhere the step runs eagerly.  Either way it reads
        the kernel's operands through :func:`~kpflow.ntk.kernel.product_operands` (graph-free
        under torch's ``no_grad``).
        """
        traj = self.traj
        kernel = traj.step_kernel() if isinstance(traj, RecurrentTrajectory) else None
        if kernel is not None:
            action = kernel.vjp if adjoint else kernel.jvp
            operands = product_operands(traj.xp, kernel.operands)
            fn = compiled(traj.xp, _recursion_step, action, kernel.static)
            if fn is not None:
                return lambda q, y, t: fn(operands, q, y, t)
            xp, static = traj.xp, kernel.static
            return lambda q, y, t: _recursion_step(xp, action, static, operands, q, y, t)
        if adjoint:
            return lambda q, w, t: q + traj.step_vjp(t, w)
        return lambda q, y, t: q + traj.step_jvp(t, y)

    def _matmat(self, X: Any) -> Any:
        traj = self.traj
        if not traj.triangular and isinstance(traj, SolvedTrajectory):
            return traj.solve(X)
        step = self._step(adjoint=False)
        y = traj.block(X, 0)
        out = [y]
        for t in range(1, traj.n_steps):
            y = step(traj.block(X, t), y, t)
            out.append(y)
        return traj.join(out)

    def _rmatmat(self, Y: Any) -> Any:
        traj = self.traj
        if not traj.triangular and isinstance(traj, SolvedTrajectory):
            return traj.solve_adjoint(Y)
        step = self._step(adjoint=True)
        n = traj.n_steps
        w = traj.block(Y, n - 1)
        out = [w]
        for t in range(n - 2, -1, -1):
            w = step(traj.block(Y, t), w, t + 1)
            out.append(w)
        return traj.join(out[::-1])

    def inverse(self) -> ConstraintJacobian:
        """P⁻¹ = I − L = ∂F/∂z, applied without any recursion."""
        return ConstraintJacobian(self.traj)


class ConstraintJacobian(LinearOperator):
    """∂F/∂z = I − L = P⁻¹ on ``state_shape``: (I − L) V = V − (J_t V_{t−1})_t.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow.ntk as ntk
    >>> from kpflow.models import RNN
    >>> model = RNN(1, 2)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((1, 2, 1)))
    >>> ntk.propagator(traj).inverse().todense().shape
    (1, 2, 2, 1, 2, 2)
    """

    def __init__(self, traj: Trajectory) -> None:
        shape = traj.state_shape
        super().__init__(shape, shape, xp=traj.xp, dtype=traj.dtype, device=traj.device)
        self.traj = traj
        self.axis_names = traj.axis_names

    def _matmat(self, X: Any) -> Any:
        return X - self.traj.state_jvp(X)

    def _rmatmat(self, Y: Any) -> Any:
        return Y - self.traj.state_vjp(Y)

    def inverse(self) -> Propagator:
        """P = (I − L)⁻¹."""
        return Propagator(self.traj)


def _recursion_step(xp: Any, action: Callable, static: tuple, operands: tuple, q: Any, y: Any, t: Any) -> Any:
    """q + action(y) at step t, with ``action`` a :class:`~kpflow.models.StepKernel` function."""
    return q + action(xp, *static, operands, y, t)


def propagator(traj: Trajectory) -> Propagator:
    """The propagator P = (∂F/∂z)⁻¹ = (I − L)⁻¹ of a trajectory, on ``state_shape``.

    ``P.T`` is backpropagation through time and ``P.inverse()`` is I − L.

    Parameters
    ----------
    traj : Trajectory

    Returns
    -------
    Propagator
        Maps ``(k, *state_shape)`` to ``(k, *state_shape)``.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow.ntk as ntk
    >>> from kpflow.models import RNN
    >>> model = RNN(2, 3)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((2, 4, 2)))
    >>> ntk.propagator(traj).T.matvec(traj.states).shape
    (2, 4, 3)
    """
    check_trajectory(traj, "propagator")
    if not traj.triangular and not isinstance(traj, SolvedTrajectory):
        msg = (
            f"propagator: the trajectory of {type(traj.model).__name__} has a non-triangular "
            "∂F/∂z and no solve(V) / solve_adjoint(W) to apply P with"
        )
        raise ValueError(msg)
    return Propagator(traj)
