"""One site table per built-in model drives its sites, its rows, its param_shapes and its docstring."""

import numpy as np
import pytest

import kpflow
from kpflow.models import GRU, LSTM, MLP, RNN, LeakyRNN, SelfAttention, TransformerEncoder
from kpflow.models.attention import attention_site_table
from kpflow.models.gru import gru_site_table
from kpflow.models.leaky import leaky_site_table
from kpflow.models.lstm import lstm_site_table
from kpflow.models.mlp import mlp_site_table
from kpflow.models.rnn import rnn_site_table
from kpflow.models.sites import LinearSite
from kpflow.models.sites_table import (
    NO_SITE,
    TABLE_MARK,
    Dim,
    declared_shapes,
    render_site_table,
    table_rows,
)
from kpflow.models.transformer_sites import transformer_site_table

# (model, x shape)
CASES = {
    "rnn": (lambda: RNN(2, 3), (2, 3, 2)),
    "rnn-nobias-relu": (lambda: RNN(2, 3, nonlinearity="relu", bias=False), (2, 3, 2)),
    "leaky": (lambda: LeakyRNN(2, 3, dt=0.2, bias=True), (2, 3, 2)),
    "leaky-nobias": (lambda: LeakyRNN(2, 3, dt=0.2), (2, 3, 2)),
    "gru": (lambda: GRU(2, 3), (2, 3, 2)),
    "gru-nobias": (lambda: GRU(2, 3, bias=False), (2, 3, 2)),
    "lstm": (lambda: LSTM(2, 3), (2, 3, 2)),
    "lstm-nobias": (lambda: LSTM(2, 3, bias=False), (2, 3, 2)),
    "mlp": (lambda: MLP((2, 4, 3)), (3, 2)),
    "mlp-nonlinear-out": (lambda: MLP((2, 4, 3, 1), linear_output=False, bias=False), (3, 2)),
    "attention": (lambda: SelfAttention(4, 2, causal=True), (2, 3, 4)),
    "attention-nobias": (lambda: SelfAttention(4, 2, bias=False), (2, 3, 4)),
    "transformer": (
        lambda: TransformerEncoder(4, 2, 6, 2, positional="learned", max_len=5, final_norm=True),
        (2, 3, 4),
    ),
    "transformer-pre-nobias": (
        lambda: TransformerEncoder(4, 1, 3, 1, norm_first=True, bias=False),
        (2, 3, 4),
    ),
}


def _traj(name):
    make, shape = CASES[name]
    model = make()
    x = np.random.default_rng(0).standard_normal(shape)
    return model, model.run(model.init(0), x)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_table_gives_the_sites_their_rows_and_the_model_its_shapes(name):
    model, traj = _traj(name)
    table = model.site_table()
    declared = [decl for decl in table if decl.name != NO_SITE]
    # the trajectory's sites are the declared ones, in order, with their rows, p_w and D kind
    assert [s.name for s in traj.sites] == [decl.name for decl in declared]
    for site, decl in zip(traj.sites, declared, strict=True):
        assert site.rows == decl.rows()
        assert site.p == decl.p
        if decl.D == "linear":
            assert isinstance(site, LinearSite)
        elif decl.D == "scaled":
            assert site.scale is not None and site.unit_D is None
        else:
            assert site.unit_D is not None
    # the model's rows and shapes are read off the same table
    assert model.site_rows() == table_rows(table) == kpflow.ntk.site_parameters(model)
    assert declared_shapes(table) == model.param_shapes()  # as dicts: same names and shapes
    assert set(model.param_shapes()) == set(traj.params)
    assert {n: tuple(a.shape) for n, a in traj.params.items()} == model.param_shapes()


@pytest.mark.parametrize("name", sorted(CASES))
def test_to_params_of_from_params_is_the_identity_on_the_rows_of_the_table(name):
    model, traj = _traj(name)
    J = kpflow.state_jacobian(traj)
    back = J.to_params(J.from_params(traj.params))
    zero = {entry[0]: entry[1] for entry in model.site_rows().get(NO_SITE, [])}
    for pname, value in traj.params.items():
        want = np.array(value)
        if pname in zero:  # rows no site carries come back as zeros
            lo, hi = zero[pname]
            want[lo:hi] = 0.0
        np.testing.assert_array_equal(back[pname], want)


# the module-level table builders, called with named sizes, give the docstrings' tables
SYMBOLIC = {
    RNN: (rnn_site_table, (Dim("n_in"), Dim("H"), True), (2, 3, True)),
    LeakyRNN: (leaky_site_table, (Dim("n_in"), Dim("H"), True), (2, 3, True)),
    GRU: (gru_site_table, (Dim("n_in"), Dim("H"), True), (2, 3, True)),
    LSTM: (lstm_site_table, (Dim("n_in"), Dim("H"), True), (2, 3, True)),
    MLP: (mlp_site_table, ((Dim("n_0"), Dim("n_1"), Dim("n_2")), True, True), ((2, 4, 3), True, True)),
    SelfAttention: (attention_site_table, (Dim("d"), True), (4, True)),
}


def _shape_of(table):
    return [(d.name, [t.param for t in d.terms], d.inputs, d.D, d.formula) for d in table]


@pytest.mark.parametrize("cls", list(SYMBOLIC), ids=lambda c: c.__name__)
def test_the_docstring_shows_the_table_the_model_builds_its_sites_from(cls):
    build, symbols, sizes = SYMBOLIC[cls]
    symbolic, concrete = build(*symbols), build(*sizes)
    assert TABLE_MARK not in cls.__doc__
    assert all(line in cls.__doc__ for line in render_site_table(symbolic).split("\n"))
    # the same sites, parameters, inputs and D in the docs and in the model's own table
    assert _shape_of(symbolic) == _shape_of(concrete)
    model = {RNN: RNN(2, 3), LeakyRNN: LeakyRNN(2, 3, dt=0.5, bias=True), GRU: GRU(2, 3), LSTM: LSTM(2, 3)}
    model |= {MLP: MLP((2, 4, 3)), SelfAttention: SelfAttention(4, 2)}
    assert model[cls].site_table() == concrete


def test_the_transformer_docstring_shows_its_table():
    sizes = (Dim("d"), Dim("d_ff"), 1)
    symbolic = transformer_site_table(*sizes, bias=True, final_norm=True, max_len=Dim("max_len"))
    concrete = TransformerEncoder(4, 2, 6, 1, final_norm=True, positional="learned", max_len=5).site_table()
    assert all(line in TransformerEncoder.__doc__ for line in render_site_table(symbolic).split("\n"))
    assert _shape_of(symbolic) == _shape_of(concrete)


def test_the_gru_table_names_its_gate_rows():
    lines = GRU.__doc__.split("\n")
    row = next(line for line in lines if line.strip().startswith("z ") and "weight_ih" in line)
    assert "weight_ih[H:2H]ᵀ; weight_hh[H:2H]ᵀ; bias_ih[H:2H]; bias_hh[H:2H]" in row
    assert GRU(2, 3).site_rows()["z"][0] == ("weight_ih", (3, 6))


def test_a_frozen_parameter_drops_its_rows_from_the_sites_rows():
    model = GRU(2, 3).with_frozen(["weight_ih"])
    traj = model.run(model.init(0), np.ones((1, 2, 2)))
    assert [s.rows for s in traj.sites][2] == [("bias_ih", (6, 9))]
    assert [s.p for s in traj.sites] == [5, 5, 1, 4]


def test_the_readout_site_of_the_output_ntk_carries_the_rows_of_the_readouts_table():
    _, traj = _traj("gru")
    readout = kpflow.models.Linear(3, 2)
    out = kpflow.output_ntk(traj, readout.init(1))
    (decl,) = readout.site_table("readout.")
    assert out.readout_kernel.sites[0].rows == decl.rows()
    assert readout.param_shapes() == {"weight": (2, 3), "bias": (2,)}
    J = out.J
    theta = {**traj.params, **{f"readout.{k}": v for k, v in readout.init(1).items()}}
    back = J.to_params(J.from_params(theta))
    assert all(np.array_equal(back[k], theta[k]) for k in theta)
