"""``Site`` validates its ``unit_D`` (shape, dtype, namespace) and its ``variables``."""

from __future__ import annotations

import numpy as np
import pytest

from kpflow.models import RNN, Site


def test_site_rejects_a_unit_D_of_the_wrong_shape_dtype_or_namespace():
    A = np.ones((6, 2))
    good = np.ones((6, 3, 1, 1))
    Site("w", A, state_shape=(2, 3, 3), unit_D=good)  # accepted
    with pytest.raises(ValueError, match=r"Site\('w'\): expected unit_D of shape \(m=6, n_units, a, g\)"):
        Site("w", A, state_shape=(2, 3, 3), unit_D=np.ones((6, 3, 1)))
    with pytest.raises(ValueError, match="m=6"):
        Site("w", A, state_shape=(2, 3, 3), unit_D=np.ones((3, 3, 1, 1)))
    with pytest.raises(TypeError, match="expected unit_D of dtype float64"):
        Site("w", A, state_shape=(2, 3, 3), unit_D=good.astype(np.float32))
    import array_api_strict as xps

    with pytest.raises(TypeError, match="unit_D comes from array_api_strict"):
        Site("w", A, state_shape=(2, 3, 3), unit_D=xps.ones((6, 3, 1, 1)))
    with pytest.raises(ValueError, match=r"expected variables \(A_w\) of shape \(m, p\)"):
        Site("w", np.ones(6), state_shape=(2, 3, 3), scale=1.0, width=3)
    with pytest.raises(ValueError, match="does not divide"):
        Site("w", np.ones((4, 2)), state_shape=(2, 3, 3), scale=1.0, width=3)
    with pytest.raises(ValueError, match="finite scale"):
        Site("w", A, state_shape=(2, 3, 3), scale=float("nan"), width=3)


def test_a_broadcasting_unit_D_no_longer_splits_the_trace():
    # A unit_D of one site, shape (1, n_units, 1, 1), broadcast over the sites in the matvec
    # but was reshaped by the exact rule, so the two traces disagreed.  Now it is refused.
    traj = RNN(1, 3).run(RNN(1, 3).init(0), np.ones((1, 4, 1)))
    site = traj.sites[0]
    with pytest.raises(ValueError, match="unit_D"):
        Site("hidden", site.variables, state_shape=traj.state_shape, unit_D=site.unit_D[:1])
