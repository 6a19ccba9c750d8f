"""Sphinx configuration of the kpflow site.

Build: ``nox -s docs``, or ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
The tutorials are executed (myst-nb, cached in ``docs/_build/.jupyter_cache``); the API reference
(``docs/api/``) is generated here from the package's ``__all__`` lists before Sphinx reads a page.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The executed tutorials' kernels inherit this process's environment: draw their figures inline
# (as Jupyter does) even when the caller set another matplotlib backend, e.g. MPLBACKEND=Agg.
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

import kpflow_docs  # noqa: E402

import kpflow  # noqa: E402

kpflow_docs.write_api(HERE)

project = "kpflow"
author = "the kpflow developers"
copyright = "the kpflow developers"
release = version = kpflow.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.load_style",
    "kpflow_docs",
]

exclude_patterns = ["_build", "_ext", "_templates", "Thumbs.db", ".DS_Store", "**/.ipynb_checkpoints"]
templates_path = ["_templates"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}

# MyST: the pages are GitHub-flavoured Markdown with $math$, tables and fenced directives.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

# myst-nb executes the tutorials (pages with a jupytext/kernelspec header) once and caches them.
nb_execution_mode = os.environ.get("KPFLOW_DOCS_EXECUTE", "cache")
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache")
nb_execution_timeout = 120
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

# autodoc / autosummary / numpydoc: the reference is generated from the docstrings.
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"
autodoc_inherit_docstrings = False
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
add_module_names = False

html_theme = "pydata_sphinx_theme"
html_title = f"kpflow {release}"
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
    "navbar_align": "left",
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_show_sourcelink = False
html_copy_source = False
html_static_path: list[str] = []
