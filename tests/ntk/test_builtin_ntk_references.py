"""Independent dense references for NTK_S of every built-in model, in float64 and float32.

A reference is independent only if it shares no forward code with what it checks.  Each
forward pass here is written from the models' documented equations in plain torch, or
with ``torch.nn`` cells and ``nn.Linear`` layers.  It calls no kpflow model code: no
``run``, ``unroll``, ``update_map`` or ``step``.

- leaky RNN: h_t = (1 − dt) h_{t−1} + dt (W φ(h_{t−1}) + U x_t [+ b])
- Elman RNN, GRU, LSTM: ``nn.RNNCell``, ``nn.GRUCell`` and ``nn.LSTMCell`` stepped over time,
  with the LSTM state [h; c]
- MLP: a stack of ``nn.Linear`` layers whose state is all the layer outputs side by side

The dense NTK_S is J Jᵀ, with J = ``torch.func.jacrev`` of the whole unrolled map θ ↦ z in
float64.  kpflow's matrix-free ``global_ntk(traj).todense()`` runs on the same host weights
on each selected backend.  It must agree to 1e-10 relative in float64.  In float32 it must
agree to the float32 tolerance below, against the float64 reference of the same
float32-rounded weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kpflow.ntk as ntk
from kpflow.models import GRU, LSTM, MLP, RNN, LeakyRNN, Model
from tests.conftest import BACKENDS, Case, _make_case, examples
from tests.ntk_helpers import rel_err

torch = pytest.importorskip("torch", reason="the independent references are written in torch")

F64 = torch.float64
EXACT = 1e-10
#: float32 tolerance: kpflow's float32 states and NTK_S may be off the float64 reference by
#: FLOAT32_FLOOR, or by FLOAT32_FACTOR times the error of torch's own float32 jacrev of the same
#: reference, when that is larger.  Saturated units make float32 lose accuracy in 1 − tanh² and
#: σ(1 − σ).  Over 3000 random draws (numpy and torch, every kind), kpflow's float32 error was at
#: most 1e-5 and at most twice max(torch's float32 error, 1e-6).  It was larger only where
#: torch's own float32 error was as large: up to 0.13 for a unit saturated to 1 − tanh² ≈ 1e-6.
FLOAT32_FLOOR = 2e-5
FLOAT32_FACTOR = 10.0
KINDS = ("leaky", "rnn", "gru", "lstm", "mlp")


#: jax compiles every primitive afresh for each new shape (seconds per example in eager mode),
#: so it gets its own test at one fixed size, in float32, instead of hypothesis' draws.  (jax's
#: float64 NTK_S equals torch's to 1e-10 in test_ntk_properties, and torch's is checked here.)
DRAWN = [b for b in BACKENDS if b != "jax"]


@pytest.fixture(params=[(b, d) for b in DRAWN for d in ("float64", "float32")], ids="-".join, scope="session")
def case(request: pytest.FixtureRequest) -> Case:
    return _make_case(*request.param)


# -- the references, in plain torch ---------------------------------------------------------------
def leaky_forward(params: dict, x: Any, h0: Any, *, dt: float, phi: Callable) -> Any:
    """h_t = (1 − dt) h_{t−1} + dt (W φ(h_{t−1}) + U x_t [+ b]), stacked to (B, T, H)."""
    W, U = params["weight_hh"], params["weight_ih"]
    h = torch.zeros(x.shape[0], W.shape[0], dtype=x.dtype) if h0 is None else h0
    out = []
    for t in range(x.shape[1]):
        drive = phi(h) @ W.T + x[:, t] @ U.T
        if "bias" in params:
            drive = drive + params["bias"]
        h = (1.0 - dt) * h + dt * drive
        out.append(h)
    return torch.stack(out, dim=1)


def cell_forward(cell: Any, params: dict, x: Any, h0: Any) -> Any:
    """A ``torch.nn`` cell stepped over time: (B, T, H), or (B, T, 2H) = [h; c] for the LSTM."""
    H = cell.hidden_size
    lstm = isinstance(cell, torch.nn.LSTMCell)
    h = torch.zeros(x.shape[0], H, dtype=x.dtype) if h0 is None else h0[:, :H]
    c = (torch.zeros_like(h) if h0 is None else h0[:, H:]) if lstm else None
    out = []
    for t in range(x.shape[1]):
        if lstm:
            h, c = torch.func.functional_call(cell, params, (x[:, t], (h, c)))
            out.append(torch.cat([h, c], dim=1))
        else:
            h = torch.func.functional_call(cell, params, (x[:, t], h))
            out.append(h)
    return torch.stack(out, dim=1)


class LayerStack(torch.nn.Module):
    """``nn.Linear`` layers named ``layers.{l}``; the output is every layer's output side by side."""

    def __init__(self, widths: tuple[int, ...], phi: Any, bias: bool, linear_output: bool) -> None:
        super().__init__()
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b, bias=bias, dtype=F64) for a, b in pairs)
        self.phi, self.linear_output = phi, linear_output

    def forward(self, x: Any) -> Any:
        out = []
        for l, layer in enumerate(self.layers):
            x = layer(x)
            if not (self.linear_output and l == len(self.layers) - 1):
                x = self.phi(x)
            out.append(x)
        return torch.cat(out, dim=-1)


@dataclass
class Problem:
    """A kpflow model, host float64 inputs and the reference forward pass θ ↦ z in torch."""

    model: Model
    shapes: dict[str, tuple[int, ...]]  # the parameter shapes, as the reference defines them
    forward: Callable[[dict, Any, Any], Any]  # (params, x, h0) as float64 torch tensors -> z
    params: dict[str, np.ndarray]
    x: np.ndarray
    h0: np.ndarray | None


PHI = {"tanh": torch.tanh, "relu": torch.relu}


def make_problem(kind: str, spec: dict, seed: int) -> Problem:
    """The kpflow model and its torch reference for ``kind``, with random host weights."""
    B, T, H, n_in, bias, nl = (spec[k] for k in ("B", "T", "H", "n_in", "bias", "nonlinearity"))
    if kind == "leaky":
        model: Model = LeakyRNN(n_in, H, dt=spec["dt"], nonlinearity=nl, bias=bias)
        shapes = {"weight_hh": (H, H), "weight_ih": (H, n_in)} | ({"bias": (H,)} if bias else {})

        def forward(p: dict, x: Any, h0: Any) -> Any:
            return leaky_forward(p, x, h0, dt=spec["dt"], phi=PHI[nl])

    elif kind == "mlp":
        widths = (n_in, *spec["widths"])
        model = MLP(widths, nonlinearity=nl, bias=bias, linear_output=spec["linear_output"])
        net = LayerStack(widths, PHI[nl], bias, spec["linear_output"])
        shapes = {k: tuple(v.shape) for k, v in net.named_parameters()}

        def forward(p: dict, x: Any, h0: Any) -> Any:
            return torch.func.functional_call(net, p, (x,))

    else:
        if kind == "rnn":
            model, cell = RNN(n_in, H, nonlinearity=nl, bias=bias), torch.nn.RNNCell(n_in, H, bias, nl)
        elif kind == "gru":
            model, cell = GRU(n_in, H, bias=bias), torch.nn.GRUCell(n_in, H, bias)
        else:
            model, cell = LSTM(n_in, H, bias=bias), torch.nn.LSTMCell(n_in, H, bias)
        cell = cell.to(F64)
        shapes = {k: tuple(v.shape) for k, v in cell.named_parameters()}

        def forward(p: dict, x: Any, h0: Any) -> Any:
            return cell_forward(cell, p, x, h0)

    rng = np.random.default_rng(seed)
    # 1.5/√fan_in weights and O(1) biases: the nonlinearities work well inside their curved range
    params = {
        k: (1.5 / np.sqrt(s[-1]) if len(s) == 2 else 0.5) * rng.standard_normal(s) for k, s in shapes.items()
    }
    feed_forward = kind == "mlp"
    x = rng.standard_normal((B, n_in) if feed_forward else (B, T, n_in))
    S = 2 * H if kind == "lstm" else H
    h0 = 0.5 * rng.standard_normal((B, S)) if spec["with_h0"] and not feed_forward else None
    return Problem(model, shapes, forward, params, x, h0)


def rounded(problem: Problem, dtype_name: str) -> Problem:
    """The problem with its inputs rounded to ``dtype_name`` (still float64 arrays)."""
    dt = np.dtype(dtype_name)

    def r(a: np.ndarray) -> np.ndarray:
        return a.astype(dt).astype(np.float64)

    params = {k: r(v) for k, v in problem.params.items()}
    h0 = None if problem.h0 is None else r(problem.h0)
    return Problem(problem.model, problem.shapes, problem.forward, params, r(problem.x), h0)


def reference(problem: Problem, dtype: Any = F64) -> tuple[np.ndarray, np.ndarray]:
    """States z and the dense NTK_S = J Jᵀ by ``jacrev`` of θ ↦ z through the torch forward pass.

    In ``dtype`` (float64 for the reference; float32 to measure what float32 itself can reach).
    """

    def t(a: np.ndarray) -> Any:
        return torch.from_numpy(a.copy()).to(dtype)

    theta = {k: t(v) for k, v in problem.params.items()}
    x = t(problem.x)
    h0 = None if problem.h0 is None else t(problem.h0)

    def f(th: dict) -> Any:
        return problem.forward(th, x, h0)

    with torch.no_grad():
        z = f(theta)
    jac = torch.func.jacrev(f)(theta)
    n = z.numel()
    J = torch.cat([jac[k].reshape(n, -1) for k in theta], dim=1)
    return z.double().numpy(), (J @ J.T).reshape(*z.shape, *z.shape).double().numpy()


def kpflow_run(case: Case, problem: Problem) -> Any:
    params = {k: case.asarray(v) for k, v in problem.params.items()}
    h0 = None if problem.h0 is None else case.asarray(problem.h0)
    return problem.model.run(params, case.asarray(problem.x), h0)


# -- drawing the problems ----------------------------------------------------------------------------
#: one problem of every kind (the sizes and settings not drawn)
FIXED = {
    "B": 2,
    "T": 3,
    "H": 2,
    "n_in": 3,
    "widths": (2, 3),
    "nonlinearity": "tanh",
    "bias": True,
    "with_h0": True,
    "dt": 0.3,
    "linear_output": True,
}


def draw_spec(data: Any, kind: str) -> dict:
    """Sizes from 1 to 4 and the settings that ``kind`` has, the rest at fixed values."""
    size = st.integers(1, 4)
    spec = dict(FIXED, B=data.draw(size, label="B"), H=data.draw(size, label="H"))
    spec["n_in"] = data.draw(size, label="n_in")
    spec["bias"] = data.draw(st.booleans(), label="bias")
    if kind != "mlp":
        spec["T"] = data.draw(size, label="T")
        spec["with_h0"] = data.draw(st.booleans(), label="with_h0")
    if kind in ("leaky", "rnn", "mlp"):
        spec["nonlinearity"] = data.draw(st.sampled_from(["tanh", "relu"]), label="nonlinearity")
    if kind == "leaky":
        spec["dt"] = data.draw(st.sampled_from([0.05, 0.3, 0.7, 1.0]), label="dt")
    if kind == "mlp":
        spec["widths"] = tuple(data.draw(st.lists(size, min_size=1, max_size=3), label="widths"))
        spec["linear_output"] = data.draw(st.booleans(), label="linear_output")
    return spec


# -- the tests --------------------------------------------------------------------------------------
def check_against_reference(case: Case, problem: Problem) -> None:
    """kpflow's states and NTK_S on ``case`` equal the reference (float32: to what float32 reaches)."""
    assert problem.model.param_shapes() == problem.shapes
    tol_z = tol_N = EXACT
    if case.dtype_name == "float32":
        problem = rounded(problem, "float32")
    z, N = reference(problem)
    if case.dtype_name == "float32":
        z32, N32 = reference(problem, torch.float32)
        tol_z = max(FLOAT32_FLOOR, FLOAT32_FACTOR * rel_err(z32, z))
        tol_N = max(FLOAT32_FLOOR, FLOAT32_FACTOR * rel_err(N32, N))
    traj = kpflow_run(case, problem)
    case.assert_close(traj.states, z, rtol=tol_z)
    case.assert_close(ntk.global_ntk(traj).todense(), N, rtol=tol_N)


@pytest.mark.properties
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=examples(6))
@given(data=st.data())
def test_states_and_global_ntk_equal_the_independent_torch_reference(case, kind, data):
    problem = make_problem(kind, draw_spec(data, kind), data.draw(st.integers(0, 2**16), label="seed"))
    check_against_reference(case, problem)


@pytest.mark.skipif("jax" not in BACKENDS, reason="jax is not among the selected backends")
@pytest.mark.parametrize("kind", KINDS)
def test_on_jax_float32_states_and_global_ntk_equal_the_independent_torch_reference(kind):
    check_against_reference(_make_case("jax", "float32"), make_problem(kind, FIXED, seed=3))


def _wrong_dt(problem: Problem) -> Problem:
    spec_dt = problem.model.dt * 1.02

    def forward(p: dict, x: Any, h0: Any) -> Any:
        return leaky_forward(p, x, h0, dt=spec_dt, phi=torch.tanh)

    return Problem(problem.model, problem.shapes, forward, problem.params, problem.x, problem.h0)


def _rate_inside(problem: Problem) -> Problem:
    """The other leaky convention, h_t = (1 − dt) h_{t−1} + dt φ(W h_{t−1} + U x_t)."""
    dt = problem.model.dt

    def forward(p: dict, x: Any, h0: Any) -> Any:
        h, out = h0, []
        for t in range(x.shape[1]):
            u = h @ p["weight_hh"].T + x[:, t] @ p["weight_ih"].T + p["bias"]
            h = (1.0 - dt) * h + dt * torch.tanh(u)
            out.append(h)
        return torch.stack(out, dim=1)

    return Problem(problem.model, problem.shapes, forward, problem.params, problem.x, problem.h0)


def _nonlinear_output(problem: Problem) -> Problem:
    widths = problem.model.widths
    net = LayerStack(widths, torch.tanh, True, linear_output=False)

    def forward(p: dict, x: Any, h0: Any) -> Any:
        return torch.func.functional_call(net, p, (x,))

    return Problem(problem.model, problem.shapes, forward, problem.params, problem.x, problem.h0)


def _gru_r_z_swapped(problem: Problem) -> Problem:
    """The GRU with its r and z gate blocks swapped (torch stacks them r, z, n)."""
    H = problem.model.n_hidden

    def swap(w: np.ndarray) -> np.ndarray:
        return np.concatenate([w[H : 2 * H], w[:H], w[2 * H :]])

    params = {k: swap(v) for k, v in problem.params.items()}
    return Problem(problem.model, problem.shapes, problem.forward, params, problem.x, problem.h0)


WRONG = {
    "leaky dt off by 2%": ("leaky", _wrong_dt),
    "leaky with φ outside the recurrence": ("leaky", _rate_inside),
    "mlp with a nonlinear last layer": ("mlp", _nonlinear_output),
    "gru with r and z swapped": ("gru", _gru_r_z_swapped),
}


@pytest.mark.parametrize("wrong", sorted(WRONG))
def test_a_wrong_reference_is_detected(wrong):
    """The comparison above is sharp: a reference with one detail wrong is off far beyond 1e-10."""
    kind, perturb = WRONG[wrong]
    problem = make_problem(kind, FIXED, seed=1)
    case = _make_case("numpy", "float64")
    got = case.to_numpy(ntk.global_ntk(kpflow_run(case, problem)).todense())
    _, right = reference(problem)
    _, wrong_N = reference(perturb(problem))
    assert np.linalg.norm(got - right) <= EXACT * np.linalg.norm(right)
    assert np.linalg.norm(got - wrong_N) >= 1e-3 * np.linalg.norm(wrong_N)
