"""e4: loss curves on forecasting for D_inp ∈ {2, 26, 51, 75, 100} × g ∈ {0, 1, 2}, SGD lr 1e-2.

A tanh RNN (H = 100, torch's initialisation with ``weight_hh`` × g) and a linear readout are
trained by plain SGD (learning rate 1e-2, full batch, :func:`kpflow.training.train` with
kpflow's own backpropagation through time) on the research code's forecasting task
(D_targ = 10, T = 30).  ``results.json`` holds every loss curve, the final loss of each
regime and the loss ratio final/initial.

Run ``python e4_loss_regimes.py --quick --out out/e4`` (or ``--paper``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Progress, forecasting, parse_args, pyplot, save_figure, torch_scale_params, write_results

from kpflow.models import Linear
from kpflow.training import SGD, train

SIZES = {
    "paper": {"H": 100, "B": 64, "T": 30, "steps": 2000},
    "quick": {"H": 24, "B": 8, "T": 15, "steps": 120},
}
D_INP = [2, 26, 51, 75, 100]
GS = [0.0, 1.0, 2.0]
LR = 1e-2


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv, __doc__.splitlines()[0])
    size = SIZES[args.size]
    progress = Progress("e4")
    progress(f"sizes {args.size}: {size}")
    curves: dict[str, dict[str, list[float]]] = {}
    final = np.zeros((len(D_INP), len(GS)))
    ratio = np.zeros_like(final)
    for i, d in enumerate(D_INP):
        model, (x, y, _) = forecasting(d, size, args.seed)
        readout = Linear(size["H"], 10)
        curves[str(d)] = {}
        for j, g in enumerate(GS):
            params = torch_scale_params(model, args.seed, g)
            r = train(
                model,
                readout,
                params,
                readout.init(args.seed + 1),
                (x, y, None),
                steps=size["steps"],
                optimizer=SGD(LR),
                method="kpflow",
            )
            losses = np.asarray(r.losses, dtype=np.float64)
            curves[str(d)][f"{g:g}"] = losses
            final[i, j], ratio[i, j] = losses[-1], losses[-1] / losses[0]
        progress(
            f"D_inp = {d}: final loss "
            + ", ".join(f"g={g:g}: {v:.4f}" for g, v in zip(GS, final[i], strict=True))
        )
    results = {
        "size": args.size,
        "H": size["H"],
        "B": size["B"],
        "T": size["T"],
        "steps": size["steps"],
        "lr": LR,
        "seed": args.seed,
        "d_inp": D_INP,
        "g": GS,
        "loss": curves,
        "final_loss": final,
        "final_over_initial": ratio,
        "seconds": progress.elapsed,
    }
    plt = pyplot()
    fig, axes = plt.subplots(1, len(GS), figsize=(11, 3.3), sharey=True)
    for j, g in enumerate(GS):
        for d in D_INP:
            axes[j].semilogy(curves[str(d)][f"{g:g}"], label=f"D_inp={d}")
        axes[j].set_title(f"g = {g:g}")
        axes[j].set_xlabel("SGD step")
    axes[0].set_ylabel("MSE")
    axes[0].legend(fontsize=7)
    save_figure(fig, args.out, "e4_loss_regimes", progress)
    return write_results(args.out, results, progress)


if __name__ == "__main__":
    main()
