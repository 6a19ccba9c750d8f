"""e2: temporal modes of V, NTK_S and P, and which targets the NTK prefers.

An untrained tanh RNN (no bias, torch's initialisation) on memory-pro (30/30/30, no input
noise).  Panel 1: the cumulative variance against the number of temporal modes (over
(batch, time)) of the activity V = [h_{t−1}, x_t] (V Vᵀ), of NTK_S (its partial trace over
hidden, :func:`kpflow.analysis.temporal_ntk`) and of P (P Pᵀ's partial trace), with the
number of modes reaching 95% (:func:`kpflow.analysis.rank_at_variance`).  Panel 2: the top
temporal NTK modes, weighted by their eigenvalues.  Panel 3: the target–NTK alignment of a
*preferred* target (the top temporal mode) and of a *null-space* target (a random target
with the top modes projected out) (:func:`kpflow.analysis.target_alignment`).

Run ``python e2_temporal_modes.py --quick --out out/e2`` (or ``--paper``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    Progress,
    cumulative_variance,
    memory_pro,
    parse_args,
    pyplot,
    save_figure,
    torch_scale_params,
    write_results,
)

import kpflow
from kpflow import linalg
from kpflow.analysis import rank_at_variance, target_alignment, temporal_ntk
from kpflow.models import RNN

SIZES = {
    "paper": {"H": 256, "B": 20, "period": 30, "modes": 5, "null_modes": 20},
    "quick": {"H": 24, "B": 4, "period": 8, "modes": 3, "null_modes": 8},
}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv, __doc__.splitlines()[0])
    size = SIZES[args.size]
    progress = Progress("e2")
    progress(f"sizes {args.size}: {size}")
    p = size["period"]
    x = memory_pro(p).sample(size["B"], args.seed).inputs
    model = RNN(x.shape[-1], size["H"], bias=False)
    traj = model.run(torch_scale_params(model, args.seed, 1.0), x)
    B, T, H = traj.states.shape

    prev = np.concatenate([np.zeros((B, 1, H)), np.asarray(traj.states)[:, :-1]], axis=1)
    V = np.concatenate([prev, x], axis=-1).reshape(B * T, -1)
    cum_V = cumulative_variance(np.linalg.eigvalsh(V.T @ V))
    keep = (0, 1)  # (batch, time); P @ P.T carries no axis names
    P = kpflow.propagator(traj)
    r_ntk = rank_at_variance(kpflow.global_ntk(traj), 0.95, axis=keep, rng=args.seed)
    progress(f"NTK_S: {int(r_ntk)} temporal modes reach 95%")
    r_p = rank_at_variance(P @ P.T, 0.95, axis=keep, rng=args.seed)
    progress(f"P P^T: {int(r_p)} temporal modes reach 95%")
    r_v = int(np.searchsorted(cum_V, 0.95) + 1)

    M = temporal_ntk(traj)
    eig = linalg.eigsh(M, size["null_modes"], rng=args.seed)
    values = np.asarray(eig.eigenvalues, dtype=np.float64)
    order = np.argsort(values)[::-1]
    values = values[order]
    vectors = np.asarray(eig.eigenvectors)[order]  # (k, B, T)
    vectors = vectors.reshape(len(values), B, T)
    preferred = vectors[0]
    gen = np.random.default_rng(args.seed + 5)
    null = gen.standard_normal((B, T))
    flat = vectors.reshape(len(values), -1)
    null = (null.reshape(-1) - flat.T @ (flat @ null.reshape(-1))).reshape(B, T)
    a_pref = float(target_alignment(traj, preferred, rng=args.seed))
    a_null = float(target_alignment(traj, null, rng=args.seed))
    a_task = float(
        target_alignment(
            traj,
            memory_pro(p).sample(size["B"], args.seed).targets,
            rng=args.seed,
        )
    )
    progress(
        f"target alignment: preferred {a_pref:.4f}, null-space {a_null:.2e}, memory-pro targets {a_task:.4f}"
    )
    k = size["modes"]
    results = {
        "size": args.size,
        "H": H,
        "B": B,
        "T": T,
        "seed": args.seed,
        "cumulative_variance": {"V": cum_V, "NTK": r_ntk.cumulative, "P": r_p.cumulative},
        "modes_at_95": {"V": r_v, "NTK": int(r_ntk), "P": int(r_p)},
        "top_ntk_eigenvalues": values[:k],
        "top_ntk_modes_weighted": values[:k, None, None] * vectors[:k],
        "target_alignment": {"preferred": a_pref, "null_space": a_null, "memory_pro_targets": a_task},
        "seconds": progress.elapsed,
    }
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for name, c in results["cumulative_variance"].items():
        axes[0].plot(np.arange(1, len(c) + 1), c, label=f"{name} ({results['modes_at_95'][name]} at 95%)")
    axes[0].axhline(0.95, color="k", lw=0.5)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("temporal modes")
    axes[0].set_ylabel("cumulative variance")
    axes[0].legend(fontsize=7)
    for i in range(k):
        axes[1].plot(values[i] * vectors[i, 0], label=f"λ{i + 1} u{i + 1} (trial 0)")
    axes[1].set_xlabel("time")
    axes[1].legend(fontsize=7)
    axes[2].bar(["preferred", "null space", "task"], [a_pref, max(a_null, 1e-16), a_task])
    axes[2].set_yscale("log")
    axes[2].set_title("target–NTK alignment")
    save_figure(fig, args.out, "e2_temporal_modes", progress)
    return write_results(args.out, results, progress)


if __name__ == "__main__":
    main()
