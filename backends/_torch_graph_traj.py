"""The trajectory of a mapped feed-forward module: P by one pass, the sites, K and NTK_S products.

P = (I − L)⁻¹ is one jvp (Pᵀ one vjp) of the forward with a perturbation added to each
state's output.  The sites' D_w are derivatives of the forward in perturbations added to
the site modules' outputs; K and NTK_S products take every site at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from kpflow.backends._torch_graph_attention import ATTENTION_PARTS
from kpflow.backends._torch_graph_products import Linearisation, versions
from kpflow.backends._torch_graph_tap import _conv_rows, _in_size, _offsets, _Tap, _variables

from kpflow.models.base import Site, Trajectory
from kpflow.models.sites import LinearSite

if TYPE_CHECKING:
    from kpflow.backends._torch_graph import ModuleGraph

__all__ = ["ModuleTrajectory"]


class ModuleTrajectory(Trajectory):
    """A run of a :class:`ModuleGraph`: ``state_shape = (B, Σ_j n_j)``, P by one jvp (Pᵀ one vjp).

    Attributes
    ----------
    inputs : tuple
        The module's forward inputs.
    state_shapes : list of tuple
        Each state module's output shape.
    """

    model: ModuleGraph

    def __init__(
        self,
        model: ModuleGraph,
        params: dict[str, Any],
        inputs: tuple,
        state_list: list[Any],
        calls: list[tuple[str, Any]],
        demoted: set[str],
    ) -> None:
        super().__init__(model, params, inputs, None, model._flat(state_list))
        self.inputs = inputs
        self.state_shapes = [tuple(int(n) for n in s.shape) for s in state_list]
        self.offsets = _offsets(state_list)
        self.names = tuple(sorted(params))
        kronecker = [m for m in model.site_names if m not in demoted]
        self.plan = [(c, name) for c, (name, _) in enumerate(calls) if name in kronecker]
        self._calls = calls
        covered = {n for m in kronecker for n in model.site_params[m]}
        self.autodiff_params = [n for n in self.names if n not in covered]
        self.kronecker_modules = [m for m in kronecker if any(name == m for _, name in self.plan)]
        self._groups: list[tuple[str, str, tuple, int]] = []  # (site, kind, calls, width), with sites
        self._saved: dict[bool, tuple[Any, Linearisation]] = {}  # cut -> (versions, linearisation)

    def state(self, j: int, Z: Any = None) -> Any:
        """State module j's output (or block j of ``Z`` of shape (..., B, Σ n)) in its own shape."""
        Z = self.states if Z is None else Z
        lo, hi = self.offsets[j], self.offsets[j + 1]
        return torch.reshape(Z[..., lo:hi], (*Z.shape[:-2], *self.state_shapes[j]))

    # the two maps differentiated ------------------------------------------------------------------
    def _values(self) -> dict[str, Any]:
        values = _torch_adapter().for_products(tuple(self.params[n] for n in self.names))
        return dict(zip(self.names, values, strict=True))

    def _cut(
        self,
        values: dict[str, Any],
        eps: dict[int, Any],
        delta: dict[str, Any],
        z: Any = None,
        *,
        parts: bool = False,
        **tap: Any,
    ) -> Any:
        """f(z; θ + δ) with eps added to site calls' outputs, at the trajectory's states (or ``z``).

        ``parts``: the list of per-state column blocks (B, n_j) instead of their concatenation.
        """
        params = {n: (v + delta[n] if n in delta else v) for n, v in values.items()}
        if z is None:
            z = self.states if self._graph() else self.states.detach()
        tap = _Tap(self.model, self.offsets, z=z, eps=eps, **tap)
        return self._out(self.model.forward(params, self.inputs, tap).states, parts)

    def _forward(
        self,
        values: dict[str, Any],
        eps: dict[int, Any],
        delta: dict[str, Any],
        *,
        parts: bool = False,
        **tap: Any,
    ) -> Any:
        """z(θ + δ) with eps added to site calls' outputs: the forward itself, no state cut."""
        params = {n: (v + delta[n] if n in delta else v) for n, v in values.items()}
        tap = _Tap(self.model, self.offsets, eps=eps, **tap)
        return self._out(self.model.forward(params, self.inputs, tap).states, parts)

    def _out(self, states: list[Any], parts: bool) -> Any:
        return self.model._parts(states, self.offsets) if parts else self.model._flat(states, self.offsets)

    def _graph(self) -> bool:
        return torch.is_grad_enabled() and self.states.requires_grad

    def _injected(self, values: dict[str, Any], e: Any) -> Any:
        tap = _Tap(self.model, self.offsets, e=e)
        return self.model._flat(self.model.forward(values, self.inputs, tap).states, self.offsets)

    # P -----------------------------------------------------------------------------------------------
    def solve(self, V: Any) -> Any:
        """P V = (I − L)⁻¹ V for ``V`` of shape (k, B, Σ n): one vmapped jvp of the perturbed forward."""
        from kpflow.models._hook_autodiff import _jvp

        values = self._values()
        adapter = _torch_adapter()
        zero = torch.zeros_like(self.states)
        return _jvp(adapter, self.xp, lambda e: self._injected(values, e), zero, V)

    def solve_adjoint(self, W: Any) -> Any:
        """Pᵀ W: one vmapped vjp of the perturbed forward."""
        from kpflow.models._hook_autodiff import _vjp

        values = self._values()
        zero = torch.zeros_like(self.states)
        return _vjp(_torch_adapter(), lambda e: self._injected(values, e), zero, W)

    def state_jvp(self, V: Any) -> Any:
        """L V = ∂f/∂z V."""
        values = self._values()

        def f(z: Any) -> Any:
            tap = _Tap(self.model, self.offsets, z=z)
            return self.model._flat(self.model.forward(values, self.inputs, tap).states, self.offsets)

        from kpflow.models._hook_autodiff import _jvp

        return _jvp(_torch_adapter(), self.xp, f, self.states.detach(), V)

    def state_vjp(self, W: Any) -> Any:
        """Lᵀ W."""
        values = self._values()

        def f(z: Any) -> Any:
            tap = _Tap(self.model, self.offsets, z=z)
            return self.model._flat(self.model.forward(values, self.inputs, tap).states, self.offsets)

        from kpflow.models._hook_autodiff import _vjp

        return _vjp(_torch_adapter(), f, self.states.detach(), W)

    # K: the sites ------------------------------------------------------------------------------------
    def kronecker_matmat(self, X: Any) -> Any:
        """K X = Σ_w D_w A_w (A_wᵀ (D_wᵀ X)) for ``X`` of shape (k, B, Σ n), every site in one pass.

        Dᵀ X for every site at once is one vmapped vjp of the update map in all the sites'
        perturbations; the Kronecker middle A_w (A_wᵀ ·) runs per site; D U is one pass
        with every site's tangent.  Two passes of the module per block of probes, whatever
        the number of sites (applying each site's D_w on its own takes two per site).
        :func:`kpflow.parameter_kernel` uses it; the exact rules read the sites as for
        any Kronecker core.
        """
        return self._product(X, cut=True)

    def global_matmat(self, X: Any) -> Any:
        """NTK_S X = Σ_w (P D_w) A_w (A_wᵀ ((P D_w)ᵀ X)) in two passes of the module.

        P D_w is the derivative of the forward itself (states not cut) in site w's
        perturbation, so one vmapped vjp gives every (P D_w)ᵀ X and one more pass applies
        their sum: the same product as P K Pᵀ (four passes), by the chain rule.
        """
        return self._product(X, cut=False)

    def _product(self, X: Any, *, cut: bool) -> Any:
        """The fused product, from the saved linearisation unless the product is differentiated."""
        if torch.is_grad_enabled() and (self.states.requires_grad or X.requires_grad):
            f, zeros = self._all_sites_fn(self._values(), cut=cut)
            return self._gram_matmat(f, zeros, X)
        return self._linearisation(cut).matmat(X)

    def _linearisation(self, cut: bool) -> Linearisation:
        """The forward linearised in every site's perturbation, rebuilt when an array it read changed."""
        inputs = [x for x in self.inputs if isinstance(x, torch.Tensor)]
        key = versions([*self.params.values(), *inputs, self.states])
        saved = self._saved.get(cut)
        if saved is not None and key is not None and saved[0] == key:
            return saved[1]
        values = {n: p.detach() for n, p in self.params.items()}
        f, zeros = self._all_sites_fn(values, cut=cut, z=self.states.detach(), first_order=True, parts=True)
        lin = Linearisation(f, zeros, tuple(site.variables.detach() for site in self.sites))
        self._saved[cut] = (key, lin)
        return lin

    def _gram_matmat(self, f: Callable, zeros: tuple, X: Any) -> Any:
        """Σ_w J_w A_w (A_wᵀ (J_wᵀ X)) with J_w = ∂f/∂eps_w, vmapped over X's leading axis."""
        A = _torch_adapter().for_products(tuple(site.variables for site in self.sites))
        pull = torch.func.vjp(f, *zeros)[1]

        def middle(v: Any) -> Any:
            return tuple(a @ (a.T @ u) for a, u in zip(A, pull(v), strict=True))

        U = torch.func.vmap(middle)(X)
        # J U as the vjp of the linear map w ↦ Jᵀ w: torch's vmapped forward mode is slow on
        # broadcast additions (as kpflow.models._hook_autodiff._jvp says)
        push = torch.func.vjp(pull, torch.zeros_like(self.states))[1]
        return torch.func.vmap(lambda *u: push(u)[0])(*U)

    def _all_sites_fn(
        self,
        values: dict[str, Any],
        *,
        cut: bool = True,
        z: Any = None,
        first_order: bool = False,
        parts: bool = False,
    ) -> tuple[Callable, tuple]:
        """(eps_1, …, eps_n) ↦ f with every site's perturbation at once, and the zero perturbations.

        ``first_order``: only derivatives in eps at eps = 0 are taken (the saved linearisation),
        so a norm's x̂ is held constant and a norm or an elementwise activation is a saved
        linear map.  ``parts``: f returns the per-state column blocks (B, n_j) (no
        concatenation in the graph: a product's double backward then writes each block once).
        """
        sites = self.sites  # (builds the sites and their groups on first use)
        groups = self._groups
        module_eps: list[tuple[list[int], list[int]]] = []
        zeros = []
        for (name, kind, calls, width), site in zip(groups, sites, strict=True):
            if kind == "parameter":
                module_eps.append(([], []))
            else:
                sizes = self._call_rows(name, kind, calls)
                module_eps.append((list(calls), sizes))
            rows = int(site.variables.shape[0])
            zeros.append(torch.zeros((rows, width), dtype=self.dtype, device=self.device))

        def f(*eps: Any) -> Any:
            per_call: dict[int, Any] = {}
            delta: dict[str, Any] = {}
            for (name, kind, _, _), (calls, sizes), e in zip(groups, module_eps, eps, strict=True):
                if kind == "parameter":
                    delta[name] = torch.reshape(e, self.params[name].shape)
                else:
                    _add_calls(per_call, kind, calls, _split(e, sizes))
            if cut:
                return self._cut(values, per_call, delta, z, parts=parts, first_order=first_order)
            return self._forward(values, per_call, delta, parts=parts, first_order=first_order)

        return f, tuple(zeros)

    def _call_rows(self, name: str, kind: str, calls: Any) -> list[int]:
        sub = self.model.submodules[_module_of(name, kind)]
        if kind in ATTENTION_PARTS:
            key = ATTENTION_PARTS[kind]
            return [int(self._calls[c][1][key].numel()) // int(sub.embed_dim) for c in calls]
        kind = "norm" if kind in _NORM_PARTS else kind
        if kind == "conv":
            return [_conv_rows(sub, self._calls[c][1]) for c in calls]
        return [int(self._calls[c][1].numel()) // _in_size(sub, kind) for c in calls]

    def _site_widths(self) -> list[tuple[str, str, list[int], int, Any]]:
        """(site name, kind, calls, width, A) per Kronecker module, then per autodiff parameter."""
        model, out = self.model, []
        for m in self.kronecker_modules:
            sub, kind = model.submodules[m], model.site_kinds[m]
            calls = [c for c, name in self.plan if name == m]
            if kind == "mha":  # the packed input projection and the output projection
                for part, key in ATTENTION_PARTS.items():
                    own = model.site_parts[m][part]
                    rows = [self._calls[c][1][key] for c in calls]
                    d = int(rows[0].shape[-1])
                    A = torch.cat([torch.reshape(a, (-1, d)) for a in rows], dim=0)
                    if len(own) == 2:  # a trained bias: a ones column
                        A = torch.cat(
                            [A, torch.ones((int(A.shape[0]), 1), dtype=A.dtype, device=A.device)], 1
                        )
                    width = int(self.params[own[0]].shape[0])
                    out.append((f"{m}.{key}", part, calls, width, A))
                continue
            blocks = [_variables(sub, kind, self._calls[c][1], self.dtype) for c in calls]
            A = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=0)
            if kind == "norm":  # γ and β: one site each, A = [1] at every row
                for n in model.site_params[m]:
                    part = "norm_scale" if n.rsplit(".", 1)[-1] == "weight" else "norm_shift"
                    out.append((n, part, calls, _in_size(sub, kind), A))
                continue
            width = int(sub.embedding_dim if kind == "embedding" else sub.weight.shape[kind == "linear_t"])
            out.append((m, kind, calls, width, A))
        for n in self.autodiff_params:
            one = torch.ones((1, 1), dtype=self.dtype, device=self.device)
            out.append((n, "parameter", [], int(self.params[n].numel()), one))
        return out

    def _make_sites(self) -> list[Site]:
        sites: list[Site] = []
        self._groups = []
        for name, kind, calls, width, A in self._site_widths():
            self._groups.append((name, kind, tuple(calls), width))
            rows = self._rows(name, kind, width)
            site = LinearSite(
                name,
                A,
                state_shape=self.state_shape,
                width=width,
                apply=_site_D,
                adjoint=_site_DT,
                operands=(),
                static=(self, name, kind, tuple(calls), width),
                n_sites=self.m,
                rows=rows,
            )
            sites.append(_as_unit(site, self) if len(calls) == 1 and A.shape[0] == self.m else site)
        return sites

    def _rows(self, name: str, kind: str, width: int) -> list:
        if kind == "parameter":
            return [(name, (0, int(self.params[name].shape[0]) if self.params[name].ndim else 1))]
        if kind in _NORM_PARTS:  # γ (width,) or β (width,): one row of C_w
            return [(name, (0, width))]
        if kind in ATTENTION_PARTS:  # W (width, d) and b (width,), as an nn.Linear's
            return [(n, (0, width)) for n in self.model.site_parts[_module_of(name, kind)][kind]]
        own = self.model.site_params[name]
        if kind == "embedding":
            return [(own[0], (0, int(self.params[own[0]].shape[0])), "rows")]
        if kind == "linear_t":  # W stored (in, out): its rows are C_w's rows as they are
            n_in = int(self.model.submodules[name].weight.shape[0])
            return [
                (n, (0, n_in), "rows") if n.rsplit(".", 1)[-1] == "weight" else (n, (0, width)) for n in own
            ]
        return [(n, (0, width)) for n in own]

    def _site_fn(self, name: str, kind: str, calls: tuple, width: int) -> tuple[Callable, Any]:
        """eps (rows, width) ↦ f, the site's perturbation split over its calls (or added to θ)."""
        values = self._values()
        if kind == "parameter":
            shape = self.params[name].shape

            def f(eps: Any) -> Any:
                return self._cut(values, {}, {name: torch.reshape(eps, shape)})

            zero = torch.zeros((1, width), dtype=self.dtype, device=self.device)
            return f, zero
        sizes = self._call_rows(name, kind, calls)

        def g(eps: Any) -> Any:
            per_call: dict[int, Any] = {}
            _add_calls(per_call, kind, calls, _split(eps, sizes))
            return self._cut(values, per_call, {})

        zero = torch.zeros((sum(sizes), width), dtype=self.dtype, device=self.device)
        return g, zero


#: the two sites of a LayerNorm / RMSNorm: γ (its perturbation multiplies x̂) and β
_NORM_PARTS = {"norm_scale": "scale", "norm_shift": "shift"}
#: the sites that share a module call: site kind -> the key of its perturbation in the call's dict
_PARTS = {**_NORM_PARTS, **ATTENTION_PARTS}


def _module_of(name: str, kind: str) -> str:
    """The submodule of a site: itself, or a norm part's module (its parameter's prefix)."""
    return name.rpartition(".")[0] if kind in _PARTS else name


def _split(e: Any, sizes: list[int]) -> tuple:
    """A site's perturbation split by rows over its calls (itself for one call: no copy in Jᵀ)."""
    return (e,) if len(sizes) == 1 else torch.split(e, sizes, dim=0)


def _add_calls(per_call: dict[int, Any], kind: str, calls: Any, parts: Any) -> None:
    """Each call's perturbation into ``per_call`` (a norm's γ and β parts share a call)."""
    if kind in _PARTS:
        for c, e in zip(calls, parts, strict=True):
            per_call.setdefault(c, {})[_PARTS[kind]] = e
    else:
        per_call.update(zip(calls, parts, strict=True))


def _as_unit(site: LinearSite, traj: ModuleTrajectory) -> Site:
    """The site as a per-unit :class:`Site` when D_w is diagonal into one state's columns, else itself.

    A Linear whose output is a state (an MLP's layers) or is mapped to one elementwise moves
    unit i of its output at batch row b only state column lo + i of row b.  Checked on a
    seeded random U to 100·ε of ‖D_w U‖, as :func:`kpflow.models.hooks._as_diagonal`; K's
    exact trace, spectrum and effective-rank rules then apply to the site.
    """
    m, w = traj.m, site.width
    spans = [(lo, hi) for lo, hi in zip(traj.offsets, traj.offsets[1:], strict=False) if hi - lo == w]
    if not spans:
        return site
    gen = torch.Generator(device=traj.device).manual_seed(0)
    ones = torch.ones((1, m, w), dtype=traj.dtype, device=traj.device)
    U = torch.randn((1, m, w), dtype=traj.dtype, device=traj.device, generator=gen)
    both = site.apply_D(torch.cat([ones, U], dim=0))  # (2, B, S)
    plain = both.detach()
    tol = 100 * float(torch.finfo(traj.dtype).eps) * float(torch.linalg.vector_norm(plain[1]))
    for lo, hi in spans:
        inside = plain[:, :, lo:hi]
        outside = (
            float(torch.linalg.vector_norm(plain[1])) ** 2 - float(torch.linalg.vector_norm(inside[1])) ** 2
        )
        gap = float(torch.linalg.vector_norm(inside[1] - inside[0] * U[0]))
        if gap <= tol and outside <= tol**2:
            d = both[0, :, lo:hi]
            return Site(
                site.name,
                site.variables,
                state_shape=traj.state_shape,
                unit_D=d[:, :, None, None],
                columns=(lo, hi),
                rows=site.rows,
            )
    return site


def _torch_adapter() -> Any:
    from kpflow.backends import get_backend

    return get_backend("torch")


def _site_D(
    xp: Any, traj: ModuleTrajectory, name: str, kind: str, calls: tuple, width: int, operands: tuple, U: Any
) -> Any:
    """D_w U: (k, rows, width) ↦ (k, B, Σ n), a vmapped jvp of the update map in the site's output."""
    from kpflow.models._hook_autodiff import _jvp

    f, zero = traj._site_fn(name, kind, calls, width)
    return _jvp(_torch_adapter(), xp, f, zero, U)


def _site_DT(
    xp: Any, traj: ModuleTrajectory, name: str, kind: str, calls: tuple, width: int, operands: tuple, V: Any
) -> Any:
    """D_wᵀ V: (k, B, Σ n) ↦ (k, rows, width), a vmapped vjp."""
    from kpflow.models._hook_autodiff import _vjp

    f, zero = traj._site_fn(name, kind, calls, width)
    return _vjp(_torch_adapter(), f, zero, V)
