"""kpflow: the global empirical neural tangent kernel, factorised as NTK_S = P K Pᵀ.

The core is pure array-API code: it runs on numpy, array-api-strict, torch,
jax and cupy, and importing it imports none of the frameworks.
"""

from kpflow import operators
from kpflow.operators import (
    Dense,
    Diagonal,
    Identity,
    Kronecker,
    LinearOperator,
    Projector,
    kron,
)

__version__ = "0.1.0"

__all__ = [
    "Dense",
    "Diagonal",
    "Identity",
    "Kronecker",
    "LinearOperator",
    "Projector",
    "__version__",
    "kron",
    "operators",
]
