"""Run every paper example at ``--quick`` and copy its figures to docs/examples/figures/.

Usage: ``python examples/paper/make_gallery.py [--out DIR]`` (default: the docs' figures
folder); each example's ``results.json`` goes to ``DIR/<example>/``, its PNGs to ``DIR``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The paper examples, by their naming rule ``e<N>_<name>.py`` (what CI runs, too).
EXAMPLES = sorted((p.stem for p in HERE.glob("e[0-9]*_*.py")), key=lambda name: int(name[1:].split("_")[0]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parents[1] / "docs" / "examples" / "figures")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    with tempfile.TemporaryDirectory() as tmp:
        for name in EXAMPLES:
            spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            run = Path(tmp) / name
            module.main(["--quick", "--out", str(run)])
            for png in run.glob("*.png"):
                shutil.copy(png, args.out / png.name)
            (args.out / name).mkdir(exist_ok=True)
            shutil.copy(run / "results.json", args.out / name / "results.json")


if __name__ == "__main__":
    main()
