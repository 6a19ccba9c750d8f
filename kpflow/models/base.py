"""The model interface: models, trajectories and weight sites.

Summary of the contract (every built-in model and every new one follows it)
---------------------------------------------------------------------------
**Model** (:class:`Model`; recurrent cells subclass :class:`RecurrentModel`)

- ``param_shapes() -> dict[str, tuple]``: PyTorch names (``weight_ih``, ``weight_hh``,
  ``bias_ih``, ``bias_hh``; gates stacked in torch's order).
- ``init(rng=None, *, like=None, dtype=None, device=None) -> dict[str, array]``: numpy
  float64 by default; with ``like`` the arrays take its namespace, dtype and device.
- ``run(params, x, h0=None) -> Trajectory``: checks ``x``, ``params``, ``h0`` and that the
  states are finite (errors name the argument), then runs the model once.
- ``update_map(params, states, x, h0=None) -> array of state_shape``: the pure map f with
  F(z, θ) = z − f(z; θ). For a recurrence f_t = step(z_{t−1}, x_t) with z_{−1} = h0. It is
  array-API code, so torch.func / jax differentiate it: ∂f/∂θ at fixed z is J_θ (the
  autodiff K), ∂f/∂z is L.
- ``unroll(params, x, h0=None) -> states``: the pure forward pass θ ↦ z (dense reference).
- recurrent models also have ``step(params, h_prev, x_t) -> h_t`` on any leading axes.
- ``layout(state_shape) -> Layout`` (:mod:`kpflow.models.layout`): the state's axes, its
  block kind (recurrent in time, depth, single, solved), block sizes and parts.

**Trajectory** (:class:`Trajectory`) holds ``model, params, x, h0, states``, the model's
``layout`` for its states and the cached derivative pieces.  ``run`` gives it its own
copies of ``params``, ``x`` and ``h0`` (torch: ``clone()``, which keeps autograd; jax arrays
are immutable and not copied), so updating the caller's arrays in place afterwards (an
optimizer step) never changes a trajectory.
Its domain is ``state_shape``: ``(B, T, S)`` for recurrent models (S = H, LSTM: S = 2H
with h first), ``(B, Σ_l n_l)`` for the MLP (blocks ``traj.blocks``).  Every piece of
geometry below is read from ``traj.layout``.
The sites are laid out on ``site_shape`` (``(B, T)`` or ``(B,)``, m = prod sites) and the
state reads as ``(m, site_state_size)`` row-major.  Time (or depth) runs over
``n_steps`` blocks; ``block(V, t)`` / ``join(blocks)`` cut and glue the probe block
``V`` of shape ``(k, *state_shape)``.  All actions are batched over the leading probe axis k:

- ``step_jvp(t, v)`` = J_t v with J_t = ∂z_t/∂z_{t−1} (``v`` of shape ``(k, *block_shape(t−1))``),
  ``step_vjp(t, w)`` = J_tᵀ w, for t = 1 … n_steps − 1; a recurrent trajectory gives them
  as pure functions of arrays, ``step_kernel()`` (:class:`StepKernel`), so that one
  compiled step (jax) serves every step of P and Pᵀ;
- ``state_jvp(V)`` = L V (all steps at once), ``state_vjp(W)`` = Lᵀ W;
- ``sites``: a list of :class:`Site`, one per pre-activation group u_w(s) = W_w a_w(s) + b_w.
  A site has ``name``, ``variables`` A_w of shape ``(m, p_w)`` (bias columns of ones
  included), ``width`` k_w, ``apply_D(U)``: ``(k, m, k_w) -> (k, *state_shape)`` and
  ``apply_DT(V)``: ``(k, *state_shape) -> (k, m, k_w)``, the unit-structured ``unit_D`` of
  shape ``(m, n_units, a, g)`` and ``scale`` (D = scale·I, e.g. the leaky RNN's dt);
- ``triangular``: L is block-subdiagonal (P applies by a recursion) for every layout kind
  but ``"solved"``, whose trajectory applies P by ``solve(V)`` and Pᵀ by ``solve_adjoint(W)``
  (:class:`kpflow.models.Implicit`).

So K = Σ_w D_w (A_w A_wᵀ ⊗ I) D_wᵀ, P = (I − L)⁻¹ and NTK_S = P K Pᵀ (see ``kpflow.ntk``).

The pieces live in :mod:`kpflow.models.model`, :mod:`kpflow.models.trajectory`,
:mod:`kpflow.models.layout`, :mod:`kpflow.models.arrays` and :mod:`kpflow.models.sites`;
this module re-exports them.
"""

from kpflow.models.arrays import check_size, convert_host, draw_uniform, owned_copy, step_major
from kpflow.models.layout import Layout
from kpflow.models.model import Model, NonFiniteStatesError, RecurrentModel
from kpflow.models.sites import Site, flat_sites, site_variables
from kpflow.models.trajectory import RecurrentTrajectory, StepKernel, Trajectory

__all__ = [
    "Layout",
    "Model",
    "NonFiniteStatesError",
    "RecurrentModel",
    "RecurrentTrajectory",
    "Site",
    "StepKernel",
    "Trajectory",
    "check_size",
    "convert_host",
    "draw_uniform",
    "flat_sites",
    "owned_copy",
    "site_variables",
    "step_major",
]
