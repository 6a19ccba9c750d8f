"""The hook models' autodiff rule (``kpflow.models._hook_autodiff``) against the vmapped jvp / vjp.

On torch the actions run eagerly on their first call, then from a traced aten graph (the
step's graph split into primal and tangent parts, the primal part vmapped over the steps);
on jax inside compiled programs.  Every route must equal the plain vmapped ``jvp`` /
``vjp`` of the user's step (``reference_action``) to 1e-12 in float64: P and Pᵀ steps,
whole P and Pᵀ products, D and Dᵀ of every hook parameter, for cells with a weight used
twice, biases, a gate, a feed-forward stack (depth as the step axis) and an implicit model
(sites (B,)).  Also: a torch solve keeps no autograd graph, products with grad enabled
stay differentiable (and match the reference's gradient), on jax a second product, or a
new trajectory of the same model and shapes, compiles nothing, and sites whose D are equal
share it and form one term of K equal to the sum of their terms.
"""

from __future__ import annotations

import numpy as np
import pytest
from kpflow.backends import get_backend

import kpflow
import kpflow.ntk as ntk
from kpflow._array import array_namespace
from kpflow.models import FeedForward, Implicit, Recurrent
from kpflow.models import _hook_autodiff as ha
from tests.conftest import BACKENDS, _make_case

AUTODIFF = [b for b in ("torch", "jax") if b in BACKENDS]
pytestmark = pytest.mark.skipif(not AUTODIFF, reason="needs torch or jax among the selected backends")
TOL = 1e-12


def shared_step(params, h, x, site):
    # W at two calls (one on tanh(h)), b at two calls, a gate z mixing h in
    xp = array_namespace(h, x)
    z = 1.0 / (1.0 + xp.exp(-(site("Z", x) + site("c"))))
    first = xp.tanh(site("W", h) + site("U", x) + site("b"))
    return z * first + (1.0 - z) * h + 0.5 * xp.tanh(site("W", xp.tanh(h)) + site("b"))


def _cell(n_in, H):
    shapes = {"W": (H, H), "U": (H, n_in), "b": (H,), "Z": (H, n_in), "c": (H,)}
    return Recurrent(shared_step, n_in=n_in, n_hidden=H, param_shapes=shapes)


def _layers():
    def first(params, z, site):
        return array_namespace(z).tanh(site("U", z) + site("b"))

    def second(params, z, site):
        return array_namespace(z).tanh(site("V", z) + site("b"))

    def third(params, z, site):
        return site("V", z) * 0.5 + site("C", z)

    return [first, second, third]


def deq_residual(params, z, x, site):
    xp = array_namespace(z, x)
    return z - xp.tanh(site("W", z) + site("U", x) + site("b")) - 0.1 * site("W", xp.tanh(z))


def _rel(a, b, case):
    a, b = case.to_numpy(a), case.to_numpy(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _recurrent(case, B=2, T=5, H=3, n_in=2, seed=0):
    model = _cell(n_in, H)
    rng = np.random.default_rng(seed)
    params = {k: case.asarray(v) for k, v in model.init(rng).items()}
    return model.run(params, case.asarray(rng.standard_normal((B, T, n_in))))


def _no_grad(case):
    return get_backend(case.name).no_grad()


def _probes(case, traj, k, seed):
    return case.asarray(np.random.default_rng(seed).standard_normal((k, *traj.state_shape)))


@pytest.mark.parametrize("backend", AUTODIFF)
def test_step_actions_equal_the_vmapped_jvp_and_vjp_on_every_route(backend):
    case = _make_case(backend, "float64")
    traj = _recurrent(case)
    kernel = traj.step_kernel()
    static, operands = kernel.static, kernel.operands
    V = _probes(case, traj, 3, 1)
    xp = traj.xp
    steps = range(1, traj.n_steps) if backend == "torch" else (1, traj.n_steps - 1)
    for _ in range(3 if backend == "torch" else 1):  # torch: eager, traced, traced and split
        for t in steps:
            Y = V[:, :, t, ...]
            for kind, action in (("P", kernel.jvp), ("PT", kernel.vjp)):
                got = action(xp, *static, operands, Y, t)
                ref = ha.reference_action(kind, xp, *static, operands, Y, t)
                assert _rel(got, ref, case) <= TOL, (kind, t)
    if backend == "torch":  # the graphs were traced and split, not run eagerly every time
        entries = [e for k, e in ha._TRACED.items() if k[0] == "split" and k[2][1] is traj.model]
        assert len(entries) == 2 and all(isinstance(e, tuple) for e in entries)


def _reference_P(xp, kernel, V, adjoint):
    """P V (or Pᵀ V) as the forward (backward) recursion over reference_action, block (k, B, T, H)."""
    n = int(V.shape[2])
    kind = "PT" if adjoint else "P"
    act = lambda y, t: ha.reference_action(kind, xp, *kernel.static, kernel.operands, y, t)  # noqa: E731
    if not adjoint:
        ys = [V[:, :, 0, ...]]
        for t in range(1, n):
            ys.append(V[:, :, t, ...] + act(ys[-1], t))
        return xp.stack(ys, axis=2)
    ws = [V[:, :, n - 1, ...]]
    for t in range(n - 2, -1, -1):
        ws.append(V[:, :, t, ...] + act(ws[-1], t + 1))
    return xp.stack(ws[::-1], axis=2)


@pytest.mark.parametrize("backend", AUTODIFF)
def test_propagator_products_equal_the_reference_recursion(backend):
    case = _make_case(backend, "float64")
    traj = _recurrent(case, B=3, T=6, seed=4)
    P, kernel, xp = ntk.propagator(traj), traj.step_kernel(), traj.xp
    V = _probes(case, traj, 4, 5)
    ref, ref_T = _reference_P(xp, kernel, V, False), _reference_P(xp, kernel, V, True)
    with _no_grad(case):
        for _ in range(3):  # the third product runs from the split graphs
            assert _rel(P.matmat(V), ref, case) <= TOL
            assert _rel(P.T.matmat(V), ref_T, case) <= TOL
            assert _rel(P.matmat(V[:1]), ref[:1], case) <= TOL  # another block size in between


def _site_calls(traj):
    for name in traj.names:
        calls = tuple(c for c, p in enumerate(traj.plan) if p[0] == name)
        yield name, calls, traj.model._shapes[name][0]


def _d_actions_agree(case, traj, k=2):
    xp, m = traj.xp, traj.m
    rng = np.random.default_rng(7)
    sites = list(_site_calls(traj))
    for name, calls, out in sites if case.name == "torch" else sites[:3]:  # jax: W (twice), U, Z
        static = (*traj._static(), calls, traj.site_shape, out)
        U = case.asarray(rng.standard_normal((k, len(calls) * m, out)))
        V = _probes(case, traj, k, 8)
        for _ in range(2 if case.name == "torch" else 1):  # torch: eager, then traced
            got = ha._hook_D(xp, *static, traj._operands, U)
            assert _rel(got, ha.reference_action("D", xp, *static, traj._operands, U), case) <= TOL, name
            got = ha._hook_DT(xp, *static, traj._operands, V)
            assert _rel(got, ha.reference_action("DT", xp, *static, traj._operands, V), case) <= TOL, name


@pytest.mark.parametrize("backend", AUTODIFF)
def test_site_D_and_DT_equal_the_reference_for_recurrent_feedforward_and_implicit(backend):
    case = _make_case(backend, "float64")
    rng = np.random.default_rng(3)
    _d_actions_agree(case, _recurrent(case))
    if backend == "jax":  # (the same functions; the feed-forward and implicit runs compile for seconds)
        return
    shapes = {"U": (3, 2), "V": (3, 3), "b": (3,), "C": (3, 3)}
    ff = FeedForward(_layers(), n_in=2, widths=[3, 3, 3], param_shapes=shapes)
    params = {k: case.asarray(v) for k, v in ff.init(rng).items()}
    _d_actions_agree(case, ff.run(params, case.asarray(rng.standard_normal((3, 2)))))
    shapes = {"W": (3, 3), "U": (3, 2), "b": (3,)}
    imp = Implicit(deq_residual, n_in=2, n_state=3, param_shapes=shapes)
    host = imp.init(rng)
    host["W"] = 0.3 * host["W"] / np.linalg.norm(host["W"], 2)
    params = {k: case.asarray(v) for k, v in host.items()}
    _d_actions_agree(case, imp.run(params, case.asarray(rng.standard_normal((2, 2)))))


def test_global_ntk_of_the_hook_cell_equals_its_dense_reference_after_warm_up():
    pytest.importorskip("torch")
    case = _make_case("torch", "float64")
    traj = _recurrent(case, B=2, T=4, seed=9)
    N = kpflow.global_ntk(traj)
    n = int(np.prod(traj.state_shape))
    dense = case.to_numpy(kpflow.dense_global_ntk(traj)).reshape(n, n)
    V = _probes(case, traj, 2, 10)
    with _no_grad(case):
        for _ in range(3):
            got = case.to_numpy(N.matmat(V)).reshape(2, n)
    ref = case.to_numpy(V).reshape(2, n) @ dense.T
    assert np.linalg.norm(got - ref) <= TOL * np.linalg.norm(ref)


# (Recurrent.run's diagonal-D check reads a float off a grad-requiring tensor: hooks.py's)
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True to a scalar")
def test_torch_solves_keep_no_graph_and_direct_products_stay_differentiable():
    torch = pytest.importorskip("torch")
    import kpflow.linalg as kla

    case = _make_case("torch", "float64")
    model = _cell(2, 3)
    rng = np.random.default_rng(11)
    params = {k: torch.tensor(v, requires_grad=True) for k, v in model.init(rng).items()}
    traj = model.run(params, torch.tensor(rng.standard_normal((2, 4, 2))))
    N = kpflow.global_ntk(traj)
    for _ in range(2):  # the second call runs from the traced graphs
        r = kla.eigsh(N, 2, rng=0)
        for a in (r.eigenvalues, r.eigenvectors):
            assert not a.requires_grad and a.grad_fn is None
    kept = [r for slot in ha._CURRENT.values() for step in slot[3] for r in step]
    assert not any(r.requires_grad for r in kept)  # residuals kept between steps carry no graph
    # with grad on, P V is differentiable in the parameters, and its gradient is the reference's
    P, kernel = ntk.propagator(traj), traj.step_kernel()
    V = _probes(case, traj, 2, 12)
    W = params["W"]
    for _ in range(3):
        (g,) = torch.autograd.grad(P.matmat(V).square().sum(), W)
    (g_ref,) = torch.autograd.grad(_reference_P(traj.xp, kernel, V, False).square().sum(), W)
    assert _rel(g, g_ref, case) <= TOL


def test_jax_products_compile_once_per_model_and_shape():
    jax = pytest.importorskip("jax")
    if "jax" not in BACKENDS:
        pytest.skip("jax not among the selected backends")
    case = _make_case("jax", "float64")
    compiles = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    traj = _recurrent(case, B=2, T=5, seed=13)
    V = _probes(case, traj, 2, 14)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        kpflow.global_ntk(traj).matmat(V).block_until_ready()
        assert compiles  # the first product compiles (the listener sees it)
        compiles.clear()
        kpflow.global_ntk(traj).matmat(V).block_until_ready()
        params2 = {k: v + 0.1 for k, v in traj.params.items()}
        N2 = kpflow.global_ntk(traj.model.run(params2, traj.x))
        compiles.clear()  # (run itself compiles its forward pass and the diagonal checks)
        N2.matmat(V).block_until_ready()
        N2.matmat(V).block_until_ready()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []


def tanh_rnn_step(params, h, x, site):
    xp = array_namespace(h, x)
    return xp.tanh(site("W", h) + site("U", x) + site("b"))


def test_sites_with_equal_D_share_it_and_form_one_exact_term_of_K():
    pytest.importorskip("torch")
    from kpflow.ntk.kernel import KroneckerCoreKernel, _terms

    case = _make_case("torch", "float64")
    model = Recurrent(tanh_rnn_step, n_in=2, n_hidden=3, param_shapes={"W": (3, 3), "U": (3, 2), "b": (3,)})
    rng = np.random.default_rng(15)
    params = {k: case.asarray(v) for k, v in model.init(rng).items()}
    traj = model.run(params, case.asarray(rng.standard_normal((2, 4, 2))))
    assert [s.name for s in traj.sites] == ["U", "W", "b"]  # one site per parameter, still
    assert len({id(s.unit_D) for s in traj.sites}) == 1 and len(_terms(traj.sites)) == 1
    V = _probes(case, traj, 3, 16)
    K = ntk.parameter_kernel(traj)
    per_site = sum(KroneckerCoreKernel([s], like=traj.states).matmat(V) for s in traj.sites)
    assert _rel(K.matmat(V), per_site, case) <= TOL
