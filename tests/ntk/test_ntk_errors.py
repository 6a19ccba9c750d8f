"""Bad input to kpflow.ntk gives a clear error naming the call and the argument."""

from __future__ import annotations

import numpy as np
import pytest
from kpflow.backends import AutodiffUnavailableError

import kpflow.ntk as ntk
from kpflow.models import RNN, Linear
from tests.ntk_helpers import REFERENCE, reference_case


def _traj(case=None, B=2, T=3, H=2):
    model = RNN(2, H)
    if case is None:
        return model.run(model.init(0), np.ones((B, T, 2)))
    return model.run(model.init(0, like=case.randn(1)), case.asarray(np.ones((B, T, 2))))


@pytest.mark.parametrize("call", [ntk.parameter_kernel, ntk.propagator, ntk.global_ntk, ntk.dense_global_ntk])
def test_non_trajectory_is_a_type_error(call):
    with pytest.raises(TypeError, match="expected traj to be a kpflow Trajectory"):
        call(np.ones((2, 3, 2)))


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match='parameter_kernel: expected method "kronecker" or "autodiff"'):
        ntk.parameter_kernel(_traj(), method="jacobian")


def test_autodiff_routes_need_an_autodiff_backend(case64):
    if case64.name in ("torch", "jax"):
        pytest.skip("this backend has autodiff")
    traj = _traj(case64)
    with pytest.raises(AutodiffUnavailableError, match='method="autodiff" needs automatic differentiation'):
        ntk.parameter_kernel(traj, method="autodiff")
    with pytest.raises(
        AutodiffUnavailableError, match=f"dense_global_ntk needs .* the {case64.name} backend"
    ):
        ntk.dense_global_ntk(traj)
    ro = Linear(2, 1).init(0, like=case64.randn(1))
    with pytest.raises(AutodiffUnavailableError, match="dense_output_ntk needs"):
        ntk.dense_output_ntk(traj, ro)


def test_dense_reference_refuses_large_models_unless_allowed():
    traj = _traj()  # 12 states, 12 parameters
    with pytest.raises(ValueError, match=r"needs 144 entries .* more than max_size=100"):
        ntk.dense_global_ntk(traj, max_size=100)
    with pytest.raises(ValueError, match="expected max_size to be a positive int"):
        ntk.dense_global_ntk(traj, max_size=0)
    if REFERENCE is not None:
        big = _traj(reference_case())
        assert ntk.dense_global_ntk(big, max_size=144).shape == (2, 3, 2, 2, 3, 2)


def test_output_ntk_checks_the_readout_params():
    traj = _traj()
    with pytest.raises(ValueError, match="expected readout_params to be a dict with 'weight'"):
        ntk.output_ntk(traj, {"bias": np.ones(1)})
    with pytest.raises(ValueError, match=r"expected readout params\['weight'\] of shape \(1, 2\)"):
        ntk.output_ntk(traj, {"weight": np.ones((1, 3)), "bias": np.ones(1)})
    with pytest.raises(ValueError, match=r"expected readout_params\['weight'\] of shape \(n_out, 2\)"):
        ntk.output_ntk(traj, {"weight": np.ones(2)})
    with pytest.raises(TypeError, match="readout params"):
        ntk.output_ntk(traj, {"weight": np.ones((1, 2), dtype=np.float32)})
    with pytest.raises(ValueError, match=r"keys \['bias', 'weight'\]"):
        ntk.output_ntk(traj, {"weight": np.ones((1, 2)), "bias": np.ones(1), "extra": np.ones(1)})


def test_operators_check_probe_shapes():
    K = ntk.parameter_kernel(_traj())
    with pytest.raises(ValueError, match=r"KroneckerCoreKernel.matvec: expected x of shape \(2, 3, 2\)"):
        K.matvec(np.ones((2, 3, 3)))
    with pytest.raises(TypeError, match="dtype"):
        ntk.global_ntk(_traj()).matvec(np.ones((2, 3, 2), dtype=np.float32))
