"""Site declarations: which parameter rows and site variables make each weight site.

A weight site computes u_w(s) = C_wᵀ a_w(s) with the site variables a_w(s) = [inputs…; 1…]
(one column of ones per bias).  So C_w stacks, in the order of a_w's columns, the
transposed weights Wᵀ (``in`` rows each) and the biases (one row each); its k_w columns are
the pre-activations.  A model declares this once, as a table of :class:`SiteDecl`: from it

- the trajectory builds its sites (:func:`site_variables_of` glues A_w from named arrays),
- the model answers :meth:`~kpflow.models.Model.site_rows` (the :data:`SiteRows` mapping that
  J_S's ``to_params`` / ``from_params`` and :meth:`~kpflow.models.Model.with_frozen` read),
- ``param_shapes`` can be read off it (:func:`declared_shapes`), and
- the model's docstring shows it (:func:`render_site_table`).

A model class of one's own declares its rows by overriding ``site_rows()`` (or ``site_table()``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from kpflow._array import array_namespace, device_of

__all__ = [
    "H_PREV",
    "NO_SITE",
    "X_T",
    "Dim",
    "SiteDecl",
    "SiteRows",
    "Term",
    "declared_shapes",
    "render_site_table",
    "rows_in_site",
    "site_rows_of",
    "site_variables_of",
    "table_rows",
    "trained_site_rows",
    "trained_sites",
    "with_site_table",
]

#: A site's rows, in order: (parameter name, (lo, hi)) means rows lo..hi of that parameter's
#: first axis, transposed (a weight of shape (out, in) fills ``in`` rows of C_w; a bias one row).
#: A third element ``"rows"`` says: rows lo..hi of a weight as they are, not transposed
#: (hi − lo rows of C_w; a weight stored (in, out), such as an embedding table).
SiteRows = list[tuple[Any, ...]]  # (str, (int, int)) or (str, (int, int), "rows")

#: The key, in a model's :meth:`~kpflow.models.Model.site_rows`, of the rows that reach no
#: site: slices of parameters whose derivative is exactly zero (attention's key bias), so that
#: no site variable carries them.  ``to_params`` gives them zeros; ``from_params`` drops them.
NO_SITE = ""

#: The names of the recurrent cells' site variables: the input x_t and the previous state h_{t−1}.
X_T = "x_t"
H_PREV = "h_{t−1}"

#: The kinds of D_w a declaration may name: per unit (``unit_D``), a multiple of the identity
#: (``scale``) or a general linear map (:class:`~kpflow.models.sites.LinearSite`).
D_KINDS = ("unit", "scaled", "linear")


@dataclass(frozen=True)
class Term:
    """One block of rows of a site's C_w: a slice of one parameter and the site variable it multiplies.

    Attributes
    ----------
    param : str
        The parameter's name (``param_shapes``).
    rows : tuple (lo, hi)
        Rows lo..hi of the parameter's first axis.
    input : str
        The site variable the block multiplies: a name of the trajectory's arrays (``"x_t"``,
        ``"h_{t−1}"``, …) or ``"1"`` for a bias (one row of C_w, a column of ones in A_w).
    width : int or None
        The parameter's second axis (None for a 1-D parameter, whose input is ``"1"``).
    as_rows : bool
        The slice enters C_w as it is (hi − lo rows; an embedding table stored (in, out)),
        not transposed.

    Examples
    --------
    >>> from kpflow.models.sites_table import Term
    >>> Term("weight_ih", (0, 3), "x_t", 2).n_rows, Term("bias_ih", (0, 3), "1").n_rows
    (2, 1)
    """

    param: str
    rows: tuple[Any, Any]
    input: str
    width: Any = None
    as_rows: bool = False

    @property
    def n_rows(self) -> Any:
        """How many rows of C_w the term fills (columns of A_w)."""
        if self.as_rows:
            return self.rows[1] - self.rows[0]
        return 1 if self.width is None else self.width

    def entry(self) -> tuple[Any, ...]:
        """The term as a :data:`SiteRows` entry."""
        return (self.param, self.rows, "rows") if self.as_rows else (self.param, self.rows)


@dataclass(frozen=True)
class SiteDecl:
    """A weight site, declared: its name, the terms of C_w in order and the kind of its D_w.

    Attributes
    ----------
    name : str
        The site's name (``traj.sites[i].name``).  :data:`NO_SITE` declares rows that reach no
        site (an exactly zero derivative).
    terms : tuple of Term
        C_w's row blocks, in the order of A_w's columns.
    D : {"unit", "scaled", "linear"}
        D_w per unit (``unit_D``), scale·I, or a general linear map.
    formula : str
        What D_w is, for the docs.

    Examples
    --------
    >>> from kpflow.models.sites_table import SiteDecl, Term
    >>> decl = SiteDecl("in", (Term("weight_ih", (6, 9), "x_t", 2), Term("bias_ih", (6, 9), "1")), "unit")
    >>> decl.rows(), decl.p
    ([('weight_ih', (6, 9)), ('bias_ih', (6, 9))], 3)
    """

    name: str
    terms: tuple[Term, ...]
    D: str = "unit"
    formula: str = ""

    def __post_init__(self) -> None:
        if self.D not in D_KINDS:
            msg = f"SiteDecl({self.name!r}): expected D to be one of {D_KINDS}, got {self.D!r}"
            raise ValueError(msg)

    @property
    def p(self) -> Any:
        """p_w: the rows of C_w (columns of A_w)."""
        return sum((t.n_rows for t in self.terms), 0)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The site variables, one per term, in the order of A_w's columns."""
        return tuple(t.input for t in self.terms)

    def rows(self) -> SiteRows:
        """The site's :data:`SiteRows`."""
        return [t.entry() for t in self.terms]


def table_rows(table: tuple[SiteDecl, ...]) -> dict[str, SiteRows]:
    """A site table's rows, ``{site name: SiteRows}`` (the :data:`NO_SITE` rows merged under one key).

    Examples
    --------
    >>> from kpflow.models import GRU
    >>> from kpflow.models.sites_table import table_rows
    >>> table_rows(GRU(2, 3).site_table())["hn"]
    [('weight_hh', (6, 9)), ('bias_hh', (6, 9))]
    """
    out: dict[str, SiteRows] = {}
    for decl in table:
        out[decl.name] = out.get(decl.name, []) + decl.rows()
    return out


def declared_shapes(table: tuple[SiteDecl, ...], order: tuple[str, ...] | None = None) -> dict[str, tuple]:
    """The parameters' shapes read off a site table: (rows, width) for a weight, (rows,) otherwise.

    A parameter's first axis is the largest ``hi`` of its terms.  The names come in the order
    of their first term, or in ``order`` (names of ``order`` first, in that order).

    Examples
    --------
    >>> from kpflow.models import GRU
    >>> from kpflow.models.sites_table import declared_shapes
    >>> declared_shapes(GRU(2, 3).site_table())
    {'weight_ih': (9, 2), 'weight_hh': (9, 3), 'bias_ih': (9,), 'bias_hh': (9,)}
    """
    extent: dict[str, Any] = {}
    width: dict[str, Any] = {}
    for decl in table:
        for t in decl.terms:
            hi = t.rows[1]
            extent[t.param] = hi if t.param not in extent else max(extent[t.param], hi)
            width[t.param] = t.width
    names = list(extent)
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        names.sort(key=lambda n: rank.get(n, len(rank)))
    return {n: (extent[n],) if width[n] is None else (extent[n], width[n]) for n in names}


def site_variables_of(table: tuple[SiteDecl, ...], arrays: dict[str, Any], *, like: Any) -> dict[str, Any]:
    """A_w of every declared site: ``arrays[term.input]`` side by side, ones for ``"1"``.

    Sites with the same inputs share one array.  ``arrays`` maps each input name to its site
    data ``(m, width)``; ``like`` gives m, dtype and device for the ones.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import RNN
    >>> from kpflow.models.sites_table import site_variables_of
    >>> A = site_variables_of(RNN(1, 2).site_table(), {"h_{t−1}": np.zeros((4, 2)), "x_t": np.ones((4, 1))},
    ...                       like=np.zeros((4, 1)))
    >>> A["hidden"][0]
    array([0., 0., 1., 1., 1.])
    """
    xp = array_namespace(like)
    m = int(like.shape[0])
    built: dict[tuple[str, ...], Any] = {}
    out = {}
    for decl in table:
        if decl.name == NO_SITE:
            continue
        key = decl.inputs
        if key not in built:
            parts = [
                xp.ones((m, 1), dtype=like.dtype, device=device_of(like)) if name == "1" else arrays[name]
                for name in key
            ]
            built[key] = parts[0] if len(parts) == 1 else xp.concat(parts, axis=1)
        out[decl.name] = built[key]
    return out


# -- reading a model's rows ----------------------------------------------------------------------
def site_rows_of(model: Any) -> dict[str, SiteRows] | None:
    """Which rows of each site's block C_w are which of ``model``'s named parameters, or None.

    Reads ``model.site_rows()`` (every :class:`~kpflow.models.Model` has it; None means not
    known).

    Examples
    --------
    >>> from kpflow.models import GRU
    >>> from kpflow.models.sites_table import site_rows_of
    >>> site_rows_of(GRU(2, 3))["in"]
    [('weight_ih', (6, 9)), ('bias_ih', (6, 9))]
    """
    method = getattr(model, "site_rows", None)
    return None if method is None else method()


def rows_in_site(entry: tuple, shapes: dict[str, tuple[int, ...]]) -> int:
    """How many rows of C_w (site-variable columns of A_w) one :data:`SiteRows` entry fills.

    Examples
    --------
    >>> from kpflow.models.sites_table import rows_in_site
    >>> rows_in_site(("weight_ih", (0, 3)), {"weight_ih": (9, 2)}), rows_in_site(("b", (0, 3)), {"b": (9,)})
    (2, 1)
    """
    lo, hi = entry[1]
    if len(entry) > 2 and entry[2] == "rows":
        return hi - lo
    shape = shapes[entry[0]]
    return shape[1] if len(shape) == 2 else 1


def trained_site_rows(model: Any) -> dict[str, SiteRows] | None:
    """:func:`site_rows_of` for the parameters gradient descent moves: ``model.frozen`` left out.

    A frozen parameter's rows are dropped from every site it feeds, and a site left with no
    rows is dropped; K, J_S and NTK_S are then over the trained parameters alone
    (:meth:`kpflow.models.Model.with_frozen`).

    Examples
    --------
    >>> from kpflow.models import GRU
    >>> from kpflow.models.sites_table import trained_site_rows
    >>> rows = trained_site_rows(GRU(2, 3).with_frozen(["weight_ih"]))
    >>> rows["r"], rows["in"]
    ([('weight_hh', (0, 3)), ('bias_ih', (0, 3)), ('bias_hh', (0, 3))], [('bias_ih', (6, 9))])
    """
    rows = site_rows_of(model)
    frozen: frozenset[str] = getattr(model, "frozen", frozenset())
    if rows is None or not frozen:
        return rows
    kept = {site: [e for e in entries if e[0] not in frozen] for site, entries in rows.items()}
    return {site: entries for site, entries in kept.items() if entries}


def trained_sites(model: Any, sites: list[Any]) -> list[Any]:
    """``sites`` without the site-variable columns of ``model.frozen`` (sites left empty dropped).

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.models import GRU
    >>> from kpflow.models.sites_table import trained_sites
    >>> model = GRU(2, 3)
    >>> traj = model.run(model.init(0), np.ones((1, 2, 2)))
    >>> [s.p for s in trained_sites(model.with_frozen(["weight_ih"]), traj.sites)]
    [5, 5, 1, 4]
    """
    rows, shapes = site_rows_of(model), model.param_shapes()
    if rows is None:  # with_frozen refuses such a model
        msg = f"{type(model).__name__}: frozen parameters without a site layout; this is a kpflow bug"
        raise RuntimeError(msg)
    out = []
    for site in sites:
        spans: list[tuple[int, int]] = []
        at = 0
        entries = rows[site.name] if site.rows is None else site.rows
        for entry in entries:
            name, n = entry[0], rows_in_site(entry, shapes)
            if name not in model.frozen:
                if spans and spans[-1][1] == at:  # adjacent trained columns: one slice
                    spans[-1] = (spans[-1][0], at + n)
                else:
                    spans.append((at, at + n))
            at += n
        if at != site.p:
            msg = (
                f"{type(model).__name__}: site {site.name!r} has p={site.p} site variables but "
                f"its site rows fill {at}; this is a kpflow bug"
            )
            raise RuntimeError(msg)
        if not spans:
            continue
        if spans == [(0, at)]:
            out.append(site)
            continue
        A = site.variables
        parts = [A[:, lo:hi] for lo, hi in spans]
        kept = copy.copy(site)
        kept.variables = parts[0] if len(parts) == 1 else array_namespace(A).concat(parts, axis=1)
        kept.rows = [e for e in entries if e[0] not in model.frozen]
        out.append(kept)
    return out


# -- the table in a docstring ------------------------------------------------------------------------
@dataclass(frozen=True)
class Dim:
    """A named size for rendering a site table: ``2 * Dim("H")`` prints as ``2H``.

    A model's table builder takes its sizes as arguments; called with :class:`Dim` s it gives
    the table in symbols (:func:`render_site_table`).

    Examples
    --------
    >>> from kpflow.models.sites_table import Dim
    >>> H = Dim("H")
    >>> str(0 * H), str(H), str(3 * H), 2 * H < 3 * H
    ('0', 'H', '3H', True)
    """

    name: str
    coef: int = 1

    def __mul__(self, k: int) -> Dim:
        return Dim(self.name, self.coef * int(k))

    __rmul__ = __mul__

    def __add__(self, other: Any) -> Dim:
        if isinstance(other, Dim) and other.name == self.name:
            return Dim(self.name, self.coef + other.coef)
        if other == 0:
            return self
        return NotImplemented

    __radd__ = __add__

    def __sub__(self, other: Any) -> Dim:
        return self + (-1) * other

    def __lt__(self, other: Any) -> bool:
        return self.coef < (other.coef if isinstance(other, Dim) else other)

    def __gt__(self, other: Any) -> bool:
        return self.coef > (other.coef if isinstance(other, Dim) else other)

    def __str__(self) -> str:
        if self.coef == 0:
            return "0"
        return self.name if self.coef == 1 else f"{self.coef}{self.name}"


def _render_term(t: Term, extent: Any) -> str:
    lo, hi = t.rows
    full = str(lo) == "0" and str(hi) == str(extent)
    text = t.param if full else f"{t.param}[{lo}:{hi}]"
    return text if t.as_rows or t.width is None else text + "ᵀ"


def render_site_table(table: tuple[SiteDecl, ...]) -> str:
    """A site table as an RST table: site, rows of C_w, site variables a(s), D_w.

    Examples
    --------
    >>> from kpflow.models.sites_table import Dim, SiteDecl, Term, render_site_table
    >>> H = Dim("H")
    >>> print(render_site_table((SiteDecl("w", (Term("W", (0, H), "x", 2),), "scaled", "dt·I"),)))
    ====  ===  ====  ============
    site  C_w  a(s)  D_w
    ====  ===  ====  ============
    w     Wᵀ   [x]   scaled: dt·I
    ====  ===  ====  ============
    """
    extent = {n: s[0] for n, s in declared_shapes(table).items()}
    rows = [("site", "C_w", "a(s)", "D_w")]
    for decl in table:
        name = "(none)" if decl.name == NO_SITE else decl.name
        terms = "; ".join(_render_term(t, extent[t.param]) for t in decl.terms)
        inputs = "—" if decl.name == NO_SITE else "[" + "; ".join(decl.inputs) + "]"
        D = "zero" if decl.name == NO_SITE else decl.D + (f": {decl.formula}" if decl.formula else "")
        rows.append((name, terms, inputs, D))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, _row(rows[0], widths), rule]
    lines += [_row(r, widths) for r in rows[1:]]
    lines.append(rule)
    return "\n".join(lines)


def _row(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


#: The line of a model's docstring that :func:`with_site_table` replaces by the rendered table.
TABLE_MARK = "{site_table}"


def with_site_table(doc: str | None, table: tuple[SiteDecl, ...]) -> str | None:
    """``doc`` with its :data:`TABLE_MARK` line replaced by the rendered table, indented as that line.

    Examples
    --------
    >>> from kpflow.models.sites_table import SiteDecl, Term, with_site_table
    >>> doc = "Sites:\\n\\n    {site_table}\\n"
    >>> print(with_site_table(doc, (SiteDecl("w", (Term("b", (0, 2), "1"),), "unit"),)))
    Sites:
    <BLANKLINE>
        ====  ===  ====  ====
        site  C_w  a(s)  D_w
        ====  ===  ====  ====
        w     b    [1]   unit
        ====  ===  ====  ====
    <BLANKLINE>
    """
    if doc is None:
        return None
    out = []
    for line in doc.split("\n"):
        if line.strip() == TABLE_MARK:
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + row if row else row for row in render_site_table(table).split("\n")]
        else:
            out.append(line)
    return "\n".join(out)
