"""Randomized, matrix-free linear algebra on kpflow operators.

Everything here runs on the operator's own backend, dtype and device, counts
the operator-vector products it uses, and takes
``rng: int | numpy.random.Generator | None`` (SPEC 7): the host generator supplies
one integer seed per probe block, and the block is drawn with it on the operator's
device (torch, jax and cupy generators; numpy and array_api_strict draw on the host
and give identical numbers).  A seeded call is reproducible on each backend; other
backends give other, equally distributed, probes.

No function here records an autograd graph: each runs under the backend's
``no_grad()`` (torch: ``torch.no_grad()``), so results computed from parameters
that require grad carry no graph and cost no memory for one.  Differentiable NTK
quantities come from the operators' own products (``ntk.matvec(v)``) called
directly.  On jax, probe blocks are padded to a few sizes and the dense algebra
between products runs as compiled kernels, so that kernels are compiled once per
shape rather than once per primitive and block size.

=======================  ===================================================================
function                 what
=======================  ===================================================================
:func:`trace`            ``tr A``: exact, Hutchinson, Hutch++, XTrace, XNysTrace
:func:`eigsh`            top-k eigenpairs: structured rule, dense, block Lanczos, Nyström
:func:`svds`             top-k singular triplets via the smaller of ``AAᵀ`` and ``AᵀA``
:func:`fro_norm`         ``‖A‖_F``
:func:`alignment`        ``⟨A, B⟩_F / (‖A‖_F ‖B‖_F)``
:func:`effective_rank`   participation ratio ``tr(M)²/tr(M²)``, globally or along axes
:func:`to_scipy`         a ``scipy.sparse.linalg.LinearOperator`` (any backend, host copies)
=======================  ===================================================================

Exact structured rules are single-dispatch functions in
:mod:`kpflow.linalg.rules`; register one for a new operator type with
``rules.exact_trace.register(MyOperator)`` (likewise ``exact_fro_norm``,
``exact_inner``, ``exact_eigsh``, ``is_psd``) without editing kpflow.

Examples
--------
>>> import array_api_strict as xp
>>> import kpflow
>>> from kpflow import linalg
>>> A = kpflow.kron(kpflow.Diagonal(xp.asarray([2.0, 1.0])), kpflow.Identity((3,), like=xp.zeros(1)))
>>> float(linalg.trace(A)), round(float(linalg.effective_rank(A)), 12)
(9.0, 5.4)
>>> linalg.eigsh(A, 4).eigenvalues
Array([2., 2., 2., 1.], dtype=array_api_strict.float64)
"""

from kpflow.linalg import _spectral_rules as _spectral_rules  # registers its exact_eigsh rules
from kpflow.linalg import rules
from kpflow.linalg._common import DENSE_LIMIT, EighResult, ScalarResult, SvdResult
from kpflow.linalg.eig import eigsh, svds
from kpflow.linalg.norms import alignment, fro_norm
from kpflow.linalg.rank import effective_rank
from kpflow.linalg.scipy_bridge import to_scipy
from kpflow.linalg.trace import trace

__all__ = [
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
]
