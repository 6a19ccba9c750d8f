"""``from_module(module, states=...)`` for any feed-forward ``torch.nn`` module.

The module runs as it is (``torch.func.functional_call`` on its own ``forward``) with
forward hooks on two kinds of submodules:

- the **state** modules the user names: their outputs (a tuple's first tensor) are the
  states z_0 … z_{S−1}, each flattened per batch row, so z has shape (B, Σ_j n_j);
- the **site** modules found inside: every call of an ``nn.Linear``, ``nn.Embedding``,
  ``nn.Conv1d`` or ``nn.Conv2d`` records its input (the site variables A_w: the input
  rows, a one-hot of the token ids, the unfolded patches; a ones column for a bias) and
  adds a perturbation to its output, whose derivative is D_w.  One site per module: a
  module called several times stacks its calls' rows, so the cross terms are exact.

Every other trained parameter (LayerNorm / RMSNorm affine, attention's fused projections,
a parameter shared between modules of different kinds such as a tied embedding and
readout, a parameter a forward reads outside its module) is a site of one row: u = θ
itself, A = [1], D = ∂f/∂θ, so nothing is left out and every use of it is counted.

f(z; θ) is the forward pass with each state module's output replaced by the given z_j
(each state recomputed from the earlier ones), so L = ∂f/∂z is strictly block lower
triangular, whatever skips and residual streams connect the states.  P = (I − L)⁻¹ is
applied in one pass: a jvp (vjp for Pᵀ) of the forward with a perturbation added to each
state's output, which is forward substitution through every dependency at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from kpflow.models.base import Model, Site, Trajectory
from kpflow.models.layout import Layout
from kpflow.models.sites import LinearSite

__all__ = ["ModuleGraph", "ModuleTrajectory", "from_graph", "select_states"]

WHERE = "kpflow.backends.torch.from_module"


def _site_kind(module: Any) -> str | None:
    """The Kronecker site kind of a submodule, or None (its parameters take the autodiff rule)."""
    nn = torch.nn
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        if module.max_norm is None and not module.scale_grad_by_freq:
            return "embedding"
        return None
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        if module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str):
            return "conv"
        return None
    return None


# -- states: which submodules ----------------------------------------------------------------------
def select_states(module: Any, states: Any, where: str = WHERE) -> list[str]:
    """The names (``named_modules``) of the state modules ``states`` selects, in module order.

    ``states`` is a list of names, a pattern (a glob such as ``"h.*"``, whose ``*`` and
    ``?`` stay inside one dotted component and ``**`` crosses them, or a compiled
    ``re.Pattern`` matched in full), a callable ``(name, submodule) -> bool``, or None (for
    an ``nn.Sequential``: every top-level child).

    Examples
    --------
    >>> import torch
    >>> from kpflow.backends._torch_graph import select_states
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    >>> select_states(net, None), select_states(net, "?"), select_states(net, lambda n, m: n == "1")
    (['0', '1', '2'], ['0', '1', '2'], ['1'])
    """
    named = [(n, m) for n, m in module.named_modules() if n]
    names = [n for n, _ in named]
    accepted = (
        "a list of submodule names (named_modules), a glob pattern str, a compiled re.Pattern, a "
        "callable (name, submodule) -> bool, or None for an nn.Sequential (every top-level child)"
    )
    if states is None:
        if not isinstance(module, torch.nn.Sequential):
            msg = (
                f"{where}: states=None picks every top-level child of an nn.Sequential only; got a "
                f"{type(module).__name__}; give states= as {accepted}"
            )
            raise ValueError(msg)
        chosen = [n for n, _ in module.named_children()]
    elif isinstance(states, str):
        pattern = _glob(states)
        chosen = [n for n in names if pattern.fullmatch(n)]
    elif isinstance(states, re.Pattern):
        chosen = [n for n in names if states.fullmatch(n)]
    elif callable(states):
        chosen = [n for n, m in named if states(n, m)]
    elif isinstance(states, list | tuple) and all(isinstance(s, str) for s in states):
        unknown = [s for s in states if s not in names]
        if unknown:
            msg = (
                f"{where}: states names {unknown}, which are not submodules of the "
                f"{type(module).__name__}; its submodules are {names[:40]}"
                f"{' …' if len(names) > 40 else ''}"
            )
            raise ValueError(msg)
        chosen = list(dict.fromkeys(states))
    else:
        msg = f"{where}: expected states to be {accepted}; got {type(states).__name__}"
        raise TypeError(msg)
    if not chosen:
        msg = f"{where}: states={states!r} selects no submodule; the submodules are {names[:40]}"
        raise ValueError(msg)
    return chosen


def _glob(text: str) -> re.Pattern:
    """A module-name glob as a regex: ``*`` and ``?`` within one dotted component, ``**`` across."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        ch = text[i]
        out.append("[^.]*" if ch == "*" else "[^.]" if ch == "?" else re.escape(ch))
        i += 1
    return re.compile("".join(out))


def _first(out: Any) -> Any:
    """A state module's output: the tensor itself, or a tuple's (list's, ModelOutput's) first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "to_tuple"):
        return _first(out.to_tuple())
    return None


def _with_first(out: Any, new: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return new
    if isinstance(out, list):
        return [new, *out[1:]]
    if isinstance(out, tuple):
        return (new, *out[1:])
    out[next(iter(out.keys()))] = new  # a ModelOutput (an ordered dict)
    return out


# -- the tap: hooks of one forward pass --------------------------------------------------------------
class _Tap:
    """Forward hooks on the state and site modules for one run of the module.

    ``z`` (B, Σ n_j): each state call's output is replaced by its block of z (the update
    map f); ``e`` (B, Σ n_j): added to each state call's output (P's perturbation);
    ``eps``: site-call index -> tensor of shape (rows, width) added to that call's output.
    """

    def __init__(
        self,
        graph: ModuleGraph,
        offsets: list[int] | None = None,
        *,
        z: Any = None,
        e: Any = None,
        eps: dict | None = None,
    ) -> None:
        self.graph, self.offsets, self.z, self.e, self.eps = graph, offsets, z, e, eps or {}
        self.states: list[Any] = []
        self.sites: list[tuple[str, Any]] = []  # (site module name, A) per call, in order
        self._handles: list[Any] = []
        self._inside: list[str] = []

    def __enter__(self) -> _Tap:
        g = self.graph
        for name in g.site_names:
            sub = g.submodules[name]
            self._handles.append(sub.register_forward_pre_hook(self._pre(name)))
            self._handles.append(sub.register_forward_hook(self._site_hook(name)))
        for name in g.state_names:
            self._handles.append(g.submodules[name].register_forward_hook(self._state_hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()

    def _pre(self, name: str) -> Callable:
        def hook(module: Any, args: Any) -> None:
            self._inside.append(name)

        return hook

    def _site_hook(self, name: str) -> Callable:
        def hook(module: Any, args: Any, out: Any) -> Any:
            self._inside.pop()
            c = len(self.sites)
            self.sites.append((name, args[0]))
            e = self.eps.get(c)
            if e is None:
                return None
            return (out + _to_output(module, self.graph.site_kinds[name], e, out)).contiguous()

        return hook

    def _state_hook(self, name: str) -> Callable:
        def hook(module: Any, args: Any, out: Any) -> Any:
            t = _first(out)
            j = len(self.states)
            where = self.graph.where
            if t is None or not torch.is_floating_point(t):
                msg = (
                    f"{where}: state module {name!r} returned {type(out).__name__}; expected a floating "
                    "tensor or a tuple whose first element is one"
                )
                raise TypeError(msg)
            if self.offsets is None or j + 1 >= len(self.offsets) or (self.z is None and self.e is None):
                self.states.append(t)
                return None
            lo, hi = self.offsets[j], self.offsets[j + 1]
            if self.z is not None:  # f_j is the computed output; the forward goes on from z_j
                self.states.append(t)
                return _with_first(out, torch.reshape(self.z[:, lo:hi], t.shape).contiguous())
            t = (t + torch.reshape(self.e[:, lo:hi], t.shape)).contiguous()  # z_j = f_j + e_j
            self.states.append(t)
            return _with_first(out, t)

        return hook


def _to_output(module: Any, kind: str, e: Any, out: Any) -> Any:
    """A site perturbation of shape (rows, width) laid out as the module's output."""
    if kind == "conv":  # rows are (batch, positions...), the channel axis is 1
        B = int(out.shape[0])
        spatial = tuple(int(n) for n in out.shape[2:])
        e = torch.reshape(e, (B, *spatial, int(out.shape[1])))
        return torch.movedim(e, -1, 1)
    return torch.reshape(e, out.shape)


def _variables(module: Any, kind: str, a: Any, dtype: Any) -> Any:
    """A_w rows of one call: (rows, p) with a ones column for a bias."""
    if kind == "linear":
        A = torch.reshape(a, (-1, int(a.shape[-1])))
    elif kind == "embedding":
        ids = torch.reshape(a, (-1,))
        A = torch.nn.functional.one_hot(ids, int(module.num_embeddings)).to(dtype)
        if module.padding_idx is not None:  # torch gives the padding row no gradient
            A = A * (ids != module.padding_idx).to(dtype)[:, None]
        return A
    else:
        A = _patches(module, a)
    if getattr(module, "bias", None) is not None and module.bias.requires_grad:
        A = torch.cat([A, torch.ones((int(A.shape[0]), 1), dtype=A.dtype, device=A.device)], dim=1)
    return A


def _patches(conv: Any, x: Any) -> Any:
    """The unfolded input patches of a Conv1d / Conv2d call: (B·positions, C_in·prod(kernel))."""
    F = torch.nn.functional
    if isinstance(conv, torch.nn.Conv1d):
        cols = F.unfold(
            x[..., None],
            (conv.kernel_size[0], 1),
            dilation=(conv.dilation[0], 1),
            padding=(int(conv.padding[0]), 0),
            stride=(conv.stride[0], 1),
        )
    else:
        cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    return torch.reshape(torch.movedim(cols, 1, -1), (-1, int(cols.shape[1])))


class _Uses(torch.overrides.TorchFunctionMode):
    """Notes every trained parameter a function reads outside its own site module's call."""

    def __init__(self, tap: _Tap, owners: dict[int, str]) -> None:
        super().__init__()
        self.tap, self.owners = tap, owners
        self.outside: set[int] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        inside = self.tap._inside[-1] if self.tap._inside else None
        for a in (*args, *kwargs.values()):
            owner = self.owners.get(id(a)) if isinstance(a, torch.Tensor) else None
            if owner is not None and owner != inside:
                self.outside.add(id(a))
        return func(*args, **kwargs)


# -- the model ---------------------------------------------------------------------------------------
class ModuleGraph(Model):
    """A feed-forward ``torch.nn`` module as a kpflow model, its states the outputs of named submodules.

    Built by :func:`kpflow.backends.torch.from_module` with ``states=``; see
    :mod:`kpflow.backends._torch_graph`.  ``run(params, *inputs)`` takes the module's own
    forward inputs.  The state is ``(B, Σ_j n_j)``: state module j's output flattened per
    batch row (``traj.state(j)`` reshapes it back); P is a solve by forward substitution
    (a ``"solved"`` layout, applied in one pass).

    Attributes
    ----------
    module : torch.nn.Module
    state_names : list of str
        The state modules, as selected.
    site_names : list of str
        The submodules whose parameters make Kronecker sites.
    """

    def __init__(self, module: Any, state_names: list[str], trained: dict[str, Any], where: str = WHERE):
        self.module, self.where = module, where
        self.state_names = list(state_names)
        self.submodules = dict(module.named_modules())
        self._shapes = {n: tuple(int(s) for s in p.shape) for n, p in trained.items()}
        self.state_size = 1
        # site modules: a Linear / Embedding / Conv whose trained parameters are its own alone
        ids = {id(p): n for n, p in trained.items()}
        owners: dict[int, set[str]] = {}
        for mname, sub in module.named_modules(remove_duplicate=False):
            for p in sub.parameters(recurse=False):
                owners.setdefault(id(p), set()).add(mname)
        self.site_kinds: dict[str, str] = {}
        self.site_params: dict[str, list[str]] = {}
        for mname, sub in module.named_modules():
            kind = _site_kind(sub)
            own = [p for p in sub.parameters(recurse=False) if id(p) in ids]
            if kind is None or not any(p is getattr(sub, "weight", None) for p in own):
                continue
            if any(len(owners[id(p)]) > 1 for p in own):
                continue  # shared with another module: the autodiff rule counts every use
            self.site_kinds[mname] = kind
            self.site_params[mname] = [ids[id(p)] for p in own]
        self.site_names = list(self.site_kinds)

    # Model API ---------------------------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def layout(self, state_shape: tuple[int, ...]) -> Layout:
        """``(batch, state)``: every state module's output flattened per batch row, one solved block."""
        return Layout(state_shape, ("batch", "state"), "solved", site_axes=1)

    def _check_inputs(self, x: Any, h0: Any, meta: tuple, where: str) -> None:
        pass  # the module checks its own inputs

    def forward(self, params: dict[str, Any], inputs: tuple, tap: _Tap) -> Any:
        with tap:
            torch.func.functional_call(self.module, params, inputs, strict=False)
        return tap

    def _flat(self, states: list[Any], offsets: list[int] | None = None) -> Any:
        if offsets is not None and len(states) != len(offsets) - 1:
            msg = (
                f"{self.where}: this forward called {len(states)} state modules, the recorded run "
                f"{len(offsets) - 1}; the modules a forward calls must not depend on array values"
            )
            raise ValueError(msg)
        B = int(states[0].shape[0])
        return torch.cat([torch.reshape(s, (B, -1)) for s in states], dim=1)

    def unroll(self, params: dict[str, Any], x: Any, h0: Any = None) -> Any:
        """z(θ): the module's forward on the inputs ``x`` (a tuple), its states flattened."""
        return self._flat(self.forward(params, tuple(x), _Tap(self)).states)

    def update_map(self, params: dict[str, Any], states: Any, x: Any, h0: Any = None) -> Any:
        """f(z; θ): each state recomputed with the earlier states' outputs replaced by ``states``."""
        offsets = _offsets(self.forward(params, tuple(x), _Tap(self)).states)
        return self._flat(self.forward(params, tuple(x), _Tap(self, offsets, z=states)).states, offsets)

    def run(self, params: dict[str, Any], *inputs: Any) -> ModuleTrajectory:  # type: ignore[override]
        """Run the module once on its own forward inputs and return the trajectory.

        Raises
        ------
        ValueError, TypeError
            For params of the wrong keys, shapes or dtypes, state modules that return no
            floating tensor, states with different batch sizes, or non-finite states.
        """
        where = f"{self.where} model.run"
        self.check_params(params, where)
        owners = {id(params[n]): m for m, names in self.site_params.items() for n in names}
        tap = _Tap(self)
        uses = _Uses(tap, owners)
        with uses:
            self.forward(params, inputs, tap)
        if not tap.states:
            msg = f"{where}: the forward called none of the state modules {self.state_names}"
            raise ValueError(msg)
        B = int(tap.states[0].shape[0])
        for name, s in zip(self._state_call_names(tap), tap.states, strict=False):
            if s.ndim < 1 or int(s.shape[0]) != B:
                msg = (
                    f"{where}: every state needs the batch axis first; state {name!r} has shape "
                    f"{tuple(s.shape)}, the first state {tuple(tap.states[0].shape)}"
                )
                raise ValueError(msg)
        demoted = {
            m for m, names in self.site_params.items() if any(id(params[n]) in uses.outside for n in names)
        }
        self.state_size = _offsets(tap.states)[-1]  # the last run's (Model.state_parts reads it)
        if not all(bool(torch.all(torch.isfinite(s.detach()))) for s in tap.states):
            msg = f"{where}: the states are not finite (NaN or inf)"
            raise ValueError(msg)
        return ModuleTrajectory(self, params, inputs, tap.states, tap.sites, demoted)

    def _make_trajectory(self, params: dict[str, Any], x: Any, h0: Any, states: Any) -> Any:
        return self.run(params, *x)  # (Model.run's route; run builds the trajectory itself)

    def _state_call_names(self, tap: _Tap) -> list[str]:
        return list(self.state_names)


def _offsets(states: list[Any]) -> list[int]:
    """Each state's first column in z (B, Σ n_j), and the total."""
    B, out = int(states[0].shape[0]), [0]
    for s in states:
        out.append(out[-1] + int(s.numel()) // B)
    return out

    def __repr__(self) -> str:
        return (
            f"ModuleGraph({type(self.module).__name__}, states={self.state_names}, "
            f"kronecker sites={self.site_names})"
        )


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

    def state(self, j: int, Z: Any = None) -> Any:
        """State module j's output (or block j of ``Z`` of shape (..., B, Σ n)) in its own shape."""
        Z = self.states if Z is None else Z
        lo, hi = self.offsets[j], self.offsets[j + 1]
        return torch.reshape(Z[..., lo:hi], (*Z.shape[:-2], *self.state_shapes[j]))

    # the two maps differentiated ------------------------------------------------------------------
    def _values(self) -> dict[str, Any]:
        values = _torch_adapter().for_products(tuple(self.params[n] for n in self.names))
        return dict(zip(self.names, values, strict=True))

    def _cut(self, values: dict[str, Any], eps: dict[int, Any], delta: dict[str, Any]) -> Any:
        """f(z; θ + δ) with eps added to site calls' outputs, at the trajectory's states."""
        params = {n: (v + delta[n] if n in delta else v) for n, v in values.items()}
        z = self.states if self._graph() else self.states.detach()
        tap = _Tap(self.model, self.offsets, z=z, eps=eps)
        return self.model._flat(self.model.forward(params, self.inputs, tap).states, self.offsets)

    def _forward(self, values: dict[str, Any], eps: dict[int, Any], delta: dict[str, Any]) -> Any:
        """z(θ + δ) with eps added to site calls' outputs: the forward itself, no state cut."""
        params = {n: (v + delta[n] if n in delta else v) for n, v in values.items()}
        tap = _Tap(self.model, self.offsets, eps=eps)
        return self.model._flat(self.model.forward(params, self.inputs, tap).states, self.offsets)

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
        f, zeros = self._all_sites_fn(self._values())
        return self._gram_matmat(f, zeros, X)

    def global_matmat(self, X: Any) -> Any:
        """NTK_S X = Σ_w (P D_w) A_w (A_wᵀ ((P D_w)ᵀ X)) in two passes of the module.

        P D_w is the derivative of the forward itself (states not cut) in site w's
        perturbation, so one vmapped vjp gives every (P D_w)ᵀ X and one more pass applies
        their sum: the same product as P K Pᵀ (four passes), by the chain rule.
        """
        f, zeros = self._all_sites_fn(self._values(), cut=False)
        return self._gram_matmat(f, zeros, X)

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

    def _all_sites_fn(self, values: dict[str, Any], *, cut: bool = True) -> tuple[Callable, tuple]:
        """(eps_1, …, eps_n) ↦ f with every site's perturbation at once, and the zero perturbations."""
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
                    per_call.update(zip(calls, torch.split(e, sizes, dim=0), strict=True))
            if cut:
                return self._cut(values, per_call, delta)
            return self._forward(values, per_call, delta)

        return f, tuple(zeros)

    def _call_rows(self, name: str, kind: str, calls: Any) -> list[int]:
        sub = self.model.submodules[name]
        if kind == "conv":
            return [_conv_rows(sub, self._calls[c][1]) for c in calls]
        return [int(self._calls[c][1].numel()) // _in_size(sub, kind) for c in calls]

    def _site_widths(self) -> list[tuple[str, str, list[int], int, Any]]:
        """(site name, kind, calls, width, A) per Kronecker module, then per autodiff parameter."""
        model, out = self.model, []
        for m in self.kronecker_modules:
            sub, kind = model.submodules[m], model.site_kinds[m]
            calls = [c for c, name in self.plan if name == m]
            blocks = [_variables(sub, kind, self._calls[c][1], self.dtype) for c in calls]
            A = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=0)
            width = int(sub.embedding_dim if kind == "embedding" else sub.weight.shape[0])
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
        own = self.model.site_params[name]
        if kind == "embedding":
            return [(own[0], (0, int(self.params[own[0]].shape[0])), "rows")]
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
            parts = torch.split(eps, sizes, dim=0)
            return self._cut(values, dict(zip(calls, parts, strict=True)), {})

        zero = torch.zeros((sum(sizes), width), dtype=self.dtype, device=self.device)
        return g, zero


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


def _in_size(module: Any, kind: str) -> int:
    if kind == "linear":
        return int(module.in_features)
    return 1  # embedding: one row per id


def _conv_rows(conv: Any, x: Any) -> int:
    return int(_patches(conv, x.detach()).shape[0])


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


# -- from_module's entry -------------------------------------------------------------------------------
def from_graph(module: Any, states: Any, *, detach: bool, where: str = WHERE) -> tuple[ModuleGraph, dict]:
    """``from_module(module, states=...)``: the model and its trained parameters (the module's tensors)."""
    state_names = select_states(module, states, where)
    named = list(module.named_parameters())  # one name per tensor (tied parameters once)
    trained = {n: p for n, p in named if p.requires_grad}
    if not trained:
        msg = (
            f"{where}: every parameter of the {type(module).__name__} has requires_grad=False, so "
            "gradient descent moves none and the NTK is zero; set requires_grad=True on the parameters "
            "you train"
        )
        raise ValueError(msg)
    dtypes = {(p.dtype, p.device) for p in trained.values()}
    if len(dtypes) > 1:
        msg = (
            f"{where}: the trained parameters mix dtypes/devices {sorted(map(str, dtypes))}; "
            "convert the module alike (e.g. module.double())"
        )
        raise TypeError(msg)
    model = ModuleGraph(module, state_names, trained, where)
    params = {n: (p.detach() if detach else p) for n, p in trained.items()}
    return model, params
