"""General implicit models (``kpflow.models.Implicit``), in float64.

Two residuals, an equilibrium layer z = tanh(W z + U x + b) (fixed-point solve) and one
backward-Euler step of a neural ODE, h = h_prev + dt·tanh(W h + U x + b) (Newton solve),
against an independent dense reference: the implicit-function-theorem Jacobian
dz/dθ = −(∂F/∂z)⁻¹ ∂F/∂θ formed with ``torch.func.jacrev`` of a torch implementation of the
residual written here, and NTK = J Jᵀ.  Also P·(∂F/∂z) = I, the sign of K, the GMRES
solver on its own, and the errors (forward and GMRES non-convergence, numpy).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kpflow.backends import AutodiffUnavailableError

import kpflow
from kpflow._array import array_namespace
from kpflow.linalg._gmres import gmres
from kpflow.models import Implicit, SolverNotConvergedError
from tests.conftest import BACKENDS, _make_case, check_meta, examples
from tests.ntk_helpers import rel_err

torch = pytest.importorskip("torch")

TOL = 1e-9
DT = 0.5
AUTODIFF = [b for b in ("torch", "jax") if b in BACKENDS]
needs_autodiff = pytest.mark.skipif(not AUTODIFF, reason="needs torch or jax among the selected backends")


# -- the two models, in kpflow's hook form -------------------------------------------------------------
def deq_residual(params, z, x, site):
    xp = array_namespace(z, x)
    return z - xp.tanh(site("W", z) + site("U", x) + site("b"))


def euler_residual(params, z, x, site):
    # x = [h_prev, input]: one backward-Euler step h = h_prev + dt·tanh(W h + U input + b)
    xp = array_namespace(z, x)
    n = int(z.shape[-1])
    return z - x[..., :n] - DT * xp.tanh(site("W", z) + site("U", x[..., n:]) + site("b"))


def _model(kind, n, d, **kw):
    shapes = {"W": (n, n), "U": (n, d), "b": (n,)}
    if kind == "deq":
        return Implicit(deq_residual, n_in=d, n_state=n, param_shapes=shapes, **kw)
    return Implicit(euler_residual, n_in=n + d, n_state=n, param_shapes=shapes, solver="newton", **kw)


def _host_problem(kind, B, n, d, seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, n))
    # a contraction for the fixed-point solve; a strongly coupled one for Newton
    W *= (0.6 if kind == "deq" else 1.5) / max(np.linalg.norm(W, 2), 1e-3)
    params = {"W": W, "U": rng.standard_normal((n, d)), "b": 0.5 * rng.standard_normal(n)}
    width = d if kind == "deq" else n + d
    return params, rng.standard_normal((B, width))


# -- the independent dense reference (torch, written here) -----------------------------------------------
def _reference(kind, host_params, host_x, n):
    """(z*, dense ∂F/∂z, dense NTK) by jacrev of a torch residual and the IFT."""
    from torch.func import jacrev

    names = sorted(host_params)
    theta = tuple(torch.tensor(host_params[k]) for k in names)
    x = torch.tensor(host_x)
    B = x.shape[0]

    def F(z, *th):
        p = dict(zip(names, th, strict=True))
        if kind == "deq":
            return z - torch.tanh(z @ p["W"].T + x @ p["U"].T + p["b"])
        return z - x[:, :n] - DT * torch.tanh(z @ p["W"].T + x[:, n:] @ p["U"].T + p["b"])

    N = B * n
    z = torch.zeros(B, n, dtype=torch.float64)
    for _ in range(100):  # dense Newton
        Fz = jacrev(F, argnums=0)(z, *theta).reshape(N, N)
        z = z - torch.linalg.solve(Fz, F(z, *theta).reshape(N)).reshape(B, n)
    assert float(torch.linalg.norm(F(z, *theta))) < 1e-13
    Fz = jacrev(F, argnums=0)(z, *theta).reshape(N, N)
    Ft = jacrev(F, argnums=tuple(range(1, len(theta) + 1)))(z, *theta)
    Ftheta = torch.cat([j.reshape(N, -1) for j in Ft], dim=1)
    J = -torch.linalg.solve(Fz, Ftheta)  # dz/dθ by the implicit function theorem
    return z.numpy(), Fz.numpy(), (J @ J.T).numpy()


def _reference_jacobians(kind, host_params, host_x, n):
    """Dense dz/dθ (columns: the sorted parameters, each flattened row-major) and dz/dx, by the IFT."""
    from torch.func import jacrev

    names = sorted(host_params)
    theta = tuple(torch.tensor(host_params[k]) for k in names)
    x = torch.tensor(host_x)
    z = torch.tensor(_reference(kind, host_params, host_x, n)[0])

    def F(z, x, *th):
        p = dict(zip(names, th, strict=True))
        if kind == "deq":
            return z - torch.tanh(z @ p["W"].T + x @ p["U"].T + p["b"])
        return z - x[:, :n] - DT * torch.tanh(z @ p["W"].T + x[:, n:] @ p["U"].T + p["b"])

    N = z.numel()
    jac = jacrev(F, argnums=tuple(range(len(theta) + 2)))(z, x, *theta)
    Fz = jac[0].reshape(N, N)
    Fx = jac[1].reshape(N, -1)
    Ftheta = torch.cat([j.reshape(N, -1) for j in jac[2:]], dim=1)
    return (-torch.linalg.solve(Fz, Ftheta)).numpy(), (-torch.linalg.solve(Fz, Fx)).numpy()


def _draw(data, case):
    if case.name == "jax":  # fixed sizes on jax (one compilation each)
        B, n, d = data.draw(st.sampled_from(((1, 1, 1), (2, 3, 2))), label="sizes")
    else:
        B, n, d = (data.draw(st.integers(1, 3), label=s) for s in ("B", "n", "d"))
    return B, n, d, data.draw(st.integers(0, 2**16), label="seed")


def _run(case, kind, B, n, d, seed, **kw):
    host_params, host_x = _host_problem(kind, B, n, d, seed)
    model = _model(kind, n, d, **{"tol": 1e-13, **kw})
    params = {k: case.asarray(v) for k, v in host_params.items()}
    return host_params, host_x, model.run(params, case.asarray(host_x))


@pytest.mark.properties
@needs_autodiff
@pytest.mark.parametrize("backend", AUTODIFF)
@pytest.mark.parametrize("kind", ["deq", "euler"])
@settings(max_examples=examples(6))
@given(data=st.data())
def test_implicit_global_ntk_equals_dense_ift_reference(backend, kind, data):
    case = _make_case(backend, "float64")
    B, n, d, seed = _draw(data, case)
    host_params, host_x, traj = _run(case, kind, B, n, d, seed)
    z_ref, _, ntk_ref = _reference(kind, host_params, host_x, n)
    assert rel_err(case.to_numpy(traj.states), z_ref) <= 1e-10
    N = kpflow.global_ntk(traj).todense()
    check_meta(case, N)
    N = case.to_numpy(N).reshape(B * n, B * n)
    assert rel_err(N, ntk_ref) <= TOL
    # kpflow's own dense reference (its implicit-function-theorem path) agrees too
    dense = case.to_numpy(kpflow.dense_global_ntk(traj)).reshape(B * n, B * n)
    assert rel_err(dense, ntk_ref) <= 1e-12
    # the same from the state Jacobian J_S = P F: NTK_S = J_S J_Sᵀ
    Js = case.to_numpy(kpflow.ntk.state_jacobian(traj).todense()).reshape(B * n, -1)
    assert rel_err(Js @ Js.T, ntk_ref) <= TOL


@pytest.mark.skipif("torch" not in BACKENDS, reason="torch is not among the selected backends")
@pytest.mark.parametrize("kind", ["deq", "euler"])
def test_state_jacobian_and_autodiff_are_the_dense_ift_jacobian_with_its_sign(kind):
    # J_S = dz/dθ = −(∂F/∂z)⁻¹ ∂F/∂θ itself (not only J_S J_Sᵀ, which is blind to a sign),
    # from kpflow's sites (J.matvec, J.rmatvec) and from torch's reverse mode through run
    # (dz/dθ and dz/dx).  jax's routes: tests/training/test_gradients.py (against finite differences).
    backend = "torch"
    case = _make_case(backend, "float64")
    B, n, d = 2, 3, 2
    host_params, host_x, traj = _run(case, kind, B, n, d, 11)
    J_ref, Jx_ref = _reference_jacobians(kind, host_params, host_x, n)
    names = sorted(host_params)
    J = kpflow.state_jacobian(traj)
    rng = np.random.default_rng(0)
    dirs = [{k: rng.standard_normal(np.shape(host_params[k])) for k in names} for _ in range(3)]
    for dk in dirs:
        flat = np.concatenate([dk[k].ravel() for k in names])
        got = case.to_numpy(J.matvec(J.from_params({k: case.asarray(v) for k, v in dk.items()})))
        assert rel_err(got.ravel(), J_ref @ flat) <= 1e-10
    c = rng.standard_normal((B, n))
    grads = J.to_params(J.rmatvec(case.asarray(c)))
    got = np.concatenate([case.to_numpy(grads[k]).ravel() for k in names])
    assert rel_err(got, J_ref.T @ c.ravel()) <= 1e-10
    # reverse mode through run: θ- and x-gradients of ⟨c, z⟩
    model = traj.model
    params = {k: case.asarray(v).requires_grad_(True) for k, v in host_params.items()}
    x = case.asarray(host_x).requires_grad_(True)
    phi = torch.sum(case.asarray(c) * model.run(params, x).states)
    grads = dict(zip([*params, "x"], torch.autograd.grad(phi, [*params.values(), x]), strict=True))
    got = np.concatenate([case.to_numpy(grads[k]).ravel() for k in names])
    assert rel_err(got, J_ref.T @ c.ravel()) <= 1e-10
    assert rel_err(case.to_numpy(grads["x"]).ravel(), Jx_ref.T @ c.ravel()) <= 1e-10


@pytest.mark.properties
@needs_autodiff
@pytest.mark.parametrize("backend", AUTODIFF)
@pytest.mark.parametrize("kind", ["deq", "euler"])
@settings(max_examples=examples(4))
@given(data=st.data())
def test_propagator_inverts_the_constraint_jacobian(backend, kind, data):
    case = _make_case(backend, "float64")
    B, n, d, seed = _draw(data, case)
    host_params, host_x, traj = _run(case, kind, B, n, d, seed)
    _, Fz_ref, _ = _reference(kind, host_params, host_x, n)
    N = B * n
    P = kpflow.propagator(traj)
    Fz = case.to_numpy(P.inverse().todense()).reshape(N, N)  # ∂F/∂z = I − L
    assert rel_err(Fz, Fz_ref) <= 1e-12
    Pd = case.to_numpy(P.todense()).reshape(N, N)
    PTd = case.to_numpy(P.T.todense()).reshape(N, N)
    eye = np.eye(N)
    assert np.abs(Pd @ Fz_ref - eye).max() <= 1e-10
    assert np.abs(Fz_ref @ Pd - eye).max() <= 1e-10
    assert rel_err(PTd, Pd.T) <= 1e-10


@needs_autodiff
@pytest.mark.parametrize("backend", AUTODIFF)
@pytest.mark.parametrize("kind", ["deq", "euler"])
def test_kernel_is_dF_dtheta_gram_with_the_autodiff_sign(backend, kind):
    # K = (∂F/∂θ)(∂F/∂θ)ᵀ: the hook sites against the autodiff J_θ of update_map f = z − F
    case = _make_case(backend, "float64")
    _, _, traj = _run(case, kind, 2, 3, 2, 7)
    K = case.to_numpy(kpflow.parameter_kernel(traj).todense())
    K_ad = case.to_numpy(kpflow.parameter_kernel(traj, method="autodiff").todense())
    assert rel_err(K.ravel(), K_ad.ravel()) <= 1e-12


def test_forward_non_convergence_carries_the_residual():
    case = _make_case("torch", "float64")
    with pytest.raises(SolverNotConvergedError, match=r"after 2 iterations.*tol=1e-13") as info:
        _run(case, "deq", 3, 3, 2, 1, max_iter=2)
    assert info.value.iterations == 2
    assert 1e-13 < info.value.residual < 1.0
    with pytest.raises(SolverNotConvergedError, match=r"solver='newton'") as info:
        _run(case, "euler", 3, 3, 2, 1, max_iter=1)
    assert info.value.residual > 1e-13


def test_gmres_non_convergence_carries_the_residual():
    case = _make_case("torch", "float64")
    _, _, traj = _run(case, "deq", 3, 4, 2, 3, solve_max_iter=2, solve_restart=2)
    V = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(SolverNotConvergedError, match=r"Implicit \(P = solve.*max_iter=2") as info:
        kpflow.propagator(traj).matvec(V[0])
    assert info.value.iterations == 2
    assert 1e-12 < info.value.residual <= 1.0


@pytest.mark.parametrize("backend", [b for b in ("numpy", "array_api_strict") if b in BACKENDS])
def test_run_without_autodiff_raises(backend):
    case = _make_case(backend, "float64")
    with pytest.raises(AutodiffUnavailableError, match=r"Implicit\.run: .*D_w and ∂F/∂z.*torch or jax"):
        _run(case, "deq", 2, 2, 1, 0)


@pytest.mark.properties
@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=examples(10))
@given(n=st.integers(1, 6), k=st.integers(1, 3), restart=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_gmres_solves_well_conditioned_systems(backend, n, k, restart, seed):
    case = _make_case(backend, "float64")
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n)) / np.sqrt(n) + 2.0 * np.eye(n)
    B = rng.standard_normal((k, n))
    B[0] = 0.0  # a zero right-hand side gives a zero solution
    At = case.asarray(A.T.copy())
    X = gmres(lambda V: V @ At, case.asarray(B), tol=1e-13, restart=restart)
    check_meta(case, X)
    assert rel_err(case.to_numpy(X), np.linalg.solve(A, B.T).T) <= 1e-11


@pytest.mark.skipif("jax" not in BACKENDS, reason="jax is not among the selected backends")
def test_unroll_inside_jax_jit_names_itself():
    # the forward solve reads the residual's norm to stop, so it needs concrete arrays
    import jax

    case = _make_case("jax", "float64")
    host_params, host_x = _host_problem("deq", 2, 2, 1, 0)
    model = _model("deq", 2, 1)
    params = {k: case.asarray(v) for k, v in host_params.items()}
    with pytest.raises(TypeError, match=r"Implicit\.unroll: needs concrete jax arrays.*jax\.jit"):
        jax.jit(lambda p: model.unroll(p, case.asarray(host_x)))(params)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="solver to be one of"):
        Implicit(deq_residual, n_in=1, n_state=1, param_shapes={"W": (1, 1)}, solver="broyden")
    with pytest.raises(ValueError, match="tol to be a positive float"):
        Implicit(deq_residual, n_in=1, n_state=1, param_shapes={"W": (1, 1)}, tol=0.0)
    with pytest.raises(TypeError, match="residual to be a callable"):
        Implicit(None, n_in=1, n_state=1, param_shapes={"W": (1, 1)})
