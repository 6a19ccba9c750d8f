"""Top-10 eigenpairs of NTK_S of a torch.nn.GRU: kpflow versus autodiff through the fused GRU + ARPACK.

NTK_S = (dz/dθ)(dz/dθ)ᵀ = P K Pᵀ is the global empirical NTK of the states z, all B·T·H of
them (docs/theory.md).  The model is a seeded ``torch.nn.GRU(3, H, batch_first=True)`` in
float32 (weights from ``torch.manual_seed(--seed)``) on seeded inputs x of shape (B, T, 3)
(``numpy.random.default_rng(--seed + 1)``, float32).  Every case computes the top ``--k``
(default 10) eigenpairs of the same NTK_S, from the same weights and inputs:

- ``autodiff+ARPACK`` (the baseline: what a user has without kpflow): the states are the
  outputs of the fused ``torch.nn.GRU`` itself (``torch.func.functional_call``), and
  v ↦ J Jᵀ v is a ``torch.func.vjp`` over all states w.r.t. the GRU's parameters (the
  forward pass and its graph built once) followed by a ``torch.func.jvp``
  (``--baseline-ad vjp-of-vjp``: J u as the vjp of the linear map v ↦ Jᵀ v instead), in
  float32, wrapped as a ``scipy.sparse.linalg.LinearOperator`` and handed to
  ``scipy.sparse.linalg.eigsh(k, which="LA", tol=--arpack-tol (1e-8), v0=seeded)``.
- ``kpflow-numpy``: the same weights copied to numpy float32, ``kpflow.models.GRU`` (the
  parameter names and gate order of ``torch.nn.GRU``: ``weight_ih``, ``weight_hh``,
  ``bias_ih``, ``bias_hh``, as ``kpflow.backends.torch.from_module`` maps them),
  ``model.run``, ``kpflow.global_ntk``, ``kpflow.linalg.eigsh(ntk, k, tol=--tol, rng=--seed)``
  with ``--tol`` defaulting to the documented float32 floor 100·ε (docs/linalg.md: "In
  float32, tol is raised to 100·ε").  This process never imports torch.
- ``kpflow-torch``: ``kpflow.backends.torch.from_module(gru)`` with its defaults (params are
  the module's ``nn.Parameter`` objects, requiring grad), ``model.run(params, x)`` with no
  ``torch.no_grad()`` around it, then as above.
- ``kpflow-torch-detach``: the same with ``from_module(gru, detach=True)``.

Measurement.  Each case runs in its own subprocess, one at a time, so its peak memory is its
own: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the child at the end (the whole
process, imports included; the RSS after imports and loading the inputs is printed beside
it), in GB of 10⁹ bytes.  Time is wall-clock (``time.perf_counter``), run once: "setup" is
the forward pass (the baseline's vjp linearisation; kpflow's ``model.run`` and
``global_ntk``), "solve" the eigensolver, "time" their sum; imports and loading the inputs
are not timed, nor is a warm-up that each case runs first on a tiny slice of its inputs,
x[:2, :3] (first-call costs: torch.func compiles its forward-mode decompositions on the first
jvp, which would otherwise add seconds to the baseline).  "products" counts NTK_S-vector
products: ARPACK's operator calls × vectors per call, kpflow's ``EighResult.num_matvecs``.
BLAS and torch threads are pinned to ``--threads`` (default: all cores) in every child; the
load average is printed at the start and the end, since on a shared machine other processes
slow every case.

Accuracy, the same for every case.  "resid f64" is max_i ‖A v_i − λ_i v_i‖ / λ_1, with A
the *kpflow numpy float64* NTK_S of the same weights and inputs (cast exactly from float32),
v_i the case's eigenvector normalised to unit length, λ_i its eigenvalue and λ_1 its largest
eigenvalue; it is computed in the parent after all cases, outside every measurement.
"resid own" is the solver's own report (kpflow's ``residual_norms`` / λ_1, on its float32
operator; ARPACK reports none).  "max|dλ|" is max_i |λ_i − λ_i^ARPACK| / λ_1^ARPACK.  A
solver that stops before converging (kpflow's ``RuntimeWarning``, ARPACK's
``ArpackNoConvergence``) is reported as "NO" in the "conv" column with its best pairs.

Targets (printed PASS/MISS, never asserted): kpflow ≥ 5× faster than autodiff+ARPACK;
peak RSS ≤ 1 GB at 1,638,400 states (``--size large``); resid f64 ≤ 1e-5; eigenvalues
agreeing with ARPACK to 1e-4; kpflow-torch within 1.1× of kpflow-torch-detach in time and
in peak RSS.

Repeats: ``--repeat N`` runs every case N times, round robin (each run in its own process);
the row shows the fastest run's time and the largest peak RSS of the N, and the JSON rows
keep every run's ``times_s`` and ``peak_rss_gbs``.  On a shared machine single runs vary
by ±20%.

Sizes: ``--size small`` (B, T, H) = (32, 50, 128), 204,800 states; ``--size large``
(64, 100, 256), 1,638,400 states; ``--size both`` (default) runs small then large;
``--quick`` runs (4, 10, 16) only, a smoke run of seconds.

Run: ``python benchmarks/bench_ntk_spectrum.py --size small`` (``--quick`` for a smoke run,
``--cases kpflow-numpy,autodiff+ARPACK`` to choose cases, ``--json out.json`` to save the
rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

SIZES = {"quick": (4, 10, 16), "small": (32, 50, 128), "large": (64, 100, 256)}
N_IN = 3
BASELINE = "autodiff+ARPACK"
CASES = (BASELINE, "kpflow-numpy", "kpflow-torch", "kpflow-torch-detach")
NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
CHILD_TAG = "KPFLOW-BENCH-CHILD "
GB = 1e9
LARGE_STATES = 64 * 100 * 256
TARGET_SPEEDUP, TARGET_RSS_GB, TARGET_RESID, TARGET_DLAMBDA, TARGET_TORCH = 5.0, 1.0, 1e-5, 1e-4, 1.1
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def peak_rss_gb() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / GB if sys.platform == "darwin" else rss * 1024 / GB


# -- the parent: inputs, children, referee, table ---------------------------------------------------
def make_inputs(B: int, T: int, H: int, seed: int, path: Path) -> None:
    """The seeded torch.nn.GRU's float32 weights and the seeded inputs, saved for every case."""
    import torch

    torch.manual_seed(seed)
    gru = torch.nn.GRU(N_IN, H, batch_first=True, dtype=torch.float32)
    arrays = {name: getattr(gru, f"{name}_l0").detach().numpy().copy() for name in NAMES}
    x = np.random.default_rng(seed + 1).standard_normal((B, T, N_IN)).astype(np.float32)
    np.savez(path, x=x, **arrays)


def run_child(case: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one case in a fresh interpreter and return its metrics (or the reason it failed)."""
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(args.threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--workdir", str(workdir)]
    cmd += ["--threads", str(args.threads), "--k", str(args.k), "--seed", str(args.seed)]
    cmd += ["--tol", repr(args.tol), "--arpack-tol", repr(args.arpack_tol), "--baseline-ad", args.baseline_ad]
    if args.max_matvecs is not None:
        cmd += ["--max-matvecs", str(args.max_matvecs)]
    if args.block_size is not None:
        cmd += ["--block-size", str(args.block_size)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.case_timeout)
    except subprocess.TimeoutExpired:
        return {"case": case, "error": f"timed out after {args.case_timeout} s"}
    for line in out.stdout.splitlines():
        if line.startswith(CHILD_TAG):
            return json.loads(line[len(CHILD_TAG) :])
    tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-15:])
    return {"case": case, "error": f"exit code {out.returncode}:\n{tail}"}


def referee_residuals(workdir: Path, rows: list[dict[str, Any]], shape: tuple[int, int, int]) -> None:
    """Residuals of every case's pairs on the kpflow numpy float64 NTK_S of the same weights."""
    import kpflow
    from kpflow.models import GRU

    data = np.load(workdir / "inputs.npz")
    params = {name: data[name].astype(np.float64) for name in NAMES}
    B, T, H = shape
    ntk64 = kpflow.global_ntk(GRU(N_IN, H).run(params, data["x"].astype(np.float64)))
    for row in rows:
        if "error" in row:
            continue
        pairs = np.load(workdir / f"{row['case']}.npz")
        lam = pairs["eigenvalues"].astype(np.float64)
        V = pairs["eigenvectors"].astype(np.float64)
        V = V / np.linalg.norm(V, axis=1, keepdims=True)
        AV = np.reshape(ntk64.matmat(np.reshape(V, (-1, B, T, H))), V.shape)
        res = np.linalg.norm(AV - lam[:, None] * V, axis=1)
        row["resid_f64"] = float(np.max(res) / abs(lam[0]))


def compare_eigenvalues(workdir: Path, rows: list[dict[str, Any]]) -> None:
    """max_i |λ_i − λ_i^ARPACK| / λ_1^ARPACK for every case, when the baseline ran."""
    base = next((r for r in rows if r["case"] == BASELINE and "error" not in r), None)
    if base is None:
        return
    ref = np.load(workdir / f"{BASELINE}.npz")["eigenvalues"].astype(np.float64)
    for row in rows:
        if "error" in row:
            continue
        lam = np.load(workdir / f"{row['case']}.npz")["eigenvalues"].astype(np.float64)
        n = min(lam.size, ref.size)
        row["dlambda"] = float(np.max(np.abs(lam[:n] - ref[:n])) / abs(ref[0]))
        row["eigenvalues"] = lam.tolist()


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'case':<20} {'states N':>10} {'setup s':>8} {'solve s':>8} {'time s':>8} {'peak RSS GB':>12} "
        f"{'start RSS GB':>13} {'products':>9} {'conv':>5} {'resid f64':>10} {'resid own':>10} "
        f"{'max|dλ|':>9}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<20} FAILED: {r['error'].splitlines()[0]}")
            continue
        print(
            f"{r['case']:<20} {r['n']:>10} {r['setup_s']:8.2f} {r['solve_s']:8.2f} {r['time_s']:8.2f} "
            f"{r['peak_rss_gb']:12.3f} {r['start_rss_gb']:13.3f} {r['products']:9d} "
            f"{'yes' if r['converged'] else 'NO':>5} {fmt(r.get('resid_f64'), '10.1e')} "
            f"{fmt(r.get('resid_own'), '10.1e')} {fmt(r.get('dlambda'), '9.1e')}"
        )
    for r in rows:
        if "error" in r and len(r["error"].splitlines()) > 1:
            print(f"{r['case']} failed:\n{r['error']}")
        messages = r.get("warnings", [])
        for message in dict.fromkeys(messages):
            times = messages.count(message)
            print(f"warning in {r['case']}{f' ({times}x)' if times > 1 else ''}: {message}")


def print_targets(rows: list[dict[str, Any]], n: int) -> None:
    ok = {r["case"]: r for r in rows if "error" not in r}
    base = ok.get(BASELINE)
    for case in CASES[1:]:
        r = ok.get(case)
        if r is None:
            continue
        if base is not None:
            ratio = base["time_s"] / r["time_s"]
            print(
                f"RATIO {BASELINE} / {case} time: {ratio:.2f}x "
                f"(target >= {TARGET_SPEEDUP:g}x) {verdict(ratio >= TARGET_SPEEDUP)}"
            )
        if n >= LARGE_STATES:
            rss = r["peak_rss_gb"]
            print(
                f"MEMORY {case} peak RSS at {n:,} states: {rss:.3f} GB "
                f"(target <= {TARGET_RSS_GB:g} GB) {verdict(rss <= TARGET_RSS_GB)}"
            )
        else:
            print(f"MEMORY {case}: target <= {TARGET_RSS_GB:g} GB applies at {LARGE_STATES:,} states (n/a)")
        res = r.get("resid_f64")
        if res is not None:
            print(f"RESID {case}: {res:.1e} (target <= {TARGET_RESID:g}) {verdict(res <= TARGET_RESID)}")
        dlam = r.get("dlambda")
        if dlam is not None:
            print(
                f"EIGENVALUES {case} vs {BASELINE}: {dlam:.1e} "
                f"(target <= {TARGET_DLAMBDA:g}) {verdict(dlam <= TARGET_DLAMBDA)}"
            )
        if not r["converged"]:
            print(f"CONVERGENCE {case}: NOT converged (see the warnings above)")
    if base is not None:
        res = base.get("resid_f64")
        print(f"RESID {BASELINE} (reference only): {fmt(res, '.1e')}")
        if not base["converged"]:
            print(f"CONVERGENCE {BASELINE}: NOT converged; max|dλ| compares against its best pairs")
    grad, detached = ok.get("kpflow-torch"), ok.get("kpflow-torch-detach")
    if grad is not None and detached is not None:
        t = grad["time_s"] / detached["time_s"]
        m = grad["peak_rss_gb"] / detached["peak_rss_gb"]
        extra = (grad["peak_rss_gb"] - grad["start_rss_gb"]) / max(
            detached["peak_rss_gb"] - detached["start_rss_gb"], 1e-9
        )
        print(
            f"RATIO kpflow-torch / kpflow-torch-detach time: {t:.2f}x "
            f"(target <= {TARGET_TORCH:g}x) {verdict(t <= TARGET_TORCH)}"
        )
        print(
            f"RATIO kpflow-torch / kpflow-torch-detach peak RSS: {m:.2f}x "
            f"(target <= {TARGET_TORCH:g}x) {verdict(m <= TARGET_TORCH)}; above start RSS: {extra:.2f}x"
        )


def combine_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from a case's repeats: the fastest run, with the largest peak RSS of all of them.

    The time is the minimum over the runs (the least disturbed by other processes), the peak
    RSS the maximum (the conservative figure); the solves are seeded, so every run returns
    the same pairs (the accuracy columns come from the last run's saved pairs).
    """
    failed = next((r for r in runs if "error" in r), None)
    if failed is not None:
        return failed
    row = dict(min(runs, key=lambda r: r["time_s"]))
    row["peak_rss_gb"] = max(r["peak_rss_gb"] for r in runs)
    row["times_s"] = [r["time_s"] for r in runs]
    row["peak_rss_gbs"] = [r["peak_rss_gb"] for r in runs]
    return row


def run_size(label: str, shape: tuple[int, int, int], cases: list[str], args: argparse.Namespace) -> dict:
    B, T, H = shape
    n = B * T * H
    print(f"\n== {label}: GRU(3, {H}) B={B} T={T}, N = B*T*H = {n:,} states, top-{args.k}, float32")
    with tempfile.TemporaryDirectory(prefix="bench_ntk_spectrum_") as tmp:
        workdir = Path(tmp)
        make_inputs(B, T, H, args.seed, workdir / "inputs.npz")
        runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
        for rep in range(args.repeat):  # round robin: a slow spell of the machine hits every case
            for case in cases:
                what = f"{case} (run {rep + 1} of {args.repeat})" if args.repeat > 1 else case
                print(f"  running {what} ... (load average {os.getloadavg()[0]:.1f})", flush=True)
                runs[case].append(run_child(case, workdir, args))
        rows = [combine_runs(runs[case]) for case in cases]
        referee_residuals(workdir, rows, shape)
        compare_eigenvalues(workdir, rows)
    print_table(rows)
    print(
        "(resid f64: max ‖A v − λ v‖ / λ_1 on the kpflow numpy float64 NTK_S of the same weights; "
        "resid own: the solver's report on its float32 operator; max|dλ|: vs ARPACK, / λ_1^ARPACK)"
    )
    print_targets(rows, n)
    return {"size": label, "B": B, "T": T, "H": H, "n": n, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "large", "both"), default="both")
    parser.add_argument(
        "--quick", action="store_true", help=f"the tiny size {SIZES['quick']} only (smoke run)"
    )
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {', '.join(CASES)} (default: all)",
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="BLAS/torch threads per case"
    )
    parser.add_argument("--k", type=int, default=10, help="number of eigenpairs")
    parser.add_argument("--seed", type=int, default=0)
    f32_floor = 100 * float(np.finfo(np.float32).eps)
    parser.add_argument("--tol", type=float, default=f32_floor, help="kpflow eigsh tol (default 100·ε32)")
    parser.add_argument("--arpack-tol", type=float, default=1e-8, help="ARPACK tol (default 1e-8)")
    parser.add_argument("--max-matvecs", type=int, default=None, help="kpflow eigsh max_matvecs")
    parser.add_argument("--block-size", type=int, default=None, help="kpflow eigsh block_size")
    parser.add_argument(
        "--baseline-ad", choices=("jvp", "vjp-of-vjp"), default="jvp", help="how the baseline applies J"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per case, round robin, each in its own process: time is the fastest, peak RSS the largest",
    )
    parser.add_argument("--case-timeout", type=float, default=None, help="seconds per case (default: none)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child_main(args)
        return
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    cases = [c for c in CASES if c in cases]  # the baseline first, one process at a time
    if args.quick:
        sizes = ["quick"]
    else:
        sizes = ["small", "large"] if args.size == "both" else [args.size]

    import scipy
    import torch

    import kpflow

    print(__doc__.splitlines()[0])
    print(
        f"kpflow {getattr(kpflow, '__version__', '?')}, torch {torch.__version__}, "
        f"scipy {scipy.__version__}, numpy {np.__version__}; {args.threads} threads per case; "
        f"kpflow tol {args.tol:.3g}, {args.repeat} run(s) per case (time: fastest; peak RSS: largest), "
        f"ARPACK tol {args.arpack_tol:g}, baseline J via {args.baseline_ad}"
    )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    results = [run_size(s, SIZES[s], cases, args) for s in sizes]
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"threads": args.threads, "tol": args.tol, "sizes": results}, indent=1)
        )


# -- the children: one case each --------------------------------------------------------------------
def child_main(args: argparse.Namespace) -> None:
    case, workdir = args.child, args.workdir
    data = np.load(workdir / "inputs.npz")
    weights = {name: data[name] for name in NAMES}
    x = data["x"]
    B, T, _ = x.shape
    H = weights["weight_hh"].shape[1]
    if case == "kpflow-numpy":
        import kpflow

        out = run_kpflow(kpflow, x, weights, None, args)
    else:
        import torch

        torch.set_num_threads(args.threads)
        gru = torch.nn.GRU(N_IN, H, batch_first=True, dtype=torch.float32)
        with torch.no_grad():
            for name in NAMES:
                getattr(gru, f"{name}_l0").copy_(torch.from_numpy(weights[name]))
        xt = torch.from_numpy(x)
        if case == BASELINE:
            out = run_arpack(gru, xt, args)
        else:
            import kpflow

            out = run_kpflow(kpflow, xt, gru, case == "kpflow-torch-detach", args)
    lam, vecs, metrics = out
    order = np.argsort(-lam)
    np.savez(workdir / f"{case}.npz", eigenvalues=lam[order], eigenvectors=vecs[order])
    metrics.update(case=case, n=int(B * T * H), peak_rss_gb=peak_rss_gb())
    print(CHILD_TAG + json.dumps(metrics), flush=True)


def run_kpflow(kpflow: Any, x: Any, source: Any, detach: bool | None, args: argparse.Namespace) -> tuple:
    """model.run, global_ntk and eigsh; ``source`` is numpy weights (detach None) or a torch.nn.GRU."""
    if detach is None:
        from kpflow.models import GRU

        model = GRU(N_IN, source["weight_hh"].shape[1])
        params = dict(source)
    else:
        from kpflow.backends.torch import from_module

        model, params = from_module(source, detach=detach)
    with warnings.catch_warnings():
        # Warm-up on a tiny slice of the inputs (first-call costs), not measured.
        warnings.simplefilter("ignore")
        tiny = kpflow.global_ntk(model.run(params, x[:2, :3]))
        kpflow.linalg.eigsh(tiny, min(args.k, 4), tol=args.tol, rng=args.seed, max_matvecs=30)
    start = peak_rss_gb()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        traj = model.run(params, x)
        ntk = kpflow.global_ntk(traj)
        t1 = time.perf_counter()
        res = kpflow.linalg.eigsh(
            ntk, args.k, tol=args.tol, rng=args.seed, max_matvecs=args.max_matvecs, block_size=args.block_size
        )
        t2 = time.perf_counter()
    lam, vecs, own = (to_numpy(a) for a in (res.eigenvalues, res.eigenvectors, res.residual_norms))
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    metrics = {
        "setup_s": t1 - t0,
        "solve_s": t2 - t1,
        "time_s": t2 - t0,
        "start_rss_gb": start,
        "products": int(res.num_matvecs),
        "converged": not runtime,
        "resid_own": float(np.max(own) / abs(np.max(lam))),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    }
    return lam.astype(np.float64), np.reshape(vecs, (args.k, -1)).astype(np.float32), metrics


def to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def run_arpack(gru: Any, x: Any, args: argparse.Namespace) -> tuple:
    """Autodiff J Jᵀ v through the fused torch.nn.GRU, float32, under scipy's ARPACK."""
    import torch
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    func = torch.func
    shape = (x.shape[0], x.shape[1], gru.hidden_size)
    n = int(np.prod(shape))
    params = {name: p.detach() for name, p in gru.named_parameters()}

    def linearise(x: Any) -> Any:
        """v ↦ J Jᵀ v at inputs ``x``; the forward pass and its graph are built here, once."""

        def states(p: dict[str, Any]) -> Any:
            return func.functional_call(gru, p, (x,))[0]  # all hidden states, (B, T, H)

        out, vjp_fn = func.vjp(states, params)
        if args.baseline_ad == "jvp":
            return lambda v: func.jvp(states, (params,), (vjp_fn(v)[0],))[1]
        # v ↦ Jᵀ v is linear, so its vjp (at any point) is u ↦ J u.
        transpose_fn = func.vjp(lambda w: vjp_fn(w)[0], torch.zeros_like(out))[1]
        return lambda v: transpose_fn(vjp_fn(v)[0])[0]

    with warnings.catch_warnings():
        # Warm-up on a tiny slice of the inputs (first-call costs: torch.func compiles its
        # forward-mode decompositions), not measured.
        warnings.simplefilter("ignore")
        tiny = x[:2, :3]
        linearise(tiny)(torch.ones(tiny.shape[0], tiny.shape[1], gru.hidden_size, dtype=x.dtype))
    start = peak_rss_gb()
    count = [0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        jjt = linearise(x)

        def matmat(V: np.ndarray) -> np.ndarray:
            V = np.reshape(np.asarray(V, dtype=np.float32), (n, -1))
            count[0] += V.shape[1]
            cols = [jjt(torch.from_numpy(np.ascontiguousarray(v)).reshape(shape)) for v in V.T]
            return np.stack([c.detach().reshape(n).numpy() for c in cols], axis=1)

        op = LinearOperator((n, n), matvec=matmat, matmat=matmat, dtype=np.float32)
        v0 = np.random.default_rng(args.seed).standard_normal(n).astype(np.float32)
        t1 = time.perf_counter()
        converged = True
        try:
            lam, vecs = eigsh(op, k=args.k, which="LA", tol=args.arpack_tol, v0=v0)
        except ArpackNoConvergence as err:
            converged = False
            lam, vecs = err.eigenvalues, err.eigenvectors
            warnings.warn(f"ARPACK: {err}", RuntimeWarning, stacklevel=1)
        t2 = time.perf_counter()
    metrics = {
        "setup_s": t1 - t0,
        "solve_s": t2 - t1,
        "time_s": t2 - t0,
        "start_rss_gb": start,
        "products": count[0],
        "converged": converged,
        "resid_own": None,
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    }
    return np.asarray(lam, dtype=np.float64), np.asarray(vecs, dtype=np.float32).T, metrics


if __name__ == "__main__":
    main()
