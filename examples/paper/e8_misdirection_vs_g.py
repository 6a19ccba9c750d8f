"""e8: misdirection of a GRU at initialisation against the recurrent scale g.

The misdirection is the alignment ⟨NTK_S, P Pᵀ⟩_F / (‖NTK_S‖_F ‖P Pᵀ‖_F) of NTK_S = P K Pᵀ
with P Pᵀ (:func:`kpflow.analysis.misdirection`): 1 when K acts as c·I on the states, lower
as K turns the propagator's modes.  A GRU (H = 256) runs on memory-pro (30/30/30, no input
noise) with the research code's initialisation, torch's U(±1/√H) with ``weight_hh`` times
g, for 10 log-spaced g in [1e-5, 5].  The error bars combine the spread over initialisation
seeds (``--quick``: 2; ``--paper``: one network per g, as the research script) and the
estimator's own standard error.

Run ``python e8_misdirection_vs_g.py --quick --out out/e8`` (or ``--paper``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Progress, memory_pro, parse_args, pyplot, save_figure, torch_scale_params, write_results

from kpflow.analysis import misdirection
from kpflow.models import GRU

SIZES = {
    # the research script: memory-pro, 50 trials of T = 90, GRU H = 256, one network per g, 30 probes
    "paper": {"H": 256, "B": 50, "period": 30, "seeds": 1, "num_matvecs": 60},
    "quick": {"H": 32, "B": 4, "period": 8, "seeds": 2, "num_matvecs": 40},
}
GS = np.geomspace(1e-5, 5.0, 10)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv, __doc__.splitlines()[0])
    size = SIZES[args.size]
    progress = Progress("e8")
    progress(f"sizes {args.size}: {size}")
    p = size["period"]
    x = memory_pro(p).sample(size["B"], args.seed).inputs
    model = GRU(x.shape[-1], size["H"])
    values = np.zeros((len(GS), size["seeds"]))
    errors = np.zeros_like(values)
    for i, g in enumerate(GS):
        for j in range(size["seeds"]):
            traj = model.run(torch_scale_params(model, args.seed + 1000 * j, float(g)), x)
            m = misdirection(traj, num_matvecs=size["num_matvecs"], rng=args.seed + 17 * j + i)
            values[i, j] = float(m)
            errors[i, j] = 0.0 if m.error is None else float(m.error)
        progress(
            f"g = {g:.2e}: misdirection {values[i].mean():.4f} ± {values[i].std():.4f} (seeds), "
            f"estimator error {errors[i].mean():.4f}"
        )
    spread = values.std(axis=1, ddof=1) if size["seeds"] > 1 else np.zeros(len(GS))
    total = np.sqrt(spread**2 + (errors**2).mean(axis=1) / size["seeds"])
    results = {
        "size": args.size,
        "H": size["H"],
        "B": size["B"],
        "T": 3 * p,
        "seed": args.seed,
        "g": GS,
        "misdirection": values.mean(axis=1),
        "misdirection_error": total,
        "misdirection_per_seed": values,
        "estimator_error_per_seed": errors,
        "seconds": progress.elapsed,
    }
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(GS, values.mean(axis=1), yerr=2 * total, marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("g (research scale: weight_hh × g)")
    ax.set_ylabel("misdirection  a(NTK_S, P Pᵀ)")
    ax.set_title(f"GRU H={size['H']} on memory-pro at init (±2 s.e.)")
    save_figure(fig, args.out, "e8_misdirection_vs_g", progress)
    return write_results(args.out, results, progress)


if __name__ == "__main__":
    main()
