"""F, the factor of the parameter kernel: K = F Fᵀ with F C = Σ_w D_w (A_w C_w).

:class:`ParameterMap` maps the flat vector of per-site blocks C_w (p_w × k_w) to state
tangents; ``Fᵀ V`` is the per-site gradient A_wᵀ (D_wᵀ V).  Its products are pure functions
of arrays, compiled once per shape on jax (:func:`~kpflow.ntk.kernel.compiled`).
"""

from __future__ import annotations

from typing import Any

from kpflow.models.sites import (
    LinearSiteSpec,
    Site,
    SiteSpec,
    apply_site_D,
    apply_site_DT,
    embed_columns,
)
from kpflow.ntk.kernel import compiled, product_operands
from kpflow.ntk.parameters import SiteRows, _Blocks, _checked_rows, _FlatParameters
from kpflow.operators.base import meta_of_array

__all__ = ["ParameterMap"]


# -- F: the factor of K ------------------------------------------------------------------------------
def _check_sites(sites: Any, where: str) -> list[Site]:
    if not isinstance(sites, list | tuple) or not sites or not all(isinstance(s, Site) for s in sites):
        got = (
            type(sites).__name__ if not isinstance(sites, list | tuple) else [type(s).__name__ for s in sites]
        )
        msg = f"{where}: expected sites to be a non-empty list of kpflow.models.Site, got {got}"
        raise TypeError(msg)
    shape = sites[0].state_shape
    if any(s.state_shape != shape for s in sites):
        msg = f"{where}: expected sites sharing one state_shape, got {[s.state_shape for s in sites]}"
        raise ValueError(msg)
    return list(sites)


class ParameterMap(_FlatParameters):
    """F: per-site parameter blocks to state tangents, F C = Σ_w D_w (A_w C_w); K = F Fᵀ.

    The domain is the flat vector of the blocks C_w (p_w × k_w), site by site, each
    row-major: p = Σ_w p_w k_w.  ``Fᵀ V`` is the per-site gradient A_wᵀ (D_wᵀ V), and
    ``F Fᵀ`` is the parameter kernel K (:class:`~kpflow.ntk.KroneckerCoreKernel`).

    Parameters
    ----------
    sites : list of :class:`kpflow.models.Site`
        The weight sites (A_w, D_w), sharing ``state_shape``.
    like : array
        Gives the namespace, dtype and device (e.g. the trajectory's states).
    rows, param_shapes : optional
        The named-parameter layout (:func:`site_parameters`) and the parameters' shapes,
        for :meth:`to_params` / :meth:`from_params`.

    Examples
    --------
    >>> import numpy as np
    >>> import kpflow
    >>> from kpflow.ntk import ParameterMap
    >>> from kpflow.models import RNN
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0), np.ones((2, 3, 1)))
    >>> F = ParameterMap(traj.sites, like=traj.states)
    >>> F.shape_in, F.site_shapes                      # p_w = H + n_in + 2 biases, k_w = H
    ((10,), {'hidden': (5, 2)})
    >>> K = kpflow.parameter_kernel(traj).todense().reshape(12, 12)
    >>> Fd = F.todense().reshape(12, 10)
    >>> bool(np.allclose(Fd @ Fd.T, K))
    True
    """

    def __init__(
        self,
        sites: list[Site],
        *,
        like: Any,
        rows: dict[str, SiteRows] | None = None,
        param_shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        where = "ParameterMap"
        sites = _check_sites(sites, where)
        self.sites = sites
        self._blocks = _Blocks([s.name for s in sites], [(s.p, s.width) for s in sites])
        super().__init__((self._blocks.size,), sites[0].state_shape, **meta_of_array(like, where))
        self._param_shapes = dict(param_shapes or {})
        self._rows = _checked_rows(rows, self._blocks, self._param_shapes, where)

    def _operands(self) -> tuple:
        return product_operands(self.xp, tuple((site.variables, site.D_operand()) for site in self.sites))

    def _matmat(self, X: Any) -> Any:
        specs = tuple(site.spec for site in self.sites)
        sizes = tuple((site.p, site.width) for site in self.sites)
        fn = compiled(self.xp, _parameter_matmat, specs, sizes, self.shape_out)
        if fn is None:
            return _parameter_matmat(self.xp, specs, sizes, self.shape_out, self._operands(), X)
        return fn(self._operands(), X)

    def _rmatmat(self, Y: Any) -> Any:
        specs = tuple(site.spec for site in self.sites)
        fn = compiled(self.xp, _parameter_rmatmat, specs)
        if fn is None:
            return _parameter_rmatmat(self.xp, specs, self._operands(), Y)
        return fn(self._operands(), Y)


def _parameter_matmat(
    xp: Any,
    specs: tuple[SiteSpec | LinearSiteSpec, ...],
    sizes: tuple[tuple[int, int], ...],
    shape_out: tuple[int, ...],
    operands: tuple,
    X: Any,
) -> Any:
    """F X = Σ_w D_w (A_w C_w) for a block of flat parameter vectors X (k, p): a pure function.

    C_w (k, p_w, k_w) is site w's slice of X; terms on the same state columns are summed
    there and the state is assembled once.  One compiled program on jax (XLA fuses the D
    products and the sums); run as it is elsewhere.
    """
    k, lo = X.shape[0], 0
    blocks: dict[tuple[int, int], Any] = {}
    for spec, (p, width), (A, D) in zip(specs, sizes, operands, strict=True):
        C = xp.reshape(X[:, lo : lo + p * width], (k, p, width))
        lo += p * width
        Y = apply_site_D(xp, spec, D, A @ C)  # A_w C_w is (k, m, k_w)
        cols = spec.columns
        blocks[cols] = Y if cols not in blocks else blocks[cols] + Y
    return embed_columns(blocks, specs[0].site_state_size, shape_out)


def _parameter_rmatmat(xp: Any, specs: tuple[SiteSpec | LinearSiteSpec, ...], operands: tuple, Y: Any) -> Any:
    """Fᵀ Y = (A_wᵀ (D_wᵀ Y))_w, flattened site by site: a pure function (see :func:`_parameter_matmat`)."""
    k, parts = Y.shape[0], []
    for spec, (A, D) in zip(specs, operands, strict=True):
        C = xp.matrix_transpose(A) @ apply_site_DT(xp, spec, D, Y)  # (k, p_w, k_w)
        parts.append(xp.reshape(C, (k, C.shape[1] * C.shape[2])))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=1)
