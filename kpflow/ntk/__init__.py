"""The NTK factorisation NTK_S = P K Pᵀ: the parameter kernel K, the propagator P, products.

- :func:`parameter_kernel` -> K = J_θ J_θᵀ (Kronecker core Σ_w D_w (G_w ⊗ I) D_wᵀ, or autodiff);
- :func:`propagator` -> P = (I − L)⁻¹ (forward recursion; ``.T`` is BPTT; ``.inverse()`` is I − L);
- :func:`global_ntk` -> NTK_S = P K Pᵀ (``.P``, ``.K``);
- :func:`output_ntk` -> (C̃P) K (C̃P)ᵀ + G_ro ⊗ I_out;
- :func:`state_jacobian` -> J_S = dz/dθ = P F with NTK_S = J_S J_Sᵀ (``.J`` of the NTKs), on
  the flat parameters (:func:`site_parameters` maps them to the model's named parameters);
- :func:`dense_global_ntk`, :func:`dense_output_ntk` -> dense autodiff references (torch, jax).
"""

from typing import Any

from kpflow.models.model import register_states_vjp

# Registers the exact Kronecker-core rules with kpflow.linalg (spectrum, trace, norms, partial traces).
from kpflow.ntk import shortcuts
from kpflow.ntk.dense import DEFAULT_MAX_DENSE_SIZE, dense_global_ntk, dense_output_ntk
from kpflow.ntk.global_ntk import GlobalNTK, OutputNTK, ReadoutMap, StateBlockNTK, global_ntk, output_ntk
from kpflow.ntk.jacobian import (
    OutputJacobian,
    ParameterMap,
    StateJacobian,
    site_parameters,
    state_jacobian,
)
from kpflow.ntk.kernel import AutodiffKernel, KroneckerCoreKernel, parameter_kernel
from kpflow.ntk.propagator import ConstraintJacobian, Propagator, propagator


def _states_vjp(traj: Any, g: Any) -> dict[str, Any]:
    """J_Sᵀ g in the parameters' names: the backward of the node ``Model.run`` attaches to z."""
    J = state_jacobian(traj)
    return J.to_params(J.rmatvec(g))


# The model layer never imports this one: it runs the backward of its states through the
# function registered here.
register_states_vjp(_states_vjp)

__all__ = [
    "DEFAULT_MAX_DENSE_SIZE",
    "AutodiffKernel",
    "ConstraintJacobian",
    "GlobalNTK",
    "KroneckerCoreKernel",
    "OutputJacobian",
    "OutputNTK",
    "ParameterMap",
    "Propagator",
    "ReadoutMap",
    "StateBlockNTK",
    "StateJacobian",
    "dense_global_ntk",
    "dense_output_ntk",
    "global_ntk",
    "output_ntk",
    "parameter_kernel",
    "propagator",
    "shortcuts",
    "site_parameters",
    "state_jacobian",
]
