"""``from_module(module, states=...)`` for any feed-forward ``torch.nn`` module: the model and its entry.

The module runs as it is (``torch.func.functional_call`` on its own ``forward``) with
forward hooks on two kinds of submodules:

- the **state** modules the user names: their outputs (a tuple's first tensor) are the
  states z_0 … z_{S−1}, each flattened per batch row, so z has shape (B, Σ_j n_j);
- the **site** modules found inside: every call of an ``nn.Linear``, ``nn.Embedding``,
  ``nn.Conv1d``, ``nn.Conv2d`` or Hugging Face ``Conv1D`` records its input (the site
  variables A_w: the input rows, a one-hot of the token ids, the unfolded patches; a ones
  column for a bias) and adds a perturbation to its output, whose derivative is D_w.  One
  site per module: a module called several times stacks its calls' rows, so the cross
  terms are exact.  An ``nn.LayerNorm`` / ``nn.RMSNorm`` gives two sites, γ and β (A = [1]
  per normalised row; γ's perturbation multiplies x̂), and a self-attention
  ``nn.MultiheadAttention`` two, its packed input projection and its output projection
  (:mod:`~kpflow.backends._torch_graph_attention`).

Every other trained parameter (a cross-attention's projections, another norm's scale, a
parameter shared between modules of different kinds such as a tied embedding and
readout, a parameter a forward reads outside its module) is a site of one row: u = θ
itself, A = [1], D = ∂f/∂θ, so nothing is left out and every use of it is counted.

f(z; θ) is the forward pass with each state module's output replaced by the given z_j
(each state recomputed from the earlier ones), so L = ∂f/∂z is strictly block lower
triangular, whatever skips and residual streams connect the states.  P = (I − L)⁻¹ is
applied in one pass: a jvp (vjp for Pᵀ) of the forward with a perturbation added to each
state's output, which is forward substitution through every dependency at once.

The pieces: :mod:`~kpflow.backends._torch_graph_select` (which submodules are states),
:mod:`~kpflow.backends._torch_graph_tap` (the hooks of one forward pass),
:mod:`~kpflow.backends._torch_graph_traj` (the trajectory: P, the sites, the products),
:mod:`~kpflow.backends._torch_graph_products` (products from one saved linearisation).
"""

from __future__ import annotations

from typing import Any

import torch
from kpflow.backends._torch_graph_attention import attention_params
from kpflow.backends._torch_graph_select import WHERE, select_states
from kpflow.backends._torch_graph_tap import _offsets, _Tap, _Uses, site_kind
from kpflow.backends._torch_graph_traj import ModuleTrajectory

from kpflow.models.base import Model
from kpflow.models.layout import Layout

__all__ = ["ModuleGraph", "ModuleTrajectory", "from_graph", "select_states"]


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
        #: an attention module's sites: part ("mha_in", "mha_out") -> its trained parameters' names
        self.site_parts: dict[str, dict[str, list[str]]] = {}
        inner: set[str] = set()  # an attention's out_proj: applied by the attention site
        for mname, sub in module.named_modules():
            kind = site_kind(sub)
            if kind is None or mname in inner:
                continue
            if kind == "mha":
                inner.add(f"{mname}.out_proj" if mname else "out_proj")
                parts = {
                    part: [(n, p) for n, p in named if id(p) in ids]
                    for part, named in attention_params(sub).items()
                }
                own = [p for named in parts.values() for _, p in named]
                if not all(named and named[0][0].endswith("weight") for named in parts.values()):
                    continue  # a frozen projection weight: the autodiff rule
            else:
                own = [p for p in sub.parameters(recurse=False) if id(p) in ids]
                if not any(p is getattr(sub, "weight", None) for p in own):
                    continue
            if any(len(owners[id(p)]) > 1 for p in own):
                continue  # shared with another module: the autodiff rule counts every use
            self.site_kinds[mname] = kind
            self.site_params[mname] = [ids[id(p)] for p in own]
            if kind == "mha":
                self.site_parts[mname] = {
                    part: [ids[id(p)] for _, p in named] for part, named in parts.items()
                }
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
        return torch.cat(self._parts(states, offsets), dim=1)

    def _parts(self, states: list[Any], offsets: list[int] | None = None) -> list[Any]:
        """Each state as (B, n_j): the column blocks of the flattened states."""
        if offsets is not None and len(states) != len(offsets) - 1:
            msg = (
                f"{self.where}: this forward called {len(states)} state modules, the recorded run "
                f"{len(offsets) - 1}; the modules a forward calls must not depend on array values"
            )
            raise ValueError(msg)
        B = int(states[0].shape[0])
        return [torch.reshape(s, (B, -1)) for s in states]

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
        demoted |= tap.unmapped  # attention called other than as self-attention: the autodiff rule
        self.state_size = _offsets(tap.states)[-1]  # the last run's (Model.state_parts reads it)
        if not all(bool(torch.all(torch.isfinite(s.detach()))) for s in tap.states):
            msg = f"{where}: the states are not finite (NaN or inf)"
            raise ValueError(msg)
        return ModuleTrajectory(self, params, inputs, tap.states, tap.sites, demoted)

    def _make_trajectory(self, params: dict[str, Any], x: Any, h0: Any, states: Any) -> Any:
        return self.run(params, *x)  # (Model.run's route; run builds the trajectory itself)

    def _state_call_names(self, tap: _Tap) -> list[str]:
        return list(self.state_names)

    def __repr__(self) -> str:
        return (
            f"ModuleGraph({type(self.module).__name__}, states={self.state_names}, "
            f"kronecker sites={self.site_names})"
        )


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
