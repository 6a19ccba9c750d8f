"""e7: the temporal rank of a self-attention network's NTK against the input dimension.

Input projection (d_in → 64, with bias) → one self-attention layer (torch's
``nn.MultiheadAttention`` equations, d_model 64, 1 head, no bias, no residual) → MLP
64 → 128 → 128 → 1 with GELU and no bias, applied to every token; x ~ N(0, 1) of shape
(B, 50, d_in), B ∈ {5, 10, 15}.  The states are the token-wise activities of the layers: the
projection, the attention output and each MLP hidden layer, side by side as
(batch, token, 64 + 64 + 128 + 128).  NTK_S = J_S J_Sᵀ with J_S = ∂states/∂θ.  Its temporal
rank is the participation ratio of its partial trace M over the features, keeping
(batch, token).  Each Gaussian probe ω of the parameters gives, by one jvp, the F columns of
J_S ω, and Σ_f (J_S ω)_f (J_S ω)_fᵀ has expectation M; independent groups of probes give
unbiased tr(M)² and tr(M²) and a jackknife standard error.  One configuration is also
measured by :func:`kpflow.linalg.effective_rank` on the Gram operator J_S J_Sᵀ (a
:class:`kpflow.operators.LinearOperator` whose products are ``torch.func`` jvp / vjp).

Panels: the temporal rank against d_in for each B, beside the effective rank of the
inputs pr(X Xᵀ) over (batch, token); the top temporal modes weighted by λ_i / Σλ for
d_in ∈ {1, 5, 100}; Fourier-feature inputs (d_in = 1, features [x, sin 2π2ᵏx, cos 2π2ᵏx],
k < n_freqs) against n_freqs; heads ∈ {1, 2, 4, 8}; sinusoidal positions added after the
projection.

Run ``python e7_attention_rank.py --quick --out out/e7`` (or ``--paper``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Progress, parse_args, pyplot, save_figure, write_results

from kpflow import linalg
from kpflow.linalg._statistics import student_factor  # Student's t factor for few groups
from kpflow.operators import LinearOperator
from kpflow.operators.algebra import Gram

SIZES = {
    "paper": {
        "N": 50,
        "d_in": [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
        "batches": [5, 10, 15],
        "num_matvecs": 400,
        "extra_d_in": [1, 5, 20, 100],
        "n_freqs": [1, 2, 4, 8, 16, 32, 64, 120],
        "modes_d_in": [1, 5, 100],
        "modes_B": 10,
        "probes": 16,
        "groups": 4,
    },
    "quick": {
        "N": 20,
        "d_in": [1, 2, 5, 10, 20, 50],
        "batches": [5, 10, 15],
        "num_matvecs": 64,
        "extra_d_in": [1, 5, 20],
        "n_freqs": [1, 4, 16],
        "modes_d_in": [1, 5, 100],
        "modes_B": 5,
        "probes": 4,
        "groups": 4,
    },
}
D_MODEL, HIDDEN = 64, 128
HEADS = [1, 2, 4, 8]


def build(d_in: int, heads: int, seed: int) -> Any:
    """The network as torch modules (float64), initialised as torch does from ``seed``."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.ModuleDict(
        {
            "proj": nn.Linear(d_in, D_MODEL),
            "attn": nn.MultiheadAttention(D_MODEL, heads, bias=False, batch_first=True),
            "mlp1": nn.Linear(D_MODEL, HIDDEN),
            "mlp2": nn.Linear(HIDDEN, HIDDEN),
            "out": nn.Linear(HIDDEN, 1),
        }
    )
    return net.double()


def attention(params: dict, z: Any, heads: int) -> Any:
    """``nn.MultiheadAttention(bias=False)(z, z, z)`` written out (torch's fused kernel has no jvp)."""
    import torch

    B, N, d = z.shape
    q, k, v = (z @ params["attn.in_proj_weight"].T).split(d, dim=-1)
    split = lambda a: a.reshape(B, N, heads, d // heads).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    o = (w @ split(v)).transpose(1, 2).reshape(B, N, d)
    return o @ params["attn.out_proj.weight"].T


def states_fn(net: Any, positions: Any) -> Any:
    """θ ↦ the token-wise states (B, N, 64 + 64 + 128 + 128) of every layer."""
    import torch
    from torch.func import functional_call

    gelu = torch.nn.functional.gelu

    def f(params: dict, x: Any) -> Any:
        def call(name: str, *a: Any, **kw: Any) -> Any:
            sub = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(name + ".")}
            return functional_call(net[name], sub, a, kw)

        z0 = call("proj", x)
        if positions is not None:
            z0 = z0 + positions
        z1 = attention(params, z0, net["attn"].num_heads)
        z2 = gelu(call("mlp1", z1))
        z3 = gelu(call("mlp2", z2))
        return torch.cat([z0, z1, z2, z3], dim=-1)

    return f


class StateJacobian(LinearOperator):
    """J_S = ∂states/∂θ at ``x``: (P,) → (B, N, F), by torch.func.jvp / vjp, vmapped over probes."""

    def __init__(self, net: Any, x: Any, positions: Any = None) -> None:
        import torch

        self.names = [n for n, p in net.named_parameters() if n.split(".")[0] != "out"]
        self.base = {n: p.detach() for n, p in net.named_parameters() if n in self.names}
        self.shapes = [self.base[n].shape for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.f = states_fn(net, positions)
        self.x = x
        out = self.f(self.base, x)
        super().__init__(
            (sum(self.sizes),), tuple(out.shape), xp=_torch_ns(), dtype=torch.float64, device=x.device
        )

    def _unflatten(self, v: Any) -> dict:
        parts = v.split(self.sizes)
        return {n: p.reshape(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def _matmat(self, X: Any) -> Any:
        import torch
        from torch.func import jvp, vmap

        def one(v: Any) -> Any:
            return jvp(lambda p: self.f(p, self.x), (self.base,), (self._unflatten(v),))[1]

        with torch.no_grad():
            return vmap(one)(X)

    def _rmatmat(self, Y: Any) -> Any:
        import torch
        from torch.func import vjp, vmap

        _, pull = vjp(lambda p: self.f(p, self.x), self.base)

        def one(w: Any) -> Any:
            g = pull(w)[0]
            return torch.cat([g[n].reshape(-1) for n in self.names])

        with torch.no_grad():
            return vmap(one)(Y)


def _torch_ns() -> Any:
    from array_api_compat import torch as xp

    return xp


def inputs(B: int, N: int, d_in: int, gen: np.random.Generator, n_freqs: int = 0) -> np.ndarray:
    """Gaussian tokens (B, N, d_in); with ``n_freqs``, d_in = 1 and the Fourier features
    [x, sin 2π2ᵏx, cos 2π2ᵏx] for k < n_freqs (the research code's deterministic ladder)."""
    x = gen.standard_normal((B, N, d_in))
    if not n_freqs:
        return x
    angle = 2.0 * np.pi * x * 2.0 ** np.arange(n_freqs)
    return np.concatenate([x, np.sin(angle), np.cos(angle)], axis=-1)


def input_rank(x: np.ndarray) -> float:
    """pr(X Xᵀ) of the inputs over (batch, token), from the small Xᵀ X."""
    X = x.reshape(-1, x.shape[-1])
    G = X.T @ X
    return float(np.trace(G) ** 2 / np.sum(G * G))


def sinusoidal(N: int, d: int) -> np.ndarray:
    """pe[n, 2i] = sin(n / 10000^{2i/d}), pe[n, 2i+1] = cos(n / 10000^{2i/d})."""
    i = np.arange(d // 2)
    angle = np.arange(N)[:, None] / 10000 ** (2 * i[None, :] / d)
    pe = np.zeros((N, d))
    pe[:, 0::2], pe[:, 1::2] = np.sin(angle), np.cos(angle)
    return pe


def partial_trace_samples(J: StateJacobian, probes: int, groups: int, seed: int) -> np.ndarray:
    """M̂_g = (1/q) Σ_i Y_i Y_iᵀ per group g, Y_i = J_S ω_i reshaped (B·N, F), ω_i ~ N(0, I).

    E[M̂_g] = M, the partial trace of NTK_S = J_S J_Sᵀ over the features: each probe gives
    F columns of M at the cost of one jvp.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    omega = torch.randn((groups * probes, J.shape_in[0]), generator=g, dtype=torch.float64)
    Y = J.matmat(omega).reshape(groups, probes, -1, J.shape_out[-1]).numpy()
    return np.einsum("gqmf,gqnf->gmn", Y, Y) / probes


def split_ratio(Ms: np.ndarray) -> tuple[float, float]:
    """pr(M) = tr(M)² / tr(M²) from independent estimates M̂_g, and its jackknife standard error.

    Products of different groups are unbiased for tr(M)² and tr(M²) (a product of one
    group with itself is not).  The ratio is the leave-one-group-out jackknife's
    bias-corrected one, clipped to pr's range [1, B·N]; the error the jackknife's, times
    Student's factor for the G groups (with G = 4, ±2σ from the bare jackknife covered the
    exact value 90–92% of the time, biased by ~0.2σ; with both corrections 96%, tested in
    tests/examples/test_e7_estimator.py).
    """
    G, m = Ms.shape[0], Ms.shape[1]
    tr = np.trace(Ms, axis1=1, axis2=2)
    cross = np.einsum("gmn,hmn->gh", Ms, Ms)

    def ratio(keep: np.ndarray) -> float:
        off = keep[:, None] & keep[None, :] & ~np.eye(G, dtype=bool)
        return float(np.outer(tr, tr)[off].mean() / cross[off].mean())

    full = ratio(np.ones(G, dtype=bool))
    loo = np.array([ratio(np.arange(G) != g) for g in range(G)])
    value = float(np.clip(G * full - (G - 1) * loo.mean(), 1.0, m))
    return value, float(np.sqrt((G - 1) / G * np.sum((loo - loo.mean()) ** 2))) * student_factor(G)


def temporal_rank(
    d_in: int, B: int, size: dict, seed: int, *, n_freqs: int = 0, heads: int = 1, positions: bool = False
) -> tuple[float, float, Any]:
    """(rank, standard error, (J_S, mean M̂, inputs)) for one configuration."""
    import torch

    gen = np.random.default_rng([seed, d_in, B, heads])
    x = inputs(B, size["N"], d_in, gen, n_freqs)
    pe = torch.as_tensor(sinusoidal(size["N"], D_MODEL)) if positions else None
    J = StateJacobian(build(x.shape[-1], heads, seed), torch.as_tensor(x), pe)
    Ms = partial_trace_samples(J, size["probes"], size["groups"], seed + d_in + 31 * B + 7 * n_freqs)
    r, err = split_ratio(Ms)
    return r, err, (J, Ms.mean(axis=0), x)


def top_modes(M: np.ndarray, shape: tuple[int, int], k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of the estimated partial trace M (B·N × B·N), modes as (k, B, N)."""
    w, v = np.linalg.eigh(M)
    return w[::-1][:k], v[:, ::-1][:, :k].T.reshape(k, *shape)


def kpflow_check(J: StateJacobian, num_matvecs: int, seed: int) -> tuple[float, float]:
    """The same temporal rank by :func:`kpflow.linalg.effective_rank` on the Gram operator J_S J_Sᵀ."""
    r = linalg.effective_rank(Gram(J), keep=(0, 1), num_matvecs=num_matvecs, rng=seed)
    return float(r), float("nan") if r.error is None else float(r.error)


def main(argv: list[str] | None = None) -> dict:
    import torch

    torch.set_num_threads(1)
    args = parse_args(argv, __doc__.splitlines()[0])
    size = SIZES[args.size]
    progress = Progress("e7")
    progress(f"sizes {args.size}: {size}")
    d_in = size["d_in"]
    ranks: dict[str, list[float]] = {}
    errors: dict[str, list[float]] = {}
    x_ranks: dict[str, list[float]] = {}
    for B in size["batches"]:
        rs = [temporal_rank(d, B, size, args.seed) for d in d_in]
        ranks[str(B)], errors[str(B)] = [r[0] for r in rs], [r[1] for r in rs]
        x_ranks[str(B)] = [input_rank(r[2][2]) for r in rs]
        progress(f"B = {B}: temporal rank " + ", ".join(f"{r:.2f}" for r in ranks[str(B)]))
    B0, extra = size["batches"][0], size["extra_d_in"]
    fourier = [temporal_rank(1, B0, size, args.seed, n_freqs=k)[:2] for k in size["n_freqs"]]
    progress("Fourier features: " + ", ".join(f"{r:.2f}" for r, _ in fourier))
    with_pos = [temporal_rank(d, B0, size, args.seed, positions=True)[:2] for d in extra]
    without_pos = [ranks[str(B0)][d_in.index(d)] if d in d_in else math.nan for d in extra]
    progress("sinusoidal positions: " + ", ".join(f"{r:.2f}" for r, _ in with_pos))
    d_heads = extra[len(extra) // 2]
    heads = [temporal_rank(d_heads, B0, size, args.seed, heads=h)[:2] for h in HEADS]
    progress(f"heads {HEADS} at d_in = {d_heads}: " + ", ".join(f"{r:.2f}" for r, _ in heads))
    modes: dict[str, dict[str, Any]] = {}
    for d in size["modes_d_in"]:
        _, _, (J, M, _) = temporal_rank(d, size["modes_B"], size, args.seed)
        w, v = top_modes(M, J.shape_out[:2], k=4)
        modes[str(d)] = {"weights": w / np.trace(M), "modes": v}
    check_d = extra[1]
    J = temporal_rank(check_d, B0, size, args.seed)[2][0]
    check = kpflow_check(J, size["num_matvecs"], args.seed)
    split = ranks[str(B0)][d_in.index(check_d)], errors[str(B0)][d_in.index(check_d)]
    progress(
        f"check at d_in = {check_d}, B = {B0}: kpflow.linalg.effective_rank {check[0]:.2f} ± {check[1]:.2f}, "
        f"probe-group estimate {split[0]:.2f} ± {split[1]:.2f}"
    )
    results = {
        "size": args.size,
        "N": size["N"],
        "seed": args.seed,
        "d_in": d_in,
        "temporal_rank": ranks,
        "temporal_rank_error": errors,
        "input_rank": x_ranks,
        "n_freqs": size["n_freqs"],
        "fourier_temporal_rank": [r for r, _ in fourier],
        "fourier_temporal_rank_error": [e for _, e in fourier],
        "positions_d_in": extra,
        "positions_temporal_rank": [r for r, _ in with_pos],
        "positions_temporal_rank_error": [e for _, e in with_pos],
        "no_positions_temporal_rank": without_pos,
        "heads": HEADS,
        "heads_d_in": d_heads,
        "heads_temporal_rank": [r for r, _ in heads],
        "heads_temporal_rank_error": [e for _, e in heads],
        "modes_B": size["modes_B"],
        "weighted_modes": modes,
        "kpflow_effective_rank_check": {
            "d_in": check_d,
            "B": B0,
            "value": check[0],
            "error": check[1],
            "probe_group_value": split[0],
            "probe_group_error": split[1],
        },
        "seconds": progress.elapsed,
    }
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.5))
    for c, B in enumerate(size["batches"]):
        yerr = 2 * np.nan_to_num(errors[str(B)])
        axes[0].errorbar(d_in, ranks[str(B)], yerr=yerr, marker="o", color=f"C{c}", label=f"NTK, B={B}")
        axes[0].plot(d_in, x_ranks[str(B)], ls="--", color=f"C{c}", label=f"inputs, B={B}")
    axes[0].plot(extra, [r for r, _ in with_pos], "k^:", label=f"+positions, B={B0}")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("d_in")
    axes[0].set_ylabel("temporal rank")
    axes[0].legend(fontsize=6)
    d_show = str(size["modes_d_in"][-1])
    for i in range(4):
        m = modes[d_show]
        axes[1].plot(m["weights"][i] * m["modes"][i].T, color=f"C{i}", lw=0.7)
    axes[1].set_xlabel("token")
    axes[1].set_title(f"weighted temporal modes, d_in={d_show}", fontsize=9)
    axes[2].errorbar(size["n_freqs"], [r for r, _ in fourier], yerr=[2 * e for _, e in fourier], marker="s")
    axes[2].set_xlabel("n_freqs (d_in = 1)")
    axes[2].set_title(f"Fourier features, B={B0}", fontsize=9)
    axes[3].errorbar(HEADS, [r for r, _ in heads], yerr=[2 * e for _, e in heads], marker="o")
    axes[3].set_xlabel("heads")
    axes[3].set_title(f"d_in = {d_heads}, B = {B0}", fontsize=9)
    save_figure(fig, args.out, "e7_attention_rank", progress)
    return write_results(args.out, results, progress)


if __name__ == "__main__":
    main()
