"""A registry of operator factories: every operator type is built here and checked by the same properties.

Each factory takes a ``Case`` and a seed and returns an operator in the case's
namespace, dtype and device, built from random data of small, odd shapes
(size-1 axes included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import kpflow
from kpflow import operators as ops

FACTORIES: dict[str, Callable[[Any, int], kpflow.LinearOperator]] = {}


def register(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        FACTORIES[name] = fn
        return fn

    return deco


def _dense(case: Any, shape_out: tuple, shape_in: tuple, seed: int) -> kpflow.Dense:
    return kpflow.Dense(case.randn(*shape_out, *shape_in, seed=seed), shape_in=shape_in)


@register("identity")
def _(case, seed):
    return kpflow.Identity((2, 1, 3), like=case.randn(1))


@register("dense_matrix")
def _(case, seed):
    return kpflow.Dense(case.randn(4, 3, seed=seed))


@register("dense_tensor")
def _(case, seed):
    return _dense(case, (2, 3), (1, 4), seed)


@register("dense_scalar_domain")
def _(case, seed):
    return _dense(case, (3,), (), seed)


@register("diagonal")
def _(case, seed):
    return kpflow.Diagonal(case.randn(2, 3, 1, seed=seed))


@register("projector")
def _(case, seed):
    return kpflow.Projector(case.randn(3, 2, seed=seed), case.randn(4, seed=seed + 1))


@register("kronecker")
def _(case, seed):
    return kpflow.kron(_dense(case, (2,), (3,), seed), _dense(case, (1, 2), (2, 2), seed + 1))


@register("kronecker_square")
def _(case, seed):
    return kpflow.kron(_dense(case, (3,), (3,), seed), kpflow.Diagonal(case.randn(2, 1, seed=seed + 1)))


@register("kronecker3")
def _(case, seed):
    return kpflow.kron(
        _dense(case, (2,), (2,), seed),
        kpflow.Identity((1,), like=case.randn(1)),
        _dense(case, (3,), (2,), seed + 2),
    )


@register("adjoint")
def _(case, seed):
    return ops.Adjoint(_dense(case, (2, 3), (4,), seed))


@register("sum")
def _(case, seed):
    return _dense(case, (3,), (2,), seed) + _dense(case, (3,), (2,), seed + 1)


@register("difference")
def _(case, seed):
    return _dense(case, (3,), (2,), seed) - kpflow.Projector(
        case.randn(2, seed=seed), case.randn(3, seed=seed + 3)
    )


@register("scaled")
def _(case, seed):
    return -2.5 * (_dense(case, (3,), (2,), seed) / 4)


@register("composition")
def _(case, seed):
    return (
        _dense(case, (2,), (3,), seed)
        @ kpflow.Diagonal(case.randn(3, seed=seed + 1))
        @ _dense(case, (3,), (4,), seed + 2)
    )


@register("reshaped")
def _(case, seed):
    return _dense(case, (6,), (4,), seed).reshape((2, 2), (3, 2))


@register("gram")
def _(case, seed):
    return _dense(case, (3, 2), (4,), seed).gram()


@register("gram_kronecker")
def _(case, seed):
    return kpflow.kron(_dense(case, (2,), (3,), seed), _dense(case, (2,), (1,), seed + 1)).gram()


@register("partial_trace_generic")
def _(case, seed):
    return ops.PartialTrace(ops.Adjoint(_dense(case, (2, 3, 2), (2, 3, 2), seed)), (1,))


@register("partial_trace_kronecker")
def _(case, seed):
    K = kpflow.kron(_dense(case, (2, 3), (2, 3), seed), _dense(case, (2,), (2,), seed + 1))
    return K.partial_trace((0, 2))


def dense_matrix(case: Any, op: kpflow.LinearOperator) -> np.ndarray:
    """The operator's matrix on the host, (size_out, size_in), float64."""
    return case.to_numpy(op.todense()).reshape(op.size_out, op.size_in)
