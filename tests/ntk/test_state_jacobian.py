"""The state Jacobian J_S = dz/dθ = P F and its relatives (kpflow.ntk.jacobian).

- J_S's columns, mapped to the model's named parameters, equal ``torch.func.jacrev`` of the
  whole unrolled model θ ↦ z, for every model of the registry, to 1e-10 relative (float64);
  so do the output Jacobian's, readout included;
- J_S J_Sᵀ = NTK_S (dense autodiff reference), J_Sᵀ J_S is symmetric PSD with NTK_S's nonzero
  spectrum, ⟨J x, y⟩ = ⟨x, Jᵀ y⟩; the LSTM's h block and the output NTK likewise;
- ``rules.gram_factor`` returns these factors, and ``trace`` / ``fro_norm`` /
  ``effective_rank`` of NTK_S routed through the parameter side equal the state side's;
- bad inputs raise errors that name the argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kpflow
import kpflow.ntk as ntk
from kpflow.linalg import effective_rank, fro_norm, rules, trace
from kpflow.models import LSTM, RNN, Linear
from kpflow.ntk.jacobian import ParameterMap
from tests.conftest import check_meta, examples
from tests.linalg_helpers import Opaque
from tests.ntk_helpers import NAMES, build, draw_shape, inner, reference_case, reference_traj, rel_err

TOL = 1e-10


def _needs_torch() -> Any:
    return pytest.importorskip("torch", reason="the jacrev references are computed with torch.func")


def _dense(case: Any, op: Any) -> np.ndarray:
    """``op`` as a host float64 matrix (size_out, size_in)."""
    return case.to_numpy(op.todense()).reshape(op.size_out, op.size_in)


def _torch_jacobian(built: Any, readout: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """``torch.func.jacrev`` of θ ↦ z (or of (θ, C, c) ↦ y) through ``model.unroll``, float64.

    Returns ``{param name: (n_out, *param shape)}``; the readout's entries are named
    ``readout.weight`` / ``readout.bias``.
    """
    torch = _needs_torch()
    model = built.model

    def t(a: np.ndarray) -> Any:
        return torch.from_numpy(np.array(a, dtype=np.float64))

    theta = {k: t(v) for k, v in built.host_params.items()}
    if readout is not None:
        theta.update({f"readout.{k}": t(v) for k, v in readout.items()})
    x = t(built.host_x)
    h0 = None if built.host_h0 is None else t(built.host_h0)

    def f(th: dict) -> Any:
        z = model.unroll({k: th[k] for k in built.host_params}, x, h0)
        if readout is None:
            return z
        traj = built.traj
        lo, hi = traj.feature_columns
        feats = z.reshape(traj.m, traj.site_state_size)[:, lo:hi]
        ro = Linear(hi - lo, readout["weight"].shape[0], bias="bias" in readout)
        y = ro.apply({k: th[f"readout.{k}"] for k in readout}, feats)
        return y.reshape(*traj.site_shape, -1)

    with torch.no_grad():
        n = f(theta).numel()
    jac = torch.func.jacrev(f)(theta)
    return {k: jac[k].reshape(n, *theta[k].shape).numpy() for k in theta}


# -- J_S against jacrev, column by named column ---------------------------------------------------------
@pytest.mark.properties
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(5))
@given(data=st.data())
def test_state_jacobian_columns_equal_jacrev_of_the_model(case64, name, data):
    _needs_torch()
    built = build(case64, name, *draw_shape(data, case64))
    J = kpflow.state_jacobian(built.traj)
    assert J.shape_in == (sum(int(np.prod(v.shape)) for v in built.host_params.values()),)
    assert J.shape_out == built.traj.state_shape
    Jd = J.todense()
    check_meta(case64, Jd)
    n = J.size_out
    got = J.to_params(case64.xp.reshape(Jd, (n, J.size_in)))  # rows of J, by named parameter
    expected = _torch_jacobian(built)
    assert set(got) == set(expected)
    for pname, ref in expected.items():
        check_meta(case64, got[pname])
        g = case64.to_numpy(got[pname])
        assert g.shape == ref.shape, pname
        assert rel_err(g, ref) <= TOL, pname
    # the whole matrix too (a column missing from every parameter would otherwise pass)
    full = np.concatenate([expected[k].reshape(n, -1) for k in sorted(expected)], axis=1)
    mapped = np.concatenate([case64.to_numpy(got[k]).reshape(n, -1) for k in sorted(expected)], axis=1)
    assert rel_err(mapped, full) <= TOL


@pytest.mark.properties
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(5))
@given(data=st.data())
def test_gram_is_the_dense_ntk_and_the_parameter_side_shares_its_spectrum(case64, name, data):
    _needs_torch()
    built = build(case64, name, *draw_shape(data, case64))
    N = ntk.global_ntk(built.traj)
    J = N.J
    assert J is N.J and rules.gram_factor(N) is J
    Jd = _dense(case64, J)
    ref = reference_traj(built)
    dense = reference_case().to_numpy(ntk.dense_global_ntk(ref)).reshape(J.size_out, J.size_out)
    assert rel_err(Jd @ Jd.T, dense) <= TOL
    GN = J.gauss_newton()
    G = _dense(case64, GN)
    assert GN.shape_in == GN.shape_out == J.shape_in
    assert rel_err(G, Jd.T @ Jd) <= TOL
    assert np.array_equal(G, G.T) or rel_err(G, G.T) <= 1e-14
    ev_p = np.sort(np.linalg.eigvalsh((G + G.T) / 2))[::-1]
    ev_s = np.sort(np.linalg.eigvalsh(dense))[::-1]
    scale = max(ev_s[0], 1e-300)
    assert ev_p.min() >= -1e-12 * scale  # PSD
    r = min(len(ev_p), len(ev_s))
    assert np.max(np.abs(ev_p[:r] - ev_s[:r])) <= 1e-10 * scale  # the same nonzero spectrum
    assert np.all(np.abs(ev_p[r:]) <= 1e-10 * scale) and np.all(np.abs(ev_s[r:]) <= 1e-10 * scale)


@pytest.mark.properties
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(5))
@given(data=st.data())
def test_adjoint_consistency_and_blocks(case, name, data):
    built = build(case, name, *draw_shape(data, case))
    J = kpflow.state_jacobian(built.traj)
    x = case.randn(3, *J.shape_in, seed=1)
    y = case.randn(3, *J.shape_out, seed=2)
    Jx, JTy = J.matmat(x), J.rmatmat(y)
    check_meta(case, Jx)
    check_meta(case, JTy)
    scale = np.linalg.norm(case.to_numpy(Jx)) * np.linalg.norm(case.to_numpy(y))
    tol = 1e-12 if case.dtype_name == "float64" else 1e-5
    assert abs(inner(case, Jx, y) - inner(case, x, JTy)) <= tol * (scale + 1e-300)
    # J = P F and Jᵀ = Fᵀ Pᵀ, as composed operators
    case.assert_close(Jx, J.P.matmat(J.F.matmat(x)), rtol=10 * case.rtol)
    case.assert_close(JTy, J.F.rmatmat(J.P.rmatmat(y)), rtol=10 * case.rtol)
    # split / join and to_params / from_params are inverse to each other, exactly
    blocks = J.split(x)
    assert list(blocks) == J.site_names
    for site, (p, k) in J.site_shapes.items():
        assert tuple(blocks[site].shape) == (3, p, k)
    assert np.array_equal(case.to_numpy(J.join(blocks)), case.to_numpy(x))
    params = J.to_params(x[0, ...])
    assert {k: tuple(v.shape) for k, v in params.items()} == {
        k: v.shape for k, v in built.host_params.items()
    }
    assert np.array_equal(case.to_numpy(J.from_params(params)), case.to_numpy(x[0, ...]))


# -- the LSTM's h block and the output NTK ----------------------------------------------------------------
@pytest.mark.parametrize("part", ["h", "c"])
def test_lstm_block_jacobian_is_the_factor_of_the_block_ntk(case64, part):
    _needs_torch()
    built = build(case64, "lstm", 2, 3, 2, 2, 5, True)
    block = ntk.global_ntk(built.traj, part=part)
    J = kpflow.state_jacobian(built.traj, part=part)
    assert block.J.columns == J.columns == block.columns
    assert rules.gram_factor(block) is block.J
    Jd = _dense(case64, J)
    assert rel_err(Jd @ Jd.T, _dense(case64, block)) <= TOL
    lo, hi = block.columns
    full = reference_case().to_numpy(ntk.dense_global_ntk(reference_traj(built)))
    B, T, _ = built.traj.state_shape
    expected = full[:, :, lo:hi, :, :, lo:hi].reshape(B * T * (hi - lo), -1)
    assert rel_err(Jd @ Jd.T, expected) <= TOL
    x, y = case64.randn(*J.shape_in, seed=3), case64.randn(*J.shape_out, seed=4)
    Jx, JTy = J.matvec(x), J.rmatvec(y)
    scale = np.linalg.norm(case64.to_numpy(Jx)) * np.linalg.norm(case64.to_numpy(y))
    assert abs(inner(case64, Jx, y) - inner(case64, x, JTy)) <= 1e-12 * scale


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bias", [True, False])
def test_output_jacobian_gram_is_the_dense_output_ntk(case64, name, bias):
    _needs_torch()
    built = build(case64, name, 2, 3, 2, 2, 7, True)
    traj = built.traj
    lo, hi = traj.feature_columns
    readout = Linear(hi - lo, 2, bias=bias)
    host_ro = {k: np.asarray(v) for k, v in readout.init(4).items()}
    ro = {k: case64.asarray(v) for k, v in host_ro.items()}
    out = ntk.output_ntk(traj, ro)
    J = out.J
    assert rules.gram_factor(out) is J
    assert J.site_names[-1] == "readout"
    assert J.site_shapes["readout"] == (hi - lo + (1 if bias else 0), 2)
    Jd = _dense(case64, J)
    ref_ro = {k: reference_case().asarray(v) for k, v in host_ro.items()}
    dense = reference_case().to_numpy(ntk.dense_output_ntk(reference_traj(built), ref_ro))
    assert rel_err(Jd @ Jd.T, dense.reshape(J.size_out, J.size_out)) <= TOL
    assert rel_err(Jd @ Jd.T, _dense(case64, out)) <= TOL
    # columns by name, the readout's own included
    got = J.to_params(case64.xp.reshape(J.todense(), (J.size_out, J.size_in)))
    expected = _torch_jacobian(built, host_ro)
    assert set(got) == set(expected)
    for pname, e in expected.items():
        assert rel_err(case64.to_numpy(got[pname]), e) <= TOL, pname
    x, y = case64.randn(*J.shape_in, seed=5), case64.randn(*J.shape_out, seed=6)
    Jx = J.matvec(x)
    scale = np.linalg.norm(case64.to_numpy(Jx)) * np.linalg.norm(case64.to_numpy(y))
    assert abs(inner(case64, Jx, y) - inner(case64, x, J.rmatvec(y))) <= 1e-12 * scale
    # the exact trace goes through the factor: min(p + p_ro, n) products with J or Jᵀ
    t = trace(out)
    assert t.method == "exact" and t.num_matvecs == min(J.size_in, J.size_out)
    assert abs(float(t) - np.trace(Jd @ Jd.T)) <= TOL * float(t)


# -- F alone ---------------------------------------------------------------------------------------------
def test_parameter_map_is_the_factor_of_K(case64):
    built = build(case64, "gru", 3, 2, 3, 2, 1, True)
    K = ntk.parameter_kernel(built.traj)
    F = ntk.state_jacobian(built.traj).F
    assert isinstance(F, ParameterMap)
    Fd = _dense(case64, F)
    assert rel_err(Fd @ Fd.T, _dense(case64, K)) <= 1e-12


# -- trace, norms, effective rank through the parameter side ------------------------------------------------
#: (model, n_in, H, B, T) with fewer parameters than states, so the parameter side is smaller
SMALL_SIDE = {
    "rnn_tanh": (1, 2, 4, 6),
    "leaky_tanh_bias": (1, 2, 4, 6),
    "gru": (1, 2, 4, 6),
    "lstm": (1, 2, 4, 6),
    "mlp_tanh": (1, 2, 8, 1),
}


@pytest.mark.parametrize("name", sorted(SMALL_SIDE))
def test_exact_trace_norm_and_rank_through_the_parameter_side(case64, name):
    n_in, H, B, T = SMALL_SIDE[name]
    traj = build(case64, name, B, T, H, n_in, 3, True).traj
    N = ntk.global_ntk(traj)
    p, n = N.J.size_in, N.size_in
    assert p < n, (p, n)
    M = _dense(case64, N)
    truth_tr, truth_fro = np.trace(M), np.linalg.norm(M)
    t, f, r = trace(N), fro_norm(N), effective_rank(N)
    # the state side, with the factor hidden: n products with NTK_S each
    ts, fs, rs = trace(Opaque(N)), fro_norm(Opaque(N)), effective_rank(Opaque(N))
    for got, side, truth in ((t, ts, truth_tr), (f, fs, truth_fro), (r, rs, truth_tr**2 / truth_fro**2)):
        check_meta(case64, got.value)
        assert got.method == side.method == "exact"
        assert side.num_matvecs == n
        assert abs(float(got) - truth) <= TOL * abs(truth)
        assert abs(float(got) - float(side)) <= TOL * abs(truth)
    assert t.num_matvecs == p  # ‖J‖²_F: p products with J alone
    assert f.num_matvecs == r.num_matvecs == p  # p products with Jᵀ J
    assert trace(N, method="exact").num_matvecs == p
    assert fro_norm(N, method="exact").num_matvecs == p


def test_exact_trace_of_a_gram_uses_the_smaller_side_of_its_factor(case64):
    # more parameters than states: still ‖J‖²_F, from n products with Jᵀ alone
    traj = build(case64, "gru", 1, 2, 3, 2, 0, False).traj
    N = ntk.global_ntk(traj)
    assert N.J.size_in > N.size_in
    t = trace(N)
    assert t.method == "exact" and t.num_matvecs == N.size_in
    assert abs(float(t) - np.trace(_dense(case64, N))) <= TOL * float(t)
    f = fro_norm(N)  # no smaller side: NTK_S itself
    assert f.num_matvecs == N.size_in
    assert abs(float(f) - np.linalg.norm(_dense(case64, N))) <= TOL * float(f)


@pytest.mark.parametrize("method", ["xnystrace", "xtrace", "hutchinson", "hutch++"])
def test_trace_estimators_run_on_the_parameter_side(case64, method):
    traj = build(case64, "gru", 6, 5, 2, 1, 2, True).traj
    N = ntk.global_ntk(traj)
    G = N.J.gauss_newton()
    p = G.size_in
    assert p < N.size_in
    got = trace(N, method=method, num_matvecs=12, rng=4)
    same = trace(G, method=method, num_matvecs=12, rng=4)
    assert got.method == method and got.num_matvecs == 12
    check_meta(case64, got.value)
    assert float(got) == float(same)  # the same probes, on Jᵀ J
    truth = float(np.trace(_dense(case64, N)))
    if got.error is not None:
        assert abs(float(got) - truth) <= 6 * float(got.error) + 1e-8 * truth
    # a budget the parameter side cannot take stays on the state side
    big = trace(N, method="xnystrace", num_matvecs=p + 1, rng=0)
    assert big.num_matvecs == p + 1
    assert abs(float(big) - truth) <= 1e-8 * truth


def test_auto_estimates_run_on_the_parameter_side(case64):
    if case64.name == "jax":  # 40 s of compiles; jax's parameter side: the exact and trace tests above
        pytest.skip("the routing is backend-free; the exact and trace tests check jax's parameter side")
    traj = build(case64, "lstm", 8, 6, 3, 1, 2, True).traj  # n = 288 > DENSE_LIMIT, p = 72
    N = ntk.global_ntk(traj)
    G = N.J.gauss_newton()
    assert G.size_in < kpflow.linalg.DENSE_LIMIT < N.size_in
    truth = _dense(case64, N)
    # no budget: exact, through the p-long side
    for fn in (trace, fro_norm, effective_rank):
        res = fn(N)
        assert res.method == "exact" and res.num_matvecs == G.size_in
    # a budget below p: the estimators, on Jᵀ J with its r-long probes (same seed, same numbers)
    for fn in (trace, fro_norm, effective_rank):
        a, b = fn(N, num_matvecs=40, rng=1), fn(G, num_matvecs=40, rng=1)
        assert a.method == b.method != "exact"
        assert float(a) == float(b) and a.num_matvecs == b.num_matvecs <= 40
    est = effective_rank(N, num_matvecs=40, rng=1)
    assert 1.0 <= float(est) <= G.size_in
    pr = np.trace(truth) ** 2 / np.sum(truth**2)
    assert abs(float(est) - pr) <= 6 * float(est.error) + 1e-8


def test_autodiff_ntk_has_no_gram_factor_and_traces_as_before():
    _needs_torch()
    case = reference_case()
    traj = build(case, "rnn_tanh", 4, 6, 2, 1, 0, True).traj
    N = ntk.global_ntk(traj, method="autodiff")
    assert rules.gram_factor(N) is None
    t = trace(N)
    assert t.num_matvecs == N.size_in
    assert abs(float(t) - float(trace(ntk.global_ntk(traj)))) <= TOL * float(t)


# -- errors ----------------------------------------------------------------------------------------------
def _rnn_traj() -> Any:
    model = RNN(1, 2)
    return model.run(model.init(0), np.ones((2, 3, 1)))


def test_bad_inputs_name_the_argument():
    traj = _rnn_traj()
    with pytest.raises(TypeError, match="state_jacobian: expected traj to be a kpflow Trajectory"):
        kpflow.state_jacobian(np.ones(3))
    with pytest.raises(ValueError, match="state_jacobian: expected part"):
        kpflow.state_jacobian(traj, part="x")
    with pytest.raises(ValueError, match="part='c' needs an LSTM"):
        kpflow.state_jacobian(traj, part="c")
    with pytest.raises(TypeError, match="expected sites to be a non-empty list"):
        ParameterMap([], like=traj.states)
    with pytest.raises(TypeError, match="expected sites to be a non-empty list"):
        ParameterMap([np.ones(2)], like=traj.states)
    J = kpflow.state_jacobian(traj)
    with pytest.raises(ValueError, match=r"StateJacobian.split: expected v of shape \(\.\.\., 10\)"):
        J.split(np.ones(9))
    with pytest.raises(TypeError, match="dtype"):
        J.split(np.ones(10, dtype=np.float32))
    with pytest.raises(ValueError, match="StateJacobian.join: expected blocks to be a dict with the keys"):
        J.join({"nope": np.ones((5, 2))})
    with pytest.raises(ValueError, match=r"expected blocks\['hidden'\] of shape"):
        J.join({"hidden": np.ones((2, 5))})
    with pytest.raises(ValueError, match="from_params: expected params to be a dict with the keys"):
        J.from_params({"weight_ih": np.ones((2, 1))})
    params = J.to_params(np.ones(10))
    params["weight_hh"] = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"expected params\['weight_hh'\] of shape"):
        J.from_params(params)
    with pytest.raises(ValueError, match="StateJacobian.matvec: expected x of shape"):
        J.matvec(np.ones(11))
    F = ParameterMap(traj.sites, like=traj.states)  # no named layout given
    with pytest.raises(TypeError, match=r"give its class a site_rows\(\) method"):
        F.to_params(np.ones(10))


def test_a_wrong_layout_is_rejected():
    traj = _rnn_traj()
    shapes = {k: tuple(v.shape) for k, v in traj.params.items()}
    good = ntk.site_parameters(traj.model)
    ParameterMap(traj.sites, like=traj.states, rows=good, param_shapes=shapes)
    short = {"hidden": good["hidden"][:1]}  # weight_hh alone: 2 of the 5 rows
    with pytest.raises(ValueError, match="has p=5 site variables but site_parameters fills 2 rows"):
        ParameterMap(traj.sites, like=traj.states, rows=short, param_shapes=shapes)
    twice = {"hidden": [*good["hidden"][:3], ("bias_ih", (0, 2))]}
    with pytest.raises(
        ValueError, match=r"does not cover 'bias_ih' \(rows \[\(0, 2\), \(0, 2\)\] of 2\) once"
    ):
        ParameterMap(traj.sites, like=traj.states, rows=twice, param_shapes=shapes)
    with pytest.raises(ValueError, match="names the sites"):
        ParameterMap(traj.sites, like=traj.states, rows={"other": good["hidden"]}, param_shapes=shapes)


def test_autodiff_K_has_no_state_jacobian():
    _needs_torch()
    case = reference_case()
    traj = build(case, "lstm", 1, 2, 2, 1, 0, False).traj
    for op in (ntk.global_ntk(traj, method="autodiff"), ntk.global_ntk(traj, method="autodiff", part="h")):
        with pytest.raises(TypeError, match=r"K = AutodiffKernel, without weight sites.*method='kronecker'"):
            _ = op.J
        assert rules.gram_factor(op) is None
    out = ntk.output_ntk(traj, Linear(2, 1).init(0, like=traj.states), method="autodiff")
    assert rules.gram_factor(out) is None
    with pytest.raises(TypeError, match="AutodiffKernel"):
        _ = out.J


def test_lstm_layout_maps_gates_as_torch_stacks_them():
    # a perturbation of one gate's bias moves only that gate's column block of the site
    model = LSTM(1, 2)
    traj = model.run(model.init(0), np.ones((1, 2, 1)))
    J = kpflow.state_jacobian(traj)
    params = {k: np.zeros(v.shape) for k, v in traj.params.items()}
    params["bias_hh"][5] = 1.0  # gate g (rows 4:6), unit 1
    C = J.split(J.from_params(params))["ih+hh"]
    assert C.shape == (1 + 2 + 2, 8)
    expected = np.zeros((5, 8))
    expected[4, 5] = 1.0  # the last row is bias_hh; column q·H + i = 2·2 + 1
    assert np.array_equal(C, expected)
