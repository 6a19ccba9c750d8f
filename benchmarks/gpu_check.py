"""kpflow on an NVIDIA GPU: results, devices and dtypes, and no host transfers inside a product.

For every GPU framework installed (torch with CUDA, cupy, jax with a GPU backend) and for
float32 and float64, this script

1. builds a GRU trajectory on the GPU (the same seeded parameters and inputs as on the CPU),
2. applies ``kpflow.global_ntk(traj)`` to a block of 16 probes with host synchronisation
   forbidden: ``torch.cuda.set_sync_debug_mode("error")``, ``cupyx.allow_synchronize(False)``,
   ``jax.transfer_guard_device_to_host("disallow")`` (kpflow's products move nothing to the
   host; only the solvers' control scalars are read, between products),
3. runs ``kpflow.linalg.eigsh(ntk, k)`` and compares its eigenvalues with numpy's float64
   result on the CPU (relative to the largest: 1e-8 in float64, 1e-4 in float32),
4. checks that every result lives on the GPU with the dtype given,

and, with jax on several GPUs, repeats float64 ``eigsh`` with the arrays replicated on all of
them (probe blocks split across the GPUs, ``docs/jax.md``) against one GPU.  It prints one
PASS/FAIL line per check and a summary; the exit status is 1 when a check fails.  Without a
GPU it prints ``no GPU`` and exits with status 0.

For jax, this script (not kpflow) turns on ``jax_enable_x64`` for the float64 checks and
asks for full float32 matmul precision (jax uses TF32 on recent GPUs by default, about 1e-3
relative), and it keeps jax from preallocating GPU memory so that torch and cupy share the
GPU.  Sizes: ``--B 8 --T 32 --H 32 --k 10`` (n = B·T·H = 8192 states), well under a minute
on one GPU after compilation.

``--cpu`` rehearses every check on the CPU (torch and jax on their CPU devices; jax's transfer
guard still applies, torch has no sync guard off CUDA), so that the script itself is tested
where no GPU is lent (``tests/benchmarks/test_gpu_check.py``, with two forced host devices for the
sharded check); it proves nothing about GPUs.

Run: ``python benchmarks/gpu_check.py`` (``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before jax starts: share the GPU

import numpy as np
from kpflow.backends import get_backend, random_normal

import kpflow
from kpflow._array import device_of
from kpflow.models import GRU

TOL = {"float64": 1e-8, "float32": 1e-4}


@dataclass
class Framework:
    """One GPU framework: how to make an array there, wait for it, and forbid host syncs."""

    name: str
    version: str
    gpu: str
    like: Callable[[str], Any]  # dtype name -> a 1-element array on the GPU
    synchronize: Callable[[], None]
    no_host_sync: Callable[[], contextlib.AbstractContextManager]
    guard: str  # what no_host_sync uses, for the report ("" when there is none)
    extra: dict[str, Any] = field(default_factory=dict)


# -- finding GPUs (every probe tolerates a missing or broken install) ------------------------------
def find_torch(cpu: bool = False) -> Framework | None:
    if find_spec("torch") is None:
        return None
    try:
        import torch

        if cpu:  # the rehearsal: torch has no host-sync guard off CUDA
            return Framework(
                "torch",
                torch.__version__,
                "CPU (rehearsal)",
                lambda dt: torch.zeros(1, dtype=getattr(torch, dt)),
                lambda: None,
                contextlib.nullcontext,
                "",  # no guard: the report says so
            )
        if not torch.cuda.is_available():
            return None
        dev = torch.device("cuda", torch.cuda.current_device())

        @contextlib.contextmanager
        def no_sync() -> Iterator[None]:
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(previous)

        return Framework(
            "torch",
            torch.__version__,
            torch.cuda.get_device_name(dev),
            lambda dt: torch.zeros(1, dtype=getattr(torch, dt), device=dev),
            torch.cuda.synchronize,
            no_sync,
            'torch.cuda.set_sync_debug_mode("error")',
        )
    except Exception as err:  # a broken CUDA install is reported, not fatal
        print(f"torch: CUDA unusable ({type(err).__name__}: {err})")
        return None


def find_cupy() -> Framework | None:
    if find_spec("cupy") is None:
        return None
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        guard = "none available (cupyx.allow_synchronize missing)"
        no_sync: Callable[[], Any] = contextlib.nullcontext
        try:
            import cupyx

            if hasattr(cupyx, "allow_synchronize"):
                guard, no_sync = "cupyx.allow_synchronize(False)", lambda: cupyx.allow_synchronize(False)
        except ImportError:
            pass

        def sync() -> None:
            cupy.cuda.Device().synchronize()

        return Framework(
            "cupy",
            cupy.__version__,
            name,
            lambda dt: cupy.zeros(1, dtype=getattr(cupy, dt)),
            sync,
            no_sync,
            guard,
        )
    except Exception as err:
        print(f"cupy: CUDA unusable ({type(err).__name__}: {err})")
        return None


def find_jax(cpu: bool = False) -> Framework | None:
    if find_spec("jax") is None:
        return None
    try:
        import jax

        try:
            gpus = jax.devices("cpu" if cpu else "gpu")  # "cpu": the rehearsal
        except RuntimeError:  # no GPU backend in this jax install
            return None
        if not gpus:
            return None
        jax.config.update("jax_enable_x64", True)  # this check script only; kpflow never does this
        jax.config.update("jax_default_matmul_precision", "highest")
        import jax.numpy as jnp

        def sync() -> None:
            jax.effects_barrier()

        return Framework(
            "jax",
            jax.__version__,
            f"{gpus[0].device_kind} ×{len(gpus)}",
            lambda dt: jnp.zeros(1, dtype=getattr(jnp, dt), device=gpus[0]),
            sync,
            lambda: jax.transfer_guard_device_to_host("disallow"),
            'jax.transfer_guard_device_to_host("disallow")',
            {"gpus": gpus},
        )
    except Exception as err:
        print(f"jax: GPU unusable ({type(err).__name__}: {err})")
        return None


# -- the checks ----------------------------------------------------------------------------------
@dataclass
class Outcome:
    label: str
    ok: bool
    detail: str


def rel_to_largest(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-300))


def to_host(x: Any) -> np.ndarray:
    """A host float64 copy (outside every guarded region)."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy().astype(np.float64)
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def build(model: GRU, x_host: np.ndarray, like: Any) -> Any:
    params = model.init(0, like=like)
    x = get_backend(like).from_host(x_host, dtype=like.dtype, device=device_of(like))
    return kpflow.global_ntk(model.run(params, x))


def check_one(fw: Framework, dtype: str, model: GRU, x_host: np.ndarray, k: int, ref: np.ndarray) -> Outcome:
    label = f"{fw.name:5s} {dtype}"
    like = fw.like(dtype)
    notes = []
    try:
        ntk = build(model, x_host, like)
        X = random_normal(0, (16, *ntk.shape_in), like=like)
        ntk.matmat(X)  # warm-up (jax compiles here)
        fw.synchronize()
        with fw.no_host_sync():
            Y = ntk.matmat(X)
        fw.synchronize()
        meta_ok = device_of(Y) == device_of(like) and Y.dtype == like.dtype
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            top = kpflow.linalg.eigsh(ntk, k, rng=0)
            fw.synchronize()
            seconds = time.perf_counter() - t0
        notes += [f"warning: {w.message}" for w in caught]
        for name in ("eigenvalues", "eigenvectors", "residual_norms"):
            a = getattr(top, name)
            meta_ok = meta_ok and device_of(a) == device_of(like) and a.dtype == like.dtype
        err = rel_to_largest(to_host(top.eigenvalues), ref)
        ok = meta_ok and err <= TOL[dtype]
        where = f"on {device_of(like)}" if meta_ok else "WRONG device/dtype"
        detail = (
            f"eig rel {err:.1e} (tol {TOL[dtype]:.0e}) | {where} | "
            + (f"product under {fw.guard}: no host sync" if fw.guard else "product not guarded")
            + f" | eigsh {seconds:.2f} s, {top.num_matvecs} matvecs"
        )
        if notes:
            detail += " | " + "; ".join(notes)
        return Outcome(label, ok, detail)
    except Exception as err:
        tb = traceback.format_exception_only(type(err), err)[-1].strip()
        return Outcome(label, False, f"raised {tb}")


def check_jax_sharded(fw: Framework, model: GRU, x_host: np.ndarray, k: int) -> Outcome:
    from kpflow.backends.jax import replicate

    gpus = fw.extra["gpus"]
    label = f"jax   float64 sharded ×{len(gpus)}"
    try:
        like = fw.like("float64")
        one = kpflow.linalg.eigsh(build(model, x_host, like), k, rng=0)
        params = replicate(model.init(0, like=like), gpus)
        x = replicate(get_backend(like).from_host(x_host, dtype=like.dtype, device=gpus[0]), gpus)
        ntk = kpflow.global_ntk(model.run(params, x))
        t0 = time.perf_counter()
        top = kpflow.linalg.eigsh(ntk, k, rng=0)
        fw.synchronize()
        seconds = time.perf_counter() - t0
        err = rel_to_largest(to_host(top.eigenvalues), to_host(one.eigenvalues))
        replicated = top.eigenvalues.sharding.is_fully_replicated and len(
            top.eigenvalues.sharding.device_set
        ) == len(gpus)
        ok = err <= 1e-10 and replicated
        return Outcome(
            label,
            ok,
            f"vs one device rel {err:.1e} (tol 1e-10) | replicated: {replicated} | eigsh {seconds:.2f} s",
        )
    except Exception as err:
        tb = traceback.format_exception_only(type(err), err)[-1].strip()
        return Outcome(label, False, f"raised {tb}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--B", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--T", type=int, default=32, help="time steps (default 32)")
    parser.add_argument("--H", type=int, default=32, help="hidden units (default 32)")
    parser.add_argument("--k", type=int, default=10, help="eigenpairs (default 10)")
    parser.add_argument(
        "--cpu", action="store_true", help="rehearse the checks on the CPU (tests this script; no GPU claim)"
    )
    args = parser.parse_args(argv)

    found = (find_torch(True), find_jax(True)) if args.cpu else (find_torch(), find_cupy(), find_jax())
    frameworks = [fw for fw in found if fw is not None]
    if not frameworks:
        print("no GPU: torch CUDA, cupy and jax GPU are all unavailable here; nothing to check")
        return 0
    for fw in frameworks:
        print(f"{fw.name} {fw.version} on {fw.gpu}")

    model = GRU(n_in=4, n_hidden=args.H)
    x_host = np.random.default_rng(1).standard_normal((args.B, args.T, 4))
    t0 = time.perf_counter()
    cpu = kpflow.linalg.eigsh(build(model, x_host, np.zeros(1)), args.k, rng=0)
    ref = np.asarray(cpu.eigenvalues, dtype=np.float64)
    print(
        f"CPU numpy float64 reference: n = {args.B * args.T * args.H}, top {args.k} eigenvalues in "
        f"{time.perf_counter() - t0:.1f} s ({cpu.num_matvecs} matvecs), largest {ref[0]:.6g}"
    )

    outcomes = [
        check_one(fw, dt, model, x_host, args.k, ref) for fw in frameworks for dt in ("float32", "float64")
    ]
    for fw in frameworks:
        if fw.name == "jax" and len(fw.extra["gpus"]) > 1:
            outcomes.append(check_jax_sharded(fw, model, x_host, args.k))
    for o in outcomes:
        print(f"{'PASS' if o.ok else 'FAIL'}  {o.label:26s} {o.detail}")
    failed = [o for o in outcomes if not o.ok]
    print(f"{'FAIL' if failed else 'PASS'}: {len(outcomes) - len(failed)} of {len(outcomes)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
