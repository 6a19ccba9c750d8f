"""torch operators inside ``torch.func`` transforms, against loops and ``torch.autograd``.

Products of a built operator (a GRU's NTK_S) work inside ``vmap``, ``grad``, ``jvp`` and ``vjp``
in the probe; differentiating a model's run in its parameters inside ``torch.func`` is refused
with a message that names the way that works (``torch.autograd``).
"""

from __future__ import annotations

import numpy as np
import pytest

import kpflow

torch = pytest.importorskip("torch")
from torch.func import grad, jvp, vjp, vmap  # noqa: E402

from kpflow.models import GRU  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    model = GRU(2, 3)
    params = model.init(0, like=torch.zeros(1, dtype=torch.float64))
    x = torch.as_tensor(np.random.default_rng(1).standard_normal((2, 4, 2)))
    ntk = kpflow.global_ntk(model.run(params, x))
    M = torch.as_tensor(np.asarray(ntk)).reshape(ntk.size_in, ntk.size_in)  # dense reference
    return model, params, x, ntk, M


def test_products_inside_vmap_grad_jvp_and_vjp_equal_the_dense_matrix(setup):
    _, _, _, ntk, M = setup
    shape, n = ntk.shape_in, ntk.size_in
    V = torch.as_tensor(np.random.default_rng(2).standard_normal((3, *shape)))
    batched = vmap(ntk.matvec)(V)
    looped = torch.stack([ntk.matvec(v) for v in V])
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(batched.reshape(3, n), V.reshape(3, n) @ M.T, rtol=1e-10, atol=1e-10)
    v, t = V[0], V[1]
    g = grad(lambda u: (u * ntk.matvec(u)).sum())(v)  # (M + Mᵀ) v = 2 M v
    torch.testing.assert_close(g.reshape(n), 2 * M @ v.reshape(n), rtol=1e-10, atol=1e-10)
    _, tangent = jvp(ntk.matvec, (v,), (t,))
    torch.testing.assert_close(tangent.reshape(n), M @ t.reshape(n), rtol=1e-10, atol=1e-10)
    _, pullback = vjp(ntk.matvec, v)
    torch.testing.assert_close(pullback(t)[0].reshape(n), M.T @ t.reshape(n), rtol=1e-10, atol=1e-10)


def test_grad_in_the_parameters_is_refused_inside_torch_func_and_works_with_autograd(setup):
    model, params, x, ntk, _ = setup
    w = torch.as_tensor(np.random.default_rng(3).standard_normal(ntk.shape_in))

    def quadratic(p):
        return (w * kpflow.global_ntk(model.run(p, x)).matvec(w)).sum()

    with pytest.raises(
        NotImplementedError, match=r"inside torch.func transforms .* Use torch.autograd instead"
    ):
        grad(quadratic)(params)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    grads = torch.autograd.grad(quadratic(leaves), list(leaves.values()))
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
