"""Hook calls that name their rows (``site(name, a, rows=(lo, hi))``), in float64.

A GRU written with hooks, each gate's rows of the stacked weights called on their own, gets
one site per (weight, gate) with per-unit D: K's exact trace, spectrum and effective-rank
rules answer (``method == "exact"``, no products), and everything equals the built-in
``GRU`` to 1e-12 (torch; jax passes too but its compilations are slow) and, independently,
jacrev of ``torch.nn.GRU``.  Overlapping rows keep one exact ``LinearSite``; rows= works in
``FeedForward`` and ``Implicit`` too; bad rows are refused by name.
"""

from __future__ import annotations

import numpy as np
import pytest

import kpflow
import kpflow.linalg as kla
from kpflow._array import array_namespace
from kpflow.linalg import rules
from kpflow.models import GRU, FeedForward, Recurrent
from kpflow.models.sites import LinearSite, Site
from tests.conftest import BACKENDS, _make_case
from tests.ntk_helpers import rel_err

needs_torch = pytest.mark.skipif("torch" not in BACKENDS, reason="needs torch among the selected backends")
B, T, H, N_IN = 2, 4, 3, 2


def _sigmoid(xp, u):
    return 1.0 / (1.0 + xp.exp(-u))


def gru_step(params, h, x, site):
    """torch's GRU, with weight_ih/weight_hh/bias_ih/bias_hh (3H rows: r, z, n) called per gate."""
    xp = array_namespace(h, x)
    n_h = h.shape[-1]
    ih = [
        site("weight_ih", x, rows=(g * n_h, (g + 1) * n_h)) + site("bias_ih", rows=(g * n_h, (g + 1) * n_h))
        for g in range(3)
    ]
    hh = [
        site("weight_hh", h, rows=(g * n_h, (g + 1) * n_h)) + site("bias_hh", rows=(g * n_h, (g + 1) * n_h))
        for g in range(3)
    ]
    r = _sigmoid(xp, ih[0] + hh[0])
    z = _sigmoid(xp, ih[1] + hh[1])
    n = xp.tanh(ih[2] + r * hh[2])
    return (1.0 - z) * n + z * h


def _gru_problem(case, seed=0):
    builtin = GRU(N_IN, H)
    rng = np.random.default_rng(seed)
    host = {k: 1.5 * v for k, v in builtin.init(rng).items()}
    params = {k: case.asarray(v) for k, v in host.items()}
    x = case.asarray(rng.standard_normal((B, T, N_IN)))
    hooks = Recurrent(gru_step, n_in=N_IN, n_hidden=H, param_shapes=builtin.param_shapes())
    return hooks, builtin, params, x, host


def _close(a, b, tol=1e-12):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return rel_err(a.ravel(), b.ravel()) <= tol


# torch only: on jax the same test passes but compiles one D program per site (12 here),
# 45-135 s on the shared 2-core machine, over this file's time budget
@needs_torch
def test_hook_gru_with_rows_gets_the_exact_rules_and_equals_the_builtin_gru():
    case = _make_case("torch", "float64")
    hooks, builtin, params, x, _ = _gru_problem(case)
    traj, ref = hooks.run(params, x), builtin.run(params, x)
    # one site per (parameter, gate), each with per-unit D and the rows it covers
    assert all(type(s) is Site for s in traj.sites)
    names = {s.name: s.rows for s in traj.sites}
    assert names["weight_ih[3:6]"] == [("weight_ih", (3, 6))] and len(names) == 12
    # NTK_S and K against the built-in GRU
    N, N_ref = kpflow.global_ntk(traj), kpflow.global_ntk(ref)
    assert _close(case.to_numpy(N.todense()), case.to_numpy(N_ref.todense()))
    K, K_ref = kpflow.parameter_kernel(traj), kpflow.parameter_kernel(ref)
    assert _close(case.to_numpy(K.todense()), case.to_numpy(K_ref.todense()))
    # K's exact rules answer: trace, the top of the spectrum, effective rank
    tr, tr_ref = kla.trace(K), kla.trace(K_ref)
    assert tr.method == "exact" and _close(float(tr.value), float(tr_ref.value))
    er, er_ref = kla.effective_rank(K), kla.effective_rank(K_ref)
    assert er.method == "exact" and _close(float(er.value), float(er_ref.value))
    # the rules of the Kronecker core answer (a LinearSite's K is densified instead: 24 products here)
    assert rules.exact_trace(K) is not None and rules.exact_fro_norm(K) is not None
    assert rules.exact_eigsh(K, 4) is not None
    assert tr.num_matvecs == er.num_matvecs == 0
    eig, eig_ref = kla.eigsh(K, k=4), kla.eigsh(K_ref, k=4)
    assert eig.num_matvecs == eig_ref.num_matvecs == 4  # the residual check only, no Lanczos
    assert _close(case.to_numpy(eig.eigenvalues), case.to_numpy(eig_ref.eigenvalues))
    # the state Jacobian in the parameters' own names: gradients, round trip
    J, J_ref = kpflow.state_jacobian(traj), kpflow.state_jacobian(ref)
    g = case.asarray(np.random.default_rng(1).standard_normal((B, T, H)))
    grads, grads_ref = J.to_params(J.rmatvec(g)), J_ref.to_params(J_ref.rmatvec(g))
    assert sorted(grads) == sorted(params)
    for k in params:
        assert _close(case.to_numpy(grads[k]), case.to_numpy(grads_ref[k]))
    back = J.to_params(J.from_params(params))
    assert all(np.array_equal(case.to_numpy(back[k]), case.to_numpy(params[k])) for k in params)


@needs_torch
def test_hook_gru_ntk_equals_jacrev_of_torch_nn_gru():
    import torch

    case = _make_case("torch", "float64")
    hooks, _, params, x, host = _gru_problem(case, seed=3)
    net = torch.nn.GRU(N_IN, H, batch_first=True, dtype=torch.float64)
    names = sorted(host)
    torch_names = {k: f"{k}_l0" for k in names}

    def unrolled(*values):
        given = {torch_names[k]: v for k, v in zip(names, values, strict=True)}
        return torch.func.functional_call(net, given, (x,))[0]

    jac = torch.func.jacrev(unrolled, argnums=tuple(range(len(names))))(*(params[k] for k in names))
    n = B * T * H
    Jd = torch.cat([j.reshape(n, -1) for j in jac], dim=1)
    N = kpflow.global_ntk(hooks.run(params, x)).todense().reshape(n, n)
    assert rel_err(N.numpy(), (Jd @ Jd.T).numpy()) <= 1e-12


@needs_torch
def test_hook_gru_with_frozen_parameters_equals_the_builtin_gru_frozen():
    case = _make_case("torch", "float64")
    hooks, builtin, params, x, _ = _gru_problem(case, seed=4)
    frozen = ["weight_ih", "bias_hh"]
    traj, ref = hooks.with_frozen(frozen).run(params, x), builtin.with_frozen(frozen).run(params, x)
    assert {r[0] for s in traj.sites for r in s.rows} == {"weight_hh", "bias_ih"}
    assert _close(kpflow.global_ntk(traj).todense().numpy(), kpflow.global_ntk(ref).todense().numpy())
    J = kpflow.state_jacobian(traj)
    grads = J.to_params(J.rmatvec(traj.states))
    assert sorted(grads) == ["bias_ih", "weight_hh"]


def overlapping_step(params, h, x, site):
    # W's rows 0:3 on h, and rows 1:4 on tanh(h): the two calls share rows 1:3
    xp = array_namespace(h, x)
    return xp.tanh(site("W", h, rows=(0, 3)) + site("U", x)) + 0.5 * xp.tanh(
        site("W", xp.tanh(h), rows=(1, 4))
    )


@needs_torch
def test_overlapping_rows_keep_one_exact_site_with_cross_terms():
    case = _make_case("torch", "float64")
    model = Recurrent(overlapping_step, n_in=N_IN, n_hidden=H, param_shapes={"W": (4, H), "U": (H, N_IN)})
    rng = np.random.default_rng(5)
    params = {k: case.asarray(v) for k, v in model.init(rng).items()}
    traj = model.run(params, case.asarray(rng.standard_normal((B, T, N_IN))))
    kinds = {s.name: (type(s), s.rows) for s in traj.sites}
    assert kinds["W"] == (LinearSite, [("W", (0, 4))])
    dense = kpflow.dense_global_ntk(traj)
    assert rel_err(kpflow.global_ntk(traj).todense().numpy().ravel(), dense.numpy().ravel()) <= 1e-12
    J = kpflow.state_jacobian(traj)
    assert all(np.array_equal(J.to_params(J.from_params(params))[k], params[k]) for k in params)


@needs_torch
def test_rows_work_in_a_feedforward_stack():
    import torch

    case = _make_case("torch", "float64")

    def layer0(params, z, site):  # a stacked weight, its halves through two nonlinearities
        return torch.cat(
            [torch.tanh(site("W", z, rows=(0, 2))), torch.sigmoid(site("W", z, rows=(2, 4)))], dim=-1
        )

    def layer1(params, z, site):
        return site("V", z)

    model = FeedForward(
        [layer0, layer1], n_in=N_IN, widths=[4, 1], param_shapes={"W": (4, N_IN), "V": (1, 4)}
    )
    rng = np.random.default_rng(6)
    params = {k: case.asarray(v) for k, v in model.init(rng).items()}
    traj = model.run(params, case.asarray(rng.standard_normal((3, N_IN))))
    assert [s.name for s in traj.sites] == ["V", "W[0:2]", "W[2:4]"]
    dense = kpflow.dense_global_ntk(traj)
    assert rel_err(kpflow.global_ntk(traj).todense().numpy().ravel(), dense.numpy().ravel()) <= 1e-12


@pytest.mark.parametrize(
    ("rows", "text"),
    [
        ((2, 1), "got (2, 1)"),
        ((0, 10), "got (0, 10)"),
        ((0.0, 3), "got (0.0, 3)"),
        ((True, 3), "got (True, 3)"),
        (3, "got 3"),
    ],
)
def test_bad_rows_are_refused_naming_the_argument(rows, text):
    def step(params, h, x, site):
        return np.tanh(site("W", h, rows=rows) + site("U", x))

    model = Recurrent(step, n_in=N_IN, n_hidden=H, param_shapes={"W": (H, H), "U": (H, N_IN)})
    with pytest.raises(
        ValueError, match=r"site\('W', rows=\.\.\.\) expected rows=\(lo, hi\).*0 <= lo < hi <= 3"
    ) as err:
        model.unroll(model.init(0), np.ones((B, T, N_IN)))
    assert text in str(err.value)


@needs_torch
def test_rows_no_call_uses_are_refused():
    import torch

    def step(params, h, x, site):  # rows 3:6 of W are never used
        return torch.tanh(site("W", h, rows=(0, 3)) + site("U", x))

    model = Recurrent(step, n_in=N_IN, n_hidden=H, param_shapes={"W": (6, H), "U": (H, N_IN)})
    params = model.init(0, like=torch.zeros(1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"rows \[\(3, 6\)\] of it reach no call"):
        model.run(params, torch.ones(B, T, N_IN, dtype=torch.float64))


@needs_torch
def test_rows_work_in_an_implicit_model():
    import torch

    case = _make_case("torch", "float64")

    def residual(params, z, x, site):  # W's halves in two terms of the fixed-point map
        first = 0.4 * torch.tanh(site("W", z, rows=(0, H)) + site("U", x))
        return z - first - 0.3 * torch.sigmoid(site("W", z, rows=(H, 2 * H)))

    from kpflow.models import Implicit

    model = Implicit(residual, n_in=N_IN, n_state=H, param_shapes={"W": (2 * H, H), "U": (H, N_IN)})
    rng = np.random.default_rng(7)
    params = {k: case.asarray(v) for k, v in model.init(rng).items()}
    traj = model.run(params, case.asarray(rng.standard_normal((4, N_IN))))
    assert [(s.name, s.rows) for s in traj.sites] == [
        ("U", [("U", (0, H))]),
        ("W[0:3]", [("W", (0, H))]),
        ("W[3:6]", [("W", (H, 2 * H))]),
    ]
    dense = kpflow.dense_global_ntk(traj)  # P by GMRES: agreement to the solver's tolerance
    assert rel_err(kpflow.global_ntk(traj).todense().numpy().ravel(), dense.numpy().ravel()) <= 1e-10
    J = kpflow.state_jacobian(traj)
    assert all(np.array_equal(J.to_params(J.from_params(params))[k], params[k]) for k in params)
