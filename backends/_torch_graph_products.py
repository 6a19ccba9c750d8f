"""K and NTK_S products of a mapped module from one saved linearisation of its forward.

A product Σ_w J_w A_w (A_wᵀ (J_wᵀ X)) (J_w = P D_w for NTK_S, D_w for K) needs the forward
pass linearised in every site's output perturbation eps_w.  :class:`Linearisation` runs
the forward once, with every eps_w a leaf, and keeps

- the forward's autograd graph: Jᵀ v is one backward pass through it (cotangents at the
  site outputs only; no weight gradient is formed where a Kronecker site covers the
  weight), and
- the graph of that backward in a symbolic cotangent w (``create_graph=True``): the
  backward is linear in w, so J u is one backward pass of it in w (the tangents
  injected at the site outputs and carried forward by the saved derivatives), with no
  forward pass recomputed.

Each product then costs one backward (Jᵀ), the Kronecker middles and one double backward
(J), where the fused route through ``torch.func`` re-ran the forward and the first
backward every time.  The middle of a site with r rows, p variables and width b is
A (Aᵀ U) (2·r·p·b multiply-adds) or G U with the Gram G = A Aᵀ formed once (r²·b),
whichever is cheaper.

Since only first derivatives at eps = 0 are taken, the forward that is linearised holds
the parts that are not linear in eps at their values on the trajectory
(:mod:`kpflow.backends._torch_graph_tap`): an elementwise activation is y(x₀) +
σ'(x₀)(x − x₀) (a product multiplies by the saved σ'(x₀) in each pass), and a LayerNorm /
RMSNorm is y(x₀) + J_norm (x − x₀), a
:class:`~kpflow.backends._torch_graph_linear.SavedLinear` node whose backward is torch's
fused layer-norm backward and whose double backward is one application of J_norm (the
norm's own node would be differentiated through its backward formula).  The forward's
states are kept as separate blocks, so the double backward writes each state's block once.

The linearisation is rebuilt when a parameter, an input or the states change in place
(torch's version counters), and is never used where the product itself is differentiated
(autograd on and the states or the probes require grad): that route stays on ``torch.func``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["Linearisation", "versions"]


def versions(tensors: list[Any]) -> tuple[int, ...] | None:
    """The in-place version counters of ``tensors`` (None when one has none: an inference tensor)."""
    try:
        return tuple(int(t._version) for t in tensors)
    except RuntimeError:
        return None


class Linearisation:
    """The forward ``f(eps_1, …, eps_n)`` linearised once at eps = 0, with its two products.

    Parameters
    ----------
    f : callable
        ``(eps_1, …, eps_n) -> (B, S)``, the forward with each site's perturbation added, or
        a list of (B, S_j) column blocks whose concatenation is that output.
    zeros : tuple of tensors
        eps_w = 0 for each site, of shape (rows_w, width_w).
    variables : tuple of tensors
        A_w of shape (rows_w, p_w) per site (graph-free).

    Examples
    --------
    >>> import torch
    >>> from kpflow.backends._torch_graph_products import Linearisation
    >>> W = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    >>> A = torch.ones((3, 1), dtype=torch.float64)
    >>> lin = Linearisation(lambda e: torch.tanh(e) @ W, (torch.zeros(3, 1, dtype=torch.float64),), (A,))
    >>> lin.matmat(torch.ones((1, 3, 2), dtype=torch.float64))[0, 0]
    tensor([ 9., 18.], dtype=torch.float64)
    """

    def __init__(self, f: Callable, zeros: tuple, variables: tuple) -> None:
        with torch.enable_grad():
            self.eps = tuple(torch.zeros_like(z).requires_grad_(True) for z in zeros)
            out = f(*self.eps)
            self.outs = list(out) if isinstance(out, list | tuple) else [out]
            self.widths = [int(o.shape[-1]) for o in self.outs]
            live = [o for o in self.outs if o.requires_grad]
            self.w = [torch.zeros_like(o).requires_grad_(True) for o in live]
            grads = (
                torch.autograd.grad(live, self.eps, self.w, create_graph=True, allow_unused=True)
                if live
                else (None,) * len(self.eps)
            )
        self.live = [i for i, o in enumerate(self.outs) if o.requires_grad]
        # sites the output depends on, and among them those whose Jᵀ w depends on w
        self.used = [i for i, g in enumerate(grads) if g is not None]
        self.linear = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.middles = [_middle(A) for A in variables]
        self._scratch: list[Any] | None = None

    def _cotangents(self, v: Any) -> list[Any]:
        """``v`` (B, S) as the live output blocks' cotangents."""
        blocks = torch.split(v, self.widths, dim=-1) if len(self.widths) > 1 else (v,)
        return [blocks[j] for j in self.live]

    def pull(self, v: Any) -> list[Any]:
        """Jᵀ v: the cotangent at each site's output, (rows_w, width_w) per site."""
        return [torch.zeros_like(e) if g is None else g for e, g in zip(self.eps, self._pull(v), strict=True)]

    def _pull(self, v: Any) -> list[Any]:
        """Jᵀ v at the used sites, None at the others."""
        out: list[Any] = [None] * len(self.eps)
        if self.used:
            live = [self.outs[j] for j in self.live]
            got = torch.autograd.grad(
                live, [self.eps[i] for i in self.used], self._cotangents(v), retain_graph=True
            )
            for i, g in zip(self.used, got, strict=True):
                out[i] = g
        return out

    def push(self, U: list[Any]) -> Any:
        """J U = Σ_w J_w U_w: the tangents carried from the site outputs to the states."""
        zero = self.outs[0].new_zeros((*self.outs[0].shape[:-1], sum(self.widths)))
        if not self.linear:
            return zero
        got = torch.autograd.grad(
            [g for _, g in self.linear],
            self.w,
            [U[i] for i, _ in self.linear],
            retain_graph=True,
            allow_unused=True,
        )
        blocks = list(torch.split(zero, self.widths, dim=-1))
        for j, g in zip(self.live, got, strict=True):
            if g is not None:
                blocks[j] = g
        return torch.cat(blocks, dim=-1) if len(blocks) > 1 else blocks[0]

    def matmat(self, X: Any) -> Any:
        """Σ_w J_w A_w (A_wᵀ (J_wᵀ x)) for each x of ``X`` (k, B, S).

        The middles write into scratch blocks kept with the linearisation (one per used
        site, reused by every product), and each probe's result is copied out before the
        next probe overwrites them.
        """
        if self._scratch is None:
            self._scratch = [torch.empty_like(e) if i in self.used else None for i, e in enumerate(self.eps)]
        first = self.outs[0]
        out = first.new_empty((int(X.shape[0]), *first.shape[:-1], sum(self.widths)))
        for k, x in enumerate(X):
            got = self._pull(x)
            U = [
                None if u is None else middle(u, buf)
                for middle, u, buf in zip(self.middles, got, self._scratch, strict=True)
            ]
            out[k] = self.push(U)
        return out.to(X.dtype)


def _middle(A: Any) -> Callable[[Any, Any], Any]:
    """(U, out) ↦ A (Aᵀ U) written to ``out``, through the Gram A Aᵀ when that is cheaper (r < 2p)."""
    r, p = int(A.shape[0]), int(A.shape[1])
    if r == 1 and p == 1:
        a = A[0, 0]
        return lambda U, out: torch.mul(U, a * a, out=out)
    if r < 2 * p:
        G = A @ A.T
        return lambda U, out: torch.mm(G, U, out=out)
    return lambda U, out: torch.mm(A, A.T @ U, out=out)
