"""cupy: the same core on an NVIDIA GPU. Skips with a reason where no GPU is visible (as on CI)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import _gpu_visible

pytestmark = pytest.mark.skipif(not _gpu_visible(), reason="cupy needs a visible NVIDIA GPU; none is visible")


def test_operators_and_the_ntk_stay_on_the_gpu_and_match_numpy():
    import cupy

    import kpflow
    from kpflow.models import RNN

    model = RNN(2, 4)
    host = model.init(0)
    x = np.random.default_rng(1).standard_normal((3, 5, 2))
    ref = kpflow.global_ntk(model.run(host, x))
    params = {k: cupy.asarray(np.asarray(v)) for k, v in host.items()}
    ntk = kpflow.global_ntk(model.run(params, cupy.asarray(x)))
    probe = np.random.default_rng(2).standard_normal((2, 3, 5, 4))
    got = ntk.matmat(cupy.asarray(probe))
    assert isinstance(got, cupy.ndarray) and got.dtype == cupy.float64
    np.testing.assert_allclose(cupy.asnumpy(got), ref.matmat(probe), rtol=1e-10)
    top = kpflow.linalg.eigsh(ntk.K, 4)
    assert isinstance(top.eigenvalues, cupy.ndarray)
    np.testing.assert_allclose(
        cupy.asnumpy(top.eigenvalues), kpflow.linalg.eigsh(ref.K, 4).eigenvalues, rtol=1e-10
    )
