"""e1: the Kronecker core of K at initialisation, K against (V Vᵀ) ⊗ I.

An untrained RNN without biases, run on memory-pro and on forecasting.  Its parameter kernel
is K = D (G ⊗ I_H) Dᵀ with G = V Vᵀ the Gram matrix of the joint activity
V = [h_{t−1}, x_t] over (batch, time).  The paper's claim: K is (V Vᵀ) ⊗ I up to D, so the
effective rank of K along (batch, time) is pr(V Vᵀ) and along hidden it is H.

Two cells are measured, each against V built by a separate numpy forward pass:

- ``leaky`` — :class:`kpflow.models.LeakyRNN` with dt = 1, h_t = W tanh(h_{t−1}) + U x_t:
  D = I, so K = (V Vᵀ) ⊗ I exactly with V = [tanh h_{t−1}, x_t] (the research code's
  ``[tanh(hidden), inputs]``);
- ``tanh`` — :class:`kpflow.models.RNN` (torch's ``nn.RNN``), h_t = tanh(W h_{t−1} + U x_t):
  D = diag(1 − h_t²), K = D ((V Vᵀ) ⊗ I) D exactly, and (V Vᵀ) ⊗ I only approximately.

Run ``python e1_kronecker_core.py --quick --out out/e1`` (or ``--paper``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Progress, memory_pro, parse_args, pyplot, save_figure, torch_scale_params, write_results

import kpflow
from kpflow import linalg
from kpflow.models import RNN, LeakyRNN
from kpflow.tasks import LowRankForecast

SIZES = {
    # memory-pro 30/30/30 (no fixation period), B = 20, T = 90; forecasting T = 30; H = 256
    "paper": {"H": 256, "B": 20, "period": 30, "T_forecast": 30, "probes": 4, "top": 20},
    "quick": {"H": 64, "B": 8, "period": 10, "T_forecast": 15, "probes": 4, "top": 10},
}
G_SCALE = 1.0  # torch's default U(±1/√H) recurrent weights (research g = 1)


def tasks(size: dict, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Inputs (B, T, n_in) of memory-pro and forecasting, without input noise."""
    p = size["period"]
    mem = memory_pro(p).sample(size["B"], seed)
    fc = LowRankForecast(n_latent=10, n_obs=10, T=size["T_forecast"]).sample(size["B"], seed)
    return {"memory_pro": mem.inputs, "forecast": fc.inputs}


def numpy_forward(cell: str, params: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """States (B, T, H) and V = [a(h_{t−1}), x_t] of shape (B·T, H + n_in), by a plain loop."""
    W, U = params["weight_hh"], params["weight_ih"]
    B, T, _ = x.shape
    h = np.zeros((B, W.shape[0]))
    states, rows = [], []
    for t in range(T):
        a = np.tanh(h) if cell == "leaky" else h
        rows.append(np.concatenate([a, x[:, t]], axis=1))
        h = a @ W.T + x[:, t] @ U.T if cell == "leaky" else np.tanh(h @ W.T + x[:, t] @ U.T)
        states.append(h)
    V = np.stack(rows, axis=1).reshape(B * T, -1)
    return np.stack(states, axis=1), V


def measure(cell: str, x: np.ndarray, size: dict, seed: int, progress: Progress) -> dict:
    H = size["H"]
    model = (
        LeakyRNN(x.shape[-1], H, dt=1.0, bias=False) if cell == "leaky" else RNN(x.shape[-1], H, bias=False)
    )
    params = torch_scale_params(model, seed, G_SCALE)
    traj = model.run(params, x)
    K = kpflow.parameter_kernel(traj)
    states, V = numpy_forward(cell, params, x)
    B, T, _ = x.shape
    d = np.ones((B * T, H)) if cell == "leaky" else 1.0 - states.reshape(B * T, H) ** 2

    # K against D ((V Vᵀ) ⊗ I) D and against (V Vᵀ) ⊗ I, on random probes
    gen = np.random.default_rng(seed + 1)
    probes = gen.standard_normal((size["probes"], B, T, H))
    KX = K.matmat(probes).reshape(size["probes"], B * T, H)
    X = probes.reshape(size["probes"], B * T, H)
    core = np.einsum("mp,kph->kmh", V, np.einsum("mp,kmh->kph", V, X))  # ((V Vᵀ) ⊗ I) X
    with_d = d * np.einsum("mp,kph->kmh", V, np.einsum("mp,kmh->kph", V, d * X))
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731

    # ranks: kpflow's exact Kronecker rules against pr(V Vᵀ) (from the small Vᵀ V) and H
    small = V.T @ V
    pr_G = float(np.trace(small) ** 2 / np.sum(small * small))
    r_bt = float(linalg.effective_rank(K, keep=(0, 1)))
    r_h = float(linalg.effective_rank(K, keep=2))
    r_all = float(linalg.effective_rank(K))
    # leaky: an exact Kronecker rule; tanh: Lanczos, affordable at the quick sizes only
    exact_rule = cell == "leaky" or B * T * H <= 50_000
    eig_K = (
        np.asarray(linalg.eigsh(K, size["top"], rng=seed).eigenvalues, dtype=np.float64)
        if exact_rule
        else np.zeros(0)
    )
    eig_G = np.sort(np.linalg.eigvalsh(small))[::-1]
    n_top = -(-size["top"] // H) if cell == "leaky" else 1
    progress(
        f"{cell}: |K - (VV^T)xI| / |(VV^T)xI| = {rel(KX, core):.2e}, pr(VV^T) = {pr_G:.3f}, "
        f"rank(K; batch,time) = {r_bt:.3f}, rank(K; hidden) = {r_h:.3f}"
    )
    return {
        "K_vs_core_rel_error": rel(KX, core),
        "K_vs_D_core_D_rel_error": rel(KX, with_d),
        "pr_VVT": pr_G,
        "rank_K_batch_time": r_bt,
        "rank_K_hidden": r_h,
        "rank_K_global": r_all,
        "pr_VVT_times_H": pr_G * H,
        "top_eigenvalues_K": np.sort(eig_K)[::-1],
        "top_eigenvalues_VVT": eig_G[: max(n_top, size["top"])],
        "mean_D": float(d.mean()),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv, __doc__.splitlines()[0])
    size = SIZES[args.size]
    progress = Progress("e1")
    progress(f"sizes {args.size}: {size}")
    results: dict = {"size": args.size, "H": size["H"], "B": size["B"], "seed": args.seed, "tasks": {}}
    for task, x in tasks(size, args.seed).items():
        progress(f"{task}: inputs {x.shape}")
        results["tasks"][task] = {
            cell: measure(cell, x, size, args.seed, progress) for cell in ("leaky", "tanh")
        }
    results["seconds"] = progress.elapsed

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    names = list(results["tasks"])
    for i, task in enumerate(names):
        for j, cell in enumerate(("leaky", "tanh")):
            r = results["tasks"][task][cell]
            axes[0].bar(i * 3 + j, r["rank_K_batch_time"], color=f"C{j}", label=cell if i == 0 else None)
            axes[0].plot([i * 3 + j - 0.4, i * 3 + j + 0.4], [r["pr_VVT"]] * 2, "k-")
    axes[0].set_xticks([0.5, 3.5], names)
    axes[0].set_ylabel("effective rank of K along (batch, time)")
    axes[0].set_title("bars: K, lines: pr(V Vᵀ)")
    axes[0].legend()
    r = results["tasks"]["memory_pro"]
    for j, cell in enumerate(("leaky", "tanh")):
        axes[1].semilogy(r[cell]["top_eigenvalues_K"], "o", color=f"C{j}", label=f"K ({cell})")
    axes[1].semilogy(
        np.repeat(r["leaky"]["top_eigenvalues_VVT"], size["H"])[: size["top"]], "k+", label="eig(V Vᵀ)"
    )
    axes[1].set_xlabel("index")
    axes[1].set_title("memory-pro: top eigenvalues")
    axes[1].legend()
    save_figure(fig, args.out, "e1_kronecker_core", progress)
    return write_results(args.out, results, progress)


if __name__ == "__main__":
    main()
