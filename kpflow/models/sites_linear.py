"""Weight sites whose D_w = ∂f/∂u_w is a general linear map (attention, transformer, hooks).

:class:`LinearSite` gives D_w by its action and adjoint, pure functions of arrays;
:func:`apply_site_D` / :func:`apply_site_DT` apply either kind of site.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from kpflow._array import array_namespace, prod
from kpflow.models.sites_base import (
    Site,
    SiteSpec,
    _check_batch_major,
    _check_variables,
    apply_D_block,
    apply_DT,
)
from kpflow.models.sites_table import SiteRows

__all__ = [
    "LinearSite",
    "LinearSiteSpec",
    "apply_linear_D",
    "apply_linear_DT",
    "apply_site_D",
    "apply_site_DT",
]


class LinearSiteSpec(NamedTuple):
    """What the Kronecker core needs of a :class:`LinearSite` besides arrays (hashable).

    Attributes
    ----------
    m, site_state_size : int
        Number of sites and the per-site state length.
    columns : tuple (lo, hi)
        Always ``(0, site_state_size)``: a general D_w may write every state column.
    width : int
        k_w.
    apply, adjoint : callable
        ``apply(xp, *static, operands, U)`` = D_w U, ``(k, m, width) -> (k, *state_shape)``;
        ``adjoint(xp, *static, operands, V)`` = D_wᵀ V, ``(k, *state_shape) -> (k, m, width)``.
    static : tuple
        Hashable values the two functions read (sizes, flags).
    """

    m: int
    site_state_size: int
    columns: tuple[int, int]
    width: int
    apply: Callable[..., Any]
    adjoint: Callable[..., Any]
    static: tuple


class LinearSite(Site):
    """A weight site whose D_w = ∂f/∂u_w is a general linear map, given by action and adjoint.

    :class:`Site` covers D_w block-diagonal over sites with per-unit gates.  Here D_w maps
    the whole pre-activation tangent ``(k, m, k_w)`` to the state ``(k, *state_shape)`` and
    may couple sites (self-attention's keys and values couple tokens).  K's term is still
    D_w (G_w ⊗ I) D_wᵀ, applied as D_w A_w (A_wᵀ (D_wᵀ V)).

    Parameters
    ----------
    name : str
    variables : array of shape (m, p)
        A_w, rows a_w(s) (bias columns of ones included).
    state_shape : tuple of int
    width : int
        k_w, the pre-activation width.
    apply, adjoint : callable
        Pure functions of arrays, ``apply(xp, *static, operands, U)`` = D_w U with U of
        shape ``(k, m, width)`` giving ``(k, *state_shape)``, and ``adjoint(xp, *static,
        operands, V)`` = D_wᵀ V.  Module-level functions (not closures over arrays): on jax
        one compiled program then serves every trajectory of the same shapes.
    operands : tuple of arrays
        The arrays D_w reads (caches, weights), in the namespace of ``variables``.
    static : tuple
        Hashable values the functions read.
    n_sites : int, optional
        m, the number of sites, when it differs from the number of rows of ``variables``.
        A weight used at several places of one step (user cells, :mod:`kpflow.models.hooks`)
        stacks one row per (use, site): A_w has ``n_uses·m`` rows, ``apply`` takes U of
        shape ``(k, rows, width)`` and ``adjoint`` gives that shape, and K's term
        D_w (A_w A_wᵀ ⊗ I) D_wᵀ then holds the cross terms between uses.  Default: the rows
        of ``variables`` are the sites.
    rows : SiteRows, optional
        The named parameter rows of C_w (see :class:`~kpflow.models.sites.Site`).
    batch_major : bool, optional
        True when each of the m sites lies in one batch row and the sites run batch-major
        (see :class:`~kpflow.models.sites.Site`); with ``n_sites``, each use's block of m
        rows does.  Default False: not declared.

    Notes
    -----
    ``unit_structured`` is False: the exact spectrum, trace and partial-trace shortcuts of
    K need per-unit D and fall back to the matrix-free algorithms; ``unit_D`` and
    ``scale`` are None.  The caller owns the correctness of ``adjoint`` (test it with
    ⟨D U, V⟩ = ⟨U, Dᵀ V⟩).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.sites import LinearSite
    >>> def twice(xp, operands, U):
    ...     return 2.0 * U
    >>> site = LinearSite("w", xp.ones((3, 1)), state_shape=(3, 2), width=2, apply=twice, adjoint=twice)
    >>> site.apply_DT(xp.ones((1, 3, 2)))[0, 0, :]
    Array([2., 2.], dtype=array_api_strict.float64)
    """

    unit_structured = False

    def __init__(
        self,
        name: str,
        variables: Any,
        *,
        state_shape: tuple[int, ...],
        width: int,
        apply: Callable[..., Any],
        adjoint: Callable[..., Any],
        operands: tuple = (),
        static: tuple = (),
        n_sites: int | None = None,
        rows: SiteRows | None = None,
        batch_major: bool = False,
    ) -> None:
        where = f"LinearSite({name!r})"
        _check_variables(variables, tuple(state_shape), where, n_sites=n_sites)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            msg = f"{where}: expected width (k_w) to be a positive int, got {width!r}"
            raise ValueError(msg)
        if not callable(apply) or not callable(adjoint):
            msg = f"{where}: expected apply and adjoint to be callables, got {apply!r} and {adjoint!r}"
            raise TypeError(msg)
        try:
            hash(static)
        except TypeError as err:
            msg = f"{where}: expected a hashable static tuple, got {static!r}"
            raise TypeError(msg) from err
        self.name = name
        self.rows = None if rows is None else list(rows)
        self.batch_major = _check_batch_major(batch_major, where)
        self.variables = variables
        self.state_shape = tuple(state_shape)
        self.m = int(variables.shape[0]) if n_sites is None else int(n_sites)
        self.n_rows = int(variables.shape[0])
        self.site_state_size = prod(self.state_shape) // self.m
        self.width = int(width)
        self.unit_D = None
        self.scale = None
        self.columns = (0, self.site_state_size)
        self.operands = tuple(operands)
        self.static = tuple(static)
        self._D_operand = self.operands
        self.linear_spec = LinearSiteSpec(
            self.m, self.site_state_size, self.columns, self.width, apply, adjoint, self.static
        )

    @property
    def spec(self) -> LinearSiteSpec:  # type: ignore[override]
        """The hashable :class:`LinearSiteSpec` (the Kronecker core branches on its type)."""
        return self.linear_spec

    def dense_unit_D(self) -> Any:
        """Not defined: a general D_w has no per-unit layout (this raises ``TypeError``)."""
        msg = f"LinearSite({self.name!r}): D_w is a general linear map, it has no unit_D"
        raise TypeError(msg)

    def D_operand(self) -> Any:
        """The ``operands`` tuple the site's ``apply`` and ``adjoint`` read."""
        return self.operands

    def apply_D_block(self, U: Any) -> Any:
        """D_w U laid out as ``(k, m, site_state_size)`` (the site writes every column)."""
        return apply_linear_D(array_namespace(U), self.linear_spec, self.operands, U)

    def apply_D(self, U: Any) -> Any:
        """D_w U: ``(k, m, width) -> (k, *state_shape)``."""
        spec = self.linear_spec
        return spec.apply(array_namespace(U), *spec.static, self.operands, U)

    def apply_DT(self, V: Any) -> Any:
        """D_wᵀ V: ``(k, *state_shape) -> (k, m, width)``."""
        return apply_linear_DT(array_namespace(V), self.linear_spec, self.operands, V)

    def __repr__(self) -> str:
        return f"LinearSite({self.name!r}, m={self.m}, p={self.p}, width={self.width})"


def apply_linear_D(xp: Any, spec: LinearSiteSpec, operands: tuple, U: Any) -> Any:
    """D U for a :class:`LinearSite`, as a ``(k, m, site_state_size)`` block (pure)."""
    Y = spec.apply(xp, *spec.static, operands, U)
    return xp.reshape(Y, (Y.shape[0], spec.m, spec.site_state_size))


def apply_linear_DT(xp: Any, spec: LinearSiteSpec, operands: tuple, V: Any) -> Any:
    """Dᵀ V for a :class:`LinearSite`: ``(k, *state_shape) -> (k, m, width)`` (pure)."""
    return spec.adjoint(xp, *spec.static, operands, V)


def apply_site_D(xp: Any, spec: SiteSpec | LinearSiteSpec, D: Any, U: Any) -> Any:
    """D_w U for either kind of site, as a ``(k, m, hi − lo)`` block on ``spec.columns`` (pure).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.sites import Site, apply_site_D
    >>> site = Site("w", xp.ones((3, 1)), state_shape=(3, 2), scale=0.5, width=2)
    >>> apply_site_D(xp, site.spec, site.D_operand(), xp.ones((1, 3, 2))).shape
    (1, 3, 2)
    """
    if isinstance(spec, LinearSiteSpec):
        return apply_linear_D(xp, spec, D, U)
    return apply_D_block(xp, spec, D, U)


def apply_site_DT(xp: Any, spec: SiteSpec | LinearSiteSpec, D: Any, V: Any) -> Any:
    """D_wᵀ V for either kind of site: ``(k, *state_shape) -> (k, m, width)`` (pure).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.sites import Site, apply_site_DT
    >>> site = Site("w", xp.ones((3, 1)), state_shape=(3, 2), scale=0.5, width=2)
    >>> apply_site_DT(xp, site.spec, site.D_operand(), xp.ones((1, 3, 2))).shape
    (1, 3, 2)
    """
    if isinstance(spec, LinearSiteSpec):
        return apply_linear_DT(xp, spec, D, V)
    return apply_DT(xp, spec, D, V)
