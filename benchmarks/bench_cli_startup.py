"""``kpflow spectrum --backend jax``: the first call and the warm call, against numpy's same command.

Every call is a fresh process (``python -m kpflow.cli spectrum ...``), as a user runs it:

- ``numpy``: the baseline, the same command with ``--backend numpy``;
- ``jax first``: an empty persistent compilation cache (``--jax-cache`` a new folder), so
  every program is compiled;
- ``jax warm``: the same cache folder again, now holding the first call's programs, which
  jax loads instead of compiling (warm, definition (a): a new process);
- ``jax again``: a second spectrum in the process of a ``jax first`` call (its cache off),
  of the same sizes with another ``--seed`` (new weights, inputs and probes): what a script
  or notebook that calls ``kpflow.cli.main`` twice waits for (warm, definition (b)); its
  wall and CPU times are those of the second call alone, measured in the child.

The table gives each call's wall time, the CPU time of its process (user + system, from
``getrusage``: on a shared machine the wall time also counts the time other processes
hold the cores), the report's own ``total`` (the analysis, without the imports) and, for
the jax calls, the programs XLA compiled and those loaded from the cache (jax's monitoring
events, counted in the child); each is the median of ``--repeat`` rounds (every round runs
each call once, in turn, so that a change of machine load hits all alike).  Then the
ratios jax / numpy.

Run: ``python benchmarks/bench_cli_startup.py`` (the CLI's default sizes); smaller with
``--batch 2 --time 4 --hidden 4 --k 2 --matvecs 16``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gru", help="the CLI's --model (default: gru)")
    for name, default in (("batch", 8), ("time", 30), ("hidden", 32), ("k", 10), ("matvecs", 300)):
        p.add_argument(
            f"--{name}", type=int, default=default, help=f"the CLI's --{name} (default: {default})"
        )
    p.add_argument("--repeat", type=int, default=1, help="rounds (default: 1)")
    return p


#: The jax child: ``kpflow.cli.main`` with jax's compile and cache-hit events counted.
_JAX_CHILD = """
import sys
from jax import monitoring
counts = {"compiled": 0, "loaded": 0}
def on_duration(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        counts["compiled"] += 1
def on_event(event, **kwargs):
    if event == "/jax/compilation_cache/cache_hits":
        counts["loaded"] += 1
monitoring.register_event_duration_secs_listener(on_duration)
monitoring.register_event_listener(on_event)
import os, time
from kpflow.cli import main
status = main(sys.argv[1:])
compiled = counts["compiled"] - counts["loaded"]  # jax times a cache hit as a compilation too
print(f"PROGRAMS compiled={compiled} loaded={counts['loaded']}", file=sys.stderr)
if status == 0 and os.environ.get("KPFLOW_BENCH_AGAIN"):
    # warm, definition (b): the same sizes again in this process, another seed
    import contextlib, io, json
    before = dict(counts)
    t0, c0 = time.perf_counter(), time.process_time()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        status = main(sys.argv[1:] + ["--seed", "1"])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    total = json.loads(buf.getvalue())["seconds"]
    again = counts["compiled"] - counts["loaded"] - (before["compiled"] - before["loaded"])
    loaded = counts["loaded"] - before["loaded"]
    print(f"AGAIN wall={wall} cpu={cpu} total={total} compiled={again} loaded={loaded}", file=sys.stderr)
from kpflow.cli import _end_process
_end_process(status)  # as the kpflow console script ends
"""


def _child_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def _call(
    backend: str, args: argparse.Namespace, cache: str | None, again: list[dict[str, float]] | None = None
) -> dict[str, float]:
    """One fresh ``kpflow spectrum`` process: wall and CPU seconds, and the report's own total.

    With ``again`` (jax), the child then runs the spectrum a second time (another seed) and
    the second call's own wall, CPU and program counts are appended to it.
    """
    child = ["-m", "kpflow.cli"] if backend != "jax" else ["-c", _JAX_CHILD]
    cmd = [sys.executable, *child, "spectrum", "--backend", backend, "--json"]
    for name in ("model", "batch", "time", "hidden", "k", "matvecs"):
        cmd += [f"--{name}", str(getattr(args, name))]
    if cache is not None:
        cmd += ["--jax-cache", cache]
    env = {**os.environ, "KPFLOW_BENCH_AGAIN": "1"} if again is not None else None
    cpu0, t0 = _child_cpu(), time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
    if out.returncode != 0:
        msg = f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}"
        raise RuntimeError(msg)
    report = json.loads(out.stdout)
    row = {"wall": wall, "cpu": cpu, "total": float(report["seconds"])}
    found = re.search(r"^PROGRAMS compiled=(\d+) loaded=(\d+)$", out.stderr, re.M)
    if found:
        row |= {"compiled": float(found[1]), "loaded": float(found[2])}
    second = re.search(
        r"^AGAIN wall=(\S+) cpu=(\S+) total=(\S+) compiled=(\d+) loaded=(\d+)$", out.stderr, re.M
    )
    if again is not None and second:
        again.append(
            {
                "wall": float(second[1]),
                "cpu": float(second[2]),
                "total": float(second[3]),
                "compiled": float(second[4]),
                "loaded": float(second[5]),
            }
        )
    return row


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = _parser().parse_args(argv)
    rows: dict[str, list[dict[str, float]]] = {"numpy": [], "jax first": [], "jax warm": [], "jax again": []}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="kpflow-jax-cache-") as cache:
            rows["numpy"].append(_call("numpy", args, None))
            rows["jax first"].append(_call("jax", args, cache))
            rows["jax warm"].append(_call("jax", args, cache))
            _call("jax", args, "off", again=rows["jax again"])
    med = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in rows.items()
    }
    sizes = f"model={args.model} batch={args.batch} time={args.time} hidden={args.hidden} k={args.k}"
    print(f"kpflow spectrum, fresh processes, {sizes} matvecs={args.matvecs}, median of {args.repeat}")
    print(f"{'call':<10} {'wall s':>8} {'cpu s':>8} {'report s':>9} {'compiled':>9} {'loaded':>7}")
    for name, m in med.items():
        programs = f"{m['compiled']:9.0f} {m['loaded']:7.0f}" if "compiled" in m else f"{'':9} {'':7}"
        print(f"{name:<10} {m['wall']:8.2f} {m['cpu']:8.2f} {m['total']:9.2f} {programs}")
    base = med["numpy"]
    for name in ("jax first", "jax warm", "jax again"):
        m = med[name]
        print(
            f"RATIO {name} / numpy: wall {m['wall'] / base['wall']:.2f}x, cpu {m['cpu'] / base['cpu']:.2f}x"
        )
    return med


if __name__ == "__main__":
    main()
