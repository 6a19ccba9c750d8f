"""Matrix-free linear operators on tensor-shaped domains, and their algebra.

Every kpflow result (K, P, NTK_S, ...) is a :class:`LinearOperator`.  The
concrete types here are the building blocks; derived operations are
single-dispatch functions so that exact structured rules can be added.
"""

from kpflow.operators.algebra import (
    Adjoint,
    Composition,
    Gram,
    Reshaped,
    Scaled,
    Sum,
    add,
    compose,
    scale,
)
from kpflow.operators.base import LinearOperator, SymmetricOperator, is_operator
from kpflow.operators.basic import Dense, Diagonal, Identity, Projector
from kpflow.operators.functions import (
    PartialTrace,
    adjoint,
    gram,
    is_symmetric,
    partial_trace,
    reshape,
    todense,
)
from kpflow.operators.interop import ViaDLPack, via_dlpack
from kpflow.operators.kronecker import Kronecker, kron

__all__ = [
    "Adjoint",
    "Composition",
    "Dense",
    "Diagonal",
    "Gram",
    "Identity",
    "Kronecker",
    "LinearOperator",
    "PartialTrace",
    "Projector",
    "Reshaped",
    "Scaled",
    "Sum",
    "SymmetricOperator",
    "ViaDLPack",
    "add",
    "adjoint",
    "compose",
    "gram",
    "is_operator",
    "is_symmetric",
    "kron",
    "partial_trace",
    "reshape",
    "scale",
    "todense",
    "via_dlpack",
]
