"""NTK_S top-k on the residual stream of a GPT-2-style decoder: kpflow's from_module against jvp/vjp + ARPACK.

One module, one run: a ``transformers.GPT2Model`` built from a random config (no download;
``attn_implementation="eager"``), the states the output of every block (``h.0`` … ``h.{L−1}``).

- **kpflow**: ``from_module(model, states="h.*")``, ``kpflow.linalg.eigsh(global_ntk(traj), k)``
  (GPT-2's ``Conv1D`` projections, embeddings and LayerNorm affines are Kronecker sites; the
  forward is linearised once, then each NTK_S product is one backward pass to every site's
  output, the Kronecker middle A_w (A_wᵀ ·) or Gram G_w per site, and one backward pass of
  the saved backward: no forward pass and no weight gradient per product).
- **baseline**: NTK_S v = J (Jᵀ v) with Jᵀ v a ``torch.func.vjp`` and J u a ``torch.func.jvp`` of
  θ ↦ states through the same module (forward hooks read the block outputs), one probe at a
  time, in ``scipy.sparse.linalg.eigsh`` (ARPACK, ``which="LA"``).

Prints each route's wall time (and its process CPU time: on a loaded machine the wall
times mostly measure the load), the ratio baseline / kpflow and the largest relative
difference of the k eigenvalues; then, after both timed runs, each route's CPU time per
product (the best of three) and the share of each run that its products account for (the
rest of kpflow's run: the linearisation and the eigensolver's own vector algebra).
Defaults: 4 layers, d = 256, 4 heads, sequence 128, batch 8, k = 10, float32.
``--quick``: a smoke run of seconds (2 layers, d = 8, sequence 4, batch 1, k = 2, float64).

Run: ``python benchmarks/bench_from_module_gpt2.py`` (``--quick`` for the smoke run; ``--layers``,
``--d``, ``--heads``, ``--seq``, ``--batch`` for other sizes).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np


def build(layers: int, d: int, heads: int, seq: int, vocab: int, dtype: Any) -> Any:
    import torch
    import transformers as tf
    from _hf_configs import gpt2_config

    torch.manual_seed(0)
    config = gpt2_config(vocab=vocab, positions=seq, d=d, layers=layers, heads=heads)
    return tf.GPT2Model(config).to(dtype).eval()


#: the baseline's matvec count
COUNT = [0]


def baseline_operator(model: Any, ids: Any, layers: int) -> tuple[Any, int]:
    """NTK_S v = J Jᵀ v by torch.func vjp and jvp of θ ↦ the block outputs (one probe at a time)."""
    import scipy.sparse.linalg as sla
    import torch

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = tuple(dict(model.named_parameters())[n].detach() for n in names)
    blocks = [model.h[i] for i in range(layers)]

    def z(*values: Any) -> Any:
        outs: list[Any] = []
        hooks = [
            b.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o))
            for b in blocks
        ]
        try:
            torch.func.functional_call(model, dict(zip(names, values, strict=True)), (ids,))
        finally:
            for h in hooks:
                h.remove()
        return torch.cat([o.reshape(-1) for o in outs])

    n = int(z(*theta).numel())
    dtype = theta[0].dtype

    def matvec(v: np.ndarray) -> np.ndarray:
        COUNT[0] += 1
        w = torch.as_tensor(np.ascontiguousarray(v).reshape(-1), dtype=dtype)
        _, pull = torch.func.vjp(z, *theta)
        g = pull(w)
        _, out = torch.func.jvp(z, theta, g)
        return out.detach().numpy().astype(np.float64)

    return sla.LinearOperator((n, n), matvec=matvec, dtype=np.float64), n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    parser.add_argument("--k", type=int, default=None)
    parser.add_argument("--tol", type=float, default=1e-6, help="eigsh tolerance of both routes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d", type=int, default=256, help="model width")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128, help="sequence length")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    import scipy.sparse.linalg as sla
    import torch
    from kpflow.backends.torch import from_module

    import kpflow
    import kpflow.linalg as kla

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        layers, d, heads, seq, batch, k, dtype = 2, 8, 2, 4, 1, args.k or 2, torch.float64
    else:
        layers, d, heads, seq, batch = args.layers, args.d, args.heads, args.seq, args.batch
        k, dtype = args.k or 10, torch.float32
    vocab = 64
    model = build(layers, d, heads, seq, vocab, dtype)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    print(
        f"GPT-2-style decoder: {layers} layers, d={d}, {heads} heads, sequence {seq}, batch {batch}, "
        f"{dtype}, k={k}"
    )

    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        net, params = from_module(model, states="h.*", detach=True)
        traj = net.run(params, ids)
        res = kla.eigsh(kpflow.global_ntk(traj), k, tol=args.tol, rng=0, method="lanczos")
    t_kpflow, c_kpflow = time.perf_counter() - t0, time.process_time() - c0
    ours = np.sort(np.asarray(res.eigenvalues.detach().cpu(), dtype=np.float64))[::-1]

    op, n = baseline_operator(model, ids, layers)
    t0, c0 = time.perf_counter(), time.process_time()
    base = sla.eigsh(op, k=k, which="LA", tol=args.tol, return_eigenvectors=False)
    t_base, c_base = time.perf_counter() - t0, time.process_time() - c0
    n_base = COUNT[0]
    base = np.sort(base)[::-1]

    rel = float(np.max(np.abs(ours - base) / np.abs(base)))
    # the breakdown, after both timed runs: CPU seconds per product (the best of three)
    op_kpflow = kpflow.global_ntk(traj)
    probe = torch.randn((1, *traj.state_shape), dtype=dtype, generator=torch.Generator().manual_seed(2))
    v = probe.reshape(-1).double().numpy()
    with torch.no_grad():
        per_kpflow = min(_cpu(lambda: op_kpflow.matmat(probe)) for _ in range(3))
    per_base = min(_cpu(lambda: op.matvec(v)) for _ in range(3))
    print(f"states n = {n}; sites: {len(traj.sites)}")
    print(
        f"kpflow from_module + kpflow.linalg.eigsh   {t_kpflow:9.2f} s   ({res.num_matvecs} probes; "
        f"{c_kpflow:.2f} s CPU)"
    )
    print(
        f"torch.func jvp/vjp + ARPACK                {t_base:9.2f} s   ({n_base} matvecs; {c_base:.2f} s CPU)"
    )
    n_kp = int(res.num_matvecs)
    print(
        f"per product (CPU, after the runs): kpflow {per_kpflow:.3f} s, jvp/vjp {per_base:.3f} s "
        f"(ratio {per_base / per_kpflow:.2f}x); kpflow's products ~{n_kp * per_kpflow:.1f} s of its "
        f"{c_kpflow:.1f} s CPU (the rest: linearisation, eigsh's own algebra), the baseline's "
        f"~{n_base * per_base:.1f} s of {c_base:.1f} s"
    )
    print(f"top eigenvalues kpflow   {np.array2string(ours[:4], precision=6)}")
    print(f"top eigenvalues ARPACK   {np.array2string(base[:4], precision=6)}")
    print(f"EIGENVALUES max relative difference: {rel:.2e}")
    print(f"CPU RATIO baseline / kpflow: {c_base / c_kpflow:.2f}x")
    print(f"RATIO baseline / kpflow time: {t_base / t_kpflow:.2f}x")


def _cpu(f: Any) -> float:
    c0 = time.process_time()
    f()
    return time.process_time() - c0


if __name__ == "__main__":
    main()
