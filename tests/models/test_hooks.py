"""User-defined recurrent cells through weight hooks (``kpflow.models.Recurrent``), in float64.

Three user cells of different shapes (a tanh RNN, a cell using one weight at two hook
calls, a GRU-like gated cell) against the dense autodiff NTK; the user tanh RNN against the
built-in ``RNN``; the exact shortcuts falling back and agreeing with dense; and the errors
for a weight used outside a hook, an undeclared name, a shape mismatch and numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kpflow.backends import AutodiffUnavailableError

import kpflow
import kpflow.linalg as kla
from kpflow._array import array_namespace
from kpflow.models import RNN, Recurrent
from kpflow.models.hooks import WeightOutsideHookError
from tests.conftest import BACKENDS, _make_case, check_meta, examples
from tests.model_zoo import CELLS, tanh_rnn_step
from tests.model_zoo import hook_tanh_rnn as _tanh_rnn
from tests.ntk_helpers import draw_shape, rel_err

TOL = 1e-9
AUTODIFF = [b for b in ("torch", "jax") if b in BACKENDS]
needs_autodiff = pytest.mark.skipif(not AUTODIFF, reason="needs torch or jax among the selected backends")


def _problem(case, cell, B, T, H, n_in, seed, with_h0):
    model = CELLS[cell](n_in, H)
    rng = np.random.default_rng(seed)
    host = {k: 1.5 * v for k, v in model.init(rng).items()}
    x = rng.standard_normal((B, T, n_in))
    h0 = 0.5 * rng.standard_normal((B, H)) if with_h0 else None
    params = {k: case.asarray(v) for k, v in host.items()}
    traj = model.run(params, case.asarray(x), None if h0 is None else case.asarray(h0))
    return model, host, x, h0, traj


@pytest.mark.properties
@needs_autodiff
@pytest.mark.parametrize("backend", AUTODIFF)
@pytest.mark.parametrize("cell", sorted(CELLS))
@settings(max_examples=examples(4))
@given(data=st.data())
def test_user_cell_global_ntk_equals_dense_reference(backend, cell, data):
    case = _make_case(backend, "float64")
    _, _, _, _, traj = _problem(case, cell, *draw_shape(data, case))
    dense = case.to_numpy(kpflow.dense_global_ntk(traj))
    N = kpflow.global_ntk(traj).todense()
    check_meta(case, N)
    err = rel_err(case.to_numpy(N).ravel(), dense.ravel())
    assert err <= TOL
    # the one-step kernel K: Kronecker core (hook sites) against the autodiff J_θ J_θᵀ
    K = case.to_numpy(kpflow.parameter_kernel(traj).todense())
    K_ad = case.to_numpy(kpflow.parameter_kernel(traj, method="autodiff").todense())
    assert rel_err(K.ravel(), K_ad.ravel()) <= TOL


@needs_autodiff
@pytest.mark.parametrize("backend", AUTODIFF)
def test_user_cell_state_jacobian_gram_equals_dense(backend):
    case = _make_case(backend, "float64")
    _, _, _, _, traj = _problem(case, "shared_weight", 2, 3, 2, 3, 5, True)
    J = kpflow.ntk.state_jacobian(traj)
    Jd = case.to_numpy(J.todense())
    n = int(np.prod(traj.state_shape))
    Jd = Jd.reshape(n, -1)
    dense = case.to_numpy(kpflow.dense_global_ntk(traj)).reshape(n, n)
    assert rel_err(Jd @ Jd.T, dense) <= TOL


@pytest.mark.properties
@needs_autodiff
@pytest.mark.parametrize("backend", AUTODIFF)
@settings(max_examples=examples(4))
@given(data=st.data())
def test_user_tanh_rnn_kernel_equals_builtin_rnn_kernel(backend, data):
    case = _make_case(backend, "float64")
    B, T, H, n_in, seed, with_h0 = draw_shape(data, case)
    _, host, x, h0, traj = _problem(case, "tanh_rnn", B, T, H, n_in, seed, with_h0)
    params = {k: case.asarray(v) for k, v in host.items()}
    builtin = RNN(n_in, H).run(params, case.asarray(x), None if h0 is None else case.asarray(h0))
    case.assert_close(traj.states, case.to_numpy(builtin.states), rtol=1e-14)
    for op in (kpflow.parameter_kernel, kpflow.global_ntk):
        got, expected = case.to_numpy(op(traj).todense()), case.to_numpy(op(builtin).todense())
        assert rel_err(got.ravel(), expected.ravel()) <= 1e-12


@needs_autodiff
@pytest.mark.parametrize("backend", AUTODIFF)
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_exact_shortcuts_apply_to_diagonal_cells_and_all_agree_with_dense(backend, cell):
    # A site whose D is diagonal (each pre-activation unit moves only its own state unit,
    # the tanh RNN and the gated cell) becomes a unit-structured Site and K's exact trace and
    # spectrum rules answer; a weight used twice keeps a LinearSite and the rules decline.
    # Either way the answers agree with the dense matrices.
    from kpflow.linalg import rules
    from kpflow.models import Site
    from kpflow.models.sites import LinearSite

    case = _make_case(backend, "float64")
    _, _, _, _, traj = _problem(case, cell, 2, 3, 2, 3, 7, True)
    K = kpflow.parameter_kernel(traj)
    kinds = {s.name: type(s) for s in traj.sites}
    if cell == "shared_weight":
        assert kinds["W"] is LinearSite and kinds["b"] is LinearSite and kinds["U"] is Site
        assert rules.exact_trace(K) is None
        assert rules.exact_eigsh(K, 3) is None
    else:
        assert set(kinds.values()) == {Site}
        assert rules.exact_trace(K) is not None
        assert rules.exact_eigsh(K, 3) is not None
    n = int(np.prod(traj.state_shape))
    Kd = case.to_numpy(K.todense()).reshape(n, n)
    Nd = case.to_numpy(kpflow.dense_global_ntk(traj)).reshape(n, n)
    for op, dense in ((K, Kd), (kpflow.global_ntk(traj), Nd)):
        tr = kla.trace(op, method="auto")
        assert abs(float(tr) - np.trace(dense)) <= 1e-10 * abs(np.trace(dense))
        vals = case.to_numpy(kla.eigsh(op, 3, rng=0).eigenvalues)
        expected = np.sort(np.linalg.eigvalsh(dense))[::-1][:3]
        assert np.max(np.abs(vals - expected)) <= 1e-9 * expected[0]
    exact = case.to_numpy(kla.eigsh(K, 3).eigenvalues)
    np.testing.assert_allclose(exact, np.sort(np.linalg.eigvalsh(Kd))[::-1][:3], rtol=1e-10)


@needs_autodiff
@pytest.mark.parametrize("backend", AUTODIFF)
def test_a_non_diagonal_d_is_detected_and_kept_exact(backend):
    """A step whose output is permuted after the nonlinearity has a non-diagonal D: kept general."""
    from kpflow.models.sites import LinearSite

    def flipped(params, h, x, site):
        xp = array_namespace(h, x)
        return xp.flip(xp.tanh(site("W", h) + site("U", x)), axis=-1)

    model = Recurrent(flipped, n_in=2, n_hidden=3, param_shapes={"W": (3, 3), "U": (3, 2)})
    case = _make_case(backend, "float64")
    rng = np.random.default_rng(3)
    params = {k: case.asarray(v) for k, v in model.init(rng).items()}
    traj = model.run(params, case.asarray(rng.standard_normal((2, 3, 2))))
    assert all(isinstance(s, LinearSite) for s in traj.sites)
    n = 18
    N = case.to_numpy(kpflow.global_ntk(traj).todense()).reshape(n, n)
    dense = case.to_numpy(kpflow.dense_global_ntk(traj)).reshape(n, n)
    assert np.linalg.norm(N - dense) <= 1e-12 * np.linalg.norm(dense)


@needs_autodiff
def test_shared_weight_cross_terms_are_needed():
    # Splitting the shared W into two independent weights drops the cross terms
    # D_1 (A_1 A_2ᵀ ⊗ I) D_2ᵀ: that K differs, so the test above is sharp.
    case = _make_case(AUTODIFF[0], "float64")
    model, host, x, h0, traj = _problem(case, "shared_weight", 2, 3, 3, 2, 3, True)
    H = 3

    def split_step(params, h, x, site):
        xp = array_namespace(h, x)
        first = xp.tanh(site("W", h) + site("U", x) + site("b"))
        return first + 0.5 * xp.tanh(site("W2", xp.tanh(h)) + site("b2"))

    shapes = {**model.param_shapes(), "W2": (H, H), "b2": (H,)}
    split = Recurrent(split_step, n_in=2, n_hidden=H, param_shapes=shapes)
    p = {k: case.asarray(v) for k, v in host.items()}
    p.update({"W2": p["W"], "b2": p["b"]})
    straj = split.run(p, case.asarray(x), case.asarray(h0))
    case.assert_close(straj.states, case.to_numpy(traj.states), rtol=1e-14)
    K = case.to_numpy(kpflow.parameter_kernel(traj).todense())
    K_split = case.to_numpy(kpflow.parameter_kernel(straj).todense())
    assert rel_err(K_split.ravel(), K.ravel()) > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_read_outside_a_hook_is_reported(backend):
    def leaky(params, h, x, site):
        xp = array_namespace(h, x)
        return xp.tanh(site("W", h) + x @ xp.matrix_transpose(params["U"]))

    case = _make_case(backend, "float64")
    model = Recurrent(leaky, n_in=2, n_hidden=3, param_shapes={"W": (3, 3), "U": (3, 2)})
    params = {k: case.asarray(v) for k, v in model.init(0).items()}
    x = case.asarray(np.ones((1, 2, 2)))
    message = r"read params\['U'\] directly.*site\('U', a\)"
    with pytest.raises(WeightOutsideHookError, match=message):
        model.unroll(params, x)
    if backend in AUTODIFF:
        with pytest.raises(WeightOutsideHookError, match=message):
            model.run(params, x)


@needs_autodiff
def test_bad_hook_calls_and_unused_parameters_are_reported():
    case = _make_case(AUTODIFF[0], "float64")
    x = case.asarray(np.ones((1, 2, 2)))

    def run(step, shapes):
        model = Recurrent(step, n_in=2, n_hidden=3, param_shapes=shapes)
        return model.run({k: case.asarray(v) for k, v in model.init(0).items()}, x)

    def undeclared(params, h, x, site):
        return site("W", h) + site("V", x)

    with pytest.raises(ValueError, match=r"site\('V'\) names no parameter.*\['W'\]"):
        run(undeclared, {"W": (3, 3)})

    def mismatch(params, h, x, site):
        return site("W", x)

    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\).*got \(1, 2\)"):
        run(mismatch, {"W": (3, 3)})

    def bias_as_weight(params, h, x, site):
        return site("W", h) + site("b", h)

    with pytest.raises(ValueError, match=r"is a weight call.*\(a bias\); call site\('b'\)"):
        run(bias_as_weight, {"W": (3, 3), "b": (3,)})

    def weight_as_bias(params, h, x, site):
        return site("W")

    with pytest.raises(ValueError, match=r"is a bias call.*call site\('W', a\)"):
        run(weight_as_bias, {"W": (3, 3)})

    def unused(params, h, x, site):
        return site("W", h)

    with pytest.raises(ValueError, match=r"no hook call used the parameter\(s\) \['U'\]"):
        run(unused, {"W": (3, 3), "U": (3, 2)})


@pytest.mark.parametrize("backend", [b for b in ("numpy", "array_api_strict") if b in BACKENDS])
def test_backends_without_autodiff_raise_a_clear_error(backend):
    case = _make_case(backend, "float64")
    model = _tanh_rnn(2, 3)
    params = {k: case.asarray(v) for k, v in model.init(0).items()}
    x = case.asarray(np.ones((2, 3, 2)))
    # the forward pass runs anywhere ...
    assert tuple(model.unroll(params, x).shape) == (2, 3, 3)
    # ... but D_w and the step Jacobian need autodiff
    with pytest.raises(AutodiffUnavailableError, match=r"Recurrent\.run: .*D_w.*torch or jax"):
        model.run(params, x)


def test_constructor_checks_its_arguments():
    with pytest.raises(TypeError, match="step to be a callable"):
        Recurrent(None, n_in=1, n_hidden=1, param_shapes={"W": (1, 1)})
    with pytest.raises(ValueError, match=r"param_shapes\['W'\]"):
        Recurrent(tanh_rnn_step, n_in=1, n_hidden=1, param_shapes={"W": (1, 1, 1)})
    with pytest.raises(TypeError, match="derivatives to be None or a kpflow.models.StepDerivatives"):
        Recurrent(tanh_rnn_step, n_in=1, n_hidden=1, param_shapes={"W": (1, 1)}, derivatives=object())


@pytest.mark.skipif("torch" not in BACKENDS, reason="torch is not among the selected backends")
def test_analysis_on_a_cell_with_a_weight_used_twice_answers_or_refuses_clearly() -> None:
    """Effective ranks work (matrix-free); the site-based measures refuse with a clear message."""
    import torch

    from kpflow import analysis

    def shared(params, h, x, site):
        return torch.tanh(site("W", h) + site("U", x)) + 0.5 * torch.tanh(site("W", torch.tanh(h)))

    model = Recurrent(shared, n_in=2, n_hidden=3, param_shapes={"W": (3, 3), "U": (3, 2)})
    x = torch.asarray(np.random.default_rng(0).standard_normal((4, 6, 2)))
    traj = model.run(model.init(1, like=x), x)
    K = kpflow.parameter_kernel(traj)
    w = np.linalg.eigvalsh(K.todense().reshape(72, 72).numpy())
    assert analysis.effective_ranks(traj, operators=("K",)).K["global"] == pytest.approx(
        w.sum() ** 2 / np.sum(w**2), rel=1e-9
    )
    with pytest.raises(
        ValueError, match=r"self_referential_bias: site 'W' has 48 rows of site variables for 24"
    ):
        analysis.self_referential_bias(traj, 2)
    with pytest.raises(ValueError, match="not unit-structured"):
        analysis.differentiable_effective_rank(traj)


@pytest.mark.skipif("torch" not in BACKENDS, reason="torch is not among the selected backends")
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_state_jacobian_gradients_come_back_in_the_cells_own_parameter_names(cell) -> None:
    """J_Sᵀ g in named parameters equals torch.autograd's gradient of ⟨g, z⟩; from_params inverts it."""
    import torch

    model = CELLS[cell](2, 3)
    rng = np.random.default_rng(4)
    params = {k: torch.asarray(v) for k, v in model.init(rng).items()}
    x = torch.asarray(rng.standard_normal((2, 4, 2)))
    g = torch.asarray(rng.standard_normal((2, 4, 3)))
    J = kpflow.state_jacobian(model.run(params, x))
    got = J.to_params(J.rmatvec(g))
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    (model.unroll(leaves, x) * g).sum().backward()
    for k, leaf in leaves.items():
        torch.testing.assert_close(got[k], leaf.grad, rtol=1e-12, atol=1e-13)
    flat = J.from_params(params)
    assert all(torch.equal(J.to_params(flat)[k], params[k]) for k in params)


# -- FeedForward: the feed-forward counterpart ------------------------------------------------------
def _mlp_layers(n_layers):
    def hidden(l):
        def layer(params, z, site):
            return array_namespace(z).tanh(site(f"layers.{l}.weight", z) + site(f"layers.{l}.bias"))

        return layer

    def output(params, z, site):
        return site(f"layers.{n_layers - 1}.weight", z) + site(f"layers.{n_layers - 1}.bias")

    return [hidden(l) for l in range(n_layers - 1)] + [output]


def _shared_depth_layers():
    # one weight V used in both hidden layers (shared across depth): cross terms in K_V
    def first(params, z, site):
        return array_namespace(z).tanh(site("U", z) + site("b"))

    def second(params, z, site):
        return array_namespace(z).tanh(site("V", z) + site("b"))

    def third(params, z, site):
        return site("V", z) * 0.5 + site("C", z)

    return [first, second, third]


@pytest.mark.properties
@needs_autodiff
@pytest.mark.parametrize("backend", AUTODIFF)
@settings(max_examples=examples(4))
@given(data=st.data())
def test_user_mlp_stack_ntk_equals_dense_and_the_builtin_mlp(backend, data):
    from kpflow.models import MLP, FeedForward

    case = _make_case(backend, "float64")
    B = data.draw(st.integers(1, 4), label="B")
    n_in, H = data.draw(st.integers(1, 3), label="n_in"), data.draw(st.integers(1, 4), label="H")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    builtin = MLP((n_in, H, H, 2))
    host = {k: 1.5 * v for k, v in builtin.init(seed).items()}
    user = FeedForward(_mlp_layers(3), n_in=n_in, widths=[H, H, 2], param_shapes=builtin.param_shapes())
    params = {k: case.asarray(v) for k, v in host.items()}
    x = case.asarray(np.random.default_rng(seed).standard_normal((B, n_in)))
    traj = user.run(params, x)
    n = B * (2 * H + 2)
    N = case.to_numpy(kpflow.global_ntk(traj).todense()).reshape(n, n)
    dense = case.to_numpy(kpflow.dense_global_ntk(traj)).reshape(n, n)
    assert np.linalg.norm(N - dense) <= 1e-9 * np.linalg.norm(dense)
    ref = case.to_numpy(kpflow.global_ntk(builtin.run(params, x)).todense()).reshape(n, n)
    assert np.linalg.norm(N - ref) <= 1e-12 * np.linalg.norm(ref)


@needs_autodiff
@pytest.mark.parametrize("backend", AUTODIFF)
def test_a_weight_shared_across_depth_keeps_its_cross_terms(backend):
    from kpflow.models import FeedForward

    case = _make_case(backend, "float64")
    shapes = {"U": (3, 2), "V": (3, 3), "b": (3,), "C": (3, 3)}
    model = FeedForward(_shared_depth_layers(), n_in=2, widths=[3, 3, 3], param_shapes=shapes)
    rng = np.random.default_rng(2)
    params = {k: case.asarray(v) for k, v in model.init(rng).items()}
    traj = model.run(params, case.asarray(rng.standard_normal((3, 2))))
    assert [(s.name, int(s.variables.shape[0])) for s in traj.sites if s.name in ("V", "b")] == [
        ("V", 6),
        ("b", 6),
    ]
    N = case.to_numpy(kpflow.global_ntk(traj).todense()).reshape(27, 27)
    dense = case.to_numpy(kpflow.dense_global_ntk(traj)).reshape(27, 27)
    assert np.linalg.norm(N - dense) <= 1e-12 * np.linalg.norm(dense)


def test_feedforward_refuses_bad_arguments_by_name():
    from kpflow.models import FeedForward

    with pytest.raises(TypeError, match="FeedForward: expected layers to be a non-empty list of callables"):
        FeedForward([], n_in=1, widths=[], param_shapes={"W": (1, 1)})
    with pytest.raises(ValueError, match=r"FeedForward: expected widths to list one width per layer \(2\)"):
        FeedForward(_mlp_layers(2), n_in=1, widths=[3], param_shapes={"W": (1, 1)})
    model = FeedForward(
        _mlp_layers(2),
        n_in=2,
        widths=[3, 1],
        param_shapes={
            "layers.0.weight": (3, 2),
            "layers.0.bias": (3,),
            "layers.1.weight": (1, 3),
            "layers.1.bias": (1,),
        },
    )
    with pytest.raises(AutodiffUnavailableError, match="FeedForward.run: a user stack's D_w"):
        model.run(model.init(0), np.ones((2, 2)))
