"""Sphinx extension of the kpflow site: the API reference and the gallery, generated at build time.

- The API reference is written from the package's ``__all__`` lists (never by hand): one page per
  public module, an autosummary entry for every name whose home is that module, and a table of the
  names it re-exports from another documented module.  ``kpflow.models`` also gets the table of the
  axis names of every built-in model's states, read off the model registry by running each model.
- The gallery (``{kpflow-gallery}`` directive) shows whatever ``examples/*.md`` pages exist at build
  time, each with the first figure it shows; a missing page or figure is simply not shown.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from pathlib import Path
from typing import Any

#: The documented public modules, in the order of the reference.  Modules that appear as names in
#: one of their ``__all__`` (``kpflow.linalg.rules``, ``kpflow.ntk.shortcuts``) are added after.
PUBLIC_MODULES = [
    "kpflow",
    "kpflow.operators",
    "kpflow.linalg",
    "kpflow.models",
    "kpflow.ntk",
    "kpflow.analysis",
    "kpflow.tasks",
    "kpflow.training",
    "kpflow.plot",
    "kpflow.backends",
    "kpflow.backends.numpy",
    "kpflow.backends.array_api_strict",
    "kpflow.backends.torch",
    "kpflow.backends.jax",
    "kpflow.backends.cupy",
]

API_DIR = "api"
GENERATED = "generated"


def public_modules() -> list[str]:
    """Every documented module: :data:`PUBLIC_MODULES` and the submodules their ``__all__`` name."""
    names = list(PUBLIC_MODULES)
    for modname in PUBLIC_MODULES:
        mod = importlib.import_module(modname)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if isinstance(obj, types.ModuleType) and obj.__name__ not in names and hasattr(obj, "__all__"):
                names.append(obj.__name__)
    return names


def public_names() -> dict[str, list[str]]:
    """``{module: its __all__}`` for every documented module."""
    return {m: list(importlib.import_module(m).__all__) for m in public_modules()}


def home(modname: str, name: str, names: dict[str, list[str]]) -> str:
    """The documented module whose page describes ``modname.name``.

    A module object is described on its own page.  Any other object lives on the page of the
    documented module that exports it and is the longest prefix of the object's ``__module__``
    (``kpflow.global_ntk`` is described under ``kpflow.ntk``); failing that, where it is exported.
    """
    obj = getattr(importlib.import_module(modname), name)
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    owner = getattr(obj, "__module__", None) if (inspect.isclass(obj) or callable(obj)) else None
    exporters = [
        m for m, ns in names.items() if name in ns and getattr(importlib.import_module(m), name) is obj
    ]
    if owner:
        prefixed = [m for m in exporters if owner == m or owner.startswith(m + ".")]
        if prefixed:
            return max(prefixed, key=len)
    return modname


def _kind(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return "mod"
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "func"
    return "data"


def _title(text: str, char: str = "=") -> str:
    return f"{text}\n{char * len(text)}\n"


def _module_page(modname: str, names: dict[str, list[str]]) -> str:
    mod = importlib.import_module(modname)
    own, reexported = [], []
    for name in names[modname]:
        obj = getattr(mod, name)
        where = home(modname, name, names)
        if isinstance(obj, types.ModuleType):
            reexported.append((name, "mod", where))
        elif name == "__version__":
            own.append(name)
        elif where == modname:
            own.append(name)
        else:
            reexported.append((name, _kind(obj), f"{where}.{name}"))
    lines = [_title(f"``{modname}``"), f".. automodule:: {modname}", "   :no-members:", ""]
    documented = [n for n in own if n != "__version__"]
    if documented:
        lines += [
            _title("Contents", "-"),
            f".. currentmodule:: {modname}",
            "",
            ".. autosummary::",
            f"   :toctree: {GENERATED}",
            "   :template: kpflow_object.rst",
            "",
            *(f"   {n}" for n in sorted(documented, key=str.lower)),
            "",
        ]
    if "__version__" in own:
        lines += [
            f".. py:currentmodule:: {modname}",
            "",
            ".. py:data:: __version__",
            "",
            f"   The installed version, ``{mod.__version__!s}``.",
            "",
        ]
    if reexported:
        lines += [_title("Also exported here", "-"), ".. list-table::", "   :header-rows: 1", ""]
        lines += ["   * - name", "     - described at"]
        for name, kind, target in reexported:
            lines += [f"   * - ``{modname}.{name}``", f"     - :py:{kind}:`{target}`"]
        lines.append("")
    if modname == "kpflow.models":
        lines += [_title("Axis names of the built-in models' states", "-"), *axis_table(), ""]
    return "\n".join(lines)


def axis_table() -> list[str]:
    """A list-table of every registry model: its class, state shape, axis names and state parts.

    Read off the models themselves: each is built at a small size and run once on numpy.
    """
    import numpy as np

    from kpflow.models import registry

    batch, time, n_in, n_hidden = 2, 3, 3, 4
    rows = [
        "Each built-in model (:mod:`kpflow.models.registry`, ``kpflow spectrum --model NAME``) built with",
        f"``n_in={n_in}, n_hidden={n_hidden}`` and run on a batch of {batch} trials of {time} steps"
        " (generated from the models when the site is built):",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - name",
        "     - class",
        "     - state axes",
        "     - state shape",
        "     - state parts (slices of the last axis)",
    ]
    for name in registry.names():
        entry = registry.entry(name)
        width = n_in if entry.free_inputs else n_hidden
        model = registry.build(name, n_in=width, n_hidden=n_hidden)
        x = np.ones(entry.input_shape(batch=batch, time=time, n_in=width, n_hidden=n_hidden))
        traj = model.run(model.init(0, like=x), x)
        layout = traj.layout
        parts = ", ".join(f"``{k}``: {a}:{b}" for k, (a, b) in layout.parts.items())
        rows += [
            f"   * - ``{name}``",
            f"     - :py:class:`~kpflow.models.{type(model).__name__}`",
            f"     - ``{tuple(traj.axis_names)}``",
            f"     - ``{tuple(layout.shape)}``",
            f"     - {parts}",
        ]
    return rows


def write_api(srcdir: Path) -> None:
    """Write ``api/index.rst`` and one page per public module (rewritten only when they change)."""
    names = public_names()
    out = srcdir / API_DIR
    out.mkdir(exist_ok=True)
    pages = {"index.rst": _index_page(list(names))}
    for modname in names:
        pages[f"{modname}.rst"] = _module_page(modname, names)
    for fname, text in pages.items():
        path = out / fname
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")


def _index_page(modules: list[str]) -> str:
    lines = [
        _title("API reference"),
        "Every public name of kpflow, module by module, generated from the package's ``__all__``",
        "lists and docstrings.  Each entry shows its shapes, its errors and an example that runs",
        "as a doctest.  A name exported by several modules (``kpflow.global_ntk`` is",
        "``kpflow.ntk.global_ntk``) is described once, where it is defined, and linked from the others.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
        *(f"   {m}" for m in modules),
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- gallery

_FIGURE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|```\{(?:figure|image)\}\s+(\S+)")
_HEADING = re.compile(r"^#\s+(.+)$", re.M)


def gallery_entries(srcdir: Path, pattern: str = "examples/e*.md") -> list[dict[str, str]]:
    """The gallery's pages as found now: docname, title and first figure (``""`` if none exists)."""
    entries = []
    for page in sorted(srcdir.glob(pattern)):
        text = page.read_text(encoding="utf-8")
        heading = _HEADING.search(text)
        figure = ""
        for match in _FIGURE.finditer(text):
            target = match.group(1) or match.group(2)
            if "://" not in target and (page.parent / target).exists():
                figure = str((page.parent / target).resolve().relative_to(srcdir.resolve()))
                break
        entries.append(
            {
                "docname": str(page.relative_to(srcdir).with_suffix("")),
                "title": heading.group(1).strip() if heading else page.stem,
                "figure": figure,
            }
        )
    return entries


def _gallery_directive() -> type:
    """The ``{kpflow-gallery}`` directive class (docutils is imported only by Sphinx builds)."""
    from docutils import nodes
    from docutils.parsers.rst import Directive

    class GalleryDirective(Directive):
        """``{kpflow-gallery}``: a thumbnail per example page found at build time."""

        has_content = False
        optional_arguments = 1

        def run(self) -> list[Any]:
            env = self.state.document.settings.env
            srcdir = Path(env.srcdir)
            pattern = self.arguments[0] if self.arguments else "examples/e*.md"
            entries = gallery_entries(srcdir, pattern)
            if not entries:
                para = nodes.paragraph(text="No example pages were found when this site was built.")
                return [para]
            here = Path(env.docname).parent
            container = nodes.container(classes=["sphx-glr-thumbnails"])
            for entry in entries:
                env.note_dependency(str(srcdir / (entry["docname"] + ".md")))
                thumb = nodes.container(classes=["sphx-glr-thumbcontainer"], tooltip=entry["title"])
                uri = _relative(here, entry["docname"]) + ".html"
                if entry["figure"]:
                    picture = nodes.paragraph()
                    link = nodes.reference("", "", internal=True, refuri=uri)
                    link += nodes.image(uri="/" + entry["figure"], alt=entry["title"])
                    picture += link
                    thumb += picture
                caption = nodes.paragraph(classes=["sphx-glr-thumbnail-title"])
                caption += nodes.reference("", entry["title"], internal=True, refuri=uri)
                thumb += caption
                container += thumb
            return [container]

    return GalleryDirective


# ------------------------------------------------------------------------------ docstring markup

_LITERAL = re.compile(r"(``.+?``|:\w+:`[^`]*`)")
_STAR_SHAPE = re.compile(r"(?<![\\*\w])\*(?=[A-Za-z_]\w*[)\],])")  # (k, *shape): unpacking, not emphasis
_BAR = re.compile(r"(?<!\\)\|")


def _plain_markup(line: str) -> str:
    """Escape the characters of a docstring's plain-text maths that reStructuredText would read as
    markup: ``*shape`` in a shape such as ``(k, *shape)`` (emphasis), and ``|x|`` (a substitution).
    Doctest lines, literals and roles are left as written."""
    stripped = line.lstrip()
    if stripped.startswith((">>>", "... ")) or stripped.startswith(("|", "+")):
        return line
    pieces = _LITERAL.split(line)
    for i in range(0, len(pieces), 2):
        pieces[i] = _BAR.sub(r"\\|", _STAR_SHAPE.sub(r"\\*", pieces[i]))
    return "".join(pieces)


def _process_docstring(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    lines[:] = [_plain_markup(line) for line in lines]


def _relative(here: Path, docname: str) -> str:
    parts_here = [p for p in here.parts if p not in ("", ".")]
    return "/".join([".."] * len(parts_here) + [docname])


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("kpflow-gallery", _gallery_directive())
    app.connect("autodoc-process-docstring", _process_docstring, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
