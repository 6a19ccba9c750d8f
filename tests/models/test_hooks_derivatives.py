"""User cells with an analytic derivative rule (``Recurrent(..., derivatives=StepDerivatives(...))``).

Three cells (a tanh RNN; a GRU written with ``rows=``; a cell using one weight at two
overlapping row ranges and a bias twice) with rules written here in array-API code run on
numpy and array_api_strict without autodiff, and match the same cell on torch through
autodiff to 1e-12 in float64: NTK_S products and its dense matrix, the exact trace of K and
J_Sᵀ g.  The rules themselves are checked against central finite differences of the step
(with a site hook written in this file), and a deliberately wrong rule fails that check.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import kpflow
import kpflow.linalg as kla
from kpflow._array import array_namespace
from kpflow.models import GRU, Recurrent, StepDerivatives
from tests.conftest import BACKENDS, _make_case
from tests.ntk_helpers import rel_err

B, T, H, N_IN = 2, 3, 3, 2
RULE_BACKENDS = [b for b in ("numpy", "array_api_strict") if b in BACKENDS]
needs_torch = pytest.mark.skipif("torch" not in BACKENDS, reason="needs torch among the selected backends")


def _sigmoid(xp, u):
    return 1.0 / (1.0 + xp.exp(-u))


def _T(W):
    return array_namespace(W).matrix_transpose(W)


# -- a tanh RNN ------------------------------------------------------------------------------------
def tanh_step(params, h, x, site):
    xp = array_namespace(h, x)
    return xp.tanh(site("W", h) + site("U", x) + site("b"))


def _tanh_gain(p, h, x):
    xp = array_namespace(h, x)
    return 1.0 - xp.tanh(h @ _T(p["W"]) + x @ _T(p["U"]) + p["b"]) ** 2


TANH_RULE = StepDerivatives(
    jvp=lambda p, h, x, V: _tanh_gain(p, h, x) * (V @ _T(p["W"])),
    vjp=lambda p, h, x, W: (_tanh_gain(p, h, x) * W) @ p["W"],
    D=lambda p, h, x: [_tanh_gain(p, h, x)] * 3,
)
# the classic slip: Wᵀ where W belongs in the vjp (right for symmetric W only)
WRONG_TANH_RULE = TANH_RULE._replace(vjp=lambda p, h, x, W: (_tanh_gain(p, h, x) * W) @ _T(p["W"]))


# -- a GRU, stacked weights called a gate at a time ---------------------------------------------------
def _gate(g):
    return (g * H, (g + 1) * H)


def gru_step(params, h, x, site):
    xp = array_namespace(h, x)
    ih = [site("weight_ih", x, rows=_gate(g)) + site("bias_ih", rows=_gate(g)) for g in range(3)]
    hh = [site("weight_hh", h, rows=_gate(g)) + site("bias_hh", rows=_gate(g)) for g in range(3)]
    r, z = _sigmoid(xp, ih[0] + hh[0]), _sigmoid(xp, ih[1] + hh[1])
    n = xp.tanh(ih[2] + r * hh[2])
    return (1.0 - z) * n + z * h


def _gru_parts(p, h, x):
    """The weights by gate and the coefficients d_r, d_z, d_n, d_hn, z of the GRU's derivatives."""
    xp = array_namespace(h, x)
    Wi = [p["weight_ih"][lo:hi, :] for lo, hi in map(_gate, range(3))]
    Wh = [p["weight_hh"][lo:hi, :] for lo, hi in map(_gate, range(3))]
    bi = [p["bias_ih"][lo:hi] for lo, hi in map(_gate, range(3))]
    bh = [p["bias_hh"][lo:hi] for lo, hi in map(_gate, range(3))]
    r = _sigmoid(xp, x @ _T(Wi[0]) + bi[0] + h @ _T(Wh[0]) + bh[0])
    z = _sigmoid(xp, x @ _T(Wi[1]) + bi[1] + h @ _T(Wh[1]) + bh[1])
    g = h @ _T(Wh[2]) + bh[2]
    n = xp.tanh(x @ _T(Wi[2]) + bi[2] + r * g)
    d_n = (1.0 - z) * (1.0 - n**2)
    d = {"r": d_n * g * r * (1.0 - r), "z": (h - n) * z * (1.0 - z), "n": d_n, "hn": d_n * r}
    return Wh, d, z


def _gru_jvp(p, h, x, V):
    Wh, d, z = _gru_parts(p, h, x)
    return d["r"] * (V @ _T(Wh[0])) + d["z"] * (V @ _T(Wh[1])) + d["hn"] * (V @ _T(Wh[2])) + z * V


def _gru_vjp(p, h, x, W):
    Wh, d, z = _gru_parts(p, h, x)
    return (d["r"] * W) @ Wh[0] + (d["z"] * W) @ Wh[1] + (d["hn"] * W) @ Wh[2] + z * W


def _gru_D(p, h, x):
    _, d, _ = _gru_parts(p, h, x)
    # the calls in the step's order: ih (weight, bias) for r, z, n, then hh for r, z, n
    return [d[k] for k in ("r", "r", "z", "z", "n", "n", "r", "r", "z", "z", "hn", "hn")]


GRU_RULE = StepDerivatives(_gru_jvp, _gru_vjp, _gru_D)


# -- one weight at overlapping rows, a bias twice --------------------------------------------------
def overlap_step(params, h, x, site):
    xp = array_namespace(h, x)
    pre = site("W", h, rows=(0, H)) + site("U", x) + site("b") + 0.5 * site("b")
    return xp.tanh(pre) + 0.5 * site("W", h, rows=(1, H + 1))


def _overlap_gain(p, h, x):
    xp = array_namespace(h, x)
    return 1.0 - xp.tanh(h @ _T(p["W"][0:H, :]) + x @ _T(p["U"]) + 1.5 * p["b"]) ** 2


def _overlap_D(p, h, x):
    a = _overlap_gain(p, h, x)
    return [a, a, a, 0.5 * a, 0.5 * array_namespace(a).ones_like(a)]


OVERLAP_RULE = StepDerivatives(
    jvp=lambda p, h, x, V: _overlap_gain(p, h, x) * (V @ _T(p["W"][0:H, :])) + 0.5 * (V @ _T(p["W"][1:, :])),
    vjp=lambda p, h, x, W: (_overlap_gain(p, h, x) * W) @ p["W"][0:H, :] + 0.5 * (W @ p["W"][1:, :]),
    D=_overlap_D,
)

CELLS = {
    "tanh_rnn": (tanh_step, {"W": (H, H), "U": (H, N_IN), "b": (H,)}, TANH_RULE),
    "gru": (gru_step, GRU(N_IN, H).param_shapes(), GRU_RULE),
    "overlap": (overlap_step, {"W": (H + 1, H), "U": (H, N_IN), "b": (H,)}, OVERLAP_RULE),
}


def _host_problem(cell, seed=0):
    step, shapes, rule = CELLS[cell]
    rng = np.random.default_rng(seed)
    host = {
        k: 1.2 * v for k, v in Recurrent(step, n_in=N_IN, n_hidden=H, param_shapes=shapes).init(rng).items()
    }
    return step, shapes, rule, host, rng.standard_normal((B, T, N_IN)), rng


def _run(case, cell, *, with_rule, seed=0):
    step, shapes, rule, host, x, _ = _host_problem(cell, seed)
    model = Recurrent(
        step, n_in=N_IN, n_hidden=H, param_shapes=shapes, derivatives=rule if with_rule else None
    )
    return model.run({k: case.asarray(v) for k, v in host.items()}, case.asarray(x))


PROBES = np.random.default_rng(1).standard_normal((2, B, T, H))
COTANGENT = np.random.default_rng(2).standard_normal((B, T, H))


def _results(case, traj):
    """What is compared, on the host: site kinds, NTK_S products, tr K (and its method), J_Sᵀ g."""
    N, K, J = kpflow.global_ntk(traj), kpflow.parameter_kernel(traj), kpflow.state_jacobian(traj)
    tr = kla.trace(K)
    grads = J.to_params(J.rmatvec(case.asarray(COTANGENT)))
    return {
        "sites": [(s.name, type(s).__name__, s.rows) for s in traj.sites],
        "products": case.to_numpy(N.matmat(case.asarray(PROBES))),
        "trace": (float(tr.value), tr.method),
        "grads": {k: case.to_numpy(v) for k, v in grads.items()},
    }


@functools.cache
def _torch_autodiff_results(cell):
    case = _make_case("torch", "float64")
    return _results(case, _run(case, cell, with_rule=False))


@needs_torch
@pytest.mark.parametrize("backend", RULE_BACKENDS)
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_a_cell_with_a_rule_runs_without_autodiff_and_matches_the_torch_autodiff_route(backend, cell):
    case = _make_case(backend, "float64")
    got, expected = _results(case, _run(case, cell, with_rule=True)), _torch_autodiff_results(cell)
    assert got["sites"] == expected["sites"]
    assert rel_err(got["products"].ravel(), expected["products"].ravel()) <= 1e-12
    (tr, method), (tr_ref, method_ref) = got["trace"], expected["trace"]
    assert method == method_ref and abs(tr - tr_ref) <= 1e-12 * tr_ref
    for k, g in expected["grads"].items():
        assert rel_err(got["grads"][k], g) <= 1e-12


def test_the_gru_with_a_rule_gets_the_exact_rules_of_k_on_numpy():
    traj = _run(_make_case("numpy", "float64"), "gru", with_rule=True)
    K = kpflow.parameter_kernel(traj)
    n = B * T * H
    Kd = K.todense().reshape(n, n)
    tr, er = kla.trace(K), kla.effective_rank(K)
    assert tr.method == er.method == "exact"
    assert abs(tr.value - np.trace(Kd)) <= 1e-12 * np.trace(Kd)
    w = np.linalg.eigvalsh(Kd)[::-1][:3]
    assert rel_err(np.asarray(kla.eigsh(K, k=3).eigenvalues), w) <= 1e-12


# -- the rules against finite differences of the step ---------------------------------------------
def _fd_step(step, shapes, params, h, x, eps_by_call=None):
    """The step with a site hook of its own: weights sliced by rows, eps added to chosen calls."""
    calls = []

    def site(name, a=None, *, rows=None):
        lo, hi = rows if rows is not None else (0, shapes[name][0])
        u = params[name][lo:hi] if a is None else a @ params[name][lo:hi].T
        c = len(calls)
        calls.append(name)
        return u + eps_by_call[c] if eps_by_call and c in eps_by_call else u

    return step(None, h, x, site), len(calls)


def rule_error_against_finite_differences(cell, rule, seed=0, eps=1e-6):
    """The largest relative error of the rule's J v, Jᵀ w (by ⟨w, J v⟩) and D_c e against central FDs."""
    step, shapes, _, params, x, rng = _host_problem(cell, seed)
    x = x[:, 0, :]
    h = 0.5 * rng.standard_normal((B, H))
    v, w = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    errors = []

    def fd(f):
        return (f(eps) - f(-eps)) / (2 * eps)

    Jv = fd(lambda e: _fd_step(step, shapes, params, h + e * v, x)[0])
    errors.append(rel_err(rule.jvp(params, h, x, v[None])[0], Jv))
    errors.append(abs(np.sum(rule.vjp(params, h, x, w[None])[0] * v) - np.sum(w * Jv)) / np.abs(Jv).sum())
    n_calls = _fd_step(step, shapes, params, h, x)[1]
    ds = rule.D(params, h, x)
    for c in range(n_calls):
        e = rng.standard_normal((B, H))
        De = fd(lambda s, c=c, e=e: _fd_step(step, shapes, params, h, x, {c: s * e})[0])
        errors.append(rel_err(ds[c] * e, De))
    return max(errors)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_the_rules_agree_with_finite_differences_of_the_step(cell):
    assert rule_error_against_finite_differences(cell, CELLS[cell][2]) <= 1e-7


def test_a_wrong_rule_is_caught_by_finite_differences_and_gives_a_different_ntk():
    assert rule_error_against_finite_differences("tanh_rnn", WRONG_TANH_RULE) > 1e-2
    case = _make_case("numpy", "float64")
    step, shapes, _, host, x, _ = _host_problem("tanh_rnn")
    right = Recurrent(step, n_in=N_IN, n_hidden=H, param_shapes=shapes, derivatives=TANH_RULE)
    wrong = Recurrent(step, n_in=N_IN, n_hidden=H, param_shapes=shapes, derivatives=WRONG_TANH_RULE)
    a, b = (kpflow.global_ntk(m.run(host, case.asarray(x))).todense() for m in (right, wrong))
    assert rel_err(b.ravel(), a.ravel()) > 1e-3


# -- errors ------------------------------------------------------------------------------------------
def test_a_rule_that_returns_the_wrong_shapes_is_refused_by_name():
    step, shapes, rule, host, x, _ = _host_problem("tanh_rnn")

    def run(rule):
        model = Recurrent(step, n_in=N_IN, n_hidden=H, param_shapes=shapes, derivatives=rule)
        traj = model.run(host, x)
        kpflow.global_ntk(traj).matvec(np.ones((B, T, H)))

    with pytest.raises(
        ValueError, match=r"derivatives.D\(params, h, x\) returned 2 arrays; expected .* \(3: "
    ):
        run(rule._replace(D=lambda p, h, x: [_tanh_gain(p, h, x)] * 2))
    with pytest.raises(
        ValueError,
        match=r"\[1\] \(hook call site\('U', a, rows=\(0, 3\)\)\) returned shape \(2, 3, 1\)",
    ):
        run(
            rule._replace(
                D=lambda p, h, x: [_tanh_gain(p, h, x), _tanh_gain(p, h, x)[..., :1], _tanh_gain(p, h, x)]
            )
        )
    with pytest.raises(ValueError, match=r"derivatives.jvp\(params, h, x, V\) returned shape"):
        run(rule._replace(jvp=lambda p, h, x, V: V[0]))
    with pytest.raises(TypeError, match=r"derivatives.vjp\(params, h, x, W\) returned dtype float32"):
        run(rule._replace(vjp=lambda p, h, x, W: W.astype(np.float32)))
    with pytest.raises(
        TypeError, match=r"expected derivatives to be None or a kpflow.models.StepDerivatives"
    ):
        Recurrent(step, n_in=N_IN, n_hidden=H, param_shapes=shapes, derivatives=(rule.jvp, rule.vjp))


def test_a_rule_needs_every_call_of_the_state_width():
    def step(params, h, x, site):  # W has 2H rows used at once: no per-unit diagonal D
        return np.tanh(site("W", h)[..., :H] * site("W", h)[..., H:])

    model = Recurrent(step, n_in=N_IN, n_hidden=H, param_shapes={"W": (2 * H, H)}, derivatives=TANH_RULE)
    with pytest.raises(
        ValueError, match=r"every hook call's output must have the state's width H=3; hook call 0"
    ):
        _ = model.run(model.init(0), np.ones((B, T, N_IN))).sites


def test_without_a_rule_numpy_still_needs_autodiff():
    from kpflow.backends import AutodiffUnavailableError

    step, shapes, _, host, x, _ = _host_problem("tanh_rnn")
    with pytest.raises(AutodiffUnavailableError, match="derivatives=StepDerivatives"):
        Recurrent(step, n_in=N_IN, n_hidden=H, param_shapes=shapes).run(host, x)
