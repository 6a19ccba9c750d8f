"""e6: teacher–student RNNs: the student's NTK at initialisation over (g, input rank r_x).

A teacher tanh RNN (H = 64, d_in = 16, no bias, torch's initialisation with g* = 1) and a
linear readout make the targets y (B, T, 1) from inputs x = z Q of rank r_x (z ~ N(0, 1) of
shape (B, T, r_x), Q an orthonormal (r_x, 16) frame), T = 40.  A student of the same
architecture, initialised with recurrent scale g, is measured on the same inputs: the
spatial and temporal ranks of its NTK_S and the target–NTK alignment ρ(NTK_time, y)/tr NTK_S
(:func:`kpflow.analysis.temporal_spatial_ranks`, :func:`kpflow.analysis.target_alignment`),
for three ways to train: only W (``weight_hh``), only W_in (``weight_ih``), or both
(:meth:`kpflow.models.Model.with_frozen` drops the frozen parameters from K exactly).

Run ``python e6_teacher_student.py --quick --out out/e6`` (or ``--paper``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Progress, parse_args, pyplot, save_figure, torch_scale_params, write_results

from kpflow.analysis import target_alignment, temporal_spatial_ranks
from kpflow.models import RNN

SIZES = {
    "paper": {
        "H": 64,
        "d_in": 16,
        "T": 40,
        "B": 10,
        "g": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
        "r_x": [1, 2, 4, 8, 16],
        "num_matvecs": 200,
    },
    "quick": {"H": 16, "d_in": 16, "T": 20, "B": 3, "g": [0.0, 1.5, 3.0], "r_x": [1, 16], "num_matvecs": 40},
}
TRAINED = {"W": ["weight_ih"], "W_in": ["weight_hh"], "both": []}  # the frozen parameters of each


def teacher_data(size: dict, r_x: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng([seed, r_x])
    Q = np.linalg.qr(gen.standard_normal((size["d_in"], r_x)))[0].T  # (r_x, d_in), orthonormal rows
    x = gen.standard_normal((size["B"], size["T"], r_x)) @ Q
    teacher = RNN(size["d_in"], size["H"], bias=False)
    states = teacher.run(torch_scale_params(teacher, seed + 999, 1.0), x).states
    C = gen.standard_normal((1, size["H"])) / np.sqrt(size["H"])
    return x, np.asarray(states) @ C.T


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv, __doc__.splitlines()[0])
    size = SIZES[args.size]
    progress = Progress("e6")
    progress(f"sizes {args.size}: {size}")
    G, R = size["g"], size["r_x"]
    shape = (len(R), len(G))
    out: dict[str, dict[str, np.ndarray]] = {
        mode: {q: np.zeros(shape) for q in ("spatial_rank", "temporal_rank", "target_alignment")}
        for mode in TRAINED
    }
    base = RNN(size["d_in"], size["H"], bias=False)
    for i, r_x in enumerate(R):
        x, y = teacher_data(size, r_x, args.seed)
        for j, g in enumerate(G):
            params = torch_scale_params(base, args.seed, g)
            for mode, frozen in TRAINED.items():
                traj = base.with_frozen(frozen).run(params, x)
                rng = args.seed + 7 * i + 131 * j
                ranks = temporal_spatial_ranks(traj, "NTK", num_matvecs=size["num_matvecs"], rng=rng)
                out[mode]["spatial_rank"][i, j] = float(ranks.spatial)
                out[mode]["temporal_rank"][i, j] = float(ranks.temporal)
                out[mode]["target_alignment"][i, j] = float(
                    target_alignment(traj, y, num_matvecs=size["num_matvecs"], rng=rng)
                )
        progress(
            f"r_x = {r_x}: "
            + "; ".join(f"{m}: temporal {np.round(out[m]['temporal_rank'][i], 2).tolist()}" for m in TRAINED)
        )
    results = {
        "size": args.size,
        "seed": args.seed,
        **{k: size[k] for k in ("H", "d_in", "T", "B")},
        "g": G,
        "r_x": R,
        "trained": out,
        "seconds": progress.elapsed,
    }
    plt = pyplot()
    fig, axes = plt.subplots(len(TRAINED), 3, figsize=(10, 8))
    for a, mode in enumerate(TRAINED):
        for b, q in enumerate(("spatial_rank", "temporal_rank", "target_alignment")):
            ax = axes[a, b]
            im = ax.imshow(out[mode][q], origin="lower", aspect="auto", cmap="magma")
            ax.set_xticks(range(len(G)), [f"{g:g}" for g in G])
            ax.set_yticks(range(len(R)), [str(r) for r in R])
            ax.set_title(f"train {mode}: {q.replace('_', ' ')}", fontsize=9)
            ax.set_xlabel("student g")
            ax.set_ylabel("r_x")
            fig.colorbar(im, ax=ax)
    save_figure(fig, args.out, "e6_teacher_student", progress)
    return write_results(args.out, results, progress)


if __name__ == "__main__":
    main()
