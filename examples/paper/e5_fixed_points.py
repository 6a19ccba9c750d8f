"""e5: planted fixed points and what they do to the NTK over training.

A leaky RNN (dt = 0.7, H = 256, no bias; h_t = 0.3 h_{t−1} + 0.7 (W tanh h_{t−1} + U x_t)) on
memory-pro (30/30/30, no input noise), initialised with 0 or 5 fixed points planted in W
(:func:`kpflow.training.init_params` with ``fixed_points``: the minimum-norm correction of W
that makes W tanh(h*) = h* hold), trained by full-batch SGD.  At every checkpoint: the
loss, ‖NTK_S‖_F, pr(NTK_S), the core alignment (:func:`kpflow.analysis.core_alignment`),
the target-mode projections τ_i of the outputs (:func:`kpflow.analysis.target_modes`) and
the Rayleigh quotient of NTK_S on target mode 3 (:func:`kpflow.analysis.target_mode_rayleigh`).
At initialisation: the temporal modes of V, NTK_S and P (cumulative variance).

Run ``python e5_fixed_points.py --quick --out out/e5`` (or ``--paper``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Progress, cumulative_variance, memory_pro, parse_args, pyplot, save_figure, write_results

import kpflow
from kpflow import linalg
from kpflow.analysis import core_alignment, rank_at_variance, target_mode_rayleigh, target_modes
from kpflow.models import LeakyRNN, Linear
from kpflow.training import SGD, init_params, train

SIZES = {
    "paper": {
        "H": 256,
        "B": 20,
        "period": 30,
        "steps": 2000,
        "checkpoints": 6,
        "lr": 0.05,
        "num_matvecs": 200,
    },
    "quick": {"H": 16, "B": 4, "period": 6, "steps": 40, "checkpoints": 3, "lr": 0.05, "num_matvecs": 40},
}
N_POINTS = (0, 5)


def measure(
    model: LeakyRNN, params: dict, rp: dict, x: np.ndarray, y: np.ndarray, size: dict, rng: int
) -> dict:
    traj = model.run(params, x)
    N = kpflow.global_ntk(traj)
    out = np.asarray(traj.states) @ rp["weight"].T + rp["bias"]
    modes = target_modes(y, out)
    return {
        "ntk_fro": float(linalg.fro_norm(N, num_matvecs=size["num_matvecs"], rng=rng)),
        "ntk_pr": float(linalg.effective_rank(N, num_matvecs=size["num_matvecs"], rng=rng)),
        "core_alignment": float(core_alignment(traj, num_matvecs=size["num_matvecs"], rng=rng)),
        "tau": np.asarray(modes.tau, dtype=np.float64),
        "rayleigh_mode3": float(target_mode_rayleigh(traj, y, rp, mode=2, rng=rng)),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv, __doc__.splitlines()[0])
    size = SIZES[args.size]
    progress = Progress("e5")
    progress(f"sizes {args.size}: {size}")
    p, H = size["period"], size["H"]
    # trained on the research code's training variant (uniform angles, input noise),
    # measured on its analysis variant (evenly spaced angles, no noise)
    data = memory_pro(p, analysis=False).sample(size["B"], args.seed)
    analysis = memory_pro(p).sample(size["B"], args.seed)
    x, y = analysis.inputs, analysis.targets
    model, readout = LeakyRNN(3, H, dt=0.7, bias=False), Linear(H, 3)
    steps = np.linspace(0, size["steps"], size["checkpoints"]).astype(int).tolist()
    results: dict = {
        "size": args.size,
        "H": H,
        "B": size["B"],
        "T": 3 * p,
        "seed": args.seed,
        "steps": steps,
        "lr": size["lr"],
        "cases": {},
    }
    for n in N_POINTS:
        gen = np.random.default_rng([args.seed, n])
        points = gen.uniform(-0.8, 0.8, (n, H)) if n else None
        params = init_params(model, gen, fixed_points=points)
        r = train(
            model,
            readout,
            params,
            readout.init(gen),
            data,
            steps=size["steps"],
            optimizer=SGD(size["lr"]),
            checkpoints=steps,
            method="kpflow",
        )
        rows = [
            measure(model, c.params, c.readout_params, x, y, size, args.seed + i)
            for i, c in enumerate(r.checkpoints)
        ]
        traj0 = model.run(params, x)
        B, T = x.shape[:2]
        prev = np.concatenate([np.zeros((B, 1, H)), np.tanh(np.asarray(traj0.states)[:, :-1])], axis=1)
        V = np.concatenate([prev, x], axis=-1).reshape(B * T, -1)
        P = kpflow.propagator(traj0)
        case = {
            "loss": np.asarray(r.losses, dtype=np.float64),
            **{q: [row[q] for row in rows] for q in rows[0]},
            "init_cumulative_variance": {
                "V": cumulative_variance(np.linalg.eigvalsh(V.T @ V)),
                "NTK": rank_at_variance(
                    kpflow.global_ntk(traj0), 0.95, axis=(0, 1), rng=args.seed
                ).cumulative,
                "P": rank_at_variance(P @ P.T, 0.95, axis=(0, 1), rng=args.seed).cumulative,
            },
        }
        if n:
            end = model.run(params, np.zeros((n, 50, 3)), points).states
            case["fixed_point_drift"] = float(np.max(np.abs(np.asarray(end)[:, -1] - points)))
        results["cases"][str(n)] = case
        progress(
            f"{n} fixed points: loss {case['loss'][0]:.4f} -> {case['loss'][-1]:.4f}, "
            f"core alignment {case['core_alignment'][0]:.3f} -> {case['core_alignment'][-1]:.3f}, "
            f"pr(NTK_S) {case['ntk_pr'][0]:.2f} -> {case['ntk_pr'][-1]:.2f}"
        )
    results["seconds"] = progress.elapsed
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.3))
    for n in N_POINTS:
        c = results["cases"][str(n)]
        axes[0].semilogy(c["loss"], label=f"{n} fixed points")
        axes[1].plot(steps, c["core_alignment"], "o-", label=f"{n}")
        axes[2].plot(steps, c["rayleigh_mode3"], "o-", label=f"{n}")
        for name, cum in c["init_cumulative_variance"].items():
            axes[3].plot(np.arange(1, len(cum) + 1), cum, ls="-" if n else "--", label=f"{name}, {n} f.p.")
    axes[0].set_title("loss")
    axes[0].legend(fontsize=7)
    axes[1].set_title("core alignment")
    axes[2].set_title("Rayleigh quotient, target mode 3")
    axes[3].set_xscale("log")
    axes[3].set_title("init: cumulative variance")
    axes[3].legend(fontsize=6)
    save_figure(fig, args.out, "e5_fixed_points", progress)
    return write_results(args.out, results, progress)


if __name__ == "__main__":
    main()
