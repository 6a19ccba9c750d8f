"""GRU and LSTM: forward pass equals torch.nn, analytic derivatives equal autodiff, exact K.

References are computed on the host through PyTorch's own modules (``nn.GRU``, ``nn.LSTM``,
``nn.GRUCell``, ``nn.LSTMCell`` via ``torch.func.functional_call``) in float64, so they share
no code with kpflow; the kpflow side runs on every backend of the ``case64`` fixture.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kpflow.ntk as ntk
from kpflow.models.gru import GRU
from kpflow.models.lstm import LSTM
from tests.conftest import examples

MODELS = {"GRU": GRU, "LSTM": LSTM}
EXACT = 1e-10


# -- host references through torch.nn ---------------------------------------------------------------
def _torch() -> Any:
    return pytest.importorskip("torch", reason="the references are computed with torch.nn")


def _t(a: Any) -> Any:
    """A float64 torch tensor holding a copy of host array ``a``."""
    return _torch().from_numpy(np.array(a, dtype=np.float64))


def _module(kind: str, n_in: int, H: int, bias: bool, params: dict[str, np.ndarray], *, cell: bool) -> Any:
    """A float64 ``torch.nn`` module (sequence, batch_first, or cell) holding ``params``."""
    torch = _torch()
    name = kind + ("Cell" if cell else "")
    kwargs = {} if cell else {"batch_first": True}
    mod = getattr(torch.nn, name)(n_in, H, bias=bias, **kwargs).double()
    with torch.no_grad():
        for key, value in params.items():
            getattr(mod, key if cell else key + "_l0").copy_(_t(value))
    return mod


def _torch_params(mod: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in mod.named_parameters()}


class Setup:
    """A model, host params and inputs, and the torch cell as a pure one-step map."""

    def __init__(
        self,
        kind: str,
        B: int,
        T: int,
        n_in: int,
        H: int,
        *,
        bias: bool = True,
        h0: bool = True,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.kind, self.B, self.T, self.n_in, self.H = kind, B, T, n_in, H
        self.model = MODELS[kind](n_in, H, bias=bias)
        self.S = self.model.state_size
        # scaled past the default init so that the gates leave their linear regime
        self.params = {k: 2.0 * v for k, v in self.model.init(rng).items()}
        self.x = rng.standard_normal((B, T, n_in))
        self.h0 = rng.standard_normal((B, self.S)) if h0 else None
        self.bias = bias

    def on(self, case: Any) -> Any:
        """Run the model on ``case``'s backend."""
        params = {k: case.asarray(v) for k, v in self.params.items()}
        h0 = None if self.h0 is None else case.asarray(self.h0)
        return self.model.run(params, case.asarray(self.x), h0)

    # one-step map of the torch cell on all m = B·T sites at once, state (m, S) with [h; c] for LSTM
    def cell_map(self) -> tuple[Any, dict[str, Any]]:
        torch = _torch()
        from torch.func import functional_call

        cell = _module(self.kind, self.n_in, self.H, self.bias, self.params, cell=True)
        x = _t(self.x.reshape(-1, self.n_in))
        H = self.H

        def f(params: dict[str, Any], s: Any) -> Any:
            if self.kind == "GRU":
                return functional_call(cell, params, (x, s))
            h, c = functional_call(cell, params, (x, (s[:, :H], s[:, H:])))
            return torch.cat([h, c], dim=1)

        return f, _torch_params(cell)

    def reference_states(self) -> np.ndarray:
        """(B, T, S) by ``nn.GRU`` / ``nn.LSTM``; the LSTM's c sequence by stepping the module."""
        torch = _torch()
        mod = _module(self.kind, self.n_in, self.H, self.bias, self.params, cell=False)
        x = _t(self.x)
        h0 = None if self.h0 is None else _t(self.h0)
        with torch.no_grad():
            if self.kind == "GRU":
                return mod(x, None if h0 is None else h0[None])[0].numpy()
            hc = None if h0 is None else (h0[None, :, : self.H], h0[None, :, self.H :])
            out, _ = mod(x, hc)
            cs = []
            for t in range(self.T):
                _, hc = mod(x[:, t : t + 1], hc)
                cs.append(hc[1][0])
            return torch.cat([out, torch.stack(cs, dim=1)], dim=2).numpy()


def _prev(states: np.ndarray, h0: np.ndarray | None) -> np.ndarray:
    first = np.zeros_like(states[:, :1]) if h0 is None else h0[:, None]
    return np.concatenate([first, states[:, :-1]], axis=1)


# -- forward --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("h0", [False, True], ids=["h0=None", "h0"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_forward_equals_torch_module(case64: Any, kind: str, h0: bool, bias: bool) -> None:
    setup = Setup(kind, 3, 5, 2, 4, bias=bias, h0=h0)
    traj = setup.on(case64)
    assert traj.states.shape == (3, 5, setup.S)
    case64.assert_close(traj.states, setup.reference_states(), rtol=1e-12)


def test_lstm_h0_pair_equals_concatenated_array(case64: Any) -> None:
    setup = Setup("LSTM", 2, 3, 2, 3)
    params = {k: case64.asarray(v) for k, v in setup.params.items()}
    x, H = case64.asarray(setup.x), setup.H
    pair = (case64.asarray(setup.h0[:, :H]), case64.asarray(setup.h0[:, H:]))
    got = setup.model.run(params, x, pair)
    expected = setup.model.run(params, x, case64.asarray(setup.h0))
    case64.assert_close(got.states, case64.to_numpy(expected.states), rtol=0.0)
    case64.assert_close(got.h0, setup.h0, rtol=0.0)
    assert got.feature_columns == (0, H)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_init_uses_torch_names_shapes_and_bound(case64: Any, kind: str) -> None:
    model = MODELS[kind](3, 4)
    params = model.init(7, like=case64.asarray(np.zeros(1)))
    mod = _module(kind, 3, 4, True, {k: case64.to_numpy(v) for k, v in params.items()}, cell=False)
    assert {k + "_l0" for k in params} == {k for k, _ in mod.named_parameters()}
    for k, v in params.items():
        assert tuple(v.shape) == tuple(getattr(mod, k + "_l0").shape)
        assert np.abs(case64.to_numpy(v)).max() <= 0.5  # U(−1/√H, 1/√H), H = 4
    again = model.init(7)
    for k, v in params.items():
        case64.assert_close(v, np.asarray(again[k]), rtol=0.0)


# -- state Jacobians --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("h0", [False, True], ids=["h0=None", "h0"])
def test_state_jacobian_actions_equal_torch_jvp_vjp(case64: Any, kind: str, h0: bool) -> None:
    _torch()
    from torch.func import jvp, vjp

    setup = Setup(kind, 2, 4, 3, 3, h0=h0, seed=1)
    traj = setup.on(case64)
    B, T, S, k = setup.B, setup.T, setup.S, 3
    f, tparams = setup.cell_map()
    prev = _t(_prev(setup.reference_states(), setup.h0).reshape(-1, S))
    V = np.random.default_rng(2).standard_normal((k, B, T, S))
    W = np.random.default_rng(3).standard_normal((k, B, T, S))

    def step_map(s: Any) -> Any:
        return f(tparams, s)

    # row (b, t) of the jvp is J_t V[:, b, t − 1] (zero tangent at t = 0); of the vjp J_tᵀ W[:, b, t]
    V_prev = np.concatenate([np.zeros((k, B, 1, S)), V[:, :, :-1]], axis=2)
    JV = np.stack([jvp(step_map, (prev,), (_t(V_prev[j].reshape(-1, S)),))[1].numpy() for j in range(k)])
    _, pullback = vjp(step_map, prev)
    JtW = np.stack([pullback(_t(W[j].reshape(-1, S)))[0].numpy() for j in range(k)])
    JV, JtW = JV.reshape(k, B, T, S), JtW.reshape(k, B, T, S)

    # L V = (J_t V_{t−1})_t and Lᵀ W = (J_{t+1}ᵀ W_{t+1})_t, zero at the ends
    LtW = np.concatenate([JtW[:, :, 1:], np.zeros((k, B, 1, S))], axis=2)
    case64.assert_close(traj.state_jvp(case64.asarray(V)), JV, rtol=EXACT)
    case64.assert_close(traj.state_vjp(case64.asarray(W)), LtW, rtol=EXACT)
    for t in range(1, T):
        case64.assert_close(traj.step_jvp(t, case64.asarray(V[:, :, t - 1])), JV[:, :, t], rtol=EXACT)
        case64.assert_close(traj.step_vjp(t, case64.asarray(W[:, :, t])), JtW[:, :, t], rtol=EXACT)


# -- K from the sites ------------------------------------------------------------------------------------
def _reference_K(setup: Setup) -> np.ndarray:
    """J_θ J_θᵀ of the torch cell at all sites, states held fixed: (B, T, S, B, T, S)."""
    torch = _torch()
    from torch.func import jacrev

    f, tparams = setup.cell_map()
    prev = _t(_prev(setup.reference_states(), setup.h0).reshape(-1, setup.S))
    jac = jacrev(lambda p: f(p, prev))(tparams)
    n = setup.B * setup.T * setup.S
    J = torch.cat([j.reshape(n, -1) for j in jac.values()], dim=1).numpy()
    return (J @ J.T).reshape(setup.B, setup.T, setup.S, setup.B, setup.T, setup.S)


def _K_from_sites(case: Any, traj: Any) -> np.ndarray:
    """K = Σ_w D_w (G_w ⊗ I) D_wᵀ (docs/theory.md) built densely on the host from A_w and ``unit_D``."""
    B, T, S = traj.state_shape
    K = np.zeros((B * T, S, B * T, S))
    for site in traj.sites:
        A = case.to_numpy(site.variables)
        D = case.to_numpy(site.dense_unit_D())  # (m, n_units, a, g)
        m, n, a, _ = D.shape
        lo, hi = site.columns
        per_unit = np.einsum("siag,st,tibg->siatb", D, A @ A.T, D)  # K never couples units i ≠ j
        block = np.einsum("siatb,ij->saitbj", per_unit, np.eye(n)).reshape(m, a * n, m, a * n)
        K[:, lo:hi, :, lo:hi] += block
    return K.reshape(B, T, S, B, T, S)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_site_kernel_equals_parameter_jacobian_gram(case64: Any, kind: str, bias: bool) -> None:
    setup = Setup(kind, 2, 3, 2, 3, bias=bias, h0=True, seed=4)
    traj = setup.on(case64)
    K_ref = _reference_K(setup)
    K_sites = _K_from_sites(case64, traj)
    err = np.linalg.norm(K_sites - K_ref) / np.linalg.norm(K_ref)
    assert err <= EXACT, f"relative error {err:.2e}"
    case64.assert_close(ntk.parameter_kernel(traj).todense(), K_ref, rtol=EXACT)


def test_gru_merged_n_gate_is_detectably_wrong(case64: Any) -> None:
    """The test above is sharp: one Ĝ site for the n-gate (ignoring r ⊙ h_n) is off by far more than 1e-10."""
    from kpflow.models.base import Site

    setup = Setup("GRU", 2, 3, 2, 3, seed=4)
    traj = setup.on(case64)
    r, z, _, _ = traj.sites
    merged = Site("n", r.variables, state_shape=traj.state_shape, unit_D=traj.sites[2].unit_D)
    wrong = ntk.KroneckerCoreKernel([r, z, merged], like=traj.states).todense()
    K_ref = _reference_K(setup)
    err = np.linalg.norm(case64.to_numpy(wrong) - K_ref) / np.linalg.norm(K_ref)
    assert err > 1e-2


def test_gru_sites_hold_theory_coefficients(case64: Any) -> None:
    setup = Setup("GRU", 2, 3, 2, 3, seed=5)
    traj = setup.on(case64)
    names = [s.name for s in traj.sites]
    assert names == ["r", "z", "in", "hn"]
    assert [s.p for s in traj.sites] == [2 + 3 + 2, 2 + 3 + 2, 2 + 1, 3 + 1]
    d = {"r": traj.d_r, "z": traj.d_z, "in": traj.d_in, "hn": traj.d_hn}
    for site in traj.sites:
        case64.assert_close(
            site.unit_D[:, :, 0, 0], np.reshape(case64.to_numpy(d[site.name]), (6, 3)), rtol=0.0
        )
    # d_hn = r · d_in and d_z = (h_{t−1} − n) z (1 − z), from the gates themselves
    r, z, n, _ = setup.model.gates(traj.params, traj.prev_states, traj.x)
    case64.assert_close(traj.d_hn, case64.to_numpy(r * traj.d_in), rtol=1e-14)
    case64.assert_close(traj.d_z, case64.to_numpy((traj.prev_states - n) * z * (1.0 - z)), rtol=1e-14)


# -- the whole NTK_S ----------------------------------------------------------------------------------
def _reference_ntk(setup: Setup) -> np.ndarray:
    """NTK_S by ``jacrev`` through kpflow's unrolled map on torch (float64)."""
    _torch()
    params = {k: _t(v) for k, v in setup.params.items()}
    h0 = None if setup.h0 is None else _t(setup.h0)
    traj = setup.model.run(params, _t(setup.x), h0)
    return ntk.dense_global_ntk(traj).numpy()


@pytest.mark.properties
@settings(max_examples=examples(8))
@given(data=st.data())
def test_global_ntk_equals_dense_reference_on_random_shapes(case64: Any, data: Any) -> None:
    kind = data.draw(st.sampled_from(["GRU", "LSTM"]), label="kind")
    B, T, n_in, H = (data.draw(st.integers(1, 4), label=s) for s in ("B", "T", "n_in", "H"))
    setup = Setup(
        kind,
        B,
        T,
        n_in,
        H,
        bias=data.draw(st.booleans(), label="bias"),
        h0=data.draw(st.booleans(), label="h0"),
        seed=data.draw(st.integers(0, 2**16), label="seed"),
    )
    traj = setup.on(case64)
    case64.assert_close(ntk.global_ntk(traj).todense(), _reference_ntk(setup), rtol=EXACT)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_global_ntk_equals_jacrev_through_torch_module(case64: Any, kind: str) -> None:
    """kpflow's NTK_S equals J Jᵀ with J = jacrev through ``nn.GRU`` / ``nn.LSTM`` (the LSTM: its h-block)."""
    torch = _torch()
    from torch.func import functional_call, jacrev

    setup = Setup(kind, 2, 3, 2, 3, seed=6)
    mod = _module(kind, setup.n_in, setup.H, True, setup.params, cell=False)
    x, h0, H = _t(setup.x), _t(setup.h0), setup.H
    hx = h0[None] if kind == "GRU" else (h0[None, :, :H], h0[None, :, H:])

    def outputs(params: dict[str, Any]) -> Any:
        return functional_call(mod, params, (x, hx))[0]

    jac = jacrev(outputs)(_torch_params(mod))
    n = setup.B * setup.T * H
    J = torch.cat([j.reshape(n, -1) for j in jac.values()], dim=1).numpy()
    expected = (J @ J.T).reshape(setup.B, setup.T, H, setup.B, setup.T, H)
    got = ntk.global_ntk(setup.on(case64)).todense()
    case64.assert_close(got[:, :, :H, :, :, :H], expected, rtol=EXACT)


# -- errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_bad_sizes_are_rejected(kind: str) -> None:
    cls = MODELS[kind]
    with pytest.raises(ValueError, match=f"{kind}: expected n_hidden"):
        cls(2, 0)
    with pytest.raises(ValueError, match=f"{kind}: expected n_in"):
        cls(2.0, 3)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_bad_inputs_name_the_argument(case64: Any, kind: str) -> None:
    setup = Setup(kind, 2, 3, 2, 3)
    model, S, where = setup.model, setup.S, f"{kind}.run"
    params = {k: case64.asarray(v) for k, v in setup.params.items()}
    x = case64.asarray(setup.x)
    with pytest.raises(ValueError, match=rf"{where}: expected x of shape \(B, T, n_in=2\), got \(2, 2\)"):
        model.run(params, case64.asarray(setup.x[:, 0]))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, T, n_in=2\), got \(2, 3, 3\)"):
        model.run(params, case64.asarray(np.ones((2, 3, 3))))
    missing = {k: v for k, v in params.items() if k != "bias_hh"}
    with pytest.raises(ValueError, match=r"params is missing the key\(s\) \['bias_hh'\]"):
        model.run(missing, x)
    bad = dict(params, weight_hh=case64.asarray(np.ones((3, 3))))
    with pytest.raises(ValueError, match=r"expected params\['weight_hh'\] of shape"):
        model.run(bad, x)
    wrong = 3 if kind == "LSTM" else 4  # the LSTM's array h0 is [h0; c0] of width 2H = 6
    if kind == "LSTM":  # an h0 of the hidden width alone: the message names the (h0, c0) pair
        pattern = rf"{where}: expected h0 to be .* \[h0; c0\] of shape \(B, 2H\) = \(2, 6\), or a pair"
    else:
        pattern = rf"{where}: expected h0 of shape \(2, {S}\), got \(2, {wrong}\)"
    with pytest.raises(ValueError, match=pattern):
        model.run(params, x, case64.asarray(np.ones((2, wrong))))
    with pytest.raises(ValueError, match="finite"):
        model.run(params, case64.asarray(np.full((2, 3, 2), np.nan)))
    with pytest.raises(TypeError, match="dtype"):
        model.run(params, case64.xp.astype(x, case64.xp.float32))


def test_lstm_bad_h0_pair_is_rejected(case64: Any) -> None:
    setup = Setup("LSTM", 2, 3, 2, 3)
    params = {k: case64.asarray(v) for k, v in setup.params.items()}
    x, ones = case64.asarray(setup.x), case64.asarray(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"LSTM.run: expected h0 to be an array \(B, 2H\) or a pair"):
        setup.model.run(params, x, (ones, ones, ones))
    with pytest.raises(ValueError, match=r"expected h0\[1\] \(c0\) of shape \(2, 3\), got \(2, 4\)"):
        setup.model.run(params, x, (ones, case64.asarray(np.ones((2, 4)))))
    with pytest.raises(ValueError, match=r"expected x of shape"):
        setup.model.run(params, case64.asarray(np.ones((2, 3))), (ones, ones))
