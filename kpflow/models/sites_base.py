"""Weight sites with per-unit D: the pre-activation groups u_w(s) = W_w a_w(s) + b_w of a trajectory.

A :class:`Site` holds the site variables A_w (one row per site, bias columns of ones
included), the action of D_w = ∂f/∂u_w, and the parameter rows its block C_w covers, from
which the parameter kernel is K = Σ_w D_w (A_w A_wᵀ ⊗ I) D_wᵀ (docs/theory.md, "The
Kronecker core of K").  Sites with a general D_w are in :mod:`kpflow.models.sites_linear`;
:mod:`kpflow.models.sites` gathers both.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from kpflow._array import array_namespace, device_of, namespace_name, prod, same_device
from kpflow.models.sites_table import SiteRows

__all__ = [
    "Site",
    "SiteSpec",
    "apply_DT",
    "apply_D_block",
    "embed_columns",
    "flat_sites",
    "site_variables",
]


class Site:
    """One weight site: the pre-activations u_w(s) = W_w a_w(s) + b_w at every site s.

    The Jacobian of the one-step map with respect to W_w (state held fixed) factors as
    D_w (A_w ⊗ I): the site variables A_w (rows a_w(s)ᵀ, with a column of ones per bias)
    times D_w = ∂f/∂u_w.  Hence the site's part of K is D_w (G_w ⊗ I) D_wᵀ, G_w = A_w A_wᵀ.

    Parameters
    ----------
    name : str
        Which weights feed this pre-activation (e.g. ``"hh+ih"``).
    variables : array of shape (m, p)
        A_w: row s is the site variable a_w(s) (including bias columns of ones).
    state_shape : tuple of int
        The trajectory's state shape; ``prod(state_shape)`` is a multiple of m.
    unit_D : array of shape (m, n_units, a, g), optional
        D_w per site and unit: unit i's g gate pre-activations (gate-major index
        q·n_units + i of the width k_w = g·n_units) feed its a state coordinates (index
        j·n_units + i of the site's ``a·n_units`` output columns).  RNN and GRU sites
        have a = g = 1 (a diagonal D), the LSTM a = 2, g = 4.
    scale : float, optional
        D_w = scale·I (the leaky RNN: dt).  Give either ``unit_D`` or ``scale`` with
        ``width``.
    width : int, optional
        k_w; inferred from ``unit_D`` as g·n_units.
    columns : tuple (start, stop), optional
        The columns of the per-site state vector (length ``prod(state_shape) // m``) this
        site writes; all of them by default (the MLP's layers write their own block).
    rows : SiteRows, optional
        Which named parameter rows make the site's block C_w, in order
        (:data:`~kpflow.models.sites_table.SiteRows`, from the model's site table); None
        when not declared.
    batch_major : bool, optional
        Declares which positions the rows of A_w cover: True when each of its m sites lies
        in one batch row (axis 0 of the state) and the sites run batch-major, site s in row
        s // (m / B) (the sites of a (B, T) or (B, N) grid, flattened).  False (the
        default): not declared, e.g. a row shared by the whole batch; the dense output NTK
        (:func:`~kpflow.ntk.output_gram.output_ntk_gram`) then probes one row at a time.

    Attributes
    ----------
    name, variables, width, unit_D, scale, columns, state_shape, m, rows, batch_major
        As above; ``m`` is the number of sites.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import Site
    >>> A = xp.ones((3, 2))
    >>> site = Site("w", A, state_shape=(3, 2), scale=0.5, width=2)
    >>> site.apply_D(xp.ones((1, 3, 2)))[0, 0, :]
    Array([0.5, 0.5], dtype=array_api_strict.float64)
    """

    #: Whether D_w has the per-unit structure (``unit_D`` or ``scale``) that the exact
    #: shortcuts of :mod:`kpflow.ntk.shortcuts` read; False for a :class:`LinearSite`.
    unit_structured: bool = True

    #: Whether the rows of A_w are declared per batch row, batch-major (the ``batch_major``
    #: argument); False for a site that does not say.
    batch_major: bool = False

    def __init__(
        self,
        name: str,
        variables: Any,
        *,
        state_shape: tuple[int, ...],
        unit_D: Any = None,
        scale: float | None = None,
        width: int | None = None,
        columns: tuple[int, int] | None = None,
        rows: SiteRows | None = None,
        batch_major: bool = False,
    ) -> None:
        where = f"Site({name!r})"
        if (unit_D is None) == (scale is None):
            msg = f"{where}: give exactly one of unit_D and scale"
            raise ValueError(msg)
        _check_variables(variables, tuple(state_shape), where)
        self.name = name
        self.rows = None if rows is None else list(rows)
        self.batch_major = _check_batch_major(batch_major, where)
        self.variables = variables
        self.state_shape = tuple(state_shape)
        self.m = int(variables.shape[0])
        self.site_state_size = prod(self.state_shape) // self.m
        if unit_D is not None:
            _check_unit_D(unit_D, variables, where)
        elif not math.isfinite(float(scale)):  # type: ignore[arg-type]
            msg = f"{where}: expected a finite scale, got {scale!r}"
            raise ValueError(msg)
        self.unit_D = unit_D
        self._D_operand: Any = None
        self.scale = None if scale is None else float(scale)
        if unit_D is not None:
            _, n_units, a, g = unit_D.shape
            self.n_units, self.a, self.g = int(n_units), int(a), int(g)
            self.width = self.g * self.n_units
            out = self.a * self.n_units
        else:
            if width is None:
                msg = f"Site({name!r}): a scaled site needs its width"
                raise ValueError(msg)
            self.n_units, self.a, self.g = int(width), 1, 1
            self.width = int(width)
            out = self.width
        lo, hi = (0, self.site_state_size) if columns is None else columns
        self.columns: tuple[int, int] = (int(lo), int(hi))
        if self.columns[1] - self.columns[0] != out:
            msg = f"Site({name!r}): D maps to {out} state columns but columns={self.columns}"
            raise ValueError(msg)
        self.spec = SiteSpec(
            self.m, self.site_state_size, self.columns, self.n_units, self.a, self.g, self.scale
        )

    @property
    def p(self) -> int:
        """The site-variable dimension p_w (columns of A_w)."""
        return int(self.variables.shape[1])

    def dense_unit_D(self) -> Any:
        """``unit_D`` as an array of shape (m, n_units, a, g), also for a scaled site."""
        if self.unit_D is not None:
            return self.unit_D
        A = self.variables
        xp = array_namespace(A)
        return xp.full((self.m, self.n_units, 1, 1), self.scale, dtype=A.dtype, device=device_of(A))

    def _embed(self, Y: Any) -> Any:
        """(k, m, out) -> (k, *state_shape), zero outside ``columns``."""
        return embed_columns({self.columns: Y}, self.site_state_size, self.state_shape)

    def _restrict(self, V: Any) -> Any:
        """(k, *state_shape) -> (k, m, out), the site's columns."""
        return _restrict(array_namespace(V), self.spec, V)

    def D_operand(self) -> Any:
        """The array :func:`apply_D_block` and :func:`apply_DT` read for this site (built once).

        None for a scaled site, the diagonal (m, n_units) when a = g = 1, else ``unit_D``
        laid out as (m, a, g, n_units), contiguous: in that layout a pre-activation block
        (k, m, g·n) reads as (k, m, g, n) and a state block (k, m, a·n) as (k, m, a, n)
        without copies, so D and Dᵀ are a few broadcast products over whole (m, n) planes.
        """
        if self._D_operand is None and self.unit_D is not None:
            xp = array_namespace(self.unit_D)
            if self.a == 1 and self.g == 1:
                # a view, so that it follows unit_D; the built-in models give contiguous
                # unit_D (a strided one streams 2–3× slower through D's products on numpy)
                self._D_operand = self.unit_D[:, :, 0, 0]
            else:
                m, n, a, g = self.m, self.n_units, self.a, self.g
                D = xp.permute_dims(self.unit_D, (0, 2, 3, 1))
                # the flat reshape copies the permuted view into a contiguous buffer (the
                # array API has no "ascontiguousarray"); the second reshape is then free
                self._D_operand = xp.reshape(xp.reshape(D, (m * a * g * n,)), (m, a, g, n))
        return self._D_operand

    def apply_D_block(self, U: Any) -> Any:
        """D_w U on the site's own state columns: ``(k, m, width) -> (k, m, hi − lo)``.

        :meth:`apply_D` embeds this block in the whole state; the Kronecker core sums the
        blocks of all sites first and embeds once.
        """
        return apply_D_block(array_namespace(U), self.spec, self.D_operand(), U)

    def apply_D(self, U: Any) -> Any:
        """D_w U: pre-activation tangents ``(k, m, width)`` to state tangents ``(k, *state_shape)``."""
        return self._embed(apply_D_block(array_namespace(U), self.spec, self.D_operand(), U))

    def apply_DT(self, V: Any) -> Any:
        """D_wᵀ V: state tangents ``(k, *state_shape)`` to pre-activation space ``(k, m, width)``."""
        return apply_DT(array_namespace(V), self.spec, self.D_operand(), V)

    def __repr__(self) -> str:
        return f"Site({self.name!r}, m={self.m}, p={self.p}, width={self.width})"


class SiteSpec(NamedTuple):
    """What :func:`apply_D_block` and :func:`apply_DT` need of a site besides arrays (hashable).

    Attributes
    ----------
    m, site_state_size : int
        Number of sites and the per-site state length.
    columns : tuple (lo, hi)
        The per-site state columns the site writes.
    n_units, a, g : int
        D's unit structure (``unit_D`` of shape (m, n_units, a, g)).
    scale : float or None
        D = scale·I for a scaled site, else None.
    """

    m: int
    site_state_size: int
    columns: tuple[int, int]
    n_units: int
    a: int
    g: int
    scale: float | None


def _restrict(xp: Any, spec: SiteSpec, V: Any) -> Any:
    """(k, *state_shape) -> (k, m, hi − lo), the site's columns."""
    flat = xp.reshape(V, (V.shape[0], spec.m, spec.site_state_size))
    lo, hi = spec.columns
    return flat if lo == 0 and hi == spec.site_state_size else flat[:, :, lo:hi]


def apply_D_block(xp: Any, spec: SiteSpec, D: Any, U: Any) -> Any:
    """D U for the site ``spec`` with ``D = site.D_operand()``: (k, m, width) -> (k, m, hi − lo).

    A pure function of arrays (compiled as such on jax).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.sites import Site, apply_D_block
    >>> site = Site("w", xp.ones((3, 1)), state_shape=(3, 2), scale=0.5, width=2)
    >>> apply_D_block(xp, site.spec, site.D_operand(), xp.ones((1, 3, 2)))[0, 0, :]
    Array([0.5, 0.5], dtype=array_api_strict.float64)
    """
    if spec.scale is not None:
        return U if spec.scale == 1.0 else spec.scale * U
    if spec.a == 1 and spec.g == 1:
        return U * D
    k, n = U.shape[0], spec.n_units
    U4 = xp.reshape(U, (k, spec.m, 1, spec.g, n))
    # Y[:, :, j] = Σ_q D[:, j, q] ⊙ U_q, one gate at a time: no temporary larger than U
    Y = U4[:, :, :, 0, :] * D[:, :, 0, :]
    for q in range(1, spec.g):
        Y = Y + U4[:, :, :, q, :] * D[:, :, q, :]
    return xp.reshape(Y, (k, spec.m, spec.a * n))


def apply_DT(xp: Any, spec: SiteSpec, D: Any, V: Any) -> Any:
    """Dᵀ V for the site ``spec`` with ``D = site.D_operand()``: (k, *state_shape) -> (k, m, width).

    A pure function of arrays (compiled as such on jax).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.sites import Site, apply_DT
    >>> site = Site("w", xp.ones((3, 1)), state_shape=(3, 2), scale=0.5, width=2)
    >>> apply_DT(xp, site.spec, site.D_operand(), xp.ones((1, 3, 2))).shape
    (1, 3, 2)
    """
    R = _restrict(xp, spec, V)
    if spec.scale is not None:
        return R if spec.scale == 1.0 else spec.scale * R
    if spec.a == 1 and spec.g == 1:
        return R * D
    k, n = R.shape[0], spec.n_units
    R4 = xp.reshape(R, (k, spec.m, spec.a, 1, n))
    # U_q = Σ_j D[:, j, q] ⊙ R_j, one state row at a time: no temporary larger than U
    U = R4[:, :, 0, :, :] * D[:, 0, :, :]
    for j in range(1, spec.a):
        U = U + R4[:, :, j, :, :] * D[:, j, :, :]
    return xp.reshape(U, (k, spec.m, spec.g * n))


def embed_columns(blocks: dict[tuple[int, int], Any], size: int, state_shape: tuple[int, ...]) -> Any:
    """Glue per-site column blocks ``{(lo, hi): (k, m, hi − lo)}`` into ``(k, *state_shape)``.

    Columns no block covers are zero; blocks whose columns overlap are added.  Disjoint
    blocks (the MLP's layers) take one concatenation, a block covering every column none.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.sites import embed_columns
    >>> embed_columns({(1, 2): xp.ones((1, 2, 1))}, 3, (2, 3))
    Array([[[0., 1., 0.],
            [0., 1., 0.]]], dtype=array_api_strict.float64)
    """
    items = sorted(blocks.items(), key=lambda item: item[0])
    first = items[0][1]
    xp = array_namespace(first)
    k, m = first.shape[0], first.shape[1]
    if len(items) == 1 and items[0][0] == (0, size):
        return xp.reshape(first, (k, *state_shape))
    disjoint = all(a[0][1] <= b[0][0] for a, b in zip(items, items[1:], strict=False))
    if not disjoint:
        out = None
        for cols, Y in items:
            term = embed_columns({cols: Y}, size, state_shape)
            out = term if out is None else out + term
        return out

    def zeros(width: int) -> Any:
        return xp.zeros((k, m, width), dtype=first.dtype, device=device_of(first))

    parts, at = [], 0
    for (lo, hi), Y in items:
        if lo > at:
            parts.append(zeros(lo - at))
        parts.append(Y)
        at = hi
    if at < size:
        parts.append(zeros(size - at))
    full = parts[0] if len(parts) == 1 else xp.concat(parts, axis=-1)
    return xp.reshape(full, (k, *state_shape))


def _check_batch_major(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        msg = f"{where}: expected batch_major to be True or False, got {value!r}"
        raise TypeError(msg)
    return value


def _check_variables(
    variables: Any, state_shape: tuple[int, ...], where: str, *, n_sites: int | None = None
) -> None:
    """A_w must be a real floating 2-D array whose row count m divides prod(state_shape).

    With ``n_sites`` (a :class:`LinearSite` with several rows per site), ``n_sites`` must
    divide prod(state_shape) and A_w may have any positive number of rows.
    """
    xp = array_namespace(variables, where=where)
    if variables.ndim != 2:
        msg = f"{where}: expected variables (A_w) of shape (m, p), got shape {tuple(variables.shape)}"
        raise ValueError(msg)
    if not xp.isdtype(variables.dtype, "real floating"):
        msg = f"{where}: expected real floating variables (A_w), got {variables.dtype}"
        raise TypeError(msg)
    if n_sites is not None:
        if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
            msg = f"{where}: expected n_sites (m) to be a positive int, got {n_sites!r}"
            raise ValueError(msg)
        if int(variables.shape[0]) < 1 or prod(state_shape) % n_sites != 0:
            msg = (
                f"{where}: expected variables (A_w) with at least one row and n_sites={n_sites} "
                f"dividing prod(state_shape={state_shape}) = {prod(state_shape)}"
            )
            raise ValueError(msg)
        return
    m = int(variables.shape[0])
    if m < 1 or prod(state_shape) % m != 0:
        msg = (
            f"{where}: variables (A_w) has m={m} rows (one per site), which does not divide the "
            f"state size prod(state_shape={state_shape}) = {prod(state_shape)}"
        )
        raise ValueError(msg)


def _check_unit_D(unit_D: Any, variables: Any, where: str) -> None:
    """``unit_D`` must be (m, n_units, a, g) in the namespace, dtype and device of A_w.

    A wrong shape would broadcast silently in the matvec but be reshaped in the exact
    rules, so the two would disagree: it is rejected here.
    """
    xp = array_namespace(variables)
    d_xp = array_namespace(unit_D, where=where)
    if d_xp is not xp:
        msg = (
            f"{where}: unit_D comes from {namespace_name(d_xp)} but variables (A_w) from {namespace_name(xp)}"
        )
        raise TypeError(msg)
    if unit_D.dtype != variables.dtype:
        msg = (
            f"{where}: expected unit_D of dtype {variables.dtype} (the dtype of variables), "
            f"got {unit_D.dtype}"
        )
        raise TypeError(msg)
    if not same_device(device_of(unit_D), device_of(variables)):  # None: a jax tracer
        msg = f"{where}: unit_D lives on {device_of(unit_D)} but variables (A_w) on {device_of(variables)}"
        raise TypeError(msg)
    m = int(variables.shape[0])
    if unit_D.ndim != 4 or int(unit_D.shape[0]) != m or any(int(n) < 1 for n in unit_D.shape[1:]):
        msg = (
            f"{where}: expected unit_D of shape (m={m}, n_units, a, g) with positive sizes, "
            f"got {tuple(unit_D.shape)}"
        )
        raise ValueError(msg)


def _ones_column(like: Any, m: int) -> Any:
    """A column of ones ``(m, 1)`` like ``like`` (a bias's site variable)."""
    xp = array_namespace(like)
    return xp.ones((m, 1), dtype=like.dtype, device=device_of(like))


def site_variables(parts: list[Any], n_bias: int) -> Any:
    """A_w: the site-variable blocks ``(m, p_i)`` side by side, then ``n_bias`` columns of ones.

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.sites import site_variables
    >>> site_variables([xp.zeros((2, 1))], 2)
    Array([[0., 1., 1.],
           [0., 1., 1.]], dtype=array_api_strict.float64)
    """
    xp = array_namespace(*parts)
    m = parts[0].shape[0]
    cols = list(parts) + [_ones_column(parts[0], m) for _ in range(n_bias)]
    return cols[0] if len(cols) == 1 else xp.concat(cols, axis=1)


def flat_sites(a: Any) -> Any:
    """Reshape ``(B, T, p)`` site data to ``(B·T, p)`` row-major (the site order).

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models.base import flat_sites
    >>> flat_sites(xp.zeros((2, 3, 4))).shape
    (6, 4)
    """
    xp = array_namespace(a)
    return xp.reshape(a, (prod(a.shape[:-1]), a.shape[-1]))
