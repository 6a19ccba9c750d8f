"""``Backend.scan`` (a Python loop by default, ``jax.lax.scan`` on jax) against a hand-written loop.

The propagator runs P and Pᵀ as one scan over the steps on backends that compile per shape;
the recursion it scans is checked against the eager loop in ``test_propagator_scan_*``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from kpflow.backends import get_backend

import kpflow
from tests.conftest import Case


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_carries_in_order_and_stacks_outputs_in_the_order_of_xs(case64: Case, reverse: bool) -> None:
    xp = case64.xp
    A, B = case64.randn(5, 2, 3, seed=1), case64.randn(5, 3, seed=2)

    def f(c: Any, row: tuple) -> tuple[Any, Any]:
        a, b = row
        c = 0.5 * c + a @ b
        return c, 2.0 * c

    carry, ys = get_backend(case64.name).scan(f, case64.randn(2, seed=3), (A, B), reverse=reverse)
    a, b, c = (case64.to_numpy(v) for v in (A, B, case64.randn(2, seed=3)))
    expected = [None] * 5
    for i in range(4, -1, -1) if reverse else range(5):
        c = 0.5 * c + a[i] @ b[i]
        expected[i] = 2.0 * c
    case64.assert_close(carry, c, rtol=1e-13)
    case64.assert_close(ys, np.stack(expected), rtol=1e-13)
    assert xp.isdtype(ys.dtype, "real floating")


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_propagator_scan_equals_the_eager_steps(case64: Case, name: str) -> None:
    """The scanned recursion of ``kpflow.ntk.propagator`` equals step-by-step P and Pᵀ.

    kpflow scans only on jax; numpy and torch run the same function through the default
    loop here.  array-api-strict forbids a 0-d array index beside slices (the step index).
    """
    if case64.name == "array_api_strict":
        pytest.skip("the step index of a scan is a 0-d array, which strict indexing rejects beside slices")
    from kpflow.models import GRU, LSTM
    from kpflow.ntk.kernel import product_operands, scan_of
    from kpflow.ntk.propagator import _recursion

    model = (GRU if name == "gru" else LSTM)(2, 3)
    like = case64.randn(1)
    traj = model.run(model.init(0, like=like), case64.randn(2, 5, 2, seed=4))
    P = kpflow.ntk.propagator(traj)
    k = traj.step_kernel()
    X = case64.randn(3, *traj.state_shape, seed=5)
    ops = product_operands(case64.xp, k.operands)
    for action, adjoint, eager in ((k.jvp, False, P.matmat), (k.vjp, True, P.T.matmat)):
        got = _recursion(case64.xp, scan_of(case64.xp), action, k.static, adjoint, ops, X)
        case64.assert_close(got, eager(X), rtol=1e-13)
