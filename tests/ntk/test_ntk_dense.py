"""The structured NTK equals the dense autodiff reference, on every backend, in float64.

The reference is ``jacrev`` of the whole unrolled map θ ↦ z, computed on an
autodiff backend (torch, else jax) from the same host weights, so the numpy and
array_api_strict analytic results are checked against torch/jax autodiff too.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kpflow.ntk as ntk
from kpflow.models import Linear
from tests.conftest import check_meta, examples
from tests.ntk_helpers import NAMES, REFERENCE, build, draw_shape, reference_traj, rel_err

pytestmark = pytest.mark.skipif(REFERENCE is None, reason="needs torch or jax for the dense reference")

TOL = 1e-10


@pytest.mark.properties
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(6))
@given(data=st.data())
def test_global_ntk_todense_equals_dense_jacobian_gram(case64, name, data):
    shape = draw_shape(data, case64)
    built = build(case64, name, *shape)
    got = ntk.global_ntk(built.traj).todense()
    check_meta(case64, got)
    assert tuple(got.shape) == built.traj.state_shape * 2
    ref = reference_traj(built)
    expected = np.asarray(ref.xp.reshape(ntk.dense_global_ntk(ref), (-1,)).tolist())
    assert rel_err(case64.to_numpy(got).ravel(), expected) <= TOL


@pytest.mark.properties
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(4))
@given(data=st.data())
def test_output_ntk_equals_dense_output_ntk_with_readout_term(case64, name, data):
    shape = draw_shape(data, case64)
    built = build(case64, name, *shape)
    traj = built.traj
    lo, hi = traj.feature_columns
    readout = Linear(hi - lo, 2)
    host_ro = readout.init(shape[4] + 1)
    got = ntk.output_ntk(traj, {k: case64.asarray(v) for k, v in host_ro.items()}).todense()
    check_meta(case64, got)
    ref = reference_traj(built)
    ref_ro = {k: ref.xp.asarray(v, dtype=ref.dtype, device=ref.device) for k, v in host_ro.items()}
    expected = np.asarray(ref.xp.reshape(ntk.dense_output_ntk(ref, ref_ro), (-1,)).tolist())
    assert rel_err(case64.to_numpy(got).ravel(), expected) <= TOL
    # the readout's own term is not negligible: dropping it is far off
    without = ntk.ReadoutMap(traj, case64.asarray(host_ro["weight"]))
    partial = (without @ ntk.global_ntk(traj) @ without.T).todense()
    assert rel_err(case64.to_numpy(partial).ravel(), expected) > 1e-3


@pytest.mark.properties
@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=examples(4))
@given(data=st.data())
def test_states_agree_with_reference_backend(case64, name, data):
    shape = draw_shape(data, case64)
    built = build(case64, name, *shape)
    ref = reference_traj(built)
    expected = np.asarray(ref.xp.reshape(ref.states, (-1,)).tolist())
    assert rel_err(case64.to_numpy(built.traj.states).ravel(), expected) <= 1e-13


@pytest.mark.parametrize("variant", ["bias_counted_once", "D_at_previous_step", "no_propagator"])
def test_dense_check_catches_deliberately_wrong_variants(variant):
    # the oracle is sharp: plausible mistakes are off by far more than the tolerance
    from kpflow.models import Site
    from tests.conftest import _make_case

    built = build(_make_case("numpy", "float64"), "rnn_tanh", 2, 4, 3, 2, 0, True)
    traj = built.traj
    (site,) = traj.sites
    A, d = site.variables, site.unit_D
    if variant == "bias_counted_once":
        site = Site("hidden", A[:, :-1], state_shape=traj.state_shape, unit_D=d)
    elif variant == "D_at_previous_step":
        prev_d = 1.0 - np.asarray(traj.prev_states).reshape(-1, 3) ** 2
        site = Site("hidden", A, state_shape=traj.state_shape, unit_D=prev_d[:, :, None, None])
    K = ntk.KroneckerCoreKernel([site], like=traj.states)
    P = ntk.propagator(traj)
    wrong = K.todense() if variant == "no_propagator" else ntk.GlobalNTK(P, K).todense()
    ref = reference_traj(built)
    expected = np.asarray(ref.xp.reshape(ntk.dense_global_ntk(ref), (-1,)).tolist())
    assert rel_err(np.asarray(wrong).ravel(), expected) > 1e-2
