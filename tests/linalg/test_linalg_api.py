"""kpflow.linalg's public surface: __all__, result types, rule registration, to_scipy, imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import kpflow
import kpflow.linalg as linalg
from kpflow.linalg import EighResult, ScalarResult, rules
from tests.linalg_helpers import Opaque, numpy_operator, spectral_matrix

PUBLIC = {
    "DENSE_LIMIT",
    "EighResult",
    "ScalarResult",
    "SvdResult",
    "alignment",
    "effective_rank",
    "eigsh",
    "fro_norm",
    "rules",
    "svds",
    "to_scipy",
    "trace",
}


def test_public_api_is_an_explicit_list():
    assert set(linalg.__all__) == PUBLIC
    for name in linalg.__all__:
        assert getattr(linalg, name) is not None


def test_scalar_results_convert_and_eigh_results_unpack():
    A = numpy_operator(np.diag([3.0, 2.0, 1.0]))
    r = linalg.trace(A)
    assert isinstance(r, ScalarResult) and float(r) == 6.0 and "exact" in repr(r)
    res = linalg.eigsh(A, 2)
    assert isinstance(res, EighResult)
    w, V = res  # like numpy.linalg.eigh: two values, the diagnostics are attributes
    assert w is res.eigenvalues and V is res.eigenvectors and V.shape == (2, 3)
    assert res.residual_norms.shape == (2,) and res.num_matvecs == 3  # dense route: n = 3 unit vectors
    assert len(res) == len(np.linalg.eigh(np.eye(2))) == 2 and res[0] is w


def test_result_reprs_show_shapes_not_arrays():
    big = numpy_operator(np.diag(1.9 * 0.5 ** np.arange(300)))
    res = linalg.eigsh(big, 3, method="lanczos", rng=0)
    text = repr(res)
    assert "(3, 300)" in text and "max_residual" in text and len(text) < 200
    assert "1.9" not in text  # no eigenvalue printed
    U, s, V = linalg.svds(big, 2)
    svd = linalg.svds(big, 2)
    assert len(svd) == 3 and "(2, 300)" in repr(svd) and len(repr(svd)) < 200
    assert U.shape == (2, 300) and s.shape == (2,) and V.shape == (2, 300)
    with pytest.raises(ValueError, match="not enough values to unpack"):
        _w, _V, _res, _n = res


class _Core(Opaque):
    """A stand-in for a downstream operator type with exact spectral rules."""


def _core_eigsh(op, k):
    inner = rules.exact_eigsh(op.op, k)
    return EighResult(inner.eigenvalues, inner.eigenvectors, inner.residual_norms, -1)


def _core_fro(op):
    return rules.exact_fro_norm(op.op)


def test_registered_spectral_rules_are_used_without_editing_kpflow():
    rules.exact_eigsh.register(_Core, _core_eigsh)
    rules.exact_fro_norm.register(_Core, _core_fro)
    core = _Core(numpy_operator(np.diag([1.0, 5.0, 2.0]), opaque=False))
    assert linalg.eigsh(core, 2).num_matvecs == -1  # the marker of the registered rule
    r = linalg.fro_norm(core)
    assert r.num_matvecs == 0 and float(r) == pytest.approx(np.sqrt(30.0))


def test_to_scipy_drives_scipy_solvers():
    from scipy.sparse.linalg import eigsh as scipy_eigsh

    M, lam = spectral_matrix("exp", 40)
    S = linalg.to_scipy(numpy_operator(M, (5, 8)))
    assert S.shape == (40, 40)
    w = scipy_eigsh(S, k=3, return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(w)[::-1], lam[:3], rtol=1e-10)
    x = np.random.default_rng(0).standard_normal((40, 2))
    np.testing.assert_allclose(S.matmat(x), M @ x, atol=1e-12)
    np.testing.assert_allclose(S.rmatvec(x[:, 0]), M.T @ x[:, 0], atol=1e-12)


def test_to_scipy_accepts_every_backend(case):
    """Host copies per product (tests/operators/test_interop_scipy.py checks the numbers)."""
    S = linalg.to_scipy(kpflow.Identity((3,), like=case.asarray([0.0])))
    assert S.shape == (3, 3) and S.dtype == np.dtype(case.dtype_name)


def test_importing_linalg_imports_no_framework():
    code = (
        "import sys, kpflow.linalg; "
        "bad = [m for m in ('torch', 'jax', 'scipy', 'cupy', 'matplotlib', 'tqdm') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_structure_queries_for_composites():
    J = numpy_operator(np.random.default_rng(0).standard_normal((30, 8)))
    ntk = J @ J.T  # palindromic: symmetric PSD
    assert rules.is_psd(ntk) and not rules.has_cheap_dense(J + J)
    r = linalg.trace(ntk, num_matvecs=10, rng=0)
    assert r.method == "xnystrace" and r.num_matvecs == 10
    exact = linalg.trace(J.op @ J.op.T + J.op @ J.op.T)  # no rule for compositions: unit probes
    assert exact.method == "exact" and exact.num_matvecs == 30
    Jn = np.asarray(J.op.array)
    assert float(exact) == pytest.approx(2 * np.sum(Jn * Jn))


def test_the_docs_example_runs():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "linalg.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    # doctest-style blocks (">>>") run through the docs doctest harness (tests/package/test_docs_pages.py)
    runnable = [b for b in blocks if "register" not in b and not b.lstrip().startswith(">>>")]
    assert runnable
    for block in runnable:
        exec(compile(block, "docs/linalg.md", "exec"), {})
