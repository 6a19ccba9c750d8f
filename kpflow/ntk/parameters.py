"""The flat parameter vector of J_S, F and the output NTK's factor, and its named layout.

The domain of :class:`~kpflow.ntk.ParameterMap`, :class:`~kpflow.ntk.StateJacobian` and
:class:`~kpflow.ntk.OutputJacobian` is a flat parameter vector: the sites in order, each
block C_w flattened row-major.  ``split`` / ``join`` convert to per-site blocks,
``to_params`` / ``from_params`` to the model's named parameters; which rows of a site are
which parameter is the model's to say (:meth:`kpflow.models.Model.site_rows`, read off its
site table), and :func:`site_parameters` reads it.
"""

from __future__ import annotations

from typing import Any

from kpflow._array import check_array
from kpflow.models.sites_table import NO_SITE, SiteRows, rows_in_site, site_rows_of, trained_site_rows
from kpflow.operators.base import LinearOperator

__all__ = ["NO_SITE", "SiteRows", "site_parameters", "trained_parameters"]


def _kind(entry: tuple) -> str | None:
    return entry[2] if len(entry) > 2 else None


def site_parameters(model: Any) -> dict[str, SiteRows] | None:
    """Which rows of each site's block C_w are which of the model's named parameters.

    Site w computes u_w(s) = C_wᵀ a_w(s) with the site variables a_w(s) = [inputs…; 1…]
    (one column of ones per bias).  So C_w stacks, in the order of a_w's columns, the
    transposed weights Wᵀ (``in`` rows each) and the biases (one row each); its k_w columns
    are the pre-activations.  For site ``name`` the answer lists ``(param, (lo, hi))``: rows
    ``lo:hi`` of ``param``'s first axis, transposed, in the order of the site's rows (a third
    element ``"rows"``: the slice as it is, an embedding table); rows whose derivative is
    exactly zero, which no site carries, come under :data:`NO_SITE`.

    The answer is the model's own, ``model.site_rows()``: every built-in model reads it off
    its site table (shown in its docstring, e.g. :class:`kpflow.models.GRU`), the hook models
    (:class:`kpflow.models.Recurrent`, ``FeedForward``, ``Implicit``) from their hook calls.
    A model class of one's own declares its rows by overriding ``site_rows()``; None means
    "not known", and then ``to_params`` / ``from_params`` of its Jacobians raise.

    Parameters
    ----------
    model : Model

    Returns
    -------
    dict or None
        ``{site name: [(param name, (lo, hi)), ...]}``.

    Examples
    --------
    >>> from kpflow.models import GRU
    >>> from kpflow.ntk import site_parameters
    >>> site_parameters(GRU(2, 3))["in"]
    [('weight_ih', (6, 9)), ('bias_ih', (6, 9))]
    """
    return site_rows_of(model)


def trained_parameters(model: Any) -> dict[str, SiteRows] | None:
    """:func:`site_parameters` of the parameters gradient descent moves: ``model.frozen`` left out.

    A frozen parameter's rows are dropped from every site it feeds, and a site left with
    no rows is dropped; K, J_S and NTK_S are then over the trained parameters alone
    (:meth:`kpflow.models.Model.with_frozen`).  Without frozen parameters this is
    :func:`site_parameters` itself.

    Examples
    --------
    >>> from kpflow.models import GRU
    >>> from kpflow.ntk.jacobian import trained_parameters
    >>> rows = trained_parameters(GRU(2, 3).with_frozen(["weight_ih"]))
    >>> rows["r"], rows["in"]
    ([('weight_hh', (0, 3)), ('bias_ih', (0, 3)), ('bias_hh', (0, 3))], [('bias_ih', (6, 9))])
    """
    return trained_site_rows(model)


# -- the flat parameter vector ------------------------------------------------------------------------
def _unique_names(names: list[str]) -> list[str]:
    """``names`` with repeats made unique by a ``#2``, ``#3``, … suffix."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


class _Blocks:
    """The flat layout of per-site blocks: name -> (offset, p_w, k_w), in site order."""

    def __init__(self, names: list[str], shapes: list[tuple[int, int]]) -> None:
        self.names = _unique_names(names)
        self.shapes = dict(zip(self.names, shapes, strict=True))
        self.offsets: dict[str, int] = {}
        total = 0
        for name, (p, k) in self.shapes.items():
            self.offsets[name] = total
            total += p * k
        self.size = total


class _FlatParameters(LinearOperator):
    """Shared by the operators whose domain is the flat parameter vector: split, join, to/from params."""

    _blocks: _Blocks
    _rows: dict[str, SiteRows] | None  # site name -> rows (None: no known named layout)
    _param_shapes: dict[str, tuple[int, ...]]

    @property
    def site_names(self) -> list[str]:
        """The keys of :meth:`split`: the sites' names, in the order of the flat vector."""
        return list(self._blocks.names)

    @property
    def site_shapes(self) -> dict[str, tuple[int, int]]:
        """``{site name: (p_w, k_w)}``: each block's shape (site variables × pre-activations)."""
        return dict(self._blocks.shapes)

    def _check_vector(self, v: Any, where: str) -> None:
        check_array(v, xp=self.xp, dtype=self.dtype, device=self.device, shape=None, name="v", where=where)
        if v.ndim < 1 or int(v.shape[-1]) != self._blocks.size:
            msg = f"{where}: expected v of shape (..., {self._blocks.size}), got {tuple(v.shape)}"
            raise ValueError(msg)

    def split(self, v: Any) -> dict[str, Any]:
        """A flat parameter vector ``(..., p)`` as per-site blocks ``{name: (..., p_w, k_w)}``.

        Block ``C_w`` is the site's parameters in the layout of :func:`site_parameters`.
        Leading axes (e.g. k eigenvectors) are kept.

        Examples
        --------
        >>> import numpy as np
        >>> import kpflow
        >>> from kpflow.models import GRU
        >>> J = kpflow.state_jacobian(GRU(1, 2).run(GRU(1, 2).init(0), np.ones((1, 2, 1))))
        >>> {k: b.shape for k, b in J.split(np.zeros((5, 30))).items()}
        {'r': (5, 5, 2), 'z': (5, 5, 2), 'in': (5, 2, 2), 'hn': (5, 3, 2)}
        """
        where = f"{type(self).__name__}.split"
        self._check_vector(v, where)
        xp, lead = self.xp, tuple(v.shape[:-1])
        out = {}
        for name, (p, k) in self._blocks.shapes.items():
            lo = self._blocks.offsets[name]
            out[name] = xp.reshape(v[..., lo : lo + p * k], (*lead, p, k))
        return out

    def join(self, blocks: dict[str, Any]) -> Any:
        """The inverse of :meth:`split`: per-site blocks ``{name: (..., p_w, k_w)}`` to ``(..., p)``.

        Examples
        --------
        >>> import numpy as np
        >>> import kpflow
        >>> from kpflow.models import RNN
        >>> J = kpflow.state_jacobian(RNN(1, 2).run(RNN(1, 2).init(0), np.ones((1, 2, 1))))
        >>> J.join({"hidden": np.ones((5, 2))}).shape
        (10,)
        """
        where = f"{type(self).__name__}.join"
        if not isinstance(blocks, dict) or set(blocks) != set(self._blocks.names):
            got = sorted(blocks) if isinstance(blocks, dict) else type(blocks).__name__
            msg = f"{where}: expected blocks to be a dict with the keys {self._blocks.names}, got {got}"
            raise ValueError(msg)
        xp, lead = self.xp, None
        parts = []
        for name, shape in self._blocks.shapes.items():
            b = blocks[name]
            check_array(
                b,
                xp=xp,
                dtype=self.dtype,
                device=self.device,
                shape=None,
                name=f"blocks[{name!r}]",
                where=where,
            )
            if (
                b.ndim < 2
                or tuple(b.shape[-2:]) != shape
                or (lead is not None and tuple(b.shape[:-2]) != lead)
            ):
                want = f"(..., {shape[0]}, {shape[1]})" if lead is None else str((*lead, *shape))
                msg = f"{where}: expected blocks[{name!r}] of shape {want}, got {tuple(b.shape)}"
                raise ValueError(msg)
            lead = tuple(b.shape[:-2])
            parts.append(xp.reshape(b, (*lead, shape[0] * shape[1])))
        return parts[0] if len(parts) == 1 else xp.concat(parts, axis=-1)

    def _layout(self, where: str) -> dict[str, SiteRows]:
        if self._rows is None:
            msg = (
                f"{where}: kpflow does not know which rows of the sites are which named parameter for "
                "this model (its site_rows() is None); give its class a site_rows() method "
                "(kpflow.models.Model.site_rows), or use split"
            )
            raise TypeError(msg)
        return self._rows

    def to_params(self, v: Any) -> dict[str, Any]:
        """A flat parameter vector ``(..., p)`` as the model's named parameters ``{name: (..., *shape)}``.

        ``J.to_params(J.rmatvec(g))`` is the gradient dθ of ⟨g, z⟩ in the model's own
        parameter names (torch's for the built-in models).  Leading axes are kept.  Rows
        that no site carries (:data:`NO_SITE`: an exactly zero derivative, such as
        attention's key bias) come out as zeros.

        Examples
        --------
        >>> import numpy as np
        >>> import kpflow
        >>> from kpflow.models import RNN
        >>> J = kpflow.state_jacobian(RNN(1, 2).run(RNN(1, 2).init(0), np.ones((1, 2, 1))))
        >>> J.to_params(np.arange(10.0))        # rows of C = [W_hhᵀ; W_ihᵀ; b_ih; b_hh]
        {'weight_ih': array([[4.],
               [5.]]), 'weight_hh': array([[0., 2.],
               [1., 3.]]), 'bias_ih': array([6., 7.]), 'bias_hh': array([8., 9.])}
        """
        where = f"{type(self).__name__}.to_params"
        rows = self._layout(where)
        xp = self.xp
        blocks = self.split(v)
        pieces: dict[str, list[tuple[int, Any]]] = {name: [] for name in self._param_shapes}
        lead = tuple(v.shape[:-1])
        for entry in rows.get(NO_SITE, []):  # an exactly zero derivative
            pname, (lo, hi) = entry[0], entry[1]
            shape = self._param_shapes[pname]
            zero = xp.zeros((*lead, hi - lo, *shape[1:]), dtype=self.dtype, device=self.device)
            pieces[pname].append((lo, zero))
        for site, entries in rows.items():
            if site == NO_SITE:
                continue
            C = blocks[site]
            r = 0
            for entry in entries:
                pname, lo = entry[0], entry[1][0]
                shape = self._param_shapes[pname]
                n = rows_in_site(entry, self._param_shapes)
                if _kind(entry) == "rows":
                    pieces[pname].append((lo, C[..., r : r + n, :]))
                elif len(shape) == 2:
                    pieces[pname].append((lo, xp.matrix_transpose(C[..., r : r + n, :])))
                else:
                    pieces[pname].append((lo, C[..., r, :]))
                r += n
        out = {}
        for pname, shape in self._param_shapes.items():
            parts = [a for _, a in sorted(pieces[pname], key=lambda t: t[0])]
            axis = -2 if len(shape) == 2 else -1
            out[pname] = parts[0] if len(parts) == 1 else xp.concat(parts, axis=axis)
        return out

    def from_params(self, params: dict[str, Any]) -> Any:
        """The inverse of :meth:`to_params`: named parameters ``{name: (..., *shape)}`` to ``(..., p)``.

        ``J.matvec(J.from_params(dθ))`` is the change of the states along the parameter
        direction dθ, to first order (a Jacobian-vector product).  Rows under
        :data:`NO_SITE` move nothing and are dropped, so ``to_params(from_params(θ))`` is θ
        with those rows zero.

        Examples
        --------
        >>> import numpy as np
        >>> import kpflow
        >>> from kpflow.models import RNN
        >>> traj = RNN(1, 2).run(RNN(1, 2).init(0), np.ones((1, 2, 1)))
        >>> J = kpflow.state_jacobian(traj)
        >>> v = J.from_params(traj.params)        # θ itself, as a flat vector
        >>> v.shape, bool(np.array_equal(J.to_params(v)["weight_hh"], traj.params["weight_hh"]))
        ((10,), True)
        """
        where = f"{type(self).__name__}.from_params"
        rows = self._layout(where)
        xp = self.xp
        if not isinstance(params, dict) or set(params) != set(self._param_shapes):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            msg = (
                f"{where}: expected params to be a dict with the keys {sorted(self._param_shapes)}, got {got}"
            )
            raise ValueError(msg)
        lead = None
        for pname, shape in self._param_shapes.items():
            a = params[pname]
            check_array(
                a,
                xp=xp,
                dtype=self.dtype,
                device=self.device,
                shape=None,
                name=f"params[{pname!r}]",
                where=where,
            )
            nd = a.ndim - len(shape)
            if nd < 0 or tuple(a.shape[nd:]) != shape or (lead is not None and tuple(a.shape[:nd]) != lead):
                want = f"(..., {', '.join(map(str, shape))})" if lead is None else str((*lead, *shape))
                msg = f"{where}: expected params[{pname!r}] of shape {want}, got {tuple(a.shape)}"
                raise ValueError(msg)
            lead = tuple(a.shape[:nd])
        blocks = {}
        for site, entries in rows.items():
            if site == NO_SITE:  # moves nothing
                continue
            parts = []
            for entry in entries:
                pname, (lo, hi) = entry[0], entry[1]
                a = params[pname]
                if _kind(entry) == "rows":
                    parts.append(a[..., lo:hi, :])
                elif len(self._param_shapes[pname]) == 2:
                    parts.append(xp.matrix_transpose(a[..., lo:hi, :]))
                else:
                    parts.append(a[..., None, lo:hi])
            blocks[site] = parts[0] if len(parts) == 1 else xp.concat(parts, axis=-2)
        return self.join(blocks)


def _checked_rows(
    rows: dict[str, SiteRows] | None,
    blocks: _Blocks,
    shapes: dict[str, tuple[int, ...]],
    where: str,
) -> dict[str, SiteRows] | None:
    """``rows`` after checking it maps the sites' entries one to one onto the parameters."""
    if rows is None:
        return None
    if set(rows) - {NO_SITE} != set(blocks.names):
        msg = f"{where}: site_parameters names the sites {sorted(rows)}, the trajectory has {blocks.names}"
        raise ValueError(msg)
    covered: dict[str, list[tuple[int, int]]] = {name: [] for name in shapes}
    for site, entries in rows.items():
        p, k = blocks.shapes[site] if site != NO_SITE else (0, 0)
        n_rows = 0
        for entry in entries:
            pname, (lo, hi), kind = entry[0], entry[1], _kind(entry)
            if pname not in shapes:
                msg = f"{where}: site_parameters names {pname!r}, which is not a parameter ({sorted(shapes)})"
                raise ValueError(msg)
            shape = shapes[pname]
            if kind not in (None, "rows") or (kind == "rows" and (len(shape) != 2 or site == NO_SITE)):
                msg = (
                    f"{where}: site {site!r}: expected the entry kind 'rows' for a weight (2-d) in a "
                    f"site, or none, got {kind!r} for {pname!r} (shape {shape})"
                )
                raise ValueError(msg)
            # C_w's columns: rows lo..hi of the parameter or, with "rows", its second axis
            width = shape[1] if kind == "rows" else hi - lo
            if (site != NO_SITE and width != k) or not 0 <= lo < hi <= shape[0]:
                msg = (
                    f"{where}: site {site!r} has {k} columns but site_parameters gives rows "
                    f"{lo}:{hi} of {pname!r} (shape {shape}{'' if kind is None else ', ' + kind})"
                )
                raise ValueError(msg)
            if site != NO_SITE:
                n_rows += rows_in_site(entry, shapes)
            covered[pname].append((lo, hi))
        if n_rows != p:
            msg = f"{where}: site {site!r} has p={p} site variables but site_parameters fills {n_rows} rows"
            raise ValueError(msg)
    for pname, spans in covered.items():
        spans.sort()
        ends = [0] + [hi for _, hi in spans]
        if [lo for lo, _ in spans] != ends[:-1] or ends[-1] != shapes[pname][0]:
            msg = (
                f"{where}: site_parameters does not cover {pname!r} (rows {spans} of {shapes[pname][0]}) once"
            )
            raise ValueError(msg)
    return rows
