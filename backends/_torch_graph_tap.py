"""The forward hooks of one run of a mapped module: states in, site inputs out, perturbations added.

A :class:`_Tap` hooks the state modules (their outputs are read, replaced by a given z, or
perturbed by e) and the site modules (their inputs are recorded as the site variables A_w,
and a perturbation is added to their outputs, whose derivative is D_w).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from kpflow.backends._torch_graph_attention import attention_forward, is_mapped_attention
from kpflow.backends._torch_graph_linear import linearised_norm, tangent_line
from kpflow.backends._torch_graph_select import _first, _with_first

if TYPE_CHECKING:
    from kpflow.backends._torch_graph import ModuleGraph

__all__ = ["site_kind"]


def site_kind(module: Any) -> str | None:
    """The Kronecker site kind of a submodule, or None (its parameters take the autodiff rule)."""
    nn = torch.nn
    if isinstance(module, nn.Linear):
        return "linear"
    if _is_transposed_linear(module):
        return "linear_t"
    if is_mapped_attention(module):
        return "mha"
    if isinstance(module, nn.LayerNorm | nn.RMSNorm):
        if module.elementwise_affine and len(module.normalized_shape) == 1:
            return "norm"
        return None
    if isinstance(module, nn.Embedding):
        if module.max_norm is None and not module.scale_grad_by_freq:
            return "embedding"
        return None
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        if module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str):
            return "conv"
        return None
    return None


#: parameter-free elementwise activations of torch.nn and transformers.activations
_ELEMENTWISE_TORCH = (
    "CELU", "ELU", "GELU", "Hardsigmoid", "Hardswish", "Hardtanh", "LeakyReLU", "LogSigmoid", "Mish",
    "ReLU", "ReLU6", "SELU", "SiLU", "Sigmoid", "Softplus", "Softsign", "Tanh", "Tanhshrink",
)  # fmt: skip
_ELEMENTWISE_HF = (
    "AccurateGELUActivation", "FastGELUActivation", "GELUActivation", "GELUTanh", "NewGELUActivation",
    "PytorchGELUTanh", "QuickGELUActivation", "SiLUActivation",
)  # fmt: skip


def is_elementwise(module: Any) -> bool:
    """Whether ``module`` is one of the known parameter-free elementwise activations."""
    cls = type(module)
    if cls.__module__ == "torch.nn.modules.activation":
        return cls.__name__ in _ELEMENTWISE_TORCH
    return cls.__module__ == "transformers.activations" and cls.__name__ in _ELEMENTWISE_HF


def _linearised_elementwise(module: Any, args: Any, out: Any) -> Any:
    """An elementwise activation's output, linearised at its input: y(x₀) + σ'(x₀) (x − x₀).

    Used in the saved linearisation only (first derivatives at eps = 0): the derivative is
    evaluated once, so each product's backward and double backward multiply by a saved
    tensor instead of re-deriving the activation's formula (tanh-GELU: a dozen passes).
    """
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) or not x.requires_grad:
        return None
    if out.shape != x.shape:
        return None
    with torch.enable_grad():
        x0 = x.detach().requires_grad_(True)
        (d,) = torch.autograd.grad(module.forward(x0), x0, torch.ones_like(out))
    return tangent_line(x, out.detach(), lambda u: d * u, lambda g: d * g)


def _is_transposed_linear(module: Any) -> bool:
    """A Hugging Face ``Conv1D`` (GPT-2's projections): x @ W + b with W stored (in, out)."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, torch.Tensor)
        and tuple(weight.shape) == (getattr(module, "nx", None), module.nf)
    )


# -- the tap: hooks of one forward pass --------------------------------------------------------------
class _Tap:
    """Forward hooks on the state and site modules for one run of the module.

    ``z`` (B, Σ n_j): each state call's output is replaced by its block of z (the update
    map f); ``e`` (B, Σ n_j): added to each state call's output (P's perturbation);
    ``eps``: site-call index -> tensor of shape (rows, width) added to that call's output
    (for a norm, a dict: ``"scale"`` multiplies x̂ (γ's perturbation), ``"shift"`` is added (β's);
    an attention call's: ``"in_proj"``, ``"out_proj"``).  ``first_order``: only first
    derivatives in eps at eps = 0 are taken, so x̂ is held constant (its own derivative
    would be multiplied by eps = 0), a site norm's output is replaced by its tangent map
    (:func:`~kpflow.backends._torch_graph_linear.linearised_norm`) and an elementwise
    activation's by its tangent line.
    """

    def __init__(
        self,
        graph: ModuleGraph,
        offsets: list[int] | None = None,
        *,
        z: Any = None,
        e: Any = None,
        eps: dict | None = None,
        first_order: bool = False,
    ) -> None:
        self.graph, self.offsets, self.z, self.e, self.eps = graph, offsets, z, e, eps or {}
        self.first_order = first_order
        self.states: list[Any] = []
        self.sites: list[tuple[str, Any]] = []  # (site module name, A) per call, in order
        self._handles: list[Any] = []
        self._inside: list[str] = []
        self._patched: list[tuple[Any, Any]] = []  # (attention module, its own instance forward)
        self._attention_call: dict[str, int] = {}
        self.unmapped: set[str] = set()  # attention modules called other than as self-attention

    def __enter__(self) -> _Tap:
        g = self.graph
        for name in g.site_names:
            sub = g.submodules[name]
            self._handles.append(sub.register_forward_pre_hook(self._pre(name)))
            if g.site_kinds[name] == "mha":
                self._patched.append((sub, sub.__dict__.get("forward")))
                sub.forward = attention_forward(sub, self._attention_record(name))
                self._handles.append(sub.register_forward_hook(self._post))
            else:
                self._handles.append(sub.register_forward_hook(self._site_hook(name)))
        for name in g.state_names:
            self._handles.append(g.submodules[name].register_forward_hook(self._state_hook(name)))
        if self.first_order:
            skip = set(g.site_names) | set(g.state_names)
            for name, sub in g.submodules.items():
                if name not in skip and is_elementwise(sub):
                    self._handles.append(sub.register_forward_hook(_linearised_elementwise))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        for sub, own in self._patched:
            del sub.forward
            if own is not None:
                sub.forward = own

    def _post(self, module: Any, args: Any, out: Any) -> None:
        self._inside.pop()

    def _attention_record(self, name: str) -> Callable:
        """Records an attention call's site inputs and hands back its perturbations."""

        def record(inputs: dict[str, Any]) -> dict[str, Any]:
            if "out_proj" in inputs:
                c = self._attention_call[name]
                self.sites[c][1].update(inputs)
            else:  # a call starts
                c = self._attention_call[name] = len(self.sites)
                self.sites.append((name, dict(inputs)))
                if not inputs:
                    self.unmapped.add(name)
                    return {}
            return self.eps.get(c, {})

        return record

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
            kind = self.graph.site_kinds[name]
            if kind == "norm" and self.first_order:  # x̂ held constant, the norm a saved linear map
                lin = linearised_norm(module, args[0], out)
                if e is None:
                    return lin
                out = out if lin is None else lin
                return (out + _norm_perturbation(module, args[0].detach(), e)).contiguous()
            if e is None:
                return None
            if kind == "norm":
                return (out + _norm_perturbation(module, args[0], e)).contiguous()
            return (out + _to_output(module, kind, e, out)).contiguous()

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


def normalized(norm: Any, x: Any) -> Any:
    """x̂ of a LayerNorm / RMSNorm call: its output with γ = 1 and β = 0 (∂y/∂γ, unit by unit)."""
    F = torch.nn.functional
    if isinstance(norm, torch.nn.LayerNorm):
        return F.layer_norm(x, norm.normalized_shape, None, None, norm.eps)
    return F.rms_norm(x, norm.normalized_shape, None, norm.eps)


def _norm_perturbation(norm: Any, x: Any, parts: dict[str, Any]) -> Any:
    """x̂ ⊙ e_γ + e_β laid out as the norm's output (y = x̂ ⊙ γ + β, so u_γ = γ, u_β = β per row)."""
    out: Any = 0
    if "scale" in parts:
        out = out + normalized(norm, x) * torch.reshape(parts["scale"], x.shape)
    if "shift" in parts:
        out = out + torch.reshape(parts["shift"], x.shape)
    return out


def _variables(module: Any, kind: str, a: Any, dtype: Any) -> Any:
    """A_w rows of one call: (rows, p) with a ones column for a bias."""
    if kind == "norm":  # γ and β are the same at every row: A = [1] per row
        return torch.ones((int(a.numel()) // _in_size(module, kind), 1), dtype=dtype, device=a.device)
    if kind in ("linear", "linear_t"):
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


def _offsets(states: list[Any]) -> list[int]:
    """Each state's first column in z (B, Σ n_j), and the total."""
    B, out = int(states[0].shape[0]), [0]
    for s in states:
        out.append(out[-1] + int(s.numel()) // B)
    return out


def _in_size(module: Any, kind: str) -> int:
    if kind == "linear":
        return int(module.in_features)
    if kind == "linear_t":
        return int(module.weight.shape[0])
    if kind == "norm":
        return int(module.normalized_shape[0])
    return 1  # embedding: one row per id


def _conv_rows(conv: Any, x: Any) -> int:
    return int(_patches(conv, x.detach()).shape[0])
