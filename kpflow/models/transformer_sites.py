"""The site table of :class:`~kpflow.models.TransformerEncoder`: which parameter rows make each site.

Per layer l (names prefixed ``layers.{l}.``): self-attention's sites (prefixed
``self_attn.``, :func:`~kpflow.models.attention.attention_site_table`), then ``norm1``'s γ
and β, ``linear1``, ``linear2`` and ``norm2``'s γ and β; then the final ``norm`` and the
learned ``pos_embedding``.  A LayerNorm's γ and β are 1-D parameters with site variable 1
(one row of C_w each); ``pos_embedding``'s block C_w is E itself (row n is added at position
n, site variable onehot(n)), not a transpose.  Every site is a
:class:`~kpflow.models.sites.LinearSite` (D_w includes everything downstream of u_w in its
block, :mod:`kpflow.models.transformer_d`).
"""

from __future__ import annotations

from typing import Any

from kpflow.models.attention import attention_site_table
from kpflow.models.sites_table import SiteDecl, Term

__all__ = ["block_site_table", "norm_name", "transformer_site_table"]

#: The names of the site variables: a block's input (LN₁(x) pre-norm), the heads' outputs,
#: the feed-forward hidden layer φ(u), and the one-hot position.
BLOCK_INPUT, HEADS, HIDDEN, POSITION = "a", "o", "φ(W₁a + b₁)", "onehot(n)"


def norm_name(j: int, n_layers: int) -> str:
    """The name of state block j's LayerNorm: ``layers.{l}.norm1`` / ``norm2``, or ``norm``.

    Examples
    --------
    >>> from kpflow.models.transformer_sites import norm_name
    >>> norm_name(1, 2), norm_name(4, 2)
    ('layers.0.norm2', 'norm')
    """
    if j == 2 * n_layers:
        return "norm"
    return f"layers.{j // 2}.norm{1 + j % 2}"


def _norm_table(name: str, d: Any, bias: bool) -> list[SiteDecl]:
    """γ (D = downstream ∘ diag(x̂)) and β (D = downstream): one row each, site variable 1."""
    gamma, beta = Term(name + ".weight", (0 * d, d), "1"), Term(name + ".bias", (0 * d, d), "1")
    table = [SiteDecl(gamma.param, (gamma,), "linear", "(…) ∘ diag(x̂)")]
    if bias:
        table.append(SiteDecl(beta.param, (beta,), "linear", "(…)"))
    return table


def _linear_table(name: str, out: Any, inp: str, width: Any, bias: bool, formula: str) -> SiteDecl:
    terms = [Term(name + ".weight", (0 * out, out), inp, width)]
    if bias:
        terms.append(Term(name + ".bias", (0 * out, out), "1"))
    return SiteDecl(name, tuple(terms), "linear", formula)


def block_site_table(j: int, d: Any, d_ff: Any, n_layers: int, bias: bool) -> tuple[SiteDecl, ...]:
    """The sites of state block j: an attention block (j even), a feed-forward block (j odd), the final norm.

    Examples
    --------
    >>> from kpflow.models.transformer_sites import block_site_table
    >>> [decl.name for decl in block_site_table(1, 4, 6, 1, bias=False)]
    ['layers.0.linear1', 'layers.0.linear2', 'layers.0.norm2.weight']
    """
    if j == 2 * n_layers:
        return tuple(_norm_table("norm", d, bias))
    pre = f"layers.{j // 2}."
    if j % 2 == 0:
        attention = attention_site_table(d, bias, pre + "self_attn.", BLOCK_INPUT, HEADS, downstream=True)
        return (*attention, *_norm_table(pre + "norm1", d, bias))
    return (
        _linear_table(pre + "linear1", d_ff, BLOCK_INPUT, d, bias, "(…) ∘ W₂ diag φ′"),
        _linear_table(pre + "linear2", d, HIDDEN, d_ff, bias, "(…)"),
        *_norm_table(pre + "norm2", d, bias),
    )


def transformer_site_table(
    d: Any, d_ff: Any, n_layers: int, *, bias: bool, final_norm: bool, max_len: Any = None
) -> tuple[SiteDecl, ...]:
    """The encoder's site table (sizes ints, or :class:`~kpflow.models.sites_table.Dim` for the docs).

    ``max_len`` (the rows of a learned ``pos_embedding``) adds its site; None: no such site.

    Examples
    --------
    >>> from kpflow.models.transformer_sites import transformer_site_table
    >>> table = transformer_site_table(4, 6, 1, bias=True, final_norm=False, max_len=3)
    >>> len(table), table[-1].rows()
    (12, [('pos_embedding', (0, 3), 'rows')])
    """
    n_states = 2 * n_layers + (1 if final_norm else 0)
    table = [decl for j in range(n_states) for decl in block_site_table(j, d, d_ff, n_layers, bias)]
    if max_len is not None:
        pos = Term("pos_embedding", (0 * max_len, max_len), POSITION, d, as_rows=True)
        table.append(SiteDecl("pos_embedding", (pos,), "linear", "the first block's Jacobian in its input"))
    return tuple(table)
