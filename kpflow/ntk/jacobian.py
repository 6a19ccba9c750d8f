"""The parameter side of NTK_S = P K Pᵀ: the state Jacobian J_S = dz/dθ = P F.

The Kronecker core K = Σ_w D_w (A_w A_wᵀ ⊗ I) D_wᵀ is a Gram matrix, K = F Fᵀ, with

    F C = Σ_w D_w (A_w C_w),        Fᵀ V = (A_wᵀ (D_wᵀ V))_w,

where C_w (p_w × k_w) is a block of parameters per weight site (row j of C_w multiplies
the site variable a_w(s)_j, column g is pre-activation g).  Then J_S = P F and

    NTK_S = J_S J_Sᵀ,        J_Sᵀ J_S = the Gauss–Newton matrix of a squared loss on z.

Both Gram products have the same nonzero spectrum; with fewer parameters than states the
parameter side J_Sᵀ J_S is the smaller one (docs/jacobian.md).

- :class:`ParameterMap` is F (the factor of K); :class:`StateJacobian` is J_S = P F, or
  E J_S for a block of the state (the LSTM's h); :class:`OutputJacobian` is the factor
  [C̃ P F | F_ro] of the output NTK, the readout's own parameters last.
- Their domain is a flat parameter vector: the sites in order, each block C_w flattened
  row-major.  ``split`` / ``join`` convert to per-site blocks, ``to_params`` /
  ``from_params`` to the model's named parameters (``site_parameters`` says which rows of
  a site are which weight).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from kpflow._array import check_array
from kpflow.models.attention import SelfAttention
from kpflow.models.base import Site, Trajectory
from kpflow.models.feedforward import FeedForward
from kpflow.models.gru import GRU
from kpflow.models.hooks import Recurrent
from kpflow.models.implicit import Implicit
from kpflow.models.leaky import LeakyRNN
from kpflow.models.lstm import LSTM
from kpflow.models.mlp import MLP
from kpflow.models.rnn import RNN
from kpflow.models.sites import (
    LinearSiteSpec,
    SiteSpec,
    apply_site_D,
    apply_site_DT,
    embed_columns,
)
from kpflow.models.transformer import TransformerEncoder
from kpflow.ntk.kernel import check_trajectory, compiled, product_operands
from kpflow.ntk.propagator import Propagator
from kpflow.operators.base import LinearOperator, meta_of_array

if TYPE_CHECKING:
    from kpflow.ntk.global_ntk import ReadoutMap

__all__ = ["OutputJacobian", "ParameterMap", "StateJacobian", "site_parameters", "state_jacobian"]

#: A site's rows, in order: (parameter name, (lo, hi)) means rows lo..hi of that parameter's
#: first axis, transposed (a weight of shape (out, in) fills ``in`` rows of C_w; a bias one row).
#: A third element ``"rows"`` says: rows lo..hi of a weight as they are, not transposed
#: (hi − lo rows of C_w; a weight stored (in, out), such as an embedding table).
SiteRows = list[tuple[Any, ...]]  # (str, (int, int)) or (str, (int, int), "rows")

#: The key, in :func:`site_parameters`'s answer, of the rows that reach no site: slices of
#: parameters whose derivative is exactly zero (attention's key bias), so that no site
#: variable carries them.  ``to_params`` gives them zeros; ``from_params`` drops them.
NO_SITE = ""


def _kind(entry: tuple) -> str | None:
    return entry[2] if len(entry) > 2 else None


def _rows_in_site(entry: tuple, shapes: dict[str, tuple[int, ...]]) -> int:
    """How many rows of C_w (site-variable columns of A_w) one :data:`SiteRows` entry fills."""
    lo, hi = entry[1]
    if _kind(entry) == "rows":
        return hi - lo
    shape = shapes[entry[0]]
    return shape[1] if len(shape) == 2 else 1


# -- which rows of a site are which named parameter ---------------------------------------------------
@functools.singledispatch
def site_parameters(model: Any) -> dict[str, SiteRows] | None:
    """Which rows of each site's block C_w are which of the model's named parameters.

    Site w computes u_w(s) = C_wᵀ a_w(s) with the site variables a_w(s) = [inputs…; 1…]
    (one column of ones per bias).  So C_w stacks, in the order of a_w's columns, the
    transposed weights Wᵀ (``in`` rows each) and the biases (one row each); its k_w columns
    are the pre-activations.  For site ``name`` the answer lists ``(param, (lo, hi))``:
    rows ``lo:hi`` of ``param``'s first axis, transposed, in the order of the site's rows.

    ====================  ======================================================================
    model                 site: rows of C_w
    ====================  ======================================================================
    RNN                   ``hidden``: weight_hhᵀ, weight_ihᵀ, bias_ih, bias_hh
    LeakyRNN              ``hidden``: weight_hhᵀ, weight_ihᵀ, bias
    GRU (gates r, z, n)   ``r``: weight_ih[0:H]ᵀ, weight_hh[0:H]ᵀ, bias_ih[0:H], bias_hh[0:H];
                          ``z``: the same with rows H:2H; ``in``: weight_ih[2H:3H]ᵀ,
                          bias_ih[2H:3H]; ``hn``: weight_hh[2H:3H]ᵀ, bias_hh[2H:3H]
    LSTM                  ``ih+hh``: weight_ihᵀ, weight_hhᵀ, bias_ih, bias_hh (4H columns,
                          gates i, f, g, o as torch stacks them)
    MLP                   ``layers.l``: layers.l.weightᵀ, layers.l.bias
    SelfAttention         ``in_proj.q``: in_proj_weight[0:d]ᵀ, in_proj_bias[0:d]; ``in_proj.k``:
                          in_proj_weight[d:2d]ᵀ; ``in_proj.v``: rows 2d:3d of both;
                          ``out_proj``: out_proj.weightᵀ, out_proj.bias; the key bias
                          in_proj_bias[d:2d] under :data:`NO_SITE` (it shifts a row of
                          scores, which softmax ignores: its derivative is exactly zero)
    TransformerEncoder    per layer, prefixed ``layers.l.``: self-attention's sites (prefixed
                          ``self_attn.``), ``linear1`` and ``linear2`` (weightᵀ, bias), and one
                          site per LayerNorm parameter (γ or β, one row); ``norm.weight``,
                          ``norm.bias``; ``pos_embedding``: pos_embedding as ``"rows"`` (row n
                          is added at position n)
    Recurrent, Implicit,  one site per parameter, named after it: its transpose (a weight) or
    FeedForward           the bias itself (user-defined models, :mod:`kpflow.models.hooks`)
    ====================  ======================================================================

    (Without bias the bias rows are absent.)  Every built-in model's parameters map one to
    one onto the entries of its site blocks and the exactly-zero rows under
    :data:`NO_SITE`.  Register a rule for a new model type with
    ``site_parameters.register``; the generic answer ``None`` means "not known", and then
    ``to_params`` / ``from_params`` of its Jacobians raise.

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
    return None


def _with_bias(rows: SiteRows, bias: bool, biases: SiteRows) -> SiteRows:
    return rows + biases if bias else rows


@site_parameters.register
def _(model: RNN) -> dict[str, SiteRows]:
    H = model.n_hidden
    full = (0, H)
    rows = [("weight_hh", full), ("weight_ih", full)]
    return {"hidden": _with_bias(rows, model.bias, [("bias_ih", full), ("bias_hh", full)])}


@site_parameters.register
def _(model: LeakyRNN) -> dict[str, SiteRows]:
    full = (0, model.n_hidden)
    return {"hidden": _with_bias([("weight_hh", full), ("weight_ih", full)], model.bias, [("bias", full)])}


@site_parameters.register
def _(model: GRU) -> dict[str, SiteRows]:
    H, b = model.n_hidden, model.bias
    out: dict[str, SiteRows] = {}
    for name, g in (("r", 0), ("z", 1)):
        gate = (g * H, (g + 1) * H)
        out[name] = _with_bias(
            [("weight_ih", gate), ("weight_hh", gate)], b, [("bias_ih", gate), ("bias_hh", gate)]
        )
    n = (2 * H, 3 * H)
    out["in"] = _with_bias([("weight_ih", n)], b, [("bias_ih", n)])
    out["hn"] = _with_bias([("weight_hh", n)], b, [("bias_hh", n)])
    return out


@site_parameters.register
def _(model: LSTM) -> dict[str, SiteRows]:
    full = (0, 4 * model.n_hidden)
    rows = [("weight_ih", full), ("weight_hh", full)]
    return {"ih+hh": _with_bias(rows, model.bias, [("bias_ih", full), ("bias_hh", full)])}


@site_parameters.register
def _(model: MLP) -> dict[str, SiteRows]:
    out: dict[str, SiteRows] = {}
    for l in range(model.n_layers):
        full = (0, model.widths[l + 1])
        out[f"layers.{l}"] = _with_bias(
            [(f"layers.{l}.weight", full)], model.bias, [(f"layers.{l}.bias", full)]
        )
    return out


def _attention_rows(model: SelfAttention, prefix: str = "") -> dict[str, SiteRows]:
    d, b, pre = model.d_model, model.bias, prefix
    W, bias = pre + "in_proj_weight", pre + "in_proj_bias"
    q, k, v = (0, d), (d, 2 * d), (2 * d, 3 * d)
    out = {
        pre + "in_proj.q": _with_bias([(W, q)], b, [(bias, q)]),
        pre + "in_proj.k": [(W, k)],
        pre + "in_proj.v": _with_bias([(W, v)], b, [(bias, v)]),
        pre + "out_proj": _with_bias([(pre + "out_proj.weight", q)], b, [(pre + "out_proj.bias", q)]),
    }
    if b:  # the key bias adds q_n·b_K to every score of row n, which softmax ignores
        out[NO_SITE] = [(bias, k)]
    return out


site_parameters.register(SelfAttention, _attention_rows)


@site_parameters.register
def _(model: TransformerEncoder) -> dict[str, SiteRows]:
    d, f, b = model.d_model, model.d_ff, model.bias
    out: dict[str, SiteRows] = {}

    def norm(name: str) -> None:  # γ and β: a (d, 1) weight with site variable 1, one row each
        out[name + ".weight"] = [(name + ".weight", (0, d))]
        if b:
            out[name + ".bias"] = [(name + ".bias", (0, d))]

    for l in range(model.n_layers):
        pre = f"layers.{l}."
        attention = _attention_rows(model.attention, pre + "self_attn.")
        out[NO_SITE] = out.get(NO_SITE, []) + attention.pop(NO_SITE, [])
        out.update(attention)
        norm(pre + "norm1")
        for name, width in (("linear1", f), ("linear2", d)):
            out[pre + name] = _with_bias(
                [(f"{pre}{name}.weight", (0, width))], b, [(f"{pre}{name}.bias", (0, width))]
            )
        norm(pre + "norm2")
    if model.final_norm:
        norm("norm")
    if model.positional == "learned":
        # x + E[n]: C_w = E itself (site variable onehot(n)), not a transpose
        out["pos_embedding"] = [("pos_embedding", (0, int(model.max_len)), "rows")]  # type: ignore[arg-type]
    return out


def _hook_rows(model: Recurrent | Implicit | FeedForward) -> dict[str, SiteRows]:
    # one site per parameter, named after it: C_w = Wᵀ (in rows) or the bias (one row)
    return {name: [(name, (0, shape[0]))] for name, shape in model._shapes.items()}


site_parameters.register(Recurrent, _hook_rows)
site_parameters.register(Implicit, _hook_rows)
site_parameters.register(FeedForward, _hook_rows)


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
    rows = site_parameters(model)
    frozen: frozenset[str] = getattr(model, "frozen", frozenset())
    if rows is None or not frozen:
        return rows
    kept = {site: [e for e in entries if e[0] not in frozen] for site, entries in rows.items()}
    return {site: entries for site, entries in kept.items() if entries}


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
                "this model; register a rule with kpflow.ntk.site_parameters.register (or use split)"
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
                n = _rows_in_site(entry, self._param_shapes)
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
                n_rows += _rows_in_site(entry, shapes)
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


# -- J_S = P F ---------------------------------------------------------------------------------------
def _traj_layout(traj: Trajectory) -> tuple[dict[str, SiteRows] | None, dict[str, tuple[int, ...]]]:
    rows = trained_parameters(traj.model)
    frozen = traj.model.frozen
    shapes = {name: tuple(int(n) for n in a.shape) for name, a in traj.params.items() if name not in frozen}
    return rows, shapes


class StateJacobian(_FlatParameters):
    """J_S = dz/dθ = P F: a flat parameter vector to state tangents; NTK_S = J_S J_Sᵀ.

    ``J @ v`` is the first-order change of every state along the parameter direction v
    (a Jacobian-vector product through the whole trajectory); ``J.T @ V`` is
    backpropagation through time then the per-site gradients, so ``J.rmatvec(g)`` is the
    gradient of ⟨g, z⟩ with respect to all parameters.  J_Sᵀ J_S (:meth:`gauss_newton`) is
    the Gauss–Newton matrix of a squared loss on the states.

    With ``columns`` (a block of the per-site state, e.g. the LSTM's h) the codomain is
    that block, ``(*site_shape, hi − lo)``: J = E J_S, and J Jᵀ = E NTK_S Eᵀ.

    Parameters
    ----------
    P : Propagator
        P = (I − L)⁻¹ of the trajectory.
    F : ParameterMap
        The factor of K (same sites, same namespace, dtype and device).
    columns : tuple (lo, hi), optional
        Keep only these per-site state columns.

    Attributes
    ----------
    P, F, columns, traj

    Examples
    --------
    >>> import numpy as np
    >>> import kpflow
    >>> from kpflow.models import GRU
    >>> traj = GRU(2, 3).run(GRU(2, 3).init(0), np.random.default_rng(0).standard_normal((2, 4, 2)))
    >>> J = kpflow.state_jacobian(traj)
    >>> J.shape_in, J.shape_out                         # p = 3·3·(2 + 3 + 2) parameters
    ((63,), (2, 4, 3))
    >>> Jd = J.todense().reshape(24, 63)
    >>> bool(np.allclose(Jd @ Jd.T, kpflow.global_ntk(traj).todense().reshape(24, 24)))
    True
    >>> sorted(J.to_params(J.rmatvec(traj.states)))    # dθ of ⟨z, z⟩/2, in torch's names
    ['bias_hh', 'bias_ih', 'weight_hh', 'weight_ih']
    """

    def __init__(self, P: Propagator, F: ParameterMap, *, columns: tuple[int, int] | None = None) -> None:
        where = "StateJacobian"
        if not isinstance(P, Propagator):
            msg = f"{where}: expected P to be a kpflow.ntk.Propagator, got {type(P).__name__}"
            raise TypeError(msg)
        if not isinstance(F, ParameterMap):
            msg = f"{where}: expected F to be a kpflow.ntk.ParameterMap, got {type(F).__name__}"
            raise TypeError(msg)
        if F.shape_out != P.shape_in or F.xp is not P.xp or F.dtype != P.dtype or F.device != P.device:
            msg = (
                f"{where}: F maps to {F.shape_out} ({F.dtype} on {F.device}) but P acts on "
                f"{P.shape_in} ({P.dtype} on {P.device})"
            )
            raise ValueError(msg)
        traj = P.traj
        self._m, self._size = traj.m, traj.site_state_size
        shape_out = P.shape_out
        if columns is not None:
            lo, hi = (int(c) for c in columns)
            if not 0 <= lo < hi <= self._size:
                msg = f"{where}: expected columns (lo, hi) with 0 <= lo < hi <= {self._size}, got {columns!r}"
                raise ValueError(msg)
            columns = (lo, hi)
            shape_out = (*traj.site_shape, hi - lo)
        super().__init__(F.shape_in, shape_out, xp=P.xp, dtype=P.dtype, device=P.device)
        self.P, self.F, self.columns, self.traj = P, F, columns, traj
        self._blocks = F._blocks
        self._rows, self._param_shapes = F._rows, F._param_shapes

    def _matmat(self, X: Any) -> Any:
        Z = self.P._matmat(self.F._matmat(X))
        if self.columns is None:
            return Z
        xp, k = self.xp, X.shape[0]
        lo, hi = self.columns
        Z = xp.reshape(Z, (k, self._m, self._size))[:, :, lo:hi]
        return xp.reshape(Z, (k, *self.shape_out))

    def _rmatmat(self, Y: Any) -> Any:
        if self.columns is not None:
            Y = self._embed(Y)
        return self.F._rmatmat(self.P._rmatmat(Y))

    def _embed(self, Y: Any) -> Any:
        xp, k = self.xp, Y.shape[0]
        lo, hi = self.columns  # type: ignore[misc]
        z = {"dtype": self.dtype, "device": self.device}
        parts = []
        if lo > 0:
            parts.append(xp.zeros((k, self._m, lo), **z))
        parts.append(xp.reshape(Y, (k, self._m, hi - lo)))
        if hi < self._size:
            parts.append(xp.zeros((k, self._m, self._size - hi), **z))
        return xp.reshape(xp.concat(parts, axis=-1), (k, *self.P.shape_in))

    def gauss_newton(self) -> LinearOperator:
        """J_Sᵀ J_S on the flat parameters: the Gauss–Newton matrix of ½‖z − target‖².

        It shares its nonzero eigenvalues with NTK_S = J_S J_Sᵀ.

        Examples
        --------
        >>> import numpy as np
        >>> import kpflow
        >>> from kpflow.models import RNN
        >>> traj = RNN(1, 2).run(RNN(1, 2).init(0), np.ones((1, 3, 1)))
        >>> G = kpflow.state_jacobian(traj).gauss_newton()
        >>> G.shape_in, float(kpflow.linalg.trace(G)) == float(kpflow.linalg.trace(kpflow.global_ntk(traj)))
        ((10,), True)
        """
        return self.T.gram()


# -- the output NTK's factor ---------------------------------------------------------------------------
class OutputJacobian(_FlatParameters):
    """The factor of the output NTK: [C̃ J_S | F_ro], with NTK_out = J_out J_outᵀ.

    The domain is the flat model parameters (as :class:`StateJacobian`) followed by the
    readout's own block, site ``"readout"``: C_ro = [Cᵀ; c] of shape
    (n_features [+ 1], n_out), whose site variables are the features read out (and ones).
    ``to_params`` names the readout's entries ``readout.weight`` and ``readout.bias``.

    Parameters
    ----------
    readout_map : ReadoutMap
        C̃ = I_m ⊗ C.
    J : StateJacobian
        J_S of the trajectory.
    readout : ParameterMap
        F_ro, the readout's one site (D = I); F_ro F_roᵀ = G_ro ⊗ I_out.

    Attributes
    ----------
    readout_map, J, readout

    Examples
    --------
    >>> import numpy as np
    >>> import kpflow
    >>> from kpflow.models import RNN, Linear
    >>> traj = RNN(1, 2).run(RNN(1, 2).init(0), np.ones((2, 3, 1)))
    >>> out = kpflow.output_ntk(traj, Linear(2, 1).init(0))
    >>> J = out.J
    >>> J.shape_in, J.site_shapes["readout"]           # 10 model + 3 readout parameters
    ((13,), (3, 1))
    >>> Jd = J.todense().reshape(6, 13)
    >>> bool(np.allclose(Jd @ Jd.T, out.todense().reshape(6, 6)))
    True
    """

    def __init__(self, readout_map: ReadoutMap, J: StateJacobian, readout: ParameterMap) -> None:
        where = "OutputJacobian"
        if not isinstance(J, StateJacobian):
            msg = f"{where}: expected J to be a StateJacobian, got {type(J).__name__}"
            raise TypeError(msg)
        if not isinstance(readout, ParameterMap) or len(readout.sites) != 1:
            msg = f"{where}: expected readout to be a one-site ParameterMap, got {type(readout).__name__}"
            raise TypeError(msg)
        if readout_map.shape_in != J.shape_out or readout.shape_out != readout_map.shape_out:
            msg = (
                f"{where}: readout_map maps {readout_map.shape_in} -> {readout_map.shape_out}, J maps to "
                f"{J.shape_out} and the readout site to {readout.shape_out}"
            )
            raise ValueError(msg)
        self.readout_map, self.J, self.readout = readout_map, J, readout
        self._p = J.size_in
        site = readout.sites[0]
        self._blocks = _Blocks(
            [*J._blocks.names, "readout"], [*J._blocks.shapes.values(), (site.p, site.width)]
        )
        super().__init__((self._blocks.size,), readout_map.shape_out, xp=J.xp, dtype=J.dtype, device=J.device)
        ro_name = self._blocks.names[-1]
        n_feat = int(readout_map.weight.shape[1])
        full = (0, site.width)
        ro_rows: SiteRows = [("readout.weight", full)] + ([("readout.bias", full)] if site.p > n_feat else [])
        self._param_shapes = {**J._param_shapes, "readout.weight": (site.width, n_feat)}
        if site.p > n_feat:
            self._param_shapes["readout.bias"] = (site.width,)
        self._rows = None if J._rows is None else {**J._rows, ro_name: ro_rows}
        self._rows = _checked_rows(self._rows, self._blocks, self._param_shapes, where)

    def _matmat(self, X: Any) -> Any:
        p = self._p
        inner = self.readout_map._matmat(self.J._matmat(X[:, :p]))
        return inner + self.readout._matmat(X[:, p:])

    def _rmatmat(self, Y: Any) -> Any:
        left = self.J._rmatmat(self.readout_map._rmatmat(Y))
        return self.xp.concat([left, self.readout._rmatmat(Y)], axis=1)


# -- public constructor --------------------------------------------------------------------------------
def _jacobian_of(P: Propagator, sites: list[Site], columns: tuple[int, int] | None = None) -> StateJacobian:
    """J_S = P F for the trajectory of ``P`` and its weight ``sites``, with the named layout when known."""
    traj = P.traj
    rows, shapes = _traj_layout(traj)
    F = ParameterMap(sites, like=traj.states, rows=rows, param_shapes=shapes)
    return StateJacobian(P, F, columns=columns)


def state_jacobian(traj: Trajectory, *, part: str = "all") -> StateJacobian:
    """The state Jacobian J_S = dz/dθ = P F of a trajectory, on the flat parameters.

    NTK_S = J_S J_Sᵀ exactly, and J_Sᵀ J_S is the Gauss–Newton matrix of a squared loss
    on the states; the two share their nonzero spectrum, and the parameter side is the
    smaller one when there are fewer parameters than states (docs/jacobian.md).  It is
    also ``global_ntk(traj).J``.

    Parameters
    ----------
    traj : Trajectory
        From ``model.run``; its model must have weight sites (every built-in model does).
    part : {"all", "h", "c"}
        As in :func:`global_ntk`: for the LSTM, ``"h"`` / ``"c"`` give E J_S on that block.

    Returns
    -------
    StateJacobian
        ``(k, p) -> (k, *state_shape)``; ``split`` / ``join`` give the per-site blocks and
        ``to_params`` / ``from_params`` the model's named parameters.

    Raises
    ------
    TypeError
        If ``traj`` is not a Trajectory, or its sites are not a list of Site.
    ValueError
        For an unknown ``part``.

    Examples
    --------
    >>> import numpy as np
    >>> import kpflow
    >>> from kpflow.models import RNN
    >>> traj = RNN(2, 3).run(RNN(2, 3).init(0), np.ones((4, 5, 2)))
    >>> J = kpflow.state_jacobian(traj)
    >>> J.shape_in, J.shape_out, {k: v.shape for k, v in J.split(np.ones(J.shape_in)).items()}
    ((21,), (4, 5, 3), {'hidden': (7, 3)})
    """
    from kpflow.ntk.global_ntk import GlobalNTK, StateBlockNTK, _part_columns
    from kpflow.ntk.kernel import KroneckerCoreKernel
    from kpflow.ntk.propagator import propagator

    where = "state_jacobian"
    check_trajectory(traj, where)
    columns = _part_columns(traj, part, where)
    sites = traj.sites
    _check_sites(sites, f"{where}: traj.sites")
    full = GlobalNTK(propagator(traj), KroneckerCoreKernel(sites, like=traj.states))
    if columns is None:
        return full.J
    return StateBlockNTK(full, traj, columns).J
