"""e3: spatial and temporal rank of NTK_S over (D_inp, g): a phase diagram at initialisation.

A tanh RNN (H = 100, torch's initialisation with ``weight_hh`` × g) on the research code's
forecasting task (inputs sin(W_inp z + b) in D_inp channels, T = 30).  For every (D_inp, g):
the temporal rank (effective rank of NTK_S's partial trace over hidden, keeping
(batch, time)) and the spatial rank (keeping hidden), by
:func:`kpflow.analysis.temporal_spatial_ranks`.  The diagram is read in four regions, split
at g = 1 (decaying against chaotic activity) and at the median D_inp (low- against
high-dimensional drive); ``results.json`` holds the mean ranks of each region.

Run ``python e3_rank_phase_diagram.py --quick --out out/e3`` (or ``--paper``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Progress, forecasting, parse_args, pyplot, save_figure, torch_scale_params, write_results

from kpflow.analysis import temporal_spatial_ranks

SIZES = {
    "paper": {
        "H": 100,
        "B": 20,
        "T": 30,
        "d_inp": [2, 14, 26, 38, 51, 63, 75, 88, 100],
        "g": [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0],
        "num_matvecs": 200,
    },
    "quick": {
        "H": 24,
        "B": 4,
        "T": 15,
        "d_inp": [2, 26, 51, 100],
        "g": [0.25, 0.75, 1.5, 3.0],
        "num_matvecs": 60,
    },
}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv, __doc__.splitlines()[0])
    size = SIZES[args.size]
    progress = Progress("e3")
    progress(f"sizes {args.size}: {size}")
    D, G = size["d_inp"], size["g"]
    temporal = np.zeros((len(D), len(G)))
    spatial = np.zeros_like(temporal)
    t_err, s_err = np.zeros_like(temporal), np.zeros_like(temporal)
    for i, d in enumerate(D):
        model, data = forecasting(d, size, args.seed, noise=False)
        x = data.inputs
        for j, g in enumerate(G):
            traj = model.run(torch_scale_params(model, args.seed, g), x)
            r = temporal_spatial_ranks(
                traj, "NTK", num_matvecs=size["num_matvecs"], rng=args.seed + i + 100 * j
            )
            temporal[i, j], spatial[i, j] = float(r.temporal), float(r.spatial)
            t_err[i, j] = float(r.temporal.error or 0.0)
            s_err[i, j] = float(r.spatial.error or 0.0)
        progress(
            f"D_inp = {d}: temporal {np.round(temporal[i], 2).tolist()}, "
            f"spatial {np.round(spatial[i], 2).tolist()}"
        )
    low_d, low_g = np.asarray(D) <= np.median(D), np.asarray(G) < 1.0
    regions = {}
    for dn, dm in (("low_D_inp", low_d), ("high_D_inp", ~low_d)):
        for gn, gm in (("g<1", low_g), ("g>=1", ~low_g)):
            cell = np.ix_(dm, gm)
            regions[f"{dn}, {gn}"] = {
                "temporal": float(temporal[cell].mean()),
                "spatial": float(spatial[cell].mean()),
            }
    results = {
        "size": args.size,
        "H": size["H"],
        "B": size["B"],
        "T": size["T"],
        "seed": args.seed,
        "d_inp": D,
        "g": G,
        "temporal_rank": temporal,
        "temporal_rank_error": t_err,
        "spatial_rank": spatial,
        "spatial_rank_error": s_err,
        "regions": regions,
        "seconds": progress.elapsed,
    }
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, M, name in ((axes[0], temporal, "temporal rank"), (axes[1], spatial, "spatial rank")):
        im = ax.imshow(M, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(G)), [f"{g:g}" for g in G])
        ax.set_yticks(range(len(D)), [str(d) for d in D])
        ax.set_xlabel("g")
        ax.set_ylabel("D_inp")
        ax.set_title(name)
        fig.colorbar(im, ax=ax)
    save_figure(fig, args.out, "e3_rank_phase_diagram", progress)
    return write_results(args.out, results, progress)


if __name__ == "__main__":
    main()
