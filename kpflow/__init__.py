"""kpflow: the global empirical neural tangent kernel, factorised as NTK_S = P K Pᵀ.

- :mod:`kpflow.operators`: matrix-free linear operators on tensor domains and their algebra;
- :mod:`kpflow.linalg`: randomized matrix-free linear algebra (trace, eigsh, effective rank);
- :mod:`kpflow.models`: built-in models (RNN, LeakyRNN, GRU, LSTM, MLP, Linear) and their sites;
- :mod:`kpflow.ntk`: K (parameter kernel), P (propagator), NTK_S = P K Pᵀ, output NTK,
  dense autodiff references, the state Jacobian J_S = dz/dθ (NTK_S = J_S J_Sᵀ);
- :mod:`kpflow.analysis`: workflows such as the spectrum report of ``kpflow spectrum``;
- :mod:`kpflow.tasks`: standard tasks (flip-flop, memory tasks, forecasting, integration, disk);
- :mod:`kpflow.training`: the masked MSE through a readout, its gradients (kpflow's own BPTT
  or autodiff), SGD and Adam, checkpoints, g-scaled and fixed-point initialisations.

The core is pure array-API code: it runs on numpy, array-api-strict, torch, jax and
cupy, and importing it imports none of the frameworks.

Examples
--------
>>> import array_api_strict as xp
>>> import kpflow
>>> model = kpflow.models.RNN(2, 3)
>>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((2, 4, 2)))
>>> kpflow.global_ntk(traj).shape_in
(2, 4, 3)
"""

from kpflow import analysis, linalg, models, ntk, operators, tasks, training
from kpflow.ntk import (
    dense_global_ntk,
    global_ntk,
    output_ntk,
    parameter_kernel,
    propagator,
    state_jacobian,
)
from kpflow.operators import (
    Dense,
    Diagonal,
    Identity,
    Kronecker,
    LinearOperator,
    Projector,
    kron,
)


def _version() -> str:
    # The one source of the version is pyproject.toml's ``version``, read from the installed
    # package's metadata (tests/package/test_interop_version.py checks that they agree).
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kpflow")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _version()

__all__ = [
    "Dense",
    "Diagonal",
    "Identity",
    "Kronecker",
    "LinearOperator",
    "Projector",
    "__version__",
    "analysis",
    "dense_global_ntk",
    "global_ntk",
    "kron",
    "linalg",
    "models",
    "ntk",
    "operators",
    "output_ntk",
    "parameter_kernel",
    "propagator",
    "state_jacobian",
    "tasks",
    "training",
]
