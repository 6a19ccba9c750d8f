"""Gradients through every model, on torch and jax, against central finite differences (float64).

Three routes to the gradient of a scalar of the states, each checked along a few random
parameter directions d against (φ(θ + εd) − φ(θ − εd)) / 2ε, ε = 1e-6 (the finite
differences only run the models forward, sharing no derivative code with what they check):

- the framework's own autodiff through ``model.run(params, x).states`` (``torch.autograd``
  on parameters that require grad, ``jax.grad``);
- kpflow's state Jacobian J_S = dz/dθ (:func:`kpflow.state_jacobian`): ``J.matvec`` and
  ``J.rmatvec``;
- :func:`kpflow.training.loss_and_gradients` with ``method="kpflow"`` and ``"auto"``.

The models: every built-in (RNN, LeakyRNN, GRU, LSTM, MLP, SelfAttention,
TransformerEncoder), the hook models ``Recurrent`` and ``FeedForward``, and the equilibrium
model ``Implicit`` with both solvers.  Last, :func:`kpflow.training.train` fits an
equilibrium model to the Disk task beyond what its initial features allow.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.util import find_spec
from typing import Any

import numpy as np
import pytest

import kpflow
from kpflow._array import array_namespace
from kpflow.models import (
    GRU,
    LSTM,
    MLP,
    RNN,
    FeedForward,
    Implicit,
    LeakyRNN,
    Linear,
    Recurrent,
    SelfAttention,
    TransformerEncoder,
)
from kpflow.ntk import site_parameters
from kpflow.tasks import Disk
from kpflow.training import Adam, loss_and_gradients, masked_mse, train
from tests.conftest import BACKENDS, Case, _make_case

AUTODIFF = [b for b in ("torch", "jax") if b in BACKENDS]
pytestmark = pytest.mark.skipif(not AUTODIFF, reason="needs torch or jax among the selected backends")

EPS = 1e-6
#: |directional derivative − central difference| ≤ RTOL · ‖gradient‖ · ‖d‖.  The differences
#: themselves are good to about 1e-9 here (ε² truncation, rounding / ε, the implicit solves'
#: tolerance / ε); a wrong sign or a missing term is off by O(1).
RTOL = 1e-6
N_DIRECTIONS = 2


# -- the models (tiny), each with host float64 parameters and inputs ----------------------------------
def _recurrent_step(params, h, x, site):
    # W is used at two calls, and its second use is mixed by tanh of a matrix product: a
    # non-diagonal D and cross terms between the calls
    xp = array_namespace(h, x)
    a = xp.tanh(site("W", h) + site("U", x) + site("b"))
    return 0.5 * h + 0.5 * xp.tanh(site("W", a))


def _hidden_layer(params, z, site):
    return array_namespace(z).tanh(site("W0", z) + site("b0"))


def _output_layer(params, z, site):
    return site("W1", array_namespace(z).sin(z)) + site("b1")


def _deq_residual(params, z, x, site):
    return z - array_namespace(z, x).tanh(site("W", z) + site("U", x) + site("b"))


def _implicit(solver: str) -> Implicit:
    shapes = {"W": (2, 2), "U": (2, 3), "b": (2,)}
    # tol far below ε·‖z‖, so that the solves' error does not reach the differences
    return Implicit(_deq_residual, n_in=3, n_state=2, param_shapes=shapes, solver=solver, tol=1e-14)


#: name -> (model factory, input shape)
MODELS: dict[str, tuple[Callable[[], Any], tuple[int, ...]]] = {
    "RNN": (lambda: RNN(2, 3), (2, 3, 2)),
    "LeakyRNN": (lambda: LeakyRNN(2, 3, dt=0.5, bias=True), (2, 3, 2)),
    "GRU": (lambda: GRU(2, 3), (2, 3, 2)),
    "LSTM": (lambda: LSTM(2, 3), (2, 3, 2)),
    "MLP": (lambda: MLP((2, 4, 2)), (3, 2)),
    "SelfAttention": (lambda: SelfAttention(4, 2), (2, 3, 4)),
    "TransformerEncoder": (lambda: TransformerEncoder(4, 2, 5, 1, activation="gelu"), (2, 3, 4)),
    "Recurrent": (
        lambda: Recurrent(
            _recurrent_step, n_in=2, n_hidden=3, param_shapes={"W": (3, 3), "U": (3, 2), "b": (3,)}
        ),
        (2, 3, 2),
    ),
    "FeedForward": (
        lambda: FeedForward(
            [_hidden_layer, _output_layer],
            n_in=2,
            widths=[4, 2],
            param_shapes={"W0": (4, 2), "b0": (4,), "W1": (2, 4), "b1": (2,)},
        ),
        (3, 2),
    ),
    "Implicit-fixed_point": (lambda: _implicit("fixed_point"), (2, 3)),
    "Implicit-newton": (lambda: _implicit("newton"), (2, 3)),
}
NAMES = list(MODELS)
#: the models whose J_S names its rows by parameter (to_params / from_params)
NAMED = [n for n in NAMES if site_parameters(MODELS[n][0]()) is not None]
#: the models whose D_w, P and gradients come from the backend's own autodiff (the others
#: run the same array-API code on every backend, so torch stands for jax in routes 2 and 3;
#: on jax, where every new array shape compiles, routes 1 and 2 run the fixed-point solver
#: and route 3 the Newton one: the two differ in the forward solve only)
BY_AUTODIFF = ["Recurrent", "FeedForward", "Implicit-fixed_point", "Implicit-newton"]


def _cases(names: list[str], *, jax_names: list[str]) -> list[tuple[str, str]]:
    """(backend, model name) pairs: every name on torch, ``jax_names`` on jax."""
    out = [("torch", n) for n in names] if "torch" in AUTODIFF else []
    return out + ([("jax", n) for n in jax_names] if "jax" in AUTODIFF else [])


def _host_problem(name: str, seed: int = 0) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    factory, x_shape = MODELS[name]
    model = factory()
    rng = np.random.default_rng(seed)
    params = model.init(rng)
    if name.startswith("Implicit"):
        # a contraction, so that the fixed-point solve converges fast
        params["W"] *= 0.5 / np.linalg.norm(params["W"], 2)
    return model, params, rng.standard_normal(x_shape)


def _on(case: Case, host: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: case.asarray(v) for k, v in host.items()}


#: The forward passes of the finite differences run on torch when it is installed (eager, no
#: compilation per shape), else on the backend under test: they only evaluate the model.
_REFERENCE_BACKEND = "torch" if find_spec("torch") is not None else (AUTODIFF or ["numpy"])[0]
_REFERENCE = _make_case(_REFERENCE_BACKEND, "float64")


def _states(model: Any, host_params: dict[str, np.ndarray], host_x: np.ndarray) -> np.ndarray:
    """z(θ, x) by a plain forward pass (``unroll``; the solve for Implicit), float64 on the host."""
    ref = _REFERENCE
    if ref.name == "torch":
        import torch

        with torch.no_grad():
            return ref.to_numpy(model.unroll(_on(ref, host_params), ref.asarray(host_x)))
    return ref.to_numpy(model.unroll(_on(ref, host_params), ref.asarray(host_x)))


def _state_differences(model: Any, host_params: dict, host_x: np.ndarray, d: dict) -> np.ndarray:
    """(z(θ + εd) − z(θ − εd)) / 2ε."""
    plus = _states(model, {k: v + EPS * d[k] for k, v in host_params.items()}, host_x)
    minus = _states(model, {k: v - EPS * d[k] for k, v in host_params.items()}, host_x)
    return (plus - minus) / (2 * EPS)


def _directions(params: dict[str, np.ndarray], seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(v.shape) for k, v in params.items()} for _ in range(N_DIRECTIONS)]


def _norm(tree: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(v * v)) for v in tree.values())))


def _dot(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return sum(float(np.sum(a[k] * b[k])) for k in a)


def _check(directional: float, fd: float, grads: dict, d: dict, what: str) -> None:
    err, scale = abs(directional - fd), _norm(grads) * _norm(d)
    assert err <= RTOL * scale, (
        f"{what}: directional derivative {directional:.12g} vs central difference {fd:.12g} "
        f"(|error| = {err:.3e}, ‖g‖‖d‖ = {scale:.3e})"
    )


def _autodiff_gradient(case: Case, model: Any, host_params: dict, x: Any, c: Any) -> dict[str, np.ndarray]:
    """∇_θ ⟨c, run(θ, x).states⟩ by the framework's own reverse mode."""
    if case.name == "torch":
        import torch

        params = {k: v.requires_grad_(True) for k, v in _on(case, host_params).items()}
        phi = torch.sum(c * model.run(params, x).states)
        names = list(params)
        grads = torch.autograd.grad(phi, [params[k] for k in names])
        return {k: case.to_numpy(g) for k, g in zip(names, grads, strict=True)}
    import jax
    import jax.numpy as jnp

    grads = jax.grad(lambda p: jnp.sum(c * model.run(p, x).states))(_on(case, host_params))
    return {k: case.to_numpy(g) for k, g in grads.items()}


# -- 1. the framework's autodiff through model.run ------------------------------------------------------
@pytest.mark.parametrize(
    ("backend", "name"), _cases(NAMES, jax_names=[n for n in NAMES if n != "Implicit-newton"])
)
def test_autodiff_through_run_matches_central_differences(backend: str, name: str) -> None:
    case = _make_case(backend, "float64")
    model, host_params, host_x = _host_problem(name)
    c = np.random.default_rng(5).standard_normal(_states(model, host_params, host_x).shape)
    grads = _autodiff_gradient(case, model, host_params, case.asarray(host_x), case.asarray(c))
    assert set(grads) == set(host_params)
    for i, d in enumerate(_directions(host_params, 1)):
        fd = float(np.sum(c * _state_differences(model, host_params, host_x, d)))
        _check(_dot(grads, d), fd, grads, d, f"{name} on {backend}, direction {i}")


# -- 2. kpflow's state Jacobian J_S = dz/dθ -------------------------------------------------------------
@pytest.mark.parametrize(("backend", "name"), _cases(NAMED, jax_names=["Implicit-fixed_point"]))
def test_state_jacobian_products_match_central_differences(backend: str, name: str) -> None:
    case = _make_case(backend, "float64")
    model, host_params, host_x = _host_problem(name)
    J = kpflow.state_jacobian(model.run(_on(case, host_params), case.asarray(host_x)))
    c = np.random.default_rng(5).standard_normal(J.shape_out)
    grads = {k: case.to_numpy(v) for k, v in J.to_params(J.rmatvec(case.asarray(c))).items()}
    for i, d in enumerate(_directions(host_params, 1)):
        what = f"{name} on {backend}, direction {i}"
        fd_states = _state_differences(model, host_params, host_x, d)
        _check(_dot(grads, d), float(np.sum(c * fd_states)), grads, d, "J.rmatvec: " + what)
        tangent = case.to_numpy(J.matvec(J.from_params(_on(case, d))))  # J_S d, the states' tangent
        err = float(np.linalg.norm(tangent - fd_states))
        assert err <= RTOL * float(np.linalg.norm(tangent)), f"J.matvec: {what}: |error| = {err:.3e}"


# -- 3. loss_and_gradients: kpflow's own route and the default ------------------------------------------
@pytest.mark.parametrize(
    ("backend", "method", "name"),
    [(b, "auto", n) for b, n in _cases(NAMES, jax_names=["Implicit-newton"])]
    + [(b, "kpflow", n) for b, n in _cases(BY_AUTODIFF, jax_names=[])],
)
def test_loss_gradients_match_central_differences(backend: str, method: str, name: str) -> None:
    case = _make_case(backend, "float64")
    model, host_params, host_x = _host_problem(name)
    lo, hi = model.feature_columns
    readout = Linear(hi - lo, 2)
    rng = np.random.default_rng(3)
    host_rp = readout.init(rng)
    # one target per site: (B, S, N) for the transformer, whose states are every layer's
    targets = rng.standard_normal((*_states(model, host_params, host_x).shape[:-1], 2))
    out = loss_and_gradients(
        model,
        readout,
        _on(case, host_params),
        _on(case, host_rp),
        case.asarray(host_x),
        case.asarray(targets),
        method=method,
    )
    grads = {k: case.to_numpy(v) for k, v in out.grads.items()}
    assert set(grads) == set(host_params)
    C, bias = host_rp["weight"], host_rp["bias"]
    for i, d in enumerate(_directions(host_params, 2)):
        # L = mean((C z + c − y)²): its derivative along d from the states' differences
        dz = _state_differences(model, host_params, host_x, d)[..., lo:hi]
        y = _states(model, host_params, host_x)[..., lo:hi] @ C.T + bias
        fd = float(np.mean(2.0 * (y - targets) * (dz @ C.T)))
        _check(_dot(grads, d), fd, grads, d, f"{name} on {backend} ({method}), direction {i}")


@pytest.mark.parametrize(
    ("backend", "method"),
    [(b, m) for b in AUTODIFF for m in ("kpflow", "autodiff")] + [("numpy", "kpflow")],
)
def test_targets_shaped_like_the_inputs_sites_are_refused(backend: str, method: str) -> None:
    # a 1-layer transformer's states are S = 2 stages per token (attention, feed-forward), so on
    # B = 2 sequences its sites are (B, S, N) = (2, 2, 3): targets shaped
    # like the inputs' (B, N) sites would broadcast against the (B, S, N) outputs (S == B)
    case = _make_case(backend, "float64")
    model = TransformerEncoder(4, 2, 5, 1)
    readout = Linear(4, 1)
    x = case.asarray(np.random.default_rng(0).standard_normal((2, 3, 4)))
    params, rp = _on(case, model.init(0)), _on(case, readout.init(1))
    with pytest.raises(ValueError, match=r"expected targets of shape \(2, 2, 3, 1\)"):
        loss_and_gradients(model, readout, params, rp, x, case.asarray(np.zeros((2, 3, 1))), method=method)
    with pytest.raises(ValueError, match=r"masked_mse: expected targets of shape \(2, 3\)"):
        masked_mse(case.asarray(np.zeros((2, 3))), case.asarray(np.zeros((3,))))


# -- 4. training an equilibrium model ------------------------------------------------------------------
@pytest.mark.skipif("torch" not in AUTODIFF, reason="torch is not among the selected backends")
@pytest.mark.parametrize("method", ["kpflow", "auto"])
def test_training_an_equilibrium_model_lowers_the_loss_below_its_initial_features(method: str) -> None:
    # z = tanh(W z + U x + b) on the Disk task, its readout started at the least-squares fit
    # of the initial features: the readout alone can do no better (its gradient is zero), so
    # every decrease comes from the model's own parameters, and a wrong gradient (its sign,
    # or none at all) leaves the loss where it is or raises it.
    case = _make_case("torch", "float64")
    n, B = 4, 16
    model = Implicit(_deq_residual, n_in=2, n_state=n, param_shapes={"W": (n, n), "U": (n, 2), "b": (n,)})
    rng = np.random.default_rng(0)
    host = {
        "W": rng.standard_normal((n, n)),
        "U": 2.0 * rng.standard_normal((n, 2)),
        "b": rng.standard_normal(n),
    }
    host["W"] *= 0.5 / np.linalg.norm(host["W"], 2)
    data = Disk().sample(B, 1, like=case.asarray(np.zeros(1)))
    z0 = _states(model, host, case.to_numpy(data.inputs))
    features = np.concatenate([z0, np.ones((B, 1))], axis=1)
    target = case.to_numpy(data.targets)
    fit = np.linalg.lstsq(features, target, rcond=None)[0]
    readout_only = float(np.mean((features @ fit - target) ** 2))
    readout = Linear(n, 1)
    rp = {"weight": case.asarray(fit[:n].T), "bias": case.asarray(fit[n])}

    r = train(model, readout, _on(case, host), rp, data, steps=5, optimizer=Adam(0.02), method=method)
    assert abs(r.losses[0] - readout_only) <= 1e-12 * readout_only
    assert np.all(np.diff(r.losses) < 0), r.losses
    final = loss_and_gradients(model, readout, r.params, r.readout_params, *data, method="kpflow")
    assert float(final.loss) < 0.8 * readout_only, (float(final.loss), readout_only)
