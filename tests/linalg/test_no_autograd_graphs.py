"""kpflow.linalg never records autograd graphs; operator products called directly stay differentiable.

On torch, ``from_module``'s default parameters require grad.  Every solver and estimator
(and the exact rules) runs under the adapter's ``no_grad()``, so its results carry no
graph, convert with ``numpy.asarray`` and raise no warning (pytest runs with -W error).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from kpflow.backends import get_backend

from kpflow import linalg

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def gru_ntk():
    """NTK_S and K of a small torch.nn.GRU mapped with from_module's defaults (grad-requiring)."""
    from kpflow.backends.torch import from_module

    import kpflow.ntk as ntk

    torch.manual_seed(0)
    gru = torch.nn.GRU(2, 4, batch_first=True, dtype=torch.float64)
    model, params = from_module(gru)
    assert all(p.requires_grad for p in params.values())
    traj = model.run(params, torch.randn(3, 5, 2, dtype=torch.float64))
    return gru, ntk.global_ntk(traj), ntk.parameter_kernel(traj)


def _graph_free(*arrays):
    for a in arrays:
        if a is None:
            continue
        assert isinstance(a, torch.Tensor)
        assert not a.requires_grad and a.grad_fn is None, a
        np.asarray(a)  # fails on a tensor that requires grad


def test_eigsh_trace_and_effective_rank_results_carry_no_graph(gru_ntk):
    _, N, _ = gru_ntk
    r = linalg.eigsh(N, 3, rng=0)
    _graph_free(r.eigenvalues, r.eigenvectors, r.residual_norms)
    assert np.asarray(r.eigenvalues).shape == (3,)
    t = linalg.trace(N, rng=0)
    _graph_free(t.value, t.error)
    e = linalg.effective_rank(N, rng=0)
    _graph_free(e.value, e.error)


@pytest.mark.parametrize("method", ["lanczos", "nystrom"])
def test_iterative_eigensolvers_carry_no_graph(gru_ntk, method):
    _, N, _ = gru_ntk
    r = linalg.eigsh(N, 3, method=method, rng=0)
    _graph_free(r.eigenvalues, r.eigenvectors, r.residual_norms)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace", "xnystrace"])
def test_trace_estimators_carry_no_graph(gru_ntk, method):
    _, N, _ = gru_ntk
    r = linalg.trace(N, method=method, num_matvecs=12, rng=0)
    _graph_free(r.value, r.error)


def test_norms_alignment_svds_and_partial_ranks_carry_no_graph(gru_ntk):
    _, N, K = gru_ntk
    for r in (
        linalg.fro_norm(N, method="hutch++", num_matvecs=12, rng=0),
        linalg.fro_norm(N),
        linalg.alignment(N, K, method="estimate", num_matvecs=30, rng=0),
        linalg.alignment(N, K),
        linalg.effective_rank(N, keep=1, method="estimate", num_matvecs=40, rng=0),
        linalg.effective_rank(N, keep=(0, 2)),
    ):
        _graph_free(r.value, r.error)
    s = linalg.svds(N.P, 2, method="lanczos", rng=0)
    _graph_free(s.U, s.s, s.V)


def test_exact_rules_carry_no_graph(gru_ntk):
    _, _, K = gru_ntk
    _graph_free(linalg.rules.exact_trace(K), linalg.rules.exact_fro_norm(K))
    r = linalg.rules.exact_eigsh(K, 3)
    _graph_free(r.eigenvalues, r.eigenvectors, r.residual_norms)
    _graph_free(linalg.eigsh(K, 3).eigenvalues, linalg.trace(K).value, linalg.effective_rank(K, keep=1).value)


def test_operator_products_called_directly_stay_differentiable(gru_ntk):
    gru, N, _ = gru_ntk
    v = torch.randn(*N.shape_in, dtype=torch.float64)
    y = N.matvec(v)
    assert y.requires_grad
    gru.zero_grad()
    (y * v).sum().backward()  # vᵀ NTK_S v, differentiated with respect to the weights
    assert gru.weight_hh_l0.grad is not None and float(gru.weight_hh_l0.grad.abs().sum()) > 0


def test_linalg_leaves_grad_mode_as_it_was(gru_ntk):
    _, N, _ = gru_ntk
    assert torch.is_grad_enabled()
    linalg.trace(N, method="xtrace", num_matvecs=8, rng=0)
    assert torch.is_grad_enabled()


def test_no_grad_is_a_null_context_without_autograd_graphs():
    assert isinstance(get_backend("numpy").no_grad(), contextlib.nullcontext)
    with get_backend("torch").no_grad():
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def _matmul_operands_requiring_grad(product):
    """Run ``product()`` and count the matmul operands that require grad (a matmul copies them)."""
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__):
                seen.extend(a.requires_grad for a in args if isinstance(a, torch.Tensor))
            return func(*args, **(kwargs or {}))

    with Spy():
        out = product()
    assert seen, "the product made no matmul: the spy saw nothing"
    return sum(seen), out


@pytest.mark.parametrize("which", ["ntk", "J", "JT"])
def test_products_under_no_grad_read_graph_free_operands(gru_ntk, which):
    """Under no_grad (every solver) no matmul of a product reads a tensor that requires grad.

    torch copies a matmul operand that requires grad even under ``no_grad`` (about 1.8×
    slower at benchmark sizes), so the products read detached views of the trajectory's
    arrays there; with autograd on they read the arrays themselves (differentiable).
    """
    _, N, _ = gru_ntk
    J = N.J
    op = {"ntk": N, "J": J, "JT": J.T}[which]
    v = torch.randn(2, *op.shape_in, dtype=torch.float64)
    with torch.no_grad():
        n_grad, out = _matmul_operands_requiring_grad(lambda: op.matmat(v))
    assert n_grad == 0
    assert not out.requires_grad
    n_grad, out = _matmul_operands_requiring_grad(lambda: op.matmat(v))
    assert n_grad > 0 and out.requires_grad  # the same product with autograd on keeps its graph
