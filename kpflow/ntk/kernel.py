"""The parameter kernel K = J_θ J_θᵀ: through the Kronecker core, or by autodiff.

Two ways to apply K to a block of k probes (shapes ``(k, *state_shape)``):

=================  ===============================================  ==========================
method             cost per block of k probes                       needs
=================  ===============================================  ==========================
``"kronecker"``    Σ_w O(k·m·p_w·k_w) (two thin GEMMs per site)     the model's weight sites
``"autodiff"``     one vmapped vjp + one vmapped jvp of the         torch or jax arrays
                   one-step map at all sites (≈ 2 model passes)
=================  ===============================================  ==========================

The core never forms the m×m site Gram G_w = A_w A_wᵀ: K V = Σ_w D_w A_w (A_wᵀ (D_wᵀ V)).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from kpflow.models.base import Site, Trajectory
from kpflow.models.sites import (
    LinearSiteSpec,
    SiteSpec,
    apply_site_D,
    apply_site_DT,
    embed_columns,
)
from kpflow.operators.base import LinearOperator, SymmetricOperator

__all__ = ["AutodiffKernel", "KroneckerCoreKernel", "check_trajectory", "compiled", "parameter_kernel"]


def check_trajectory(traj: Any, where: str) -> Trajectory:
    """Raise ``TypeError`` unless ``traj`` is a :class:`kpflow.models.Trajectory`."""
    if not isinstance(traj, Trajectory):
        msg = f"{where}: expected traj to be a kpflow Trajectory (from model.run), got {type(traj).__name__}"
        raise TypeError(msg)
    return traj


class KroneckerCoreKernel(SymmetricOperator):
    """K = Σ_w D_w (G_w ⊗ I) D_wᵀ, applied as Σ_w D_w A_w (A_wᵀ (D_wᵀ V)).

    Parameters
    ----------
    sites : list of :class:`kpflow.models.Site`
        The weight sites (A_w, D_w); all share ``state_shape``.
    like : array
        Gives the namespace, dtype and device (e.g. the trajectory's states).

    Attributes
    ----------
    sites : list of Site
        Exact rules (spectrum, trace, …) read A_w and D_w from here.

    Notes
    -----
    Symmetric positive semi-definite; ``K.T`` is ``K``.  Domain and codomain are
    ``state_shape``.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow.ntk as ntk
    >>> from kpflow.models import RNN
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0, like=xp.zeros(1)), xp.ones((1, 3, 1)))
    >>> K = ntk.parameter_kernel(traj)
    >>> K.shape_in, len(K.sites)
    ((1, 3, 2), 1)
    """

    def __init__(self, sites: list[Site], *, like: Any, matmat: Callable[[Any], Any] | None = None) -> None:
        from kpflow.operators.base import meta_of_array

        shape = sites[0].state_shape
        super().__init__(shape, shape, **meta_of_array(like, "KroneckerCoreKernel"))
        self.sites = list(sites)
        # the same Σ_w D_w A_w (A_wᵀ (D_wᵀ X)), applied by the trajectory itself (optional)
        self._own_matmat = matmat

    def _matmat(self, X: Any) -> Any:
        if self._own_matmat is not None:
            return self._own_matmat(X)
        terms = _terms(self.sites)
        specs = tuple(group[0].spec for group in terms)
        arrays = tuple((tuple(s.variables for s in group), group[0].D_operand()) for group in terms)
        operands = tuple(
            (As[0] if len(As) == 1 else self.xp.concat(As, axis=1), D)
            for As, D in product_operands(self.xp, arrays)
        )
        fn = compiled(self.xp, _core_matmat, specs, self.shape_out)
        if fn is None:
            return _core_matmat(self.xp, specs, self.shape_out, operands, X)
        return fn(operands, X)


def _terms(sites: list[Site]) -> list[list[Site]]:
    """K's terms: sites sharing one ``unit_D`` array (the same object) and spec form one term.

    D_w (A_w A_wᵀ ⊗ I) D_wᵀ summed over sites with the same D is D ([A_1 … A_n][A_1 … A_n]ᵀ ⊗ I) Dᵀ:
    one Dᵀ, one pair of thin GEMMs on the A_w side by side, one D (a hook cell's weights
    whose D are equal share the array, :func:`kpflow.models.hooks.hook_sites`).
    """
    terms: list[list[Site]] = []
    index: dict[tuple, int] = {}
    for site in sites:
        unit_D = getattr(site, "unit_D", None)
        key = (site.spec, id(unit_D)) if unit_D is not None and type(site.spec) is SiteSpec else None
        if key is not None and key in index:
            terms[index[key]].append(site)
            continue
        if key is not None:
            index[key] = len(terms)
        terms.append([site])
    return terms


def _core_matmat(
    xp: Any, specs: tuple[SiteSpec | LinearSiteSpec, ...], shape_out: tuple[int, ...], operands: tuple, X: Any
) -> Any:
    """Σ_w D_w A_w (A_wᵀ (D_wᵀ X)), a pure function of the sites' (A_w, D_w) and the block X.

    A :class:`~kpflow.models.sites.LinearSite` (spec :class:`LinearSiteSpec`) applies its
    own D_w and D_wᵀ and writes every state column.
    """
    # Each site's term stays on its own state columns and terms on the same columns are
    # summed there; the state is assembled once (no zero-padded copy per site).
    blocks: dict[tuple[int, int], Any] = {}
    for spec, (A, D) in zip(specs, operands, strict=True):
        U = apply_site_DT(xp, spec, D, X)  # (k, m, k_w)
        C = xp.matrix_transpose(A) @ U  # (k, p, k_w)
        Y = apply_site_D(xp, spec, D, A @ C)  # (k, m, hi − lo)
        cols = spec.columns
        blocks[cols] = Y if cols not in blocks else blocks[cols] + Y
    return embed_columns(blocks, specs[0].site_state_size, shape_out)


# namespace -> backend adapter (namespaces are modules: the cache is tiny and never stale)
_ADAPTERS: dict[Any, Any] = {}


def _adapter(xp: Any) -> Any:
    adapter = _ADAPTERS.get(xp)
    if adapter is None:
        from kpflow.linalg._backend import adapter_of_namespace

        adapter = _ADAPTERS[xp] = adapter_of_namespace(xp, lambda: xp.zeros(1))
    return adapter


def scan_of(xp: Any) -> Callable[..., Any]:
    """The backend's loop over a leading axis (:meth:`kpflow.backends.Backend.scan`; jax: ``lax.scan``).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.ntk.kernel import scan_of
    >>> scan_of(np)(lambda c, x: (c * x[0], c * x[0]), np.ones(()), (np.asarray([2.0, 3.0]),))[1].tolist()
    [2.0, 6.0]
    """
    return _adapter(xp).scan


def product_operands(xp: Any, operands: tuple) -> tuple:
    """The arrays a product reads (a tuple tree), as the backend says to read them now.

    Under the backend's ``no_grad()`` (every kpflow solver and estimator) torch gets
    graph-free views, so a trajectory built with autograd on (``from_module`` defaults)
    multiplies as fast as a detached one; with autograd on the arrays are unchanged and
    gradients flow.  Elsewhere the operands come back as they are.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.ntk.kernel import product_operands
    >>> A = np.ones(2)
    >>> product_operands(np, (A, None))[0] is A
    True
    """
    return _adapter(xp).for_products(operands)


@functools.lru_cache(maxsize=256)
def _jitted(adapter: Any, fn: Callable, static: tuple) -> Callable:
    return adapter.jit(functools.partial(fn, adapter.namespace(), *static))


def compiled(xp: Any, fn: Callable, *static: Any) -> Callable | None:
    """``fn(xp, *static, *arrays)`` compiled once per ``static`` on backends that compile per shape.

    On jax every primitive is compiled per shape even eagerly and each one is a dispatch:
    one whole product step (a P step, K) as one program runs about 2× faster there.  The
    compiled function is shared by every trajectory with the same ``static`` (hashable
    sizes and flags), the arrays being arguments, so a new trajectory of the same shapes
    compiles nothing.  Returns None elsewhere (numpy, torch, ...): run ``fn`` as it is.
    """
    adapter = _adapter(xp)
    if not getattr(adapter, "compiles_per_shape", False):
        return None
    return _jitted(adapter, fn, static)


class AutodiffKernel(SymmetricOperator):
    """K = J_θ J_θᵀ by a vmapped vjp then a vmapped jvp of the one-step map (torch, jax).

    J_θ is the derivative of ``model.update_map(θ, z, x, h0)`` with the states z held
    fixed.  Used to cross-check the Kronecker core and for models without sites.

    Examples
    --------
    >>> import numpy as np
    >>> import kpflow.ntk as ntk
    >>> from kpflow.models import RNN
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0), np.ones((1, 3, 1)))
    >>> ntk.parameter_kernel(traj, method="autodiff")
    Traceback (most recent call last):
    ...
    kpflow.backends._base.AutodiffUnavailableError: parameter_kernel: method="autodiff" ...
    """

    def __init__(self, traj: Trajectory, adapter: Any) -> None:
        super().__init__(traj.state_shape, traj.state_shape, xp=traj.xp, dtype=traj.dtype, device=traj.device)
        self.traj = traj
        self.adapter = adapter
        # the trained parameters only: frozen ones (Model.with_frozen) are held fixed
        fixed = {n: a for n, a in traj.params.items() if n in traj.model.frozen}
        names = sorted(set(traj.params) - set(fixed))
        self._theta = tuple(traj.params[n] for n in names)
        model, states, x, h0 = traj.model, traj.states, traj.x, traj.h0

        def f(*theta: Any) -> Any:
            return model.update_map(dict(zip(names, theta, strict=True)) | fixed, states, x, h0)

        self._f = f
        _, self._vjp_fn = adapter.vjp(f, *self._theta)

    def _matmat(self, X: Any) -> Any:
        adapter, f, theta = self.adapter, self._f, self._theta
        cot = adapter.vmap(self._vjp_fn)(X)

        def jv(*tangents: Any) -> Any:
            return adapter.jvp(f, theta, tangents)[1]

        return adapter.vmap(jv)(*cot)


def autodiff_adapter(x: Any, where: str) -> Any:
    """The backend adapter of ``x`` if it has autodiff; else ``AutodiffUnavailableError``."""
    from kpflow.backends import AutodiffUnavailableError, get_backend

    adapter = get_backend(x)
    if not adapter.has_autodiff:
        msg = (
            f"{where} needs automatic differentiation, which the {adapter.name} backend lacks; "
            "run the model on torch or jax arrays"
        )
        raise AutodiffUnavailableError(msg)
    return adapter


def parameter_kernel(traj: Trajectory, *, method: str = "kronecker") -> LinearOperator:
    """The parameter kernel K = J_θ J_θᵀ of a trajectory, on ``state_shape``.

    K is the one-step (immediate) NTK: J_θ = ∂f(z_{t−1}, x_t; θ)/∂θ with the states held
    fixed.  With weight sites, K = Σ_w D_w (G_w ⊗ I) D_wᵀ, G_w = A_w A_wᵀ.

    Parameters
    ----------
    traj : Trajectory
        From ``model.run``.
    method : {"kronecker", "autodiff"}
        ``"kronecker"`` applies the Kronecker core (any backend); ``"autodiff"`` uses
        vjp/jvp of the one-step map (torch or jax only), for cross-checking.

    Returns
    -------
    KroneckerCoreKernel or AutodiffKernel
        A symmetric operator from ``state_shape`` to ``state_shape``.

    Raises
    ------
    TypeError
        If ``traj`` is not a Trajectory; ``AutodiffUnavailableError`` (a ``TypeError``)
        for ``method="autodiff"`` on numpy, array_api_strict or cupy.
    ValueError
        For an unknown ``method``.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> import kpflow.ntk as ntk
    >>> from kpflow.models import RNN
    >>> model = RNN(2, 3)
    >>> traj = model.run(model.init(0, like=xp.zeros(1)), xp.ones((2, 4, 2)))
    >>> K = ntk.parameter_kernel(traj)
    >>> K.matvec(traj.states).shape
    (2, 4, 3)
    """
    where = "parameter_kernel"
    check_trajectory(traj, where)
    K: LinearOperator
    if method == "kronecker":
        # a trajectory may apply its sites' core in fewer passes (kpflow.backends.torch
        # from_module(states=...): every site's D_w in one vjp and one jvp of the module)
        K = KroneckerCoreKernel(traj.sites, like=traj.states, matmat=getattr(traj, "kronecker_matmat", None))
    elif method == "autodiff":
        adapter = autodiff_adapter(traj.states, f'{where}: method="autodiff"')
        K = AutodiffKernel(traj, adapter)
    else:
        msg = f'{where}: expected method "kronecker" or "autodiff", got {method!r}'
        raise ValueError(msg)
    K.axis_names = traj.axis_names
    return K
